"""URLs of the dashboard in a Django project: mount it with one include::

    from django.urls import include, path

    urlpatterns = [
        path("jobs/", include("jiggler_gevent.contrib.django.urls")),
    ]

Every page lives under that prefix (``jobs/``, ``jobs/dead``, ``jobs/static/...``); the
prefix may be anything, nested includes and Django's own ``SCRIPT_NAME`` included. The
URL names are ``jiggler_gevent:dashboard`` (``reverse("jiggler_gevent:dashboard")`` is
the overview; ``kwargs={"path": "dead"}`` a page under it). The Redis server comes from
the ``JIGGLER_GEVENT`` setting (see :mod:`jiggler_gevent.contrib.django.views`).

This include has no access control: anyone who reaches the URL can retry, delete and
stop things. Protect it in your own ``urls.py`` by giving :func:`dashboard_urls` your
decorator::

    from django.contrib.admin.views.decorators import staff_member_required
    from django.contrib.auth.decorators import login_required, user_passes_test

    from jiggler_gevent.contrib.django.urls import dashboard_urls

    urlpatterns = [
        path("admin/jobs/", include(dashboard_urls(staff_member_required))),
        # or: include(dashboard_urls(login_required))
        # or: include(dashboard_urls(user_passes_test(lambda user: user.is_superuser)))
    ]

The view stays exempt from Django's CSRF middleware whatever the decorator: the
dashboard checks its own CSRF token and the request's origin on every POST.
"""

from __future__ import annotations

from typing import Callable, Optional

from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from . import views

app_name = "jiggler_gevent"


def dashboard_urls(decorator: Optional[Callable] = None) -> tuple[list, str]:
    """``(urlpatterns, app_name)`` for :func:`django.urls.include`, the view wrapped in
    ``decorator`` (``staff_member_required``, ``login_required``...) when given."""
    view = views.dashboard
    if decorator is not None:
        view = csrf_exempt(decorator(view))
    return [
        path("", view, name="dashboard"),
        path("<path:path>", view, name="dashboard"),
    ], app_name


urlpatterns = dashboard_urls()[0]

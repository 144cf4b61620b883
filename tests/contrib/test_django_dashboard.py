"""The dashboard mounted in Django with one include (``djproject/urls.py`` puts it under
``admin-jobs/``): pages, static files and JSON under the prefix, a CSRF-checked action
through Django's test Client (with Django's own CSRF middleware on), refusals, cookies,
settings and a host-app decorator."""

from __future__ import annotations

import functools
import re
import time
from urllib.parse import urlencode

import pytest
import ujson

pytest.importorskip("django")
pytest.importorskip("jinja2")

from django.http import HttpResponseForbidden  # noqa: E402
from django.urls import include, path  # noqa: E402

from jiggler_gevent import payload  # noqa: E402
from jiggler_gevent.api import Api  # noqa: E402
from jiggler_gevent.contrib.django.urls import dashboard_urls  # noqa: E402
from jiggler_gevent.keys import Keys  # noqa: E402

PREFIX = "/admin-jobs"
FORM = "application/x-www-form-urlencoded"
DJANGO_CSRF = ["django.middleware.csrf.CsrfViewMiddleware"]


def staff_only(view):
    """A stand-in for ``staff_member_required`` (the test project has no auth app)."""
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.headers.get("X-Staff") != "yes":
            return HttpResponseForbidden(b"staff only")
        return view(request, *args, **kwargs)
    return wrapper


def two_cookies(environ, start_response):
    """A WSGI app answering two cookies and a repeated header."""
    start_response("201 Created", [
        ("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/m; HttpOnly"),
        ("Vary", "Cookie"), ("Set-Cookie", "b=2; Path=/; SameSite=Strict; Secure"),
        ("Vary", "Origin")])
    return [environ["SCRIPT_NAME"].encode(), b"|", environ["PATH_INFO"].encode("latin-1")]


def two_cookies_view(request, path):
    from jiggler_gevent.contrib.django.views import serve_wsgi

    return serve_wsgi(request, two_cookies, path)


# a URLconf of this module (``ROOT_URLCONF=__name__``): protected and nested mounts
urlpatterns = [
    path("private-jobs/", include(dashboard_urls(staff_only))),
    path("teams/<slug:team>/jobs/", include("jiggler_gevent.contrib.django.urls")),
    path("two-cookies/<path:path>", two_cookies_view),
]


@pytest.fixture(scope="module")
def django_project(django_setup):
    """Django set up in this process (once per session: see conftest.py)."""
    from jiggler_gevent.contrib.django.views import reset_dashboard

    reset_dashboard()
    yield
    reset_dashboard()  # closes its Redis client


@pytest.fixture
def web(django_project, redis_client):
    """A Django test Client with Django's CSRF middleware on and enforced."""
    from django.test import Client, override_settings

    with override_settings(MIDDLEWARE=DJANGO_CSRF):
        yield Client(enforce_csrf_checks=True)


def dead_job(redis_client, jid: str = "dead1", namespace: str = "") -> str:
    """A runnable job in the dead set (raw ZADD); returns its dashboard ref."""
    job = payload.build("Mail", ["a@example.com"], {}, queue="mail", retries=2, jid=jid)
    entry = payload.failed(job, ValueError("boom"), now=time.time(), retry_at=None)
    redis_client.zadd(Keys(namespace).dead("mail"), {payload.dumps(entry): time.time()})
    redis_client.sadd(Keys(namespace).queues, "mail")
    return Api(redis_client, namespace).find_job(jid).ref


def links(html: str) -> list[str]:
    return [link for link in re.findall(r'(?:href|action|src)="([^"]+)"', html)
            if link != "data:,"]  # the empty favicon


def form_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html).group(1)


def post(web, url: str, **data):
    return web.post(url, urlencode(data), content_type=FORM)


def test_overview_links_and_cookie_under_the_prefix(web, redis_client):
    from django.urls import reverse

    redis_client.set(Keys().processed, 1234)
    response = web.get(PREFIX + "/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    html = response.content.decode()
    assert re.search(r'data-counter="processed">1,234<', html)
    found = links(html)
    assert found and all(link.startswith(PREFIX + "/") for link in found), found
    assert f'data-url="{PREFIX}/stats.json?days=30"' in html
    assert response["X-Frame-Options"] == "DENY" and "default-src 'none'" in response[
        "Content-Security-Policy"]
    cookie = response.cookies["jiggler_csrf"]
    assert cookie["path"] == PREFIX and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert not cookie["secure"]
    assert web.get(PREFIX + "/", secure=True).cookies.get("jiggler_csrf") is None  # already has one
    assert reverse("jiggler_gevent:dashboard") == PREFIX + "/"
    assert reverse("jiggler_gevent:dashboard", kwargs={"path": "dead"}) == PREFIX + "/dead"


def test_secure_cookie_over_https(web):
    cookie = web.get(PREFIX + "/", secure=True).cookies["jiggler_csrf"]
    assert cookie["secure"] and cookie["path"] == PREFIX


def test_static_asset(web):
    response = web.get(PREFIX + "/static/dashboard.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert response["Cache-Control"] == "public, max-age=300"
    assert response.content and b"innerHTML" not in response.content
    assert int(response["Content-Length"]) == len(response.content)
    assert web.get(PREFIX + "/static/app.py").status_code == 404


def test_stats_json(web, redis_client):
    redis_client.set(Keys().processed, 77)
    response = web.get(PREFIX + "/stats.json", {"days": 3})
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = ujson.loads(response.content)
    assert data["totals"]["processed"] == 77 and len(data["history"]) == 3


def test_retry_action_with_the_token(web, redis_client):
    ref = dead_job(redis_client)
    page = web.get(PREFIX + "/dead")
    assert page.status_code == 200 and "dead1" in page.content.decode()
    token = form_token(page.content.decode())
    assert token == web.cookies["jiggler_csrf"].value  # the form carries the cookie's token
    response = post(web, f"{PREFIX}/dead/{ref}/retry", csrf_token=token)
    assert response.status_code == 303, response.content
    assert response["Location"] == f"{PREFIX}/dead?done=retried"
    assert redis_client.zcard(Keys().dead("mail")) == 0 and redis_client.llen(Keys().queue("mail")) == 1
    assert "Job moved to its queue." in web.get(response["Location"]).content.decode()


def test_posts_without_the_token_are_refused(web, redis_client):
    ref = dead_job(redis_client)
    url = f"{PREFIX}/dead/{ref}/delete"
    token = form_token(web.get(PREFIX + "/dead").content.decode())
    refusals = [
        web.post(url),  # no body at all
        post(web, url),  # a form without the token
        post(web, url, csrf_token="0" * 64),  # a wrong token
        web.post(url, {"csrf_token": token}),  # multipart: not a form the dashboard reads
        web.post(url, urlencode({"csrf_token": token}), content_type=FORM,
                 headers={"Origin": "http://evil.example"}),
    ]
    for response in refusals:
        assert response.status_code == 403
        assert b"CSRF token missing or cross-site request" in response.content
    web.cookies.pop("jiggler_csrf")
    assert post(web, url, csrf_token=token).status_code == 403  # the cookie half is missing
    assert redis_client.zcard(Keys().dead("mail")) == 1
    web.cookies["jiggler_csrf"] = token
    assert post(web, url, csrf_token=token).status_code == 303
    assert redis_client.zcard(Keys().dead("mail")) == 0


def test_multiple_set_cookie_headers_survive(django_project):
    """Through Django's real WSGI handler: both cookies reach the wire, attributes kept."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings
    from werkzeug.test import Client as WsgiClient

    with override_settings(ROOT_URLCONF=__name__):
        response = WsgiClient(WSGIHandler()).get("/two-cookies/x/y")
    assert response.status_code == 201 and response.status == "201 Created"
    assert response.data == b"/two-cookies|/x/y"
    assert response.headers["Vary"] == "Cookie, Origin"
    cookies = [value.strip() for value in response.headers.getlist("Set-Cookie")]
    assert len(cookies) == 2, cookies
    first, second = sorted(cookies)
    assert first.startswith("a=1;") and "HttpOnly" in first and "Path=/m" in first
    assert second.startswith("b=2;") and "Secure" in second and "SameSite=Strict" in second


def test_host_decorator_and_nested_prefix(django_project, redis_client):
    from django.test import Client, override_settings

    ref = dead_job(redis_client)
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=DJANGO_CSRF):
        web = Client(enforce_csrf_checks=True)
        refused = web.get("/private-jobs/dead")
        assert refused.status_code == 403 and refused.content == b"staff only"
        staff = Client(enforce_csrf_checks=True, headers={"X-Staff": "yes"})
        page = staff.get("/private-jobs/dead").content.decode()
        assert all(link.startswith("/private-jobs/") for link in links(page))
        done = post(staff, f"/private-jobs/dead/{ref}/retry", csrf_token=form_token(page))
        assert done.status_code == 303  # still exempt from Django's CSRF middleware
        assert done["Location"] == "/private-jobs/dead?done=retried"

        nested = web.get("/teams/blue/jobs/queues")
        assert nested.status_code == 200
        assert all(link.startswith("/teams/blue/jobs/") for link in links(nested.content.decode()))
        assert nested.cookies["jiggler_csrf"]["path"] == "/teams/blue/jobs"
        assert web.get("/teams/blue/jobs/queues/%C3%A9").status_code == 404  # not a queue name


def test_dashboard_options_from_the_setting(django_project, redis_client):
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.test import Client, override_settings

    dead_job(redis_client, "nsjob", namespace="ns1")
    conf = dict(settings.JIGGLER_GEVENT, namespace="ns1", dashboard={"poll_interval": 30})
    with override_settings(JIGGLER_GEVENT=conf):  # the dashboard is rebuilt for it
        web = Client()
        assert 'data-poll-ms="30000"' in web.get(PREFIX + "/").content.decode()
        assert "nsjob" in web.get(PREFIX + "/dead").content.decode()
    assert "nsjob" not in Client().get(PREFIX + "/dead").content.decode()  # back to no namespace
    with override_settings(JIGGLER_GEVENT=dict(conf, dashboard=["x"])), \
            pytest.raises(ImproperlyConfigured, match="must be a dict"):
        Client().get(PREFIX + "/")

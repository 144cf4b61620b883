"""The dashboard as a Django view: the request is handed to the WSGI :class:`Dashboard`.

Mount it with one include (see ``urls.py``)::

    path("jobs/", include("jiggler_gevent.contrib.django.urls")),

The :class:`~jiggler_gevent.web.Dashboard` is built once, on the first request, from
the ``JIGGLER_GEVENT`` setting: its ``redis_url`` and ``namespace``, plus the optional
``"dashboard"`` dict of extra :func:`~jiggler_gevent.web.make_app` options (which win)::

    JIGGLER_GEVENT = {"redis_url": "redis://localhost:6379/0", "namespace": "myapp",
                      "dashboard": {"poll_interval": 10}}

The view passes the mount prefix as ``SCRIPT_NAME`` (so every link, form and the CSRF
cookie's path stay under it) and the rest of the path as ``PATH_INFO``.

CSRF: the view is :func:`~django.views.decorators.csrf.csrf_exempt`. Django's own CSRF
middleware would refuse the dashboard's forms (they do not carry Django's token); the
dashboard checks every POST itself instead: a double-submit token (its own
``jiggler_csrf`` cookie, ``HttpOnly; SameSite=Strict``, under the mount path) and the
browser's ``Origin`` / ``Sec-Fetch-Site`` headers. A POST without that token gets a 403.

Access control is the host app's job: the dashboard has no login, and anyone who can
reach its URL can retry, delete and stop things. Put it behind your auth with
:func:`jiggler_gevent.contrib.django.urls.dashboard_urls` in your own ``urls.py``::

    from django.contrib.admin.views.decorators import staff_member_required
    from jiggler_gevent.contrib.django.urls import dashboard_urls

    urlpatterns = [
        path("admin/jobs/", include(dashboard_urls(staff_member_required))),
    ]

(or ``login_required``, or ``user_passes_test(lambda u: u.is_superuser)``), or route
:func:`dashboard` by hand: ``path("jobs/<path:path>", staff_member_required(dashboard))``
plus ``path("jobs/", staff_member_required(dashboard))``.
"""

from __future__ import annotations

import sys
import threading
from http.cookies import CookieError, SimpleCookie
from io import BytesIO
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException
from django.utils.encoding import escape_uri_path
from django.views.decorators.csrf import csrf_exempt

from . import SETTINGS_NAME, jiggler_settings

DASHBOARD_KEY = "dashboard"

_dashboard: Optional[Callable] = None
_lock = threading.Lock()


def get_dashboard() -> Callable:
    """The process's :class:`~jiggler_gevent.web.Dashboard`, built on first use from the
    ``JIGGLER_GEVENT`` setting (rebuilt after a test changes that setting)."""
    global _dashboard
    app = _dashboard
    if app is None:
        with _lock:
            if _dashboard is None:
                _dashboard = _build_dashboard()
            app = _dashboard
    return app


def _build_dashboard() -> Callable:
    from ...web import make_app  # needs Jinja2 (the ``web`` extra): imported on first use

    conf = jiggler_settings()
    extra = conf.get(DASHBOARD_KEY) or {}
    if not isinstance(extra, dict):
        raise ImproperlyConfigured(f"{SETTINGS_NAME}[{DASHBOARD_KEY!r}] must be a dict, "
                                   f"not {type(extra).__name__}")
    options: dict[str, Any] = {"redis_url": conf.get("redis_url") or None,
                               "namespace": conf.get("namespace") or ""}
    options.update(extra)
    return make_app(**options)


def reset_dashboard() -> None:
    """Forget the built dashboard (the next request builds it again)."""
    global _dashboard
    with _lock:
        app, _dashboard = _dashboard, None
    client = getattr(getattr(app, "api", None), "client", None)
    if client is not None:
        try:
            client.close()
        except Exception:  # a closing error must not break a settings change
            pass


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        reset_dashboard()


setting_changed.connect(_on_setting_changed, dispatch_uid="jiggler_gevent.dashboard")


@csrf_exempt
def dashboard(request: HttpRequest, path: str = "", **captured: Any) -> HttpResponse:
    """The dashboard page at ``path`` (what follows the mount prefix; what the include's
    own pattern captured, ``<slug:team>/jobs/`` say, is in ``captured`` and not used).

    Exempt from Django's CSRF middleware: the dashboard checks its own token and the
    request's origin on every POST. No access control here: wrap it (see the module doc).
    """
    return serve_wsgi(request, get_dashboard(), path)


def serve_wsgi(request: HttpRequest, app: Callable, path: str = "") -> HttpResponse:
    """Call the WSGI ``app`` for this request, mounted where ``request.path`` ends with
    ``path``, and turn what it answers into an :class:`~django.http.HttpResponse`."""
    answer = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list, exc_info=None) -> Callable:
        if exc_info is not None and answer:
            # nothing has been sent yet: the error response replaces the first one
            answer.clear()
            chunks.clear()
        answer["status"], answer["headers"] = status, list(headers)
        return chunks.append  # the legacy write() callable

    result = app(wsgi_environ(request, path), start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not answer:
        raise RuntimeError("the WSGI app returned without calling start_response")
    return to_django_response(answer["status"], answer["headers"], b"".join(chunks))


def wsgi_environ(request: HttpRequest, path: str = "") -> dict:
    """The WSGI environ of ``request`` for an app mounted at ``request.path`` minus ``path``.

    ``SCRIPT_NAME`` is that prefix (it includes Django's own ``SCRIPT_NAME``, if any),
    percent-encoded as it appears in URLs since the dashboard builds links and the cookie
    path from it; ``PATH_INFO`` is ``"/" + path`` in the WSGI encoding (UTF-8 bytes read as
    latin-1). The body is ``request.body`` (re-encoded from ``request.POST`` when something
    has already consumed the stream).
    """
    full = request.path
    remainder = path.lstrip("/")
    if remainder and full.endswith(remainder):
        prefix = full[: len(full) - len(remainder)]
    elif not remainder:
        prefix = full
    else:  # ``path`` does not come from this request's path: mount at Django's root
        prefix = request.META.get("SCRIPT_NAME", "")
    body = _body(request)
    environ = dict(request.META)
    environ.update({
        "REQUEST_METHOD": request.method or "GET",
        "SCRIPT_NAME": escape_uri_path(prefix.rstrip("/")),
        "PATH_INFO": ("/" + remainder).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": request.META.get("QUERY_STRING", ""),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": request.get_host(),  # as Django sees it (USE_X_FORWARDED_HOST ...)
        "wsgi.input": BytesIO(body),
        "wsgi.url_scheme": request.scheme,  # honours SECURE_PROXY_SSL_HEADER
    })
    environ.setdefault("wsgi.version", (1, 0))
    environ.setdefault("wsgi.errors", sys.stderr)
    environ.setdefault("wsgi.multithread", True)
    environ.setdefault("wsgi.multiprocess", True)
    environ.setdefault("wsgi.run_once", False)
    return environ


def _body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RawPostDataException:  # a middleware read request.POST from the stream first
        return urlencode(list(request.POST.lists()), doseq=True).encode("utf-8")


def to_django_response(status: str, headers: list[tuple[str, str]], body: bytes) -> HttpResponse:
    """A WSGI status line, header list and body as an :class:`~django.http.HttpResponse`.

    Every ``Set-Cookie`` header becomes a morsel of ``response.cookies`` (Django sends one
    header per cookie; ``response.headers`` holds one value per name); other repeated
    headers are joined with ``", "``.
    """
    code, _, reason = status.partition(" ")
    response = HttpResponse(body, status=int(code), reason=reason.strip() or None)
    seen: set[str] = set()
    for name, value in headers:
        if name.lower() == "set-cookie":
            _add_cookie(response, value)
        elif name.lower() in seen:
            response.headers[name] = f"{response.headers[name]}, {value}"
        else:
            seen.add(name.lower())
            response.headers[name] = value
    return response


def _add_cookie(response: HttpResponse, header: str) -> None:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        jar = SimpleCookie()
    if not jar:
        raise ValueError(f"the dashboard sent a Set-Cookie header Django cannot carry: {header!r}")
    for name, morsel in jar.items():
        response.cookies[name] = morsel

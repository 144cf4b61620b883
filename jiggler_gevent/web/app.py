"""The dashboard WSGI app: routes, views and actions over :mod:`jiggler_gevent.api`.

Owns the URL map and what each page shows. Mount it anywhere: every link is built
from ``SCRIPT_NAME``. The app object holds only its settings, the API and the
template environment; everything about one request lives in a :class:`Request`
(like Flask, ``__call__`` hands over to :meth:`Dashboard.wsgi_app`, so middleware can
wrap ``app.wsgi_app``). Templates are Jinja2 with autoescape on (the ``web`` extra).
Must not import gevent: the host app's server decides how requests are served.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hmac
import re
import time
from importlib import resources
from typing import Any, Callable, Optional

import redis
import ujson

from .. import api as _api
from ..config import default_redis_url
from ..connection import make_client
from ..keys import valid_queue_name
from ..version import __version__
from .http import CSRF_FIELD, BadRequest, Request, Response

try:
    import jinja2
except ImportError:  # pragma: no cover - reported when the app is built
    jinja2 = None

QUEUE = r"(?P<queue>[A-Za-z0-9_.\-]{1,128})"
SET = r"(?P<set>retries|scheduled|dead)"
JID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
REF = r"(?P<ref>[A-Za-z0-9_.\-]{1,128}:(?:-?[0-9][0-9.e+\-]{0,30}|-?inf):[0-9a-f]{40})"
STATIC_FILES = {"dashboard.js": "text/javascript; charset=utf-8",
                "dashboard.css": "text/css; charset=utf-8"}
PAGE_SIZES = (1, _api.MAX_PAGE_SIZE)
DEFAULT_PAGE_SIZE = 25
MAX_PAGE = 100_000
POLL_RANGE_S = (2, 60)
DEFAULT_POLL_S = 5
HISTORY_DAYS = 30
ARGS_SHOWN_CHARS = 200
NOTICES = {  # ?done=... after an action: fixed texts, never text from the request
    "retried": "Job moved to its queue.", "deleted": "Entry deleted.", "killed": "Job moved to the dead set.",
    "retried-all": "Runnable entries moved to their queues.", "deleted-all": "Set emptied.",
    "cleared": "Queue cleared.", "quiet": "Quiet requested: the process acts on its next heartbeat.",
    "stop": "Stop requested: the process acts on its next heartbeat.",
    "enqueued": "Job enqueued: it runs once now; the schedule's next tick is unchanged.",
}
SET_TITLES = {"retries": "Retries", "scheduled": "Scheduled", "dead": "Dead"}


def _route(method: str, pattern: str) -> Callable:
    def mark(fn: Callable) -> Callable:
        fn.route = (method, re.compile(pattern + r"/?\Z"))
        return fn
    return mark


class Dashboard:
    """The dashboard as a WSGI app::

        app = Dashboard(redis_url="redis://localhost:6379/0", namespace="myapp")

    Flask: ``DispatcherMiddleware(flask_app.wsgi_app, {"/jiggler": app})``. Django: route
    a prefix to it with a WSGI dispatcher, or serve it as its own WSGI app. It has no
    login of its own: put it behind the host app's auth (or :class:`BasicAuth`).
    """

    def __init__(self, redis_url: Optional[str] = None, namespace: str = "",
                 client: Optional[redis.Redis] = None, poll_interval: int = DEFAULT_POLL_S) -> None:
        if jinja2 is None:
            raise ImportError("the dashboard needs Jinja2: pip install 'jiggler-gevent[web]'")
        if client is None:
            client = make_client(redis_url or default_redis_url(), max_connections=20,
                                 pool_timeout=10)
        self.api = _api.Api(client, namespace)
        self.poll_interval = max(POLL_RANGE_S[0], min(POLL_RANGE_S[1], int(poll_interval)))
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("jiggler_gevent.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(when=_when, ago=_ago, short=_short, number=_number)
        self.routes = [getattr(self, name) for name in dir(self)
                       if hasattr(getattr(self, name, None), "route")]
        self._static: dict[str, bytes] = {}

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        return self.wsgi_app(environ, start_response)

    def wsgi_app(self, environ: dict, start_response: Callable) -> list[bytes]:
        request = Request(environ)
        try:
            if request.problem is not None:
                raise BadRequest(request.problem)
            response = self.dispatch(request)
        except BadRequest as exc:
            response = self.error(request, 400, str(exc))
        except _api.NotFound as exc:
            response = self.error(request, 404, str(exc))
        except _api.AdminError as exc:
            response = self.error(request, 409, str(exc))
        except (redis.RedisError, OSError) as exc:
            response = self.error(request, 503, f"Redis: {type(exc).__name__}: {exc}")
        return response.send(request, start_response, head=request.method == "HEAD")

    def dispatch(self, request: Request) -> Response:
        allowed = []
        for handler in self.routes:
            method, pattern = handler.route
            match = pattern.match(request.path)
            if not match:
                continue
            if request.method == method or (method == "GET" and request.method == "HEAD"):
                if method == "POST" and not request.csrf_ok():
                    return self.error(request, 403, "This action needs a form from this dashboard "
                                                    "(CSRF token missing or cross-site request).")
                return handler(request, **match.groupdict())
            allowed.append(method)
        if allowed:
            response = self.error(request, 405, "Method not allowed.")
            response.headers.append(("Allow", ", ".join(sorted(set(allowed)))))
            return response
        return self.error(request, 404, "Page not found.")

    # -- helpers -------------------------------------------------------------------------

    def render(self, request: Request, template: str, code: int = 200, **context: Any) -> Response:
        notice = NOTICES.get(request.arg("done"))
        html = self.templates.get_template(template).render(
            root=request.root, csrf_field=CSRF_FIELD, csrf=request.csrf_token, notice=notice,
            version=__version__, namespace=self.api.keys.namespace, now=time.time(), **context)
        return Response(html, code)

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "error.html", status, status=status, message=message,
                           page="error")

    def paging(self, request: Request) -> tuple[int, int]:
        return (request.number("page", 1, MAX_PAGE, 1),
                request.number("count", PAGE_SIZES[0], PAGE_SIZES[1], DEFAULT_PAGE_SIZE))

    @staticmethod
    def back(request: Request, path: str, done: str, queue: Optional[str] = None) -> Response:
        narrowed = f"&queue={queue}" if queue else ""  # a checked queue name: URL-safe
        return Response.redirect(f"{request.root}{path}?done={done}{narrowed}")

    @staticmethod
    def queue_filter(value: str) -> Optional[str]:
        """A set listing's ``queue`` filter (query or form): None for every queue."""
        if not value:
            return None
        if not valid_queue_name(value):
            raise _api.NotFound(f"no such queue {value[:130]!r}")
        return value

    # -- pages ---------------------------------------------------------------------------

    @_route("GET", r"/?")
    def overview(self, request: Request) -> Response:
        poll = request.number("poll", POLL_RANGE_S[0], POLL_RANGE_S[1], self.poll_interval)
        return self.render(request, "overview.html", page="overview", totals=self.api.totals(),
                           queues=self.api.queues(), info=self.api.redis_info(), poll_ms=poll * 1000,
                           history_days=HISTORY_DAYS)

    @_route("GET", r"/stats\.json")
    def stats_json(self, request: Request) -> Response:
        days = request.number("days", 1, _api.HISTORY_MAX_DAYS, HISTORY_DAYS)
        body = ujson.dumps({"time": time.time(), "totals": self.api.totals(),
                            "history": self.api.history(days)}, ensure_ascii=True)
        return Response(body, 200, "application/json")

    @_route("GET", r"/busy")
    def busy(self, request: Request) -> Response:
        return self.render(request, "busy.html", page="busy", processes=self.api.processes())

    @_route("POST", r"/busy/(?P<identity>[A-Za-z0-9_.\-]{1,128})/(?P<command>quiet|stop)")
    def signal(self, request: Request, identity: str, command: str) -> Response:
        self.api.signal_process(identity, command)
        return self.back(request, "/busy", command)

    @_route("GET", r"/queues")
    def queues(self, request: Request) -> Response:
        return self.render(request, "queues.html", page="queues", queues=self.api.queues())

    @_route("GET", r"/queues/" + QUEUE)
    def queue(self, request: Request, queue: str) -> Response:
        listing = self.api.queue_page(queue, *self.paging(request))
        return self.render(request, "queue.html", page="queues", queue=queue, listing=listing)

    @_route("POST", r"/queues/" + QUEUE + r"/clear")
    def clear_queue(self, request: Request, queue: str) -> Response:
        self.api.clear_queue(queue)
        return self.back(request, "/queues", "cleared")

    @_route("POST", r"/queues/" + QUEUE + r"/delete")
    def delete_queued(self, request: Request, queue: str) -> Response:
        self.api.delete_queued(queue, request.form.get("ref", ""))
        return self.back(request, f"/queues/{queue}", "deleted")

    @_route("GET", r"/periodic")
    def periodic(self, request: Request) -> Response:
        return self.render(request, "periodic.html", page="periodic", schedules=self.api.periodic())

    @_route("POST", r"/periodic/enqueue")
    def enqueue_periodic(self, request: Request) -> Response:
        name = request.form.get("name", "")
        if not name:
            raise _api.NotFound("no schedule named in the form")
        self.api.enqueue_periodic(name)
        return self.back(request, "/periodic", "enqueued")

    @_route("GET", r"/" + SET)
    def job_set(self, request: Request, set: str) -> Response:
        queue = self.queue_filter(request.arg("queue"))
        listing = self.api.set_page(set, *self.paging(request), queue=queue)
        return self.render(request, "set.html", page=set, set_name=set, title=SET_TITLES[set],
                           listing=listing)

    @_route("POST", r"/" + SET + r"/(?P<action>retry-all|delete-all)")
    def set_bulk(self, request: Request, set: str, action: str) -> Response:
        queue = self.queue_filter(request.form.get("queue", ""))
        if action == "retry-all":
            self.api.retry_all(set, queue=queue)
            return self.back(request, f"/{set}", "retried-all", queue)
        self.api.delete_all(set, queue=queue)
        return self.back(request, f"/{set}", "deleted-all", queue)

    @_route("GET", r"/" + SET + r"/" + REF)
    def entry(self, request: Request, set: str, ref: str) -> Response:
        entry = self.api.entry(set, ref)
        return self.render(request, "job.html", page=set, entry=entry, set_name=set)

    @_route("POST", r"/" + SET + r"/" + REF + r"/(?P<action>retry|delete|kill)")
    def entry_action(self, request: Request, set: str, ref: str, action: str) -> Response:
        queue = self.queue_filter(request.form.get("queue", ""))  # the listing's filter
        if action == "retry":
            self.api.retry_now(set, ref)
            return self.back(request, f"/{set}", "retried", queue)
        if action == "kill":
            self.api.kill(set, ref)
            return self.back(request, f"/{set}", "killed", queue)
        self.api.delete(set, ref)
        return self.back(request, f"/{set}", "deleted", queue)

    @_route("GET", r"/search")
    def search(self, request: Request) -> Response:
        """The header's search box: a jid (pasted from a log line, say) opens its job."""
        jid = request.arg("jid").strip()
        if not jid:
            return Response.redirect(f"{request.root}/")
        if not JID_PATTERN.fullmatch(jid):
            raise _api.NotFound(f"{jid[:70]!r} is not a job id (letters, digits, '_', '.', "
                                "'-'; at most 64)")
        return Response.redirect(f"{request.root}/jobs/{jid}")

    @_route("GET", r"/jobs/(?P<jid>" + JID_PATTERN.pattern + ")")
    def job(self, request: Request, jid: str) -> Response:
        entry = self.api.find_job(jid)
        if entry is None:
            raise _api.NotFound(f"no job {jid!r} in the sets or queues (it may have run)")
        return self.render(request, "job.html", page=entry.where, entry=entry,
                           set_name=entry.where if entry.where in _api.SET_NAMES else None)

    @_route("GET", r"/static/(?P<name>dashboard\.js|dashboard\.css)")
    def static(self, request: Request, name: str) -> Response:
        if name not in self._static:
            path = resources.files("jiggler_gevent.web").joinpath("static", name)
            self._static[name] = path.read_bytes()
        return Response(self._static[name], 200, STATIC_FILES[name],
                        [("Cache-Control", "public, max-age=300")])


class BasicAuth:
    """WSGI middleware asking for HTTP basic auth (for the standalone server; use TLS
    in front of it when it is reachable from other machines)."""

    def __init__(self, app: Callable, username: str, password: str,
                 realm: str = "jiggler-gevent") -> None:
        self.app = app
        self.expected = f"{username}:{password}".encode()
        self.realm = realm

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        try:
            given = base64.b64decode(value.strip(), validate=True) if scheme.lower() == "basic" else b""
        except (binascii.Error, ValueError):
            given = b""
        if given and hmac.compare_digest(given, self.expected):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'),
            ("Content-Length", "22")])
        return [b"authentication needed\n"]


def make_app(redis_url: Optional[str] = None, namespace: str = "", **options: Any) -> Dashboard:
    """A :class:`Dashboard` (a WSGI callable)."""
    return Dashboard(redis_url=redis_url, namespace=namespace, **options)


# -- template filters --------------------------------------------------------------------


def _when(epoch: Any) -> str:
    number = _api._number(epoch)
    if number is None:
        return ""
    try:
        moment = _dt.datetime.fromtimestamp(number, _dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(epoch: Any, now: Optional[float] = None) -> str:
    return _api.relative_time(epoch, now)


def _short(text: Any, limit: int = ARGS_SHOWN_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def _number(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)

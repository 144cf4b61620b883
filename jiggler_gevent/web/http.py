"""Per-request objects of the dashboard: the request, the response, and CSRF checks.

Owns reading a WSGI environ (path under ``SCRIPT_NAME``, clamped query numbers, a
size-limited urlencoded form, cookies) and writing a response with the security
headers every page carries. One :class:`Request` per request; nothing is kept on the
app between requests.
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import CookieError, SimpleCookie
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from ..api import clamp

CSRF_COOKIE = "jiggler_csrf"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 50  # query parameters or form fields; more is a 400
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)
STATUS_TEXT = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
               403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
               409: "Conflict", 413: "Payload Too Large", 503: "Service Unavailable"}


class BadRequest(Exception):
    """A request that cannot be read (too many fields): answered with a 400."""


class Request:
    """One request, read from its WSGI environ."""

    def __init__(self, environ: dict) -> None:
        self.environ = environ
        self.method = environ.get("REQUEST_METHOD", "GET").upper()
        self.root = environ.get("SCRIPT_NAME", "").rstrip("/")  # where we are mounted
        self.path = environ.get("PATH_INFO", "") or "/"
        self.problem: Optional[str] = None  # set when the request cannot be read: a 400
        try:
            self.query = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=MAX_FIELDS)
        except ValueError:
            self.query = {}
            self.problem = f"more than {MAX_FIELDS} query parameters"
        self._form: Optional[dict] = None
        self.cookies = _parse_cookies(environ.get("HTTP_COOKIE", ""))
        self.new_csrf_token: Optional[str] = None

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def number(self, name: str, low: int, high: int, default: int) -> int:
        """A query parameter as an int clamped to [low, high]."""
        return clamp(self.arg(name, ""), low, high, default)

    @property
    def form(self) -> dict:
        """The urlencoded body (at most :data:`MAX_FORM_BYTES`), first value per field."""
        if self._form is None:
            self._form = {}
            length = clamp(self.environ.get("CONTENT_LENGTH") or "0", 0, MAX_FORM_BYTES + 1, 0)
            ctype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
            if 0 < length <= MAX_FORM_BYTES and ctype == "application/x-www-form-urlencoded":
                body = self.environ["wsgi.input"].read(length)
                try:
                    parsed = parse_qs(body.decode("latin-1"), max_num_fields=MAX_FIELDS)
                except ValueError:
                    raise BadRequest(f"more than {MAX_FIELDS} form fields") from None
                self._form = {k: v[0] for k, v in parsed.items()}
        return self._form

    @property
    def csrf_token(self) -> str:
        """This browser's CSRF token (a new one is set as a cookie when it has none)."""
        token = self.cookies.get(CSRF_COOKIE, "")
        if len(token) == 64 and all(c in "0123456789abcdef" for c in token):
            return token
        if self.new_csrf_token is None:
            self.new_csrf_token = secrets.token_hex(32)
        return self.new_csrf_token

    def same_origin(self) -> bool:
        """False when the browser tells us the request comes from another site."""
        site = self.environ.get("HTTP_SEC_FETCH_SITE")
        if site is not None and site != "same-origin":
            return False
        origin = self.environ.get("HTTP_ORIGIN")
        if origin is None:
            return True  # old browsers and non-browser clients: the token decides
        host = self.environ.get("HTTP_HOST") or self.environ.get("SERVER_NAME", "")
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        # the scheme is not compared: a TLS-terminating proxy may talk plain HTTP to us
        return bool(netloc) and _strip_default_port(netloc) == _strip_default_port(host)

    def csrf_ok(self) -> bool:
        """The double-submit check: the form's token equals the cookie's, and the
        request is not cross-site."""
        cookie = self.cookies.get(CSRF_COOKIE, "")
        sent = self.form.get(CSRF_FIELD, "")
        return (len(cookie) == 64 and hmac.compare_digest(cookie.encode("latin-1", "replace"),
                                                          sent.encode("latin-1", "replace"))
                and self.same_origin())

    @property
    def secure(self) -> bool:
        return self.environ.get("wsgi.url_scheme") == "https"


class Response:
    """Status, headers and body; :meth:`send` adds the security headers."""

    def __init__(self, body: bytes | str = b"", status: int = 200,
                 content_type: str = "text/html; charset=utf-8",
                 headers: Optional[list[tuple[str, str]]] = None) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.status = status
        self.headers = [("Content-Type", content_type)] + list(headers or [])

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(b"", 303, "text/plain; charset=utf-8", [("Location", location)])

    def send(self, request: Request, start_response, *, head: bool = False) -> list[bytes]:
        headers = list(self.headers) + list(SECURITY_HEADERS)
        if not any(name == "Cache-Control" for name, _ in headers):
            headers.append(("Cache-Control", "no-store"))
        if request.new_csrf_token:
            attributes = f"Path={request.root or '/'}; HttpOnly; SameSite=Strict"
            if request.secure:
                attributes += "; Secure"
            headers.append(("Set-Cookie", f"{CSRF_COOKIE}={request.new_csrf_token}; {attributes}"))
        headers.append(("Content-Length", str(len(self.body))))
        start_response(f"{self.status} {STATUS_TEXT.get(self.status, 'OK')}", headers)
        return [] if head else [self.body]


def _parse_cookies(header: str) -> dict:
    cookies: dict = {}
    for part in header.split(";"):  # one bad cookie must not hide the others
        try:
            jar = SimpleCookie()
            jar.load(part.strip())
        except CookieError:
            continue
        cookies.update({name: morsel.value for name, morsel in jar.items()})
    return cookies


def _strip_default_port(host: str) -> str:
    host = host.lower()
    for suffix in (":80", ":443"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host

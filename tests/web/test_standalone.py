"""``jiggler-gevent web``: the standalone pywsgi server, with and without basic auth."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request

import pytest

pytest.importorskip("jinja2")

from jiggler_gevent.keys import Keys  # noqa: E402


def fetch(url: str, auth: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serves_the_dashboard(web_server, redis_client):
    redis_client.set(Keys().processed, 77)
    server = web_server()
    status, headers, body = fetch(server.url + "/")
    assert status == 200 and b"77" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = fetch(server.url + "/static/dashboard.js")
    assert status == 200 and b"data-counter" in body
    assert fetch(server.url + "/queues/a:b")[0] == 404


def test_basic_auth_from_the_environment(web_server, redis_client):
    server = web_server(env={"JIGGLER_WEB_BASIC_AUTH": "admin:pw"})
    status, headers, _ = fetch(server.url + "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert fetch(server.url + "/", "admin:wrong")[0] == 401
    assert fetch(server.url + "/stats.json", "admin:pw")[0] == 200


def test_bad_options_are_one_line(redis_url, capsys):
    from jiggler_gevent import admin

    assert admin.main(["web", "--redis-url", redis_url, "--port", "0"]) == 1
    assert admin.main(["web", "--redis-url", redis_url, "--basic-auth", "nocolon"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["jiggler-gevent web: --port 0: use 1 to 65535",
                   "jiggler-gevent web: --basic-auth must be USER:PASSWORD"]


def test_unreachable_redis_fails_at_start(web_server):
    with pytest.raises(RuntimeError, match="cannot connect to Redis"):
        web_server("--redis-url", "redis://127.0.0.1:1/0")

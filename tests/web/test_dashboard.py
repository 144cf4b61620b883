"""The dashboard at the WSGI level: every page and action, escaping, CSRF, clamping, 404s,
mounting under a prefix (werkzeug's test client; a real server, hostile data)."""

from __future__ import annotations

import base64
import importlib.util
import re
import time
from html.parser import HTMLParser

import pytest
import redis
import ujson

pytest.importorskip("jinja2")
werkzeug_test = pytest.importorskip("werkzeug.test")
from werkzeug.middleware.dispatcher import DispatcherMiddleware  # noqa: E402

from jiggler_gevent.api import Api, signals_key  # noqa: E402
from jiggler_gevent.connection import make_client  # noqa: E402
from jiggler_gevent.keys import Keys  # noqa: E402
from jiggler_gevent.web import BasicAuth, Dashboard  # noqa: E402
from jiggler_gevent.web.app import _when  # noqa: E402

from .conftest import HOUR_AGO_S, XSS, WebReport, failed_entry, publish_schedules, seed  # noqa: E402

HAVE_CRON = importlib.util.find_spec("croniter") is not None
needs_cron = pytest.mark.skipif(not HAVE_CRON, reason="croniter (the cron extra) not installed")

KEYS = Keys()
PAGES = ["/", "/busy", "/queues", "/queues/mail", "/retries", "/scheduled", "/dead",
         "/jobs/dead1", "/jobs/retry1", "/jobs/sched1", "/jobs/queued1", "/dead?queue=mail",
         "/retries?queue=nothing-here", "/periodic"]
SAME_ORIGIN = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
ALLOWED_TAGS = {"html", "head", "meta", "title", "link", "script", "body", "header", "a", "nav",
                "span", "code", "main", "p", "h1", "h2", "small", "section", "div", "canvas",
                "table", "thead", "tbody", "tr", "th", "td", "form", "input", "button", "pre",
                "strong", "br"}


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def check_safe_html(body: str) -> list[tuple[str, dict]]:
    """No element or attribute that data could have injected; the only script is ours."""
    assert XSS not in body and "<script>alert" not in body and "<img" not in body
    parser = TagCollector()
    parser.feed(body)
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").endswith("/static/dashboard.js") and "defer" in attrs
    return parser.tags


@pytest.fixture
def client(redis_client):
    seed(redis_client)
    return werkzeug_test.Client(Dashboard(client=redis_client))


def csrf(client, path: str = "/") -> str:
    client.get(path)
    return client.get_cookie("jiggler_csrf").value


def post(client, path: str, token: str, headers=SAME_ORIGIN, **data):
    return client.post(path, data={"csrf_token": token, **data}, headers=headers)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_escaped(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    check_safe_html(response.text)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_hostile_values_are_shown_escaped(client):
    dead = client.get("/dead").text
    assert "&lt;script&gt;alert(&#34;x&#39;ss&#34;)&lt;/script&gt;" in dead  # args
    assert "&lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34; &#39;single&#39; &amp;" in dead
    assert "Err&lt;script&gt;" in dead
    assert "\\xff\\xfe&lt;script&gt;not utf-8" in dead  # non-UTF-8 member shown safely
    assert "not UTF-8" in dead
    busy = client.get("/busy").text
    assert "host&lt;script&gt;" in busy and "mail,&lt;b&gt;" in busy
    detail = client.get("/jobs/dead1").text
    assert "raise &lt;script&gt;" in detail  # backtrace
    assert "&#34;kw&#34;" in detail  # kwargs


def test_overview_counters_chart_and_info(client):
    body = client.get("/?poll=0").text
    tags = check_safe_html(body)
    counters = {a["data-counter"] for t, a in tags if "data-counter" in a}
    assert counters == {"processed", "failed", "busy", "enqueued", "retries", "scheduled", "dead"}
    assert re.search(r'data-counter="processed">1,234<', body)
    canvas = next(a for t, a in tags if a.get("id") == "live-chart")
    assert canvas["data-poll-ms"] == "2000"  # clamped up from 0
    assert canvas["data-url"] == "/stats.json?days=30"
    assert any(a.get("id") == "history-chart" for t, a in tags)
    assert "redis_version" in body or "valkey_version" in body
    assert 'data-poll-ms="60000"' in client.get("/?poll=99999999999999999999999").text


def test_stats_json(client):
    response = client.get("/stats.json?days=2")
    assert response.content_type == "application/json"
    data = ujson.loads(response.data)
    assert data["totals"]["processed"] == 1234 and data["totals"]["busy"] == 1
    assert [d["processed"] for d in data["history"]] == [534, 700]
    assert len(ujson.loads(client.get("/stats.json?days=100000").data)["history"]) == 400
    assert len(ujson.loads(client.get("/stats.json?days=abc").data)["history"]) == 30


def test_static_files(client):
    js = client.get("/static/dashboard.js")
    assert js.status_code == 200 and js.content_type.startswith("text/javascript")
    assert "innerHTML" not in js.text
    assert client.get("/static/dashboard.css").content_type.startswith("text/css")


@pytest.mark.parametrize("path", [
    "/nope", "/queues/a:b", "/queues/%3Cscript%3E", "/queues/" + "a" * 129, "/static/../app.py",
    "/static/app.py", "/dead/notaref", "/dead/mail:1.5:" + "0" * 40, "/dead/mail:1.5:" + "0" * 39 + "z",
    "/dead/1.5_" + "0" * 40, "/dead/mail:1.5_" + "0" * 40, "/dead/a%3Ab:1.5:" + "0" * 40,
    "/dead/%3Cb%3E:1.5:" + "0" * 40, "/dead/" + "q" * 129 + ":1:" + "0" * 40,
    "/jobs/nope", "/jobs/%3Cscript%3E", "/jobs/" + "a" * 65, "/busy/x", "/processes",
    "/dead/mail:1e999999:" + "0" * 40, "/%00", "/queues/mail/../../etc/passwd",
    "/dead?queue=%3Cscript%3E", "/dead?queue=a:b", "/search?jid=%3Cscript%3E",
    "/search?jid=" + "a" * 65, "/search?jid=a%2Fb",
])
def test_hostile_paths_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    check_safe_html(response.text)


def test_search_box_opens_the_job_of_a_jid(client, redis_client):
    seed(redis_client)
    body = client.get("/").text
    assert '<form class="search" action="/search" method="get" role="search">' in body
    found = client.get("/search?jid=%20dead1%20")  # pasted with spaces around it
    assert found.status_code == 303 and found.headers["Location"] == "/jobs/dead1"
    assert "dead1" in client.get(found.headers["Location"]).text
    missing = client.get("/search?jid=gone123", follow_redirects=True)
    assert missing.status_code == 404 and "no job &#39;gone123&#39;" in missing.text
    empty = client.get("/search?jid=")
    assert empty.status_code == 303 and empty.headers["Location"] == "/"
    bad = client.get("/search?jid=%3Cscript%3E")
    assert bad.status_code == 404 and "is not a job id" in bad.text and "<script>" not in bad.text


def test_periodic_page_without_schedules_says_how_to_declare_them(client):
    body = client.get("/periodic").text
    check_safe_html(body)
    assert '<a href="/periodic" class="active" aria-current="page">Periodic</a>' in body
    assert "0 schedule(s)" in body and "No periodic schedule is published" in body
    assert "@periodic(every=60)" in body and "load_config" in body and "<table" not in body
    assert 'href="/periodic"' in client.get("/").text  # in every page's nav


def row_of(body: str, text: str) -> str:
    [row] = [row for row in body.split("<tr>")[1:] if text in row]
    return row


@needs_cron
def test_periodic_page_lists_the_published_schedules(client, redis_client):
    now = time.time()
    cron, interval = publish_schedules(redis_client, now=now)
    body = client.get("/periodic").text
    after = time.time()  # the page's "now" is between the two

    def next_run_shown(schedule, row: str) -> bool:
        return _when(schedule.next_after(now)) in row or _when(schedule.next_after(after)) in row

    check_safe_html(body)
    assert "2 schedule(s)" in body
    escaped = "&lt;script&gt;alert(&#34;x&#39;ss&#34;)&lt;/script&gt;"
    hostile = row_of(body, f"<code>{escaped}</code>")  # the name, escaped
    assert "cron */10 * * * *" in hostile and WebReport.name in hostile
    assert "[&#34;weekly&#34;]" in hostile and "{&#34;to&#34;:&#34;&lt;script&gt;alert(" in hostile
    assert '<a href="/queues/low">low</a>' in hostile
    assert next_run_shown(cron, hostile) and re.search(r"<small>in \d+[sm]</small>", hostile)
    last_tick = cron.latest(now - HOUR_AGO_S)
    assert f"{_when(last_tick)}<br><small>1h ago</small>" in hostile
    assert 'action="/periodic/enqueue"' in hostile and f'name="name" value="{escaped}"' in hostile
    unknown = row_of(body, "web.periodic.nobody")
    assert "every 1 h (Europe/Paris)" in unknown and "the job's own" in unknown
    assert "none yet" in unknown and next_run_shown(interval, unknown)
    assert "job not loaded here" in unknown and "<form" not in unknown
    assert body.index(escaped) < body.index("web.periodic.nobody")  # next to run first


def test_periodic_page_with_odd_descriptions(client, redis_client):
    redis_client.hset(KEYS.periodic_schedules, mapping={
        "far": ujson.dumps({"job": "x", "every": 1e300}), "tiny": ujson.dumps({"job": "x", "every": 1e-300}),
        XSS: ujson.dumps({"job": XSS, "every": XSS, "tz": XSS, "queue": XSS, "args": XSS}),
        "junk": b"\xff{"})
    response = client.get("/periodic")
    assert response.status_code == 200 and "3 schedule(s)" in response.text
    check_safe_html(response.text)
    assert "unknown here" in response.text  # no next run computed for the odd ones
    assert response.text.count("/queues/") == 0  # no link to an invalid queue name


@needs_cron
def test_enqueue_now_button(client, redis_client):
    publish_schedules(redis_client)
    ticks = redis_client.hgetall(KEYS.queue_keys("low").periodic_last)
    token = csrf(client, "/periodic")
    assert client.post("/periodic/enqueue", data={"name": XSS}, headers=SAME_ORIGIN).status_code == 403
    assert post(client, "/periodic/enqueue", token, name=XSS,
                headers={"Origin": "http://evil.example"}).status_code == 403
    assert not redis_client.exists(KEYS.queue("low"))
    response = post(client, "/periodic/enqueue", token, name=XSS)
    assert response.status_code == 303 and response.headers["Location"] == "/periodic?done=enqueued"
    [raw] = redis_client.lrange(KEYS.queue("low"), 0, -1)
    job = ujson.loads(raw)
    assert (job["name"], job["args"], job["kwargs"], job["periodic"]) == (
        WebReport.name, ["weekly"], {"to": XSS}, XSS)
    assert redis_client.hgetall(KEYS.queue_keys("low").periodic_last) == ticks
    assert "Job enqueued" in client.get("/periodic?done=enqueued").text
    refused = post(client, "/periodic/enqueue", token, name="web.periodic.nobody")
    assert refused.status_code == 409 and "import the jobs" in refused.text
    check_safe_html(refused.text)
    for name in ("nope", ""):
        assert post(client, "/periodic/enqueue", token, name=name).status_code == 404
    assert client.get("/periodic/enqueue").status_code == 405
    assert redis_client.llen(KEYS.queue("low")) == 1


def test_post_routes_refuse_get(client):
    response = client.get("/dead/retry-all")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert client.post("/dead").status_code == 405


def test_pagination_is_clamped(client, redis_client):
    for page in ("-5", "0", "abc", "99999999999999999999999", "1e9"):
        response = client.get(f"/dead?page={page}&count=-1")
        assert response.status_code == 200
    body = client.get("/dead?count=1").text
    assert "page 1 of 3" in body and "?page=2&amp;count=1" in body
    assert "page 3 of 3" in client.get("/dead?count=1&page=50").text
    assert "page 1 of 1" not in client.get("/dead?count=100000").text


def test_retry_now_through_the_form(client, redis_client):
    token = csrf(client, "/dead")
    ref = Api(redis_client).find_job("dead1").ref
    response = post(client, f"/dead/{ref}/retry", token)
    assert response.status_code == 303 and response.headers["Location"] == "/dead?done=retried"
    assert redis_client.llen(KEYS.queue("mail")) == 3
    assert "Job moved to its queue." in client.get("/dead?done=retried").text
    assert "<b>" not in client.get("/dead?done=%3Cb%3E").text  # notices are fixed texts only
    gone = post(client, f"/dead/{ref}/retry", token)
    assert gone.status_code == 404
    check_safe_html(gone.text)


def test_retry_of_odd_entry_is_refused_clearly(client, redis_client):
    token = csrf(client)
    odd = next(e for e in Api(redis_client).set_page("dead").entries if e.problem)
    response = post(client, f"/dead/{odd.ref}/retry", token)
    assert response.status_code == 409 and "not a runnable job" in response.text
    assert redis_client.zcard(KEYS.dead("mail")) == 3


def test_kill_delete_and_bulk_actions(client, redis_client):
    token = csrf(client)
    api = Api(redis_client)
    assert post(client, f"/retries/{api.find_job('retry1').ref}/kill", token).status_code == 303
    assert redis_client.zcard(KEYS.retries("mail")) == 0 and redis_client.zcard(KEYS.dead("mail")) == 4
    assert post(client, f"/scheduled/{api.find_job('sched1').ref}/delete", token).status_code == 303
    assert redis_client.zcard(KEYS.scheduled("mail")) == 0
    response = post(client, "/dead/retry-all", token)
    assert response.headers["Location"] == "/dead?done=retried-all"
    assert redis_client.zcard(KEYS.dead("mail")) == 1  # the non-UTF-8 entry stays
    assert redis_client.llen(KEYS.queue("mail")) == 2 + 3  # a name and no queue: the set's queue
    assert post(client, "/dead/delete-all", token).status_code == 303
    assert redis_client.zcard(KEYS.dead("mail")) == 0


def test_set_listing_shows_each_entrys_queue_and_filters_by_queue(client, redis_client):
    redis_client.zadd(KEYS.dead("low"), {failed_entry("low1", queue="mail"): 1.0})
    redis_client.sadd(KEYS.queues, "low")
    body = client.get("/dead").text
    check_safe_html(body)
    assert "4 job(s)" in body
    assert 'href="/dead?queue=low">low (1)</a>' in body and 'href="/dead?queue=mail">mail (3)</a>' in body
    low_row = next(row for row in body.split("<tr>") if "low1" in row)
    assert 'href="/dead?queue=low">low</a>' in low_row and "retry goes to mail" in low_row
    narrowed = client.get("/dead?queue=low&count=1").text
    assert "low1" in narrowed and "dead1" not in narrowed and "1 job(s)" in narrowed
    assert "<strong>low (1)</strong>" in narrowed and 'href="/dead">all</a>' in narrowed
    token = csrf(client)
    ref = Api(redis_client).find_job("low1").ref
    assert ref.startswith("low:")
    detail = client.get(f"/dead/{ref}").text
    assert "Retry now (to mail)" in detail and 'href="/dead?queue=low">low</a>' in detail
    response = post(client, f"/dead/{ref}/retry", token, queue="low")
    assert response.headers["Location"] == "/dead?done=retried&queue=low"
    assert redis_client.zcard(KEYS.dead("low")) == 0
    assert redis_client.llen(KEYS.queue("mail")) == 3  # a dead entry of low, back to its queue
    response = post(client, "/dead/delete-all", token, queue="mail")
    assert response.headers["Location"] == "/dead?done=deleted-all&queue=mail"
    assert redis_client.zcard(KEYS.dead("mail")) == 0
    assert post(client, "/dead/delete-all", token, queue="a:b").status_code == 404


def test_pager_keeps_the_queue_filter(client, redis_client):
    for i in range(3):
        redis_client.zadd(KEYS.dead("low"), {failed_entry(f"low{i}", queue="low"): float(i)})
    redis_client.sadd(KEYS.queues, "low")
    body = client.get("/dead?queue=low&count=1&page=2").text
    assert "page 2 of 3" in body
    assert "?page=1&amp;count=1&amp;queue=low" in body and "?page=3&amp;count=1&amp;queue=low" in body
    forms = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"[^>]*>(.*?)</form>', body,
                       re.S)  # the actions (not the header's search box)
    assert forms and all('name="queue" value="low"' in inner for _, inner in forms)


def test_queue_actions(client, redis_client):
    token = csrf(client)
    ref = next(e for e in Api(redis_client).queue_page("mail").entries if e.problem).ref
    response = post(client, "/queues/mail/delete", token, ref=ref)
    assert response.headers["Location"] == "/queues/mail?done=deleted"
    assert redis_client.llen(KEYS.queue("mail")) == 1
    assert post(client, "/queues/mail/delete", token, ref="x").status_code == 404
    assert post(client, "/queues/mail/clear", token).status_code == 303
    assert not redis_client.exists(KEYS.queue("mail"))


def test_quiet_and_stop_buttons(client, redis_client):
    token = csrf(client, "/busy")
    assert 'action="/busy/proc1/quiet"' in client.get("/busy").text
    assert post(client, "/busy/proc1/quiet", token).headers["Location"] == "/busy?done=quiet"
    assert post(client, "/busy/proc1/stop", token).status_code == 303
    assert redis_client.lrange(KEYS.signals("proc1"), 0, -1) == [b"stop", b"quiet"]
    assert post(client, "/busy/nobody/stop", token).status_code == 404


def test_too_many_fields_is_a_400_that_changes_nothing(client, redis_client):
    seed(redis_client)
    many = "&".join(f"f{i}=1" for i in range(60))
    response = client.get(f"/dead?{many}")
    assert response.status_code == 400 and "more than 50 query parameters" in response.text
    check_safe_html(response.text)
    token = csrf(client)
    ref = Api(redis_client).find_job("dead1").ref
    extra = {f"f{i}": "1" for i in range(60)}
    response = post(client, f"/dead/{ref}/delete", token, **extra)
    assert response.status_code == 400 and "more than 50 form fields" in response.text
    assert Api(redis_client).find_job("dead1") is not None


def test_csrf_refusals_change_nothing(client, redis_client):
    token = csrf(client)
    ref = Api(redis_client).find_job("dead1").ref
    path = f"/dead/{ref}/delete"
    refusals = [
        client.post(path, headers=SAME_ORIGIN),  # no token
        post(client, path, "0" * 64),  # wrong token
        post(client, path, token, headers={"Origin": "http://evil.example"}),
        post(client, path, token, headers={"Origin": "null"}),
        post(client, path, token, headers={"Sec-Fetch-Site": "cross-site"}),
        post(client, path, token, headers={"Sec-Fetch-Site": "same-site"}),
        client.post(path, data=ujson.dumps({"csrf_token": token}), headers=SAME_ORIGIN,
                    content_type="application/json"),
    ]
    for response in refusals:
        assert response.status_code == 403
    client.delete_cookie("jiggler_csrf")
    assert post(client, path, token).status_code == 403  # the cookie half is missing
    assert redis_client.zcard(KEYS.dead("mail")) == 3
    client.set_cookie("jiggler_csrf", token)
    assert post(client, path, token, headers={}).status_code == 303  # no Origin: token decides


def test_csrf_cookie_attributes(redis_client):
    client = werkzeug_test.Client(Dashboard(client=redis_client))
    cookie = client.get("/").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    secure = werkzeug_test.Client(Dashboard(client=redis_client)).get(
        "/", base_url="https://localhost/").headers["Set-Cookie"]
    assert "Secure" in secure


def test_mounted_under_a_prefix(redis_client):
    seed(redis_client)

    def host(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"host app"]

    app = DispatcherMiddleware(host, {"/admin/jobs": Dashboard(client=redis_client)})
    client = werkzeug_test.Client(app)
    assert client.get("/").text == "host app"
    response = client.get("/admin/jobs/dead")
    assert response.status_code == 200
    links = [link for link in re.findall(r'(?:href|action|src)="([^"]+)"', response.text)
             if link != "data:,"]  # the empty favicon
    assert links and all(link.startswith("/admin/jobs/") for link in links), links
    assert "Path=/admin/jobs" in response.headers["Set-Cookie"]
    token = client.get_cookie("jiggler_csrf", path="/admin/jobs").value
    ref = Api(redis_client).find_job("dead1").ref
    done = client.post(f"/admin/jobs/dead/{ref}/retry", data={"csrf_token": token},
                       headers={"Origin": "http://localhost"})
    assert done.headers["Location"] == "/admin/jobs/dead?done=retried"
    overview = client.get("/admin/jobs/").text
    assert 'data-url="/admin/jobs/stats.json?days=30"' in overview
    if HAVE_CRON:
        publish_schedules(redis_client)
        page = client.get("/admin/jobs/periodic").text
        links = [link for link in re.findall(r'(?:href|action|src)="([^"]+)"', page)
                 if link != "data:,"]
        assert all(link.startswith("/admin/jobs/") for link in links), links
        assert '<a href="/admin/jobs/queues/low">low</a>' in page
        assert 'action="/admin/jobs/periodic/enqueue"' in page
        done = client.post("/admin/jobs/periodic/enqueue", data={"csrf_token": token, "name": XSS},
                           headers={"Origin": "http://localhost"})
        assert done.headers["Location"] == "/admin/jobs/periodic?done=enqueued"


def test_namespace(redis_client):
    seed(redis_client, "app9")
    client = werkzeug_test.Client(Dashboard(client=redis_client, namespace="app9"))
    assert "1,234" in client.get("/").text and "app9" in client.get("/").text
    assert "dead1" in client.get("/dead").text
    empty = werkzeug_test.Client(Dashboard(client=redis_client))
    assert "dead1" not in empty.get("/dead").text


def test_head_request(client):
    response = client.head("/")
    assert response.status_code == 200 and response.data == b""


def test_redis_down_is_a_503_page():
    down = make_client("redis://127.0.0.1:1/0", socket_timeout=1)
    response = werkzeug_test.Client(Dashboard(client=down)).get("/")
    assert response.status_code == 503 and "Redis" in response.text
    check_safe_html(response.text)


def test_basic_auth(redis_client):
    client = werkzeug_test.Client(BasicAuth(Dashboard(client=redis_client), "admin", "s3cr:et"))
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
    wrong = base64.b64encode(b"admin:nope").decode()
    assert client.get("/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    good = base64.b64encode(b"admin:s3cr:et").decode()
    assert client.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_signals_key_is_the_documented_one(redis_client):
    api = Api(redis_client, "ns")
    assert signals_key(api.keys, "abc") == "{ns:jiggler}:process:abc:signals"


def test_app_is_per_request_state_free(redis_client):
    """Two clients (two browsers) get their own CSRF tokens; the app keeps none."""
    app = Dashboard(client=redis_client)
    first, second = werkzeug_test.Client(app), werkzeug_test.Client(app)
    assert csrf(first) != csrf(second)
    assert not [k for k in vars(app) if "csrf" in k or "request" in k]
    assert isinstance(app.api.client, redis.Redis)

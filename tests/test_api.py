"""The read/admin API against a real server: totals, listings, actions, the Cleaner."""

from __future__ import annotations

import time

import pytest
import ujson

from jiggler_gevent import payload
from jiggler_gevent.api import (
    SCAN_COUNT,
    AdminError,
    Api,
    Cleaner,
    Entry,
    NotFound,
    clamp,
    parse_ref,
    signals_key,
)
from jiggler_gevent.config import Config
from jiggler_gevent.keys import Keys
from jiggler_gevent.scripts import Scripts

ODD_MEMBERS = (b"\xff\xfe\x00 not utf-8", b"{not json", b"[1, 2]", b'{"name": 5}', b'"str"')


def job(name="Mail", args=("a",), queue="mail", jid=None, **extra) -> dict:
    built = payload.build(name, list(args), {}, queue=queue, retries=3, jid=jid)
    built.update(extra)
    return built


def failed(entry: dict, message="boom", *, retry_at=None) -> bytes:
    out = payload.failed(entry, ValueError(message), now=time.time(), retry_at=retry_at)
    out["error_backtrace"] = ["Traceback (most recent call last):", "ValueError: " + message]
    return payload.dumps(out, check_size=False)


@pytest.fixture(params=["", "ns1"], ids=["no-namespace", "namespace"])
def api(request, redis_client) -> Api:
    return Api(redis_client, request.param)


def test_totals_queues_and_latency(api, redis_client):
    keys = api.keys
    now = time.time()
    redis_client.lpush(keys.queue("mail"), payload.dumps(job(enqueued_at=now - 30)),
                       payload.dumps(job(enqueued_at=now - 5)))
    redis_client.lpush(keys.queue("default"), payload.dumps(job(queue="default", enqueued_at=now)))
    redis_client.lpush(keys.in_progress("mail", "abc"), b"x")  # a reservation is not a queue
    redis_client.lpush(Keys("other").queue("elsewhere"), b"x")  # another namespace
    redis_client.set(keys.processed, 12)
    redis_client.set(keys.failures, 3)
    redis_client.zadd(keys.retries, {failed(job()): now + 60})
    redis_client.zadd(keys.dead, {failed(job()): now, b"\xff": now})
    totals = api.totals()
    assert totals == {"processed": 12, "failed": 3, "enqueued": 3, "retries": 1, "scheduled": 0,
                      "dead": 2, "busy": 0, "processes": 0}
    queues = {q.name: q for q in api.queues(now=now)}
    assert sorted(queues) == ["default", "mail"]
    assert queues["mail"].size == 2
    assert queues["mail"].latency == pytest.approx(30, abs=0.01)  # the oldest (right end)
    assert queues["default"].latency == pytest.approx(0, abs=0.01)


def test_latency_of_odd_oldest_job_is_zero(api, redis_client):
    redis_client.rpush(api.keys.queue("q"), b"\xff\xfe")
    assert api.queues()[0].latency == 0.0


def test_queue_discovery_scans_to_cursor_zero(api, redis_client):
    """The seed stopped at the first empty SCAN page; ours must find every queue."""
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(SCAN_COUNT * 6):
            pipe.set(f"unrelated:{i}", 1)
        pipe.execute()
    for i in range(5):
        redis_client.lpush(api.keys.queue(f"q{i}"), payload.dumps(job(queue=f"q{i}")))
    assert api.queue_names() == [f"q{i}" for i in range(5)]


def test_processes_from_a_real_heartbeat(api, redis_client):
    from jiggler_gevent.server.monitor import Monitor
    from jiggler_gevent.server.stats import Stats

    stats = Stats()
    stats.processed, stats.failed = 7, 2
    busy = [{"worker": "jiggler.worker-1", "jid": "j1", "name": "<b>Mail</b>", "queue": "mail",
             "started_at": time.time()}]
    monitor = Monitor(Config(namespace=api.keys.namespace), redis_client, Scripts(redis_client),
                      api.keys, "proc1", stats, busy_jobs=lambda: busy)
    monitor.beat_once()
    redis_client.zadd(api.keys.processes, {"gone": time.time()})  # registered, heartbeat expired
    redis_client.zadd(api.keys.processes, {"odd": time.time() - 1})
    redis_client.hset(api.keys.process("odd"), mapping={"busy_jobs": "{not json", "busy": "x",
                                                        "hostname": b"\xff host"})
    processes = {p.identity: p for p in api.processes()}
    assert sorted(processes) == ["odd", "proc1"]
    proc = processes["proc1"]
    assert proc.busy == 1 and not proc.quiet
    assert proc.busy_jobs[0]["name"] == "<b>Mail</b>"
    assert proc.get("concurrency") == "10"
    assert processes["odd"].busy_jobs == [] and processes["odd"].busy == 0
    assert processes["odd"].get("hostname") == "\\xff host"
    assert api.totals()["busy"] == 1
    today = api.history(3)[-1]
    assert today["processed"] == 7 and today["failed"] == 2
    assert api.totals()["processed"] == 7
    summary = api.summary()
    ujson.dumps(summary)  # JSON-safe
    assert [p["identity"] for p in summary["processes"]] == ["proc1", "odd"]


def test_history_days(api, redis_client):
    now = time.mktime((2024, 3, 2, 12, 0, 0, 0, 0, 0)) - time.timezone
    redis_client.set(api.keys.processed_on("2024-03-01"), 5)
    redis_client.set(api.keys.failures_on("2024-02-29"), 1)
    history = api.history(3, now=now)
    assert history == [{"day": "2024-02-29", "processed": 0, "failed": 1},
                       {"day": "2024-03-01", "processed": 5, "failed": 0},
                       {"day": "2024-03-02", "processed": 0, "failed": 0}]
    assert len(api.history(10_000)) == 400
    assert len(api.history(-3)) == 1


def test_set_pages_order_and_clamping(api, redis_client):
    now = time.time()
    for i in range(7):
        redis_client.zadd(api.keys.dead, {failed(job(jid=f"d{i}")): now + i})
        redis_client.zadd(api.keys.scheduled, {payload.dumps(job(jid=f"s{i}")): now + i})
    page = api.set_page("dead", page=1, count=3)
    assert [e.jid for e in page.entries] == ["d6", "d5", "d4"]  # newest first
    assert (page.total, page.pages) == (7, 3)
    assert [e.jid for e in api.set_page("dead", page=99, count=3).entries] == ["d0"]  # last page
    assert [e.jid for e in api.set_page("scheduled", 1, 2).entries] == ["s0", "s1"]  # soonest first
    assert len(api.set_page("dead", 1, 10**9).entries) == 7
    with pytest.raises(NotFound):
        api.set_page("processes")


def test_queue_page_next_to_run_first(api, redis_client):
    for i in range(5):
        redis_client.lpush(api.keys.queue("mail"), payload.dumps(job(jid=f"q{i}")))
    page = api.queue_page("mail", 1, 2)
    assert [e.jid for e in page.entries] == ["q0", "q1"]
    assert [e.jid for e in api.queue_page("mail", 3, 2).entries] == ["q4"]
    assert api.queue_page("empty").entries == []
    with pytest.raises(NotFound):
        api.queue_page("bad:name")


def test_entry_by_ref_and_odd_members(api, redis_client):
    now = 1_700_000_000.25
    for i, member in enumerate(ODD_MEMBERS):
        redis_client.zadd(api.keys.dead, {member: now + i})
    entries = api.set_page("dead", 1, 50).entries
    assert len(entries) == len(ODD_MEMBERS)
    for entry in entries:
        assert entry.job is None or entry.name in ("", "5")
        entry.as_dict()
        assert api.entry("dead", entry.ref).raw == entry.raw
    problems = {e.raw: e.problem for e in entries}
    assert problems[b"\xff\xfe\x00 not utf-8"] == "not UTF-8"
    assert problems[b"{not json"] == "not JSON"
    assert problems[b"[1, 2]"] == "a JSON list, not an object"
    with pytest.raises(NotFound):
        api.entry("dead", "1.5_" + "0" * 40)
    with pytest.raises(NotFound):
        parse_ref("1.5_zz")


def test_retry_now_moves_atomically_and_refreshes_enqueued_at(api, redis_client):
    dead = failed(job(jid="j1", enqueued_at=1.0))
    redis_client.zadd(api.keys.dead, {dead: time.time()})
    entry = api.set_page("dead").entries[0]
    assert api.retry_now("dead", entry.ref, now=1234.5) == "mail"
    assert redis_client.zcard(api.keys.dead) == 0
    moved = payload.loads(redis_client.rpop(api.keys.queue("mail")))
    assert moved["jid"] == "j1" and moved["enqueued_at"] == 1234.5
    assert moved["error_class"] == "ValueError" and moved["args"] == ["a"]
    with pytest.raises(NotFound):
        api.retry_now("dead", entry.ref)  # gone


def test_retry_now_from_retries_prefers_retry_queue(api, redis_client):
    member = failed(job(jid="r1", retry_queue="slow"), retry_at=time.time() + 99)
    redis_client.zadd(api.keys.retries, {member: time.time() + 99})
    ref = api.set_page("retries").entries[0].ref
    assert api.retry_now("retries", ref) == "slow"
    assert redis_client.llen(api.keys.queue("slow")) == 1


def test_retry_refuses_what_is_not_a_job(api, redis_client):
    redis_client.zadd(api.keys.dead, {b"{not json": 1.0})
    redis_client.zadd(api.keys.dead, {ujson.dumps({"name": "X", "queue": "bad queue!"}): 2.0})
    for entry in api.set_page("dead").entries:
        with pytest.raises(AdminError, match="not a runnable job"):
            api.retry_now("dead", entry.ref)
    assert redis_client.zcard(api.keys.dead) == 2


def test_kill_delete_and_bulk(api, redis_client):
    now = time.time()
    redis_client.zadd(api.keys.retries, {failed(job(jid="r1")): now, failed(job(jid="r2")): now + 1})
    r1 = next(e for e in api.set_page("retries").entries if e.jid == "r1")
    api.kill("retries", r1.ref, now=now)
    assert [e.jid for e in api.set_page("dead").entries] == ["r1"]
    with pytest.raises(AdminError):
        api.kill("dead", api.set_page("dead").entries[0].ref)
    r2 = api.set_page("retries").entries[0]
    api.delete("retries", r2.ref)
    assert redis_client.zcard(api.keys.retries) == 0
    with pytest.raises(NotFound):
        api.delete("retries", r2.ref)
    for member in ODD_MEMBERS:
        redis_client.zadd(api.keys.dead, {member: now})
    for i in range(BATCH_PLUS):
        redis_client.zadd(api.keys.dead, {failed(job(jid=f"b{i}", queue="bulk")): now + i})
    moved, skipped = api.retry_all("dead")
    assert (moved, skipped) == (BATCH_PLUS + 1, len(ODD_MEMBERS))
    assert redis_client.llen(api.keys.queue("bulk")) == BATCH_PLUS
    assert redis_client.llen(api.keys.queue("mail")) == 1
    assert api.delete_all("dead") == len(ODD_MEMBERS)
    assert not redis_client.exists(api.keys.dead)


BATCH_PLUS = 520  # more than one ZRANGE batch of retry_all


def test_retry_jids(api, redis_client):
    redis_client.zadd(api.keys.dead, {failed(job(jid="a")): 1, failed(job(jid="b")): 2})
    assert api.retry_jids("dead", ["a", "zzz"]) == (1, ["zzz"])
    assert [e.jid for e in api.set_page("dead").entries] == ["b"]


def test_find_job(api, redis_client):
    redis_client.zadd(api.keys.dead, {failed(job(jid="dead1")): 1})
    redis_client.zadd(api.keys.retries, {failed(job(jid="retry*1")): 1})
    redis_client.zadd(api.keys.scheduled, {payload.dumps(job(jid="sched1")): 1, b"\xff": 2})
    redis_client.lpush(api.keys.queue("mail"), payload.dumps(job(jid="queued1")), b"\xfe")
    assert api.find_job("dead1").where == "dead"
    assert api.find_job("retry*1").where == "retries"
    assert api.find_job("retry?1") is None  # glob characters are literal
    assert api.find_job("sched1").where == "scheduled"
    found = api.find_job("queued1")
    assert (found.where, found.queue) == ("queue", "mail")
    assert api.find_job("nope") is None
    assert api.find_job("") is None and api.find_job("x" * 65) is None


def test_clear_queue_and_delete_queued(api, redis_client):
    members = [payload.dumps(job(jid=f"q{i}")) for i in range(3)]
    redis_client.lpush(api.keys.queue("mail"), *members)
    target = api.queue_page("mail").entries[1]
    api.delete_queued("mail", target.ref)
    assert [e.jid for e in api.queue_page("mail").entries] == ["q0", "q2"]
    with pytest.raises(NotFound):
        api.delete_queued("mail", target.ref)
    with pytest.raises(NotFound):
        api.delete_queued("mail", "not-a-digest")
    assert api.clear_queue("mail") == 2
    assert api.clear_queue("mail") == 0
    with pytest.raises(NotFound):
        api.clear_queue("*")


def test_signal_process(api, redis_client):
    redis_client.hset(api.keys.process("p1"), mapping={"identity": "p1"})
    api.signal_process("p1", "quiet")
    api.signal_process("p1", "stop")
    key = signals_key(api.keys, "p1")
    assert key == api.keys.root + "process:p1:signals"
    assert 0 < redis_client.ttl(key) <= 600
    assert redis_client.rpop(key) == b"quiet" and redis_client.rpop(key) == b"stop"
    with pytest.raises(NotFound):
        api.signal_process("p2", "quiet")
    with pytest.raises(NotFound):
        api.signal_process("p1:x", "quiet")
    with pytest.raises(AdminError):
        api.signal_process("p1", "kill")


def test_cleaner_respects_the_namespace(redis_client):
    ours, theirs = Keys("app1"), Keys("")
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(SCAN_COUNT * 4):  # several SCAN pages, many without a match
            pipe.set(f"zz:{i}", 1)
        for i in range(30):
            pipe.lpush(ours.queue(f"q{i}"), b"x")
        pipe.zadd(ours.dead, {b"x": 1})
        pipe.set(ours.processed, 3)
        pipe.lpush(theirs.queue("q0"), b"x")
        pipe.zadd(theirs.dead, {b"x": 1})
        pipe.execute()
    cleaner = Cleaner(redis_client, "app1")
    assert cleaner.prune_queue("q0") == 1
    assert cleaner.prune_all_queues() == 29
    assert redis_client.exists(ours.dead)
    assert cleaner.prune_all() == 2
    assert not redis_client.keys("app1:*")
    assert redis_client.exists(theirs.queue("q0"), theirs.dead) == 2
    assert Cleaner(redis_client, "").prune_all() == 2
    assert redis_client.dbsize() == SCAN_COUNT * 4


def test_entry_text_is_always_printable():
    entry = Entry.decode(ujson.dumps({"name": "\udcff", "args": ["\ud800"], "jid": 5,
                                      "error_backtrace": "one line"}).encode(), "dead", 1.0)
    assert entry.name == "\\udcff" and entry.jid == "5"
    assert entry.backtrace == ["one line"]
    entry.args_text.encode("utf-8")
    assert clamp("12abc", 1, 10, 3) == 3 and clamp("-5", 1, 10, 3) == 1
    assert clamp("9" * 40, 1, 10, 3) == 10 and clamp(None, 1, 10, 3) == 3


def test_api_admin_and_web_do_not_import_gevent(run_python):
    """L1 (api) and the dashboard must not pull gevent into a web app's process."""
    result = run_python(
        "import sys, jiggler_gevent.api, jiggler_gevent.admin, jiggler_gevent.web\n"
        "assert 'gevent' not in sys.modules, sorted(m for m in sys.modules if 'gevent' in m)\n")
    assert result.returncode == 0, result.stderr

"""The read/admin API against a real server: totals, listings merged over the queues'
sets, actions, the Cleaner."""

from __future__ import annotations

import time

import pytest
import redis
import ujson
from redis.cluster import RedisCluster

import jiggler_gevent
from jiggler_gevent import api as api_module
from jiggler_gevent import middleware, payload, periodic
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
from jiggler_gevent.connection import is_cluster, make_client
from jiggler_gevent.keys import Keys
from jiggler_gevent.scripts import Scripts
from jiggler_gevent.server.periodic import PeriodicScheduler

try:
    import croniter  # noqa: F401
    HAVE_CRON = True
except ImportError:
    HAVE_CRON = False
needs_cron = pytest.mark.skipif(not HAVE_CRON, reason="croniter (the cron extra) not installed")

ODD_MEMBERS = (b"\xff\xfe\x00 not utf-8", b"{not json", b"[1, 2]", b'{"name": 5}', b'"str"')


def job(name="Mail", args=("a",), queue="mail", jid=None, **extra) -> dict:
    built = payload.build(name, list(args), {}, queue=queue, retries=3, jid=jid)
    built.update(extra)
    return built


def failed(entry: dict, message="boom", *, retry_at=None) -> bytes:
    out = payload.failed(entry, ValueError(message), now=time.time(), retry_at=retry_at)
    out["error_backtrace"] = ["Traceback (most recent call last):", "ValueError: " + message]
    return payload.dumps(out, check_size=False)


def put(client, keys: Keys, name: str, queue: str, mapping: dict) -> None:
    """ZADD to one queue's retries/scheduled/dead set and register the queue, as the
    writers (enqueue_in, the retrier, the poller) do."""
    client.zadd(getattr(keys, name)(queue), mapping)
    client.sadd(keys.queues, queue)


def push(client, keys: Keys, queue: str, *members: bytes) -> None:
    client.lpush(keys.queue(queue), *members)
    client.sadd(keys.queues, queue)


@pytest.fixture(params=["", "ns1"], ids=["no-namespace", "namespace"])
def api(request, redis_client) -> Api:
    return Api(redis_client, request.param)


def test_totals_queues_and_latency(api, redis_client):
    keys = api.keys
    now = time.time()
    push(redis_client, keys, "mail", payload.dumps(job(enqueued_at=now - 30)),
         payload.dumps(job(enqueued_at=now - 5)))
    push(redis_client, keys, "default", payload.dumps(job(queue="default", enqueued_at=now)))
    redis_client.lpush(keys.in_progress("mail", "abc"), b"x")  # a reservation is not a queue
    push(redis_client, Keys("other"), "elsewhere", b"x")  # another namespace
    redis_client.set(keys.processed, 12)
    redis_client.set(keys.failures, 3)
    put(redis_client, keys, "retries", "mail", {failed(job()): now + 60})
    put(redis_client, keys, "dead", "mail", {failed(job()): now, b"\xff": now})
    put(redis_client, keys, "dead", "other", {failed(job(queue="other")): now})
    redis_client.sadd(keys.queues, "idle")  # registered, empty
    totals = api.totals()
    assert totals == {"processed": 12, "failed": 3, "enqueued": 3, "retries": 1, "scheduled": 0,
                      "dead": 3, "busy": 0, "processes": 0}
    queues = {q.name: q for q in api.queues(now=now)}
    assert sorted(queues) == ["default", "idle", "mail", "other"]
    assert queues["idle"].size == 0 and queues["idle"].latency == 0.0
    assert queues["mail"].size == 2
    assert queues["mail"].latency == pytest.approx(30, abs=0.01)  # the oldest (right end)
    assert queues["default"].latency == pytest.approx(0, abs=0.01)


def test_latency_of_odd_oldest_job_is_zero(api, redis_client):
    push(redis_client, api.keys, "q", b"\xff\xfe")
    assert api.queues()[0].latency == 0.0


def test_queue_discovery_reads_the_registry_and_live_processes(api, redis_client):
    redis_client.sadd(api.keys.queues, "b", "a", "bad name!", "x:y", b"\xff")
    redis_client.lpush(api.keys.queue("unregistered"), b"x")  # not found: nothing scans
    redis_client.zadd(api.keys.processes, {"p1": time.time(), "p2": time.time(), "gone": 1})
    redis_client.hset(api.keys.process("p1"), mapping={"queues": "critical:6,default:3,a"})
    redis_client.hset(api.keys.process("p2"), mapping={"queues": "<b>,low"})
    assert api.queue_names() == ["a", "b", "critical", "default", "low"]


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
        put(redis_client, api.keys, "dead", "mail", {failed(job(jid=f"d{i}")): now + i})
        put(redis_client, api.keys, "scheduled", "mail", {payload.dumps(job(jid=f"s{i}")): now + i})
    page = api.set_page("dead", page=1, count=3)
    assert [e.jid for e in page.entries] == ["d6", "d5", "d4"]  # newest first
    assert (page.total, page.pages) == (7, 3)
    assert [e.jid for e in api.set_page("dead", page=99, count=3).entries] == ["d0"]  # last page
    assert [e.jid for e in api.set_page("scheduled", 1, 2).entries] == ["s0", "s1"]  # soonest first
    assert len(api.set_page("dead", 1, 10**9).entries) == 7
    assert api.set_page("retries").entries == [] and api.set_page("retries").total == 0
    with pytest.raises(NotFound):
        api.set_page("processes")
    with pytest.raises(NotFound):
        api.set_page("dead", queue="bad:queue")


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 500])
def test_set_listing_merges_the_queues_sets_in_order_with_pages(api, redis_client, count,
                                                               monkeypatch):
    """Three queues' dead sets read as one: newest first across queues, equal scores by
    queue then bytes, and every page exactly the slice of that order (batches smaller
    than a page's depth force the k-way merge to refill)."""
    monkeypatch.setattr(api_module, "BATCH", 2)
    rows = []
    for i in range(13):
        queue = ("mail", "low", "zz")[i % 3]
        score = 1000.0 + (i // 2)  # pairs of equal scores, in two different queues
        member = failed(job(jid=f"j{i}", queue=queue))
        put(redis_client, api.keys, "dead", queue, {member: score})
        rows.append((score, queue, member))
    want = [m for _, _, m in sorted(rows, reverse=True)]
    got = []
    first = api.set_page("dead", 1, count)
    for page in range(1, first.pages + 1):
        listing = api.set_page("dead", page, count)
        assert listing.total == 13 and len(listing.entries) == min(count, 13 - (page - 1) * count)
        got += [e.raw for e in listing.entries]
    assert got == want
    assert first.by_queue == {"low": 4, "mail": 5, "zz": 4}
    soonest = [e.raw for e in api.set_page("scheduled").entries]
    assert soonest == []
    for score, queue, member in rows:
        put(redis_client, api.keys, "scheduled", queue, {member: score})
    ascending = [e.raw for e in api.set_page("scheduled", 1, 13).entries]
    assert ascending == [m for _, _, m in sorted(rows)]
    assert [e.raw for e in api.set_page("scheduled", 2, 4).entries] == ascending[4:8]


def test_set_listing_narrowed_to_one_queue(api, redis_client):
    put(redis_client, api.keys, "dead", "a", {failed(job(jid="a1", queue="a")): 1,
                                             failed(job(jid="a2", queue="a")): 3})
    put(redis_client, api.keys, "dead", "b", {failed(job(jid="b1", queue="b")): 2})
    page = api.set_page("dead", queue="a")
    assert [e.jid for e in page.entries] == ["a2", "a1"] and page.total == 2
    assert page.queue == "a" and page.by_queue == {"a": 2, "b": 1}  # links to every queue
    assert {e.queue_name for e in page.entries} == {"a"}
    assert [e.jid for e in api.set_page("dead").entries] == ["a2", "b1", "a1"]
    assert api.set_page("dead", queue="never").total == 0


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
        put(redis_client, api.keys, "dead", "mail", {member: now + i})
    entries = api.set_page("dead", 1, 50).entries
    assert len(entries) == len(ODD_MEMBERS)
    for entry in entries:
        assert entry.job is None or entry.name in ("", "5")
        assert entry.as_dict()["in_queue"] == "mail"
        assert api.entry("dead", entry.ref).raw == entry.raw
    problems = {e.raw: e.problem for e in entries}
    assert problems[b"\xff\xfe\x00 not utf-8"] == "not UTF-8"
    assert problems[b"{not json"] == "not JSON"
    assert problems[b"[1, 2]"] == "a JSON list, not an object"
    with pytest.raises(NotFound):
        api.entry("dead", "mail:1.5:" + "0" * 40)
    with pytest.raises(NotFound):
        api.entry("queues", entries[0].ref)


def test_refs_carry_the_queue_and_are_parsed_strictly(api, redis_client):
    member = failed(job(jid="x1", queue="low"))
    put(redis_client, api.keys, "dead", "low", {member: 1_700_000_000.5})
    put(redis_client, api.keys, "dead", "mail", {member: 1_700_000_000.5})  # same bytes, same score
    refs = {e.queue_name: e.ref for e in api.set_page("dead").entries}
    digest = api_module.digest(member)
    assert refs == {"low": f"low:1700000000.5:{digest}", "mail": f"mail:1700000000.5:{digest}"}
    assert parse_ref(refs["low"]) == ("low", 1_700_000_000.5, digest)
    assert api.entry("dead", refs["low"]).queue_name == "low"
    api.delete("dead", refs["low"])  # only that queue's entry
    assert [e.queue_name for e in api.set_page("dead").entries] == ["mail"]
    with pytest.raises(NotFound):
        api.entry("dead", refs["low"])
    assert parse_ref("a.b-c_d:-inf:" + "f" * 40)[:2] == ("a.b-c_d", float("-inf"))
    assert parse_ref("q:1e+300:" + "f" * 40)[1] == 1e300
    for bad in ("1.5_" + "0" * 40, "mail:1.5_" + "0" * 40, "mail:1.5:" + "0" * 39,
                "mail:1.5:" + "0" * 40 + "\n", "a:b:1.5:" + "0" * 40, ":1.5:" + "0" * 40,
                "x" * 129 + ":1:" + "0" * 40, "ma il:1:" + "0" * 40, "mail:nan:" + "0" * 40,
                "mail:1.5:" + "A" * 40, "", None, "{mail}:1:" + "0" * 40):
        with pytest.raises(NotFound):
            parse_ref(bad)


def test_retry_now_moves_atomically_and_refreshes_enqueued_at(api, redis_client):
    dead = failed(job(jid="j1", enqueued_at=1.0))
    put(redis_client, api.keys, "dead", "mail", {dead: time.time()})
    entry = api.set_page("dead").entries[0]
    assert api.retry_now("dead", entry.ref, now=1234.5) == "mail"
    assert redis_client.zcard(api.keys.dead("mail")) == 0
    moved = payload.loads(redis_client.rpop(api.keys.queue("mail")))
    assert moved["jid"] == "j1" and moved["enqueued_at"] == 1234.5
    assert moved["error_class"] == "ValueError" and moved["args"] == ["a"]
    with pytest.raises(NotFound):
        api.retry_now("dead", entry.ref)  # gone


def test_retry_now_from_retries_goes_to_the_sets_own_queue(api, redis_client):
    """A retry sits in its retry_queue's set already; retry-now sends it where the
    poller would: the set's own queue."""
    member = failed(job(jid="r1", retry_queue="slow"), retry_at=time.time() + 99)
    put(redis_client, api.keys, "retries", "slow", {member: time.time() + 99})
    ref = api.set_page("retries").entries[0].ref
    assert ref.startswith("slow:")
    assert api.retry_now("retries", ref) == "slow"
    assert redis_client.llen(api.keys.queue("slow")) == 1
    assert redis_client.zcard(api.keys.retries("slow")) == 0


@pytest.mark.parametrize("cluster", [False, True], ids=["single-server", "cluster-path"])
def test_retry_now_of_a_dead_entry_of_another_queue(api, redis_client, monkeypatch, cluster):
    """A job that died in queue "low" (its retry_queue) but belongs to "mail" goes back to
    mail's pending list; mail is registered. The cluster path (two slots) writes first,
    then removes, and takes its copy back when someone else moved the entry first."""
    api.cluster = cluster
    member = failed(job(jid="d1", queue="mail", retry_queue="low"))
    put(redis_client, api.keys, "dead", "low", {member: 5.0})
    entry = api.set_page("dead").entries[0]
    assert (entry.queue_name, entry.runnable_queue) == ("low", "mail")
    assert api.retry_now("dead", entry.ref, now=99.0) == "mail"
    assert redis_client.zcard(api.keys.dead("low")) == 0
    assert payload.loads(redis_client.rpop(api.keys.queue("mail")))["jid"] == "d1"
    assert redis_client.sismember(api.keys.queues, "mail")
    with pytest.raises(NotFound):
        api.retry_now("dead", entry.ref)
    # the race: found, then moved by someone else before our move
    put(redis_client, api.keys, "dead", "low", {member: 6.0})
    entry = api.set_page("dead").entries[0]
    real_zrem = redis_client.zrem

    def zrem_after_someone_else(key, *members):
        real_zrem(key, *members)  # the other admin's move
        return real_zrem(key, *members)

    monkeypatch.setattr(redis_client, "zrem", zrem_after_someone_else)
    if not cluster:  # the script is atomic: the entry is simply gone when it runs
        redis_client.zrem(api.keys.dead("low"), member)
    with pytest.raises(NotFound):
        api.retry_now("dead", entry.ref)
    assert redis_client.llen(api.keys.queue("mail")) == 0  # nothing doubled


def test_dead_entry_without_a_queue_goes_back_to_its_sets_queue(api, redis_client):
    put(redis_client, api.keys, "dead", "low", {ujson.dumps({"name": "X", "jid": "n1"}): 1.0})
    entry = api.set_page("dead").entries[0]
    assert entry.runnable_queue == "low" and entry.queue == "low"
    assert api.retry_now("dead", entry.ref) == "low"


def test_retry_refuses_what_is_not_a_job(api, redis_client):
    put(redis_client, api.keys, "dead", "mail", {b"{not json": 1.0})
    put(redis_client, api.keys, "dead", "mail", {ujson.dumps({"name": "X", "queue": "bad queue!"}): 2.0})
    for entry in api.set_page("dead").entries:
        with pytest.raises(AdminError, match="not a runnable job"):
            api.retry_now("dead", entry.ref)
    assert redis_client.zcard(api.keys.dead("mail")) == 2


def test_kill_delete_and_bulk(api, redis_client):
    now = time.time()
    put(redis_client, api.keys, "retries", "mail",
        {failed(job(jid="r1")): now, failed(job(jid="r2")): now + 1})
    r1 = next(e for e in api.set_page("retries").entries if e.jid == "r1")
    api.kill("retries", r1.ref, now=now)
    assert [(e.jid, e.queue_name) for e in api.set_page("dead").entries] == [("r1", "mail")]
    with pytest.raises(AdminError):
        api.kill("dead", api.set_page("dead").entries[0].ref)
    r2 = api.set_page("retries").entries[0]
    api.delete("retries", r2.ref)
    assert redis_client.zcard(api.keys.retries("mail")) == 0
    with pytest.raises(NotFound):
        api.delete("retries", r2.ref)
    for member in ODD_MEMBERS:
        put(redis_client, api.keys, "dead", "odd", {member: now})
    for i in range(BATCH_PLUS):
        put(redis_client, api.keys, "dead", "bulk", {failed(job(jid=f"b{i}", queue="bulk")): now + i})
    moved, skipped = api.retry_all("dead")
    assert (moved, skipped) == (BATCH_PLUS + 1, len(ODD_MEMBERS))
    assert redis_client.llen(api.keys.queue("bulk")) == BATCH_PLUS
    assert redis_client.llen(api.keys.queue("mail")) == 1
    assert api.delete_all("dead") == len(ODD_MEMBERS)
    assert not redis_client.exists(api.keys.dead("odd"))


BATCH_PLUS = 520  # more than one ZRANGE batch of retry_all


def test_retry_all_retries_each_job_once_while_workers_fail_them_again(api, redis_client,
                                                                      monkeypatch):
    """Live workers run the retried jobs at once and bury them again, ahead of the walk
    (a dead job's retries are spent): each is retried once, and the call ends."""
    n = BATCH_PLUS
    put(redis_client, api.keys, "dead", "w", {failed(job(jid=f"w{i}", queue="w")): i for i in range(n)})
    retry_entry = api._retry_entry
    reburied = []

    def retry_and_fail_again(entry, now, registered=None):
        queue = retry_entry(entry, now, registered)
        raw = redis_client.rpop(api.keys.queue(queue))  # a worker takes it, it fails again
        again = failed(ujson.loads(raw), "still broken")
        redis_client.zadd(api.keys.dead(queue), {again: 10_000 + len(reburied)})
        reburied.append(entry.field("jid"))
        return queue

    monkeypatch.setattr(api, "_retry_entry", retry_and_fail_again)
    assert api.retry_all("dead") == (n, n)  # n moved; their n new failures stay
    assert sorted(reburied) == sorted(f"w{i}" for i in range(n))
    assert redis_client.zcard(api.keys.dead("w")) == n


def test_bulk_actions_narrowed_to_one_queue(api, redis_client):
    put(redis_client, api.keys, "dead", "a", {failed(job(jid="a1", queue="a")): 1})
    put(redis_client, api.keys, "dead", "b", {failed(job(jid="b1", queue="b")): 1,
                                             failed(job(jid="b2", queue="b")): 2})
    assert api.retry_all("dead", queue="a") == (1, 0)
    assert redis_client.llen(api.keys.queue("a")) == 1 and redis_client.llen(api.keys.queue("b")) == 0
    assert api.retry_jids("dead", ["b1", "a1"], queue="b") == (1, ["a1"])
    assert api.delete_all("dead", queue="a") == 0
    assert api.delete_all("dead", queue="b") == 1
    assert api.set_page("dead").total == 0


def test_retry_jids(api, redis_client):
    put(redis_client, api.keys, "dead", "mail", {failed(job(jid="a")): 1, failed(job(jid="b")): 2})
    put(redis_client, api.keys, "dead", "low", {failed(job(jid="c", queue="low")): 3})
    assert api.retry_jids("dead", ["a", "c", "zzz"]) == (2, ["zzz"])
    assert [e.jid for e in api.set_page("dead").entries] == ["b"]
    assert redis_client.llen(api.keys.queue("low")) == 1


def test_find_job(api, redis_client):
    put(redis_client, api.keys, "dead", "mail", {failed(job(jid="dead1")): 1})
    put(redis_client, api.keys, "retries", "low", {failed(job(jid="retry*1")): 1})
    put(redis_client, api.keys, "scheduled", "mail", {payload.dumps(job(jid="sched1")): 1, b"\xff": 2})
    push(redis_client, api.keys, "mail", payload.dumps(job(jid="queued1")), b"\xfe")
    assert api.find_job("dead1").where == "dead"
    found = api.find_job("retry*1")
    assert (found.where, found.queue_name) == ("retries", "low")
    assert api.entry("retries", found.ref).raw == found.raw
    assert api.find_job("retry?1") is None  # glob characters are literal
    assert api.find_job("sched1").where == "scheduled"
    found = api.find_job("queued1")
    assert (found.where, found.queue) == ("queue", "mail")
    assert api.find_job("nope") is None
    assert api.find_job("") is None and api.find_job("x" * 65) is None


def test_clear_queue_and_delete_queued(api, redis_client):
    members = [payload.dumps(job(jid=f"q{i}")) for i in range(3)]
    push(redis_client, api.keys, "mail", *members)
    target = api.queue_page("mail").entries[1]
    api.delete_queued("mail", target.ref)
    assert [e.jid for e in api.queue_page("mail").entries] == ["q0", "q2"]
    with pytest.raises(NotFound):
        api.delete_queued("mail", target.ref)
    with pytest.raises(NotFound):
        api.delete_queued("mail", "not-a-digest")
    redis_client.rpush(api.keys.queue_keys("mail").quarantine, payload.dumps(job(jid="suspect")))
    assert api.clear_queue("mail") == 3  # the suspect waiting in quarantine too
    assert not redis_client.exists(api.keys.queue_keys("mail").quarantine)
    assert api.clear_queue("mail") == 0
    with pytest.raises(NotFound):
        api.clear_queue("*")


def test_signal_process(api, redis_client):
    redis_client.hset(api.keys.process("p1"), mapping={"identity": "p1"})
    api.signal_process("p1", "quiet")
    api.signal_process("p1", "stop")
    key = signals_key(api.keys, "p1")
    assert key == api.keys.tag + ":process:p1:signals"
    assert 0 < redis_client.ttl(key) <= 600
    assert redis_client.rpop(key) == b"quiet" and redis_client.rpop(key) == b"stop"
    with pytest.raises(NotFound):
        api.signal_process("p2", "quiet")
    with pytest.raises(NotFound):
        api.signal_process("p1:x", "quiet")
    with pytest.raises(AdminError):
        api.signal_process("p1", "kill")


def test_cleaner_respects_the_namespace(redis_client):
    """prune_all deletes the keys of both slot kinds (the global {app1:jiggler} slot and
    every {app1:jiggler:q:<queue>} slot), scanning to cursor 0, and nothing else: not
    another namespace's, not the default namespace's, not look-alikes."""
    ours, theirs, plain = Keys("app1"), Keys("app10"), Keys("")
    lookalikes = ["app1:jiggler:list:q0", "{app1:jiggler", "{app1:jigglers}:x", "app1:jiggler}:x",
                  "{app1:jiggler:qq}", "x{app1:jiggler}"]
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(SCAN_COUNT * 4):  # several SCAN pages, many without a match
            pipe.set(f"zz:{i}", 1)
        for i in range(30):
            pipe.lpush(ours.queue(f"q{i}"), b"x")
            pipe.sadd(ours.queues, f"q{i}")
        pipe.zadd(ours.dead("q0"), {b"x": 1})
        pipe.zadd(ours.scheduled("q1"), {b"x": 1})
        pipe.lpush(ours.in_progress("q2", "p1"), b"x")
        pipe.hset(ours.queue_keys("q3").periodic_last, "s", 1)
        pipe.set(ours.processed, 3)
        pipe.hset(ours.reservations, "k", "p1")
        for other in (theirs, plain):
            pipe.lpush(other.queue("q0"), b"x")
            pipe.zadd(other.dead("q0"), {b"x": 1})
            pipe.sadd(other.queues, "q0")
            pipe.set(other.processed, 1)
        for key in lookalikes:
            pipe.set(key, 1)
        pipe.execute()
    cleaner = Cleaner(redis_client, "app1")
    assert cleaner.patterns() == ("{app1:jiggler}*", "{app1:jiggler:q:*")
    assert cleaner.prune_queue("q0") == 1
    assert cleaner.prune_all_queues() == 29
    assert redis_client.exists(ours.dead("q0"))
    global_keys = [ours.queues, ours.processed, ours.reservations]
    queue_keys = [ours.dead("q0"), ours.scheduled("q1"), ours.in_progress("q2", "p1"),
                  ours.queue_keys("q3").periodic_last]
    assert redis_client.exists(*global_keys, *queue_keys) == 7
    assert cleaner.prune_all() == 7
    assert redis_client.exists(*global_keys, *queue_keys) == 0
    others = [theirs.queue("q0"), theirs.dead("q0"), theirs.queues, theirs.processed,
              plain.queue("q0"), plain.dead("q0"), plain.queues, plain.processed]
    assert redis_client.exists(*others, *lookalikes) == len(others) + len(lookalikes)
    assert Cleaner(redis_client, "").prune_all() == 4
    assert Cleaner(redis_client, "app10").prune_all() == 4
    assert redis_client.dbsize() == SCAN_COUNT * 4 + len(lookalikes)


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


# -- periodic schedules --------------------------------------------------------------------


class Digest(jiggler_gevent.Job):
    name = "api.periodic.digest"
    queue = "mail"
    retries = 4

    def perform(self, *args, **kwargs):
        pass


PERIODIC_NOW = 1_736_935_230.0  # 2025-01-15 10:00:30 UTC


def published(client, keys: Keys) -> PeriodicScheduler:
    """Two schedules published and ticked by the worker's own scheduler code: an interval
    in a time zone (queue from the job class) and a cron in queue ``low`` with kwargs."""
    schedules = [periodic.Schedule(job=Digest.name, every=300, tz="Europe/Paris", args=("daily",)),
                 periodic.Schedule(job=Digest.name, cron="*/10 * * * *", kwargs={"to": "ops"},
                                   queue="low", name="digest-<b>&\"'")]
    scheduler = PeriodicScheduler(client, keys, schedules)
    scheduler.publish()
    scheduler.tick_once(PERIODIC_NOW - 600)  # first sight: the ticks are only recorded
    return scheduler


@needs_cron
def test_periodic_lists_the_published_schedules(api, redis_client):
    published(redis_client, api.keys)
    assert Api(redis_client, "elsewhere").periodic(PERIODIC_NOW) == []
    by_name = {s.name: s for s in api.periodic(PERIODIC_NOW)}
    interval, cron = by_name[Digest.name], by_name["digest-<b>&\"'"]
    assert [s.name for s in api.periodic(PERIODIC_NOW)] == [Digest.name, "digest-<b>&\"'"]
    assert (interval.timing, interval.job, interval.queue) == (
        "every 5 min (Europe/Paris)", Digest.name, "mail")
    assert interval.next_run == PERIODIC_NOW + 270 and interval.last_tick == PERIODIC_NOW - 630
    assert interval.args == ["daily"] and interval.args_text == '["daily"]'
    assert interval.kwargs_text == "" and interval.enqueueable
    assert (cron.timing, cron.queue, cron.every, cron.cron) == (
        "cron */10 * * * *", "low", None, "*/10 * * * *")
    assert cron.next_run == PERIODIC_NOW + 570 and cron.last_tick == PERIODIC_NOW - 630
    assert cron.kwargs == {"to": "ops"}
    data = ujson.loads(ujson.dumps([s.as_dict() for s in api.periodic(PERIODIC_NOW)]))
    assert data[0]["next_run"] == PERIODIC_NOW + 270 and data[1]["kwargs"] == {"to": "ops"}
    assert "enqueueable" not in data[0]  # a property of this process, not of the schedule


def test_periodic_shows_odd_descriptions_without_failing(api, redis_client):
    redis_client.hset(api.keys.periodic_schedules, mapping={
        "tiny": ujson.dumps({"job": "x", "every": 1e-300}),  # its ticks overflow a float
        "words": ujson.dumps({"job": 5, "every": "often", "tz": 3, "args": "no"}),
        "unknown-job": ujson.dumps({"job": "api.nobody", "every": 90, "queue": "a:b"}),
        "junk": b"\xff{", b"\xff<b>": ujson.dumps({"job": "x", "every": 86400}),
    })
    by_name = {s.name: s for s in api.periodic(PERIODIC_NOW)}
    assert sorted(by_name) == ["tiny", "unknown-job", "words", "\ufffd<b>"]
    assert by_name["tiny"].next_run is None and by_name["tiny"].timing == "every 1e-300 s"
    assert by_name["words"].timing == "every often (3)" and by_name["words"].job == "5"
    assert by_name["words"].args_text == '"no"'
    unknown = by_name["unknown-job"]
    assert (unknown.timing, unknown.queue, unknown.enqueueable) == ("every 90 s", None, False)
    assert unknown.next_run == 1_736_935_290.0 and unknown.last_tick is None
    assert by_name["\ufffd<b>"].timing == "every 1 d"


@needs_cron
def test_enqueue_periodic_pushes_the_schedules_job_once(api, redis_client):
    scheduler = published(redis_client, api.keys)
    ticks = redis_client.hgetall(api.keys.queue_keys("low").periodic_last)
    seen = []
    middleware.add_client(lambda job_class, job, call_next: seen.append(job_class) or call_next(
        {**job, "request_id": "r1"}))
    try:
        jid, queue = api.enqueue_periodic("digest-<b>&\"'")
    finally:
        middleware.clear()
    assert queue == "low" and seen == [Digest]
    [raw] = redis_client.lrange(api.keys.queue("low"), 0, -1)
    pushed = ujson.loads(raw)
    assert (pushed["jid"], pushed["name"], pushed["queue"]) == (jid, Digest.name, "low")
    assert (pushed["args"], pushed["kwargs"], pushed["retries"]) == ([], {"to": "ops"}, 4)
    assert pushed["periodic"] == "digest-<b>&\"'" and "periodic_at" not in pushed
    assert pushed["request_id"] == "r1"  # the client middleware ran
    assert b"low" in redis_client.smembers(api.keys.queues)
    assert redis_client.hgetall(api.keys.queue_keys("low").periodic_last) == ticks  # untouched
    assert scheduler.tick_once(PERIODIC_NOW) != []  # the next tick still runs
    assert api.enqueue_periodic(Digest.name)[1] == "mail"
    assert ujson.loads(redis_client.lindex(api.keys.queue("mail"), 0))["args"] == ["daily"]


def test_enqueue_periodic_refusals_push_nothing(api, redis_client):
    redis_client.hset(api.keys.periodic_schedules, mapping={
        "unknown": ujson.dumps({"job": "api.nobody", "every": 60}),
        "bad-args": ujson.dumps({"job": Digest.name, "every": 60, "args": {"a": 1}}),
        "bad-queue": ujson.dumps({"job": Digest.name, "every": 60, "queue": "a:b"}),
        "junk": "{not json",
        "huge-int": ujson.dumps({"job": Digest.name, "every": 60, "args": [2**70]}),
    })
    with pytest.raises(NotFound, match="no published schedule"):
        api.enqueue_periodic("nope")
    with pytest.raises(AdminError, match="no job is registered as 'api.nobody'.*import the jobs"):
        api.enqueue_periodic("unknown")
    for name in ("bad-args", "bad-queue"):
        with pytest.raises(AdminError, match="does not say which job"):
            api.enqueue_periodic(name)
    with pytest.raises(AdminError, match="not readable"):
        api.enqueue_periodic("junk")
    with pytest.raises(AdminError, match="huge-int.*does not fit in 64 bits"):
        api.enqueue_periodic("huge-int")
    middleware.add_client(lambda job_class, job, call_next: None)
    try:
        redis_client.hset(api.keys.periodic_schedules, "vetoed",
                          ujson.dumps({"job": Digest.name, "every": 60}))
        with pytest.raises(AdminError, match="vetoed"):
            api.enqueue_periodic("vetoed")
    finally:
        middleware.clear()
    assert api.totals()["enqueued"] == 0 and not redis_client.exists(api.keys.queues)


# -- on a real Redis Cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster():
    """Three primaries of our own (devserver.LocalCluster), stopped by PID afterwards."""
    from jiggler_gevent import devserver

    try:
        devserver.find_server_binary()
    except devserver.ServerNotFound as exc:
        pytest.skip(str(exc))
    cluster = devserver.LocalCluster(masters=3).start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def cluster_api(local_cluster, redis_client):
    """An Api over a cluster client; the client API enqueues to the cluster meanwhile
    (redis_client's teardown, after this one's, points it back)."""
    client = make_client(local_cluster.url)
    assert is_cluster(client)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    jiggler_gevent.configure(redis_url=local_cluster.url, namespace="")
    try:
        yield Api(client)
    finally:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        client.close()


def node_of(client, key: str) -> str:
    return client.get_node_from_key(key).name


def test_enqueue_listings_and_actions_on_a_cluster(cluster_api):
    """Enqueue registers queues; the listings merge sets that live on different nodes;
    every action works (a Lua script or MULTI touching two slots would fail here with
    CROSSSLOT); a dead entry retried to another queue takes the write-then-remove path."""
    from jiggler_gevent import Job

    class ClusterMail(Job):
        name = "api.cluster.mail"
        queue = "mail"

        def perform(self, n):
            pass

    api, client = cluster_api, cluster_api.client
    queues = ["mail", "low", "q2", "q3", "q4", "q5"]
    assert len({node_of(client, api.keys.dead(q)) for q in queues}) >= 2  # spread over nodes
    ClusterMail.enqueue(1)
    ClusterMail.with_options(queue="low").enqueue_bulk([[2], [3]])
    ClusterMail.with_options(queue="q2").enqueue_in(3600, 4)
    assert api.queue_names() == ["low", "mail", "q2"]
    for i, queue in enumerate(queues):
        put(client, api.keys, "dead", queue,
            {failed(job(jid=f"d{i}", queue="mail" if queue == "low" else queue)): 100.0 + i})
    totals = api.totals()
    assert (totals["enqueued"], totals["scheduled"], totals["dead"]) == (3, 1, 6)
    listing = api.set_page("dead", 2, 4)
    assert [e.jid for e in listing.entries] == ["d1", "d0"] and listing.total == 6
    assert [e.jid for e in api.set_page("dead", 1, 4).entries] == ["d5", "d4", "d3", "d2"]
    low = api.find_job("d1")
    assert (low.queue_name, low.runnable_queue) == ("low", "mail")
    assert api.retry_now("dead", low.ref) == "mail"  # two slots: push, then remove
    assert client.zcard(api.keys.dead("low")) == 0 and client.llen(api.keys.queue("mail")) == 2
    scheduled = api.set_page("scheduled").entries[0]
    api.kill("scheduled", scheduled.ref)
    assert api.set_page("dead", queue="q2").total == 2
    assert api.retry_all("dead", queue="q3") == (1, 0)
    assert api.retry_jids("dead", ["d4", "nope"]) == (1, ["nope"])
    assert api.delete_all("dead") == 4  # d0, d2, d5 and the killed one
    assert api.clear_queue("low") == 2
    assert len(api.history(3)) == 3 and isinstance(api.redis_info(), dict)
    client.hset(api.keys.process("p1"), "identity", "p1")
    api.signal_process("p1", "quiet")


def test_dashboard_on_a_cluster(cluster_api):
    werkzeug_test = pytest.importorskip("werkzeug.test")
    pytest.importorskip("jinja2")
    from jiggler_gevent.web import Dashboard

    api, client = cluster_api, cluster_api.client
    put(client, api.keys, "dead", "a", {failed(job(jid="da", queue="b")): 1.0})
    put(client, api.keys, "retries", "b", {failed(job(jid="rb", queue="b")): 2.0})
    web = werkzeug_test.Client(Dashboard(client=client))
    for path in ("/", "/queues", "/dead", "/retries", "/scheduled", "/dead?queue=a", "/jobs/da",
                 "/busy", "/stats.json"):
        assert web.get(path).status_code == 200, path
    web.get("/dead")
    token = web.get_cookie("jiggler_csrf").value
    ref = api.find_job("da").ref
    response = web.post(f"/dead/{ref}/retry", data={"csrf_token": token},
                        headers={"Origin": "http://localhost"})
    assert response.status_code == 303
    assert client.llen(api.keys.queue("b")) == 1


@needs_cron
def test_periodic_on_a_cluster(cluster_api):
    """Descriptions in the global slot, ticks in each queue's slot: read together; the
    enqueue-now push goes to the queue's slot."""
    api, client = cluster_api, cluster_api.client
    published(client, api.keys)
    assert [s.last_tick for s in api.periodic(PERIODIC_NOW)] == [PERIODIC_NOW - 630] * 2
    assert api.enqueue_periodic("digest-<b>&\"'")[1] == "low"
    assert client.llen(api.keys.queue("low")) == 1 and "low" in api.queue_names()


def test_cleaner_on_a_cluster_scans_every_primary(cluster_api, local_cluster):
    api, client = cluster_api, cluster_api.client
    other = Keys("other")
    for i in range(20):
        push(client, api.keys, f"q{i}", b"x")
        put(client, api.keys, "dead", f"q{i}", {b"x": 1})
        push(client, other, f"q{i}", b"x")
    client.set(api.keys.processed, 1)
    client.set("unrelated", 1)
    assert len({node_of(client, api.keys.queue(f"q{i}")) for i in range(20)}) == 3
    cleaner = Cleaner(client, "")
    assert cleaner.prune_all_queues() == 20
    assert cleaner.prune_all() == 20 + 2  # the dead sets, the registry and the counter
    assert Cleaner(client, "other").prune_all() == 21
    left = []
    for node in local_cluster.masters:
        with redis.Redis(port=node.port) as node_client:
            left += node_client.keys("*")
    assert left == [b"unrelated"]

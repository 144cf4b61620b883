"""Upgrading from 0.1 (``jiggler_gevent.migrate``): a keyspace of the 0.1 layout, built by
hand with raw redis-py commands and literal 0.1 key names (``git show 25c1c29``), is
moved, and the current code (keys, scripts, API, a real worker) finds every job."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
import redis
from e2e.conftest import worker_spawner
from e2e.procs import REPO_ROOT, Ledger, wait_until

from jiggler_gevent import api as _api
from jiggler_gevent import cli, migrate
from jiggler_gevent.keys import Keys
from jiggler_gevent.scripts import Scripts

DAY = "2024-05-17"
DEAD_OWNER = "0123456789abcdef"
LIVE_OWNER = "fedcba9876543210"


def prefix(namespace: str) -> str:
    """The 0.1 key prefix: ``jiggler:``, or ``myapp:jiggler:`` under a namespace."""
    return f"{namespace}:jiggler:" if namespace else "jiggler:"


def job(jid: str, queue: str | None = "default", name: str = "e2e.record", **extra) -> bytes:
    body = {"name": name, "args": [], "jid": jid, "retries": 3, "enqueued_at": 1.0, **extra}
    if queue is not None:
        body["queue"] = queue
    return json.dumps(body).encode()


def jid_of(raw: bytes) -> str:
    return json.loads(raw)["jid"]


def fill_list(client, key: str, jids: list[str], queue: str = "default") -> None:
    """LPUSH jobs in the order given, as 0.1 enqueued them: the first is the oldest."""
    for jid in jids:
        client.lpush(key, job(jid, queue))


def pop_order(client, key: str) -> list[str]:
    """The jids of a list in the order the workers take them (from the right)."""
    return [jid_of(raw) for raw in reversed(client.lrange(key, 0, -1))]


def fetch_all(client, keys: Keys, queue: str) -> list[str]:
    """Take every job of a queue with the current fetch.lua (at-most-once), in order."""
    out = Scripts(client).fetch(keys=[keys.queue(queue)], args=[100_000, "0"])
    return [jid_of(raw) for raw in out[1::2]]


def snapshot(client) -> dict:
    """Every key with its type and serialized value (to prove nothing changed)."""
    return {key: (client.type(key), client.dump(key), client.pttl(key) > 0)
            for key in client.keys("*")}


def build_old_keyspace(client, namespace: str = "", now: float | None = None) -> dict:
    """A 0.1 keyspace with something in every kind of key; returns what should run."""
    p = prefix(namespace)
    now = time.time() if now is None else now
    fill_list(client, p + "list:default", ["p1", "p2", "p3"])
    fill_list(client, p + "list:mail", ["m1", "m2"], queue="mail")
    fill_list(client, p + "list:default:quarantine", ["q1"])
    client.lpush(p + f"list:mail:in_progress:{DEAD_OWNER}", job("i1", "mail"), job("i2", "mail"))
    client.hset(p + "reservations", p + f"list:mail:in_progress:{DEAD_OWNER}", DEAD_OWNER)
    client.zadd(p + "processes", {DEAD_OWNER: now - 600})  # its heartbeat hash expired
    client.lpush(p + f"process:{DEAD_OWNER}:signals", "quiet")
    client.zadd(p + "set:scheduled", {
        job("s1", "mail"): now - 5,            # due: to mail's scheduled set
        job("s2", None): now + 1,              # no queue: default
        job("s3", "crawl"): now + 1,           # a queue nothing else mentions
    })
    retry = json.loads(job("r1", "default", retry_queue="low"))
    retry.update(attempt=1, error_class="ValueError", error_message="boom", failed_at=now - 9,
                 retry_at=now - 1)
    client.zadd(p + "set:retries", {json.dumps(retry).encode(): now - 1,
                                    job("r2", "mail", retry_queue="bad queue"): now - 1})
    dead = json.loads(job("d1", "mail"))
    dead.update(attempt=4, error_class="ValueError", error_message="boom", failed_at=now - 99)
    client.zadd(p + "set:dead", {json.dumps(dead).encode(): now - 99,
                                 json.dumps({"name": None, "queue": None, "raw": "x",
                                             "error_class": "PoisonPill"}).encode(): now - 50})
    client.set(p + "stats:processed_counter", 40)
    client.set(p + "stats:failures_counter", 7)
    client.set(p + f"stats:processed:{DAY}", 30, ex=86400 * 300)
    client.set(p + f"stats:failures:{DAY}", 5, ex=86400 * 300)
    client.set(p + f"stats:counted:{DEAD_OWNER}", 12, ex=3600)
    client.set(p + "recovered:" + "a" * 40, 1, ex=3600)
    client.hset(p + "periodic:last", "nightly", now - 3600)
    client.hset(p + "periodic:schedules", "nightly", json.dumps({"job": "e2e.record", "every": 60}))
    # r2 moves to mail's retries (its queue); the worker that pops it dead-letters it for
    # its invalid retry_queue field, as it would any payload with a bad field
    return {"run": ["p1", "p2", "p3", "m1", "m2", "q1", "i1", "i2", "s1", "s2", "s3", "r1"],
            "dead": ["d1"], "buried_by_worker": ["r2"]}


def old_keys_left(client, namespace: str) -> list[bytes]:
    return sorted(client.keys(prefix(namespace) + "*"))


# -- finding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_find_old_keys_counts_every_kind(redis_client, namespace):
    build_old_keyspace(redis_client, namespace)
    redis_client.lpush("jiggler:list:other:thing:here", b"x")  # not of the layout
    found = migrate.find_old_keys(redis_client, namespace)
    assert (found.pending, found.pending_lists) == (5, 2)
    assert (found.quarantine, found.quarantine_lists) == (1, 1)
    assert (found.in_progress, found.in_progress_lists) == (2, 1)
    assert (found.scheduled, found.retries, found.dead) == (3, 2, 2)
    assert found.counters == 2 and found.bookkeeping == 4 and found.live_processes == []
    assert found.jobs == 15 and found.found and found.complete
    assert found.unrecognised == (["jiggler:list:other:thing:here"] if not namespace else [])
    assert found.describe().startswith("5 pending job(s) in 2 list(s), 2 in progress job(s) in 1 "
                                       "list(s), 1 quarantined job(s) in 1 list(s), 3 scheduled")
    other = migrate.find_old_keys(redis_client, "" if namespace else "myapp")
    assert not other.found and other.jobs == 0  # another namespace's keys are not ours


def test_find_old_keys_scan_budget(redis_client):
    redis_client.mset({f"unrelated:{i}": 1 for i in range(3000)})
    redis_client.lpush("jiggler:list:default", job("p1"))
    found = migrate.find_old_keys(redis_client, "", max_scan_calls=1, count=10)
    assert not found.complete and found.describe().startswith("at least")
    assert migrate.find_old_keys(redis_client, "").pending == 1  # no budget: to the end


def test_nothing_found_on_a_clean_or_new_keyspace(redis_client):
    assert not migrate.find_old_keys(redis_client, "").found
    keys = Keys("")
    redis_client.lpush(keys.queue("default"), job("n1"))
    redis_client.sadd(keys.queues, "default")
    assert not migrate.find_old_keys(redis_client, "").found
    report = migrate.migrate(redis_client, "")
    assert report.moved == 0 and report.dropped == 0 and report.unrecognised == []


# -- moving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_migrate_moves_every_kind_where_the_new_code_finds_it(redis_client, namespace):
    now = time.time()
    build_old_keyspace(redis_client, namespace, now)
    redis_client.set(prefix(namespace) + "unknown:key", 1)  # not of the layout: left
    keys = Keys(namespace)
    redis_client.incrby(keys.processed, 2)  # counted by a new worker since the upgrade
    report = migrate.migrate(redis_client, namespace, now=now)

    assert (report.pending, report.in_progress, report.quarantine) == (5, 2, 1)
    assert (report.scheduled, report.retries, report.dead, report.buried) == (3, 2, 2, 0)
    assert (report.processed, report.failures, report.days) == (40, 7, 2)
    assert report.queues == ["crawl", "default", "low", "mail"]
    assert report.dropped == 7 and report.forced_past == [] and report.skipped == []
    assert report.unrecognised == [prefix(namespace) + "unknown:key"]
    assert old_keys_left(redis_client, namespace) == [(prefix(namespace) + "unknown:key").encode()]
    assert not migrate.find_old_keys(redis_client, namespace).found

    c = redis_client
    assert {m.decode() for m in c.smembers(keys.queues)} == {"crawl", "default", "low", "mail"}
    api = _api.Api(c, namespace)  # the dashboard's view
    totals = api.totals()
    assert (totals["processed"], totals["failed"], totals["enqueued"]) == (42, 7, 7)
    assert (totals["scheduled"], totals["retries"], totals["dead"]) == (3, 2, 2)
    assert {q.name: q.size for q in api.queues()} == {"crawl": 0, "default": 3, "low": 0, "mail": 4}
    assert fetch_all(c, keys, "default") == ["p1", "p2", "p3"]
    assert fetch_all(c, keys, "mail") == ["i1", "i2", "m1", "m2"]  # in progress: first in line
    assert pop_order(c, keys.quarantine("default")) == ["q1"]
    assert [jid_of(m) for m in c.zrange(keys.scheduled("mail"), 0, -1)] == ["s1"]
    assert [jid_of(m) for m in c.zrange(keys.scheduled("default"), 0, -1)] == ["s2"]
    assert [jid_of(m) for m in c.zrange(keys.scheduled("crawl"), 0, -1)] == ["s3"]
    assert [jid_of(m) for m in c.zrange(keys.retries("low"), 0, -1)] == ["r1"]  # retry_queue
    assert [jid_of(m) for m in c.zrange(keys.retries("mail"), 0, -1)] == ["r2"]  # bad one: queue
    assert c.zscore(keys.retries("low"), c.zrange(keys.retries("low"), 0, -1)[0]) == now - 1
    assert [jid_of(m) for m in c.zrange(keys.dead("mail"), 0, -1)] == ["d1"]
    assert [json.loads(m)["error_class"] for m in c.zrange(keys.dead("default"), 0, -1)] == [
        "PoisonPill"]  # no queue: default
    assert c.get(keys.processed) == b"42" and c.get(keys.failures) == b"7"
    assert c.get(keys.processed_on(DAY)) == b"30" and c.get(keys.failures_on(DAY)) == b"5"
    assert 86400 * 299 < c.ttl(keys.processed_on(DAY)) <= 86400 * 300  # the old TTL kept


def test_order_old_jobs_first_in_line_and_in_their_order(redis_client):
    """0.1 jobs were LPUSHed and taken from the right; jobs enqueued since the upgrade are
    in the new list. After the move, batch after batch, the jobs of gone processes run
    first, then the old pending jobs oldest first, then the new ones."""
    keys = Keys("")
    fill_list(redis_client, "jiggler:list:default", [f"o{i}" for i in range(1, 8)])
    fill_list(redis_client, keys.queue("default"), ["n1", "n2"])  # enqueued since the upgrade
    ip = f"jiggler:list:default:in_progress:{DEAD_OWNER}"
    redis_client.lpush(ip, job("i1"), job("i2"))  # fetched i1 first (LMOVE right -> left)
    seen = []
    migrate.migrate(redis_client, "", batch_size=2, progress=lambda what, n: seen.append(what))
    assert len(seen) == 4 + 1  # 7 jobs in batches of 2, then one batch of the in-progress list
    expected = ["i1", "i2"] + [f"o{i}" for i in range(1, 8)] + ["n1", "n2"]
    assert pop_order(redis_client, keys.queue("default")) == expected
    assert fetch_all(redis_client, keys, "default") == expected  # the worker's own fetch


def test_order_when_the_new_list_is_empty_one_rename(redis_client):
    keys = Keys("")
    fill_list(redis_client, "jiggler:list:default", [f"o{i}" for i in range(1, 6)])
    fill_list(redis_client, "jiggler:list:default:quarantine", ["q1", "q2"])
    fill_list(redis_client, keys.quarantine("default"), ["nq"])
    seen = []
    migrate.migrate(redis_client, "", batch_size=2, progress=lambda what, n: seen.append((what, n)))
    assert seen[0] == ("pending jiggler:list:default", 5)  # one step: RENAME
    assert fetch_all(redis_client, keys, "default") == ["o1", "o2", "o3", "o4", "o5"]
    assert pop_order(redis_client, keys.quarantine("default")) == ["q1", "q2", "nq"]


class Crash(Exception):
    pass


def crash_after(batches: int):
    calls = []

    def progress(what, moved):
        calls.append(what)
        if len(calls) == batches:
            raise Crash(f"simulated crash after batch {batches} ({what})")
    return progress


def all_jobs(client, namespace: str) -> list[str]:
    """Every jid held in any list or set of either layout (duplicates kept)."""
    out = []
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            out += [jid_of(m) for m in client.lrange(key, 0, -1)]
        elif kind == b"zset":
            out += [jid_of(m) for m in client.zrange(key, 0, -1)]
    return sorted(out)


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 6])
def test_crash_between_batches_loses_nothing_and_a_rerun_finishes(redis_client, crash_at):
    now = time.time()
    keys = Keys("")
    fill_list(redis_client, "jiggler:list:default", [f"o{i}" for i in range(1, 6)])
    fill_list(redis_client, keys.queue("default"), ["n1"])
    redis_client.zadd("jiggler:set:scheduled", {job(f"s{i}", "mail"): now + i for i in range(5)})
    redis_client.set("jiggler:stats:processed_counter", 10)
    everything = sorted([f"o{i}" for i in range(1, 6)] + ["n1"] + [f"s{i}" for i in range(5)])
    with pytest.raises(Crash):
        migrate.migrate(redis_client, "", batch_size=2, progress=crash_after(crash_at))
    assert all_jobs(redis_client, "") == everything  # each job in exactly one place
    assert "mail" in {m.decode() for m in redis_client.smembers(keys.queues)} or crash_at <= 3
    report = migrate.migrate(redis_client, "", batch_size=2)
    assert all_jobs(redis_client, "") == everything
    assert fetch_all(redis_client, keys, "default") == [f"o{i}" for i in range(1, 6)] + ["n1"]
    assert [jid_of(m) for m in redis_client.zrange(keys.scheduled("mail"), 0, -1)] == [
        f"s{i}" for i in range(5)]
    assert redis_client.get(keys.processed) == b"10"  # added once, never twice
    assert report.processed == 10
    assert old_keys_left(redis_client, "") == []


def test_running_twice_moves_nothing_the_second_time(redis_client):
    build_old_keyspace(redis_client, "")
    first = migrate.migrate(redis_client, "")
    state = snapshot(redis_client)
    second = migrate.migrate(redis_client, "")
    assert first.moved == 15 and second.moved == 0 and second.dropped == 0
    assert (second.processed, second.failures, second.days) == (0, 0, 0)
    assert snapshot(redis_client) == state


def test_refuses_while_an_old_worker_is_alive_unless_forced(redis_client):
    build_old_keyspace(redis_client, "")
    live_ip = f"jiggler:list:default:in_progress:{LIVE_OWNER}"
    redis_client.lpush(live_ip, job("busy"))
    redis_client.zadd("jiggler:processes", {LIVE_OWNER: time.time()})
    redis_client.hset(f"jiggler:process:{LIVE_OWNER}", "identity", LIVE_OWNER)
    redis_client.expire(f"jiggler:process:{LIVE_OWNER}", 30)
    redis_client.set(f"jiggler:stats:counted:{LIVE_OWNER}", 3)
    state = snapshot(redis_client)
    with pytest.raises(migrate.MigrationError, match=f"still alive.*{LIVE_OWNER}.*--force"):
        migrate.migrate(redis_client, "")
    assert snapshot(redis_client) == state  # refused before touching anything
    assert migrate.find_old_keys(redis_client, "").live_processes == [LIVE_OWNER]

    report = migrate.migrate(redis_client, "", force=True)
    assert report.forced_past == [LIVE_OWNER] and report.skipped[0][0] == live_ip
    assert report.pending == 5 and report.in_progress == 2  # the dead owner's list moved
    left = {k.decode() for k in redis_client.keys("jiggler:*")}
    assert left == {live_ip, "jiggler:processes", "jiggler:reservations",
                    f"jiggler:process:{LIVE_OWNER}", f"jiggler:stats:counted:{LIVE_OWNER}"}
    redis_client.delete(f"jiggler:process:{LIVE_OWNER}")  # the old worker died
    report = migrate.migrate(redis_client, "")
    assert report.in_progress == 1 and report.dropped == 3
    assert old_keys_left(redis_client, "") == []
    assert fetch_all(redis_client, Keys(""), "default")[0] == "busy"


def test_refuses_a_cluster_client():
    client = object.__new__(redis.cluster.RedisCluster)  # no connection needed to be refused
    with pytest.raises(migrate.MigrationError, match="never ran on a cluster"):
        migrate.migrate(client, "")
    with pytest.raises(migrate.MigrationError, match="never ran on a cluster"):
        migrate.find_old_keys(client, "")


def test_garbage_members(redis_client):
    now = time.time()
    keys = Keys("")
    members = {
        b"\xff\x00 not json": 1,
        b"[1, 2]": 2,
        b'{"args": [], "queue": "default"}': 3,            # no name
        job("badq", "no such:queue"): 4,                   # invalid queue
        job("nullq", None, queue_is="null"): 5,
    }
    null_queue = json.loads(job("nullq2"))
    null_queue["queue"] = None
    members[json.dumps(null_queue).encode()] = 6             # null queue: default, like absent
    redis_client.zadd("jiggler:set:scheduled", members)
    redis_client.zadd("jiggler:set:retries", {job("rq", "mail", retry_queue="bad queue"): 7,
                                              job("rq2", "bad queue", retry_queue="ok"): 8})
    redis_client.zadd("jiggler:set:dead", {b"\x01 not json either": 9})
    report = migrate.migrate(redis_client, "", now=now)
    assert report.buried == 4 and report.scheduled == 2 and report.retries == 2 and report.dead == 1
    assert [jid_of(m) for m in redis_client.zrange(keys.scheduled("default"), 0, -1)] == [
        "nullq", "nullq2"]
    assert [jid_of(m) for m in redis_client.zrange(keys.retries("mail"), 0, -1)] == ["rq"]
    assert [jid_of(m) for m in redis_client.zrange(keys.retries("ok"), 0, -1)] == ["rq2"]
    dead = redis_client.zrange(keys.dead("default"), 0, -1, withscores=True)
    assert (b"\x01 not json either", 9.0) in dead  # a dead entry moves unchanged
    buried = [json.loads(m) for m, score in dead if score == now]
    assert len(buried) == 4
    for entry in buried:
        assert entry["error_class"] == "PayloadError" and entry["queue"] == "default"
        assert entry["name"] is None and "jiggler:set:scheduled (0.1 layout)" in entry["error_message"]
    kept = sorted(bytes.fromhex(e["raw_hex"]) if "raw_hex" in e else e["raw"].encode()
                  for e in buried)
    assert kept == sorted([b"\xff\x00 not json", b"[1, 2]", b'{"args": [], "queue": "default"}',
                           job("badq", "no such:queue")])  # the bytes are kept
    page = _api.Api(redis_client, "").set_page("dead")  # the dashboard lists them
    assert page.total == 5


def test_counter_that_is_not_an_integer_is_left(redis_client):
    redis_client.set("jiggler:stats:processed_counter", "oops")
    redis_client.set("jiggler:stats:failures_counter", 3)
    report = migrate.migrate(redis_client, "")
    assert report.failures == 3 and report.skipped == [
        ("jiggler:stats:processed_counter", "its value 'oops' is not an integer")]
    assert redis_client.get("jiggler:stats:processed_counter") == b"oops"


def test_a_large_list_moves_in_batches(redis_client):
    keys = Keys("")
    n = 30_000
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, n, 1000):
        pipe.lpush("jiggler:list:big", *(job(f"b{i}", "big") for i in range(start, start + 1000)))
    pipe.execute()
    redis_client.lpush(keys.queue("big"), job("new", "big"))
    batches = []
    report = migrate.migrate(redis_client, "", progress=lambda what, moved: batches.append(moved))
    assert report.pending == n and len(batches) == n // migrate.DEFAULT_BATCH
    assert redis_client.llen(keys.queue("big")) == n + 1
    assert jid_of(redis_client.lindex(keys.queue("big"), -1)) == "b0"  # the oldest runs first
    assert jid_of(redis_client.lindex(keys.queue("big"), 0)) == "new"


def test_migrate_does_not_import_gevent():
    code = ("import sys, jiggler_gevent.migrate, jiggler_gevent.admin; "
            "sys.exit(1 if 'gevent' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- the worker's start-up warning -------------------------------------------------------------


def test_startup_warning_names_the_counts_and_the_command(redis_client, caplog):
    caplog.set_level(logging.DEBUG, logger="jiggler_gevent")
    cli._warn_about_old_keys(redis_client, "myapp")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    build_old_keyspace(redis_client, "myapp")
    cli._warn_about_old_keys(redis_client, "myapp")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "5 pending job(s) in 2 list(s)" in warnings[0] and "3 scheduled" in warnings[0]
    assert "`jiggler-gevent migrate-keys --namespace myapp`" in warnings[0]
    assert "so their jobs will not run" in warnings[0]
    caplog.clear()
    cli._warn_about_old_keys(redis_client, "")  # another namespace: nothing to say
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    redis_client.set("jiggler:stats:processed_counter", 3)  # no jobs, only a counter
    cli._warn_about_old_keys(redis_client, "")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "(1 counter(s)): no jobs among them" in warning and "`jiggler-gevent migrate-keys`" in warning


def test_startup_warning_is_never_fatal(caplog):
    caplog.set_level(logging.DEBUG, logger="jiggler_gevent")
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    cli._warn_about_old_keys(client, "")  # a Redis error: a debug line, no exception
    ours = [r for r in caplog.records if r.name.startswith("jiggler_gevent")]
    assert [r.levelno for r in ours] == [logging.DEBUG]
    assert "could not look for keys of the 0.1 layout" in ours[0].getMessage()


# -- a real worker over the migrated keys ------------------------------------------------------


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_a_worker_runs_every_migrated_job_once(redis_client, redis_url, tmp_path, namespace):
    expected = build_old_keyspace(redis_client, namespace)
    ledger = Ledger(tmp_path / "ledger.txt")
    args = ["-q", "default,mail,low,crawl", "-c", "4", "--poll-interval", "0.2",
            "--requeue-interval", "0.2"] + (["--namespace", namespace] if namespace else [])
    with worker_spawner(tmp_path, ledger, redis_url) as spawn:
        before = spawn(*args, name="before")  # not migrated yet: it warns, and sees nothing
        wait_until(lambda: "migrate-keys" in before.stdout(), 20, "the 0.1 keys warning", before)
        before.send(signal.SIGTERM)
        before.wait_exit(20)
        assert ledger.entries() == []
        warning = [line for line in before.stdout().splitlines() if "migrate-keys" in line]
        assert len(warning) == 1 and " WARNING " in warning[0] and "5 pending job(s)" in warning[0]

        report = migrate.migrate(redis_client, namespace)
        assert report.moved == 15
        worker = spawn(*args, name="after")
        wait_until(lambda: set(expected["run"]) <= ledger.ended(), 30,
                   "every migrated job to run", worker)
        time.sleep(0.5)  # room for a duplicate to show up
        worker.send(signal.SIGTERM)
        worker.wait_exit(20)
        assert worker.returncode == 0, worker.tail()
    lost, dup = ledger.lost_and_dup(expected["run"])
    assert (lost, dup) == (0, 0)
    assert ledger.started() == set(expected["run"])  # the dead entry did not run
    keys = Keys(namespace)
    dead = [json.loads(m) for m in redis_client.zrange(keys.dead("mail"), 0, -1)]
    assert sorted(json.loads(e["raw"])["jid"] if "raw" in e else e["jid"] for e in dead) == [
        "d1", "r2"]  # r2's bytes kept in "raw"
    assert sorted(e["error_class"] for e in dead) == ["PayloadError", "ValueError"]
    assert "migrate-keys" not in worker.stdout()
    assert not migrate.find_old_keys(redis_client, namespace).found

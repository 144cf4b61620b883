"""The Lua scripts (fetch, schedule, requeue, drain, recover, unregister, stats) against a
real server, called the way the worker calls them: one queue's keys (one cluster slot)
per call, except where a single server lets one call span queues."""

from __future__ import annotations

import json
import time

import pytest
import redis

from jiggler_gevent.keys import Keys
from jiggler_gevent.scripts import SCRIPT_NAMES, Scripts, source

KEYS = Keys()
Q1, Q2, Q3 = KEYS.queue("q1"), KEYS.queue("q2"), KEYS.queue("q3")
IP1, IP2, IP3 = (KEYS.in_progress(q, "host-1-abc") for q in ("q1", "q2", "q3"))


@pytest.fixture
def scripts(redis_client) -> Scripts:
    return Scripts(redis_client)


def fill(client, key: str, *jobs) -> None:
    """Put jobs in a list so that they come out of RPOP in the order given."""
    if jobs:
        client.lpush(key, *jobs)


def next_out(client, key: str) -> list[bytes]:
    """A list's items in the order RPOP would return them."""
    return list(reversed(client.lrange(key, 0, -1)))


def pairs(flat: list) -> list[tuple[int, bytes]]:
    return list(zip(flat[0::2], flat[1::2]))


def job(queue: str | None = "q1", n: int = 0, **extra) -> bytes:
    body = {"name": "app.Job", "args": [n], "jid": f"j{n}", **extra}
    if queue is not None:
        body["queue"] = queue
    return json.dumps(body).encode()


def test_every_script_is_loaded_from_its_file(redis_client):
    scripts = Scripts(redis_client)
    for name in SCRIPT_NAMES:
        assert source(name).strip()
        assert getattr(scripts, name).script == source(name)


def hash_tag(key: str) -> str:
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


# -- fetch ------------------------------------------------------------------------------------------


def test_fetch_at_most_once_takes_queues_in_order(redis_client, scripts):
    fill(redis_client, Q1, b"a1", b"a2")
    fill(redis_client, Q3, b"c1")
    out = scripts.fetch(keys=[Q1, Q2, Q3], args=[10, "0"])
    assert pairs(out) == [(1, b"a1"), (1, b"a2"), (3, b"c1")]
    assert redis_client.keys("*") == []


def test_fetch_at_most_once_takes_no_more_than_asked(redis_client, scripts):
    fill(redis_client, Q1, b"a1", b"a2", b"a3")
    fill(redis_client, Q2, b"b1")
    assert pairs(scripts.fetch(keys=[Q1, Q2], args=[2, "0"])) == [(1, b"a1"), (1, b"a2")]
    assert pairs(scripts.fetch(keys=[Q1, Q2], args=[2, "0"])) == [(1, b"a3"), (2, b"b1")]
    assert scripts.fetch(keys=[Q1, Q2], args=[2, "0"]) == []
    assert next_out(redis_client, Q1) == [] and next_out(redis_client, Q2) == []


def test_fetch_at_least_once_reserves_in_the_in_progress_lists(redis_client, scripts):
    fill(redis_client, Q1, b"a1", b"a2")
    fill(redis_client, Q2, b"b1", b"b2", b"b3")
    out = scripts.fetch(keys=[Q1, IP1, Q2, IP2, Q3, IP3], args=[4, "1"])
    assert pairs(out) == [(1, b"a1"), (1, b"a2"), (2, b"b1"), (2, b"b2")]
    assert redis_client.lrange(IP1, 0, -1) == [b"a2", b"a1"]  # newest reservation at the left
    assert redis_client.lrange(IP2, 0, -1) == [b"b2", b"b1"]
    assert next_out(redis_client, Q2) == [b"b3"]
    assert not redis_client.exists(Q1, IP3)


def test_fetch_at_least_once_count_limit_and_skipping_empty_queues(redis_client, scripts):
    fill(redis_client, Q2, b"b1", b"b2")
    fill(redis_client, Q3, b"c1")
    out = scripts.fetch(keys=[Q1, IP1, Q2, IP2, Q3, IP3], args=[1, "1"])
    assert pairs(out) == [(2, b"b1")]
    assert redis_client.lrange(IP2, 0, -1) == [b"b1"]
    assert next_out(redis_client, Q2) == [b"b2"] and next_out(redis_client, Q3) == [b"c1"]


@pytest.mark.parametrize("mode, keys", [("0", [Q1]), ("1", [Q1, IP1])])
def test_fetch_of_empty_queues_or_zero_wanted_returns_nothing(redis_client, scripts, mode, keys):
    assert scripts.fetch(keys=keys, args=[5, mode]) == []
    fill(redis_client, Q1, b"a1")
    assert scripts.fetch(keys=keys, args=[0, mode]) == []
    assert next_out(redis_client, Q1) == [b"a1"]


@pytest.mark.parametrize("mode", ["0", "1"])
def test_fetch_moves_bytes_unchanged(redis_client, scripts, mode):
    raw = b"\xff\x00 not json \xc3\xa9" + bytes(range(256))
    fill(redis_client, Q1, raw)
    keys = [Q1] if mode == "0" else [Q1, IP1]
    assert pairs(scripts.fetch(keys=keys, args=[1, mode])) == [(1, raw)]
    if mode == "1":
        assert redis_client.lrange(IP1, 0, -1) == [raw]


def test_fetch_acks_by_queue_index_before_taking(redis_client, scripts):
    redis_client.lpush(IP1, b"done-1", b"busy")
    redis_client.lpush(IP2, b"done-2")
    fill(redis_client, Q2, b"b1")
    out = scripts.fetch(keys=[Q1, IP1, Q2, IP2], args=[5, "1", 2, 1, b"done-1", 2, b"done-2"])
    assert pairs(out) == [(2, b"b1")]
    assert redis_client.lrange(IP1, 0, -1) == [b"busy"]
    assert redis_client.lrange(IP2, 0, -1) == [b"b1"]


def test_fetch_of_one_queue_with_its_own_acks_and_nothing_wanted(redis_client, scripts):
    """The cluster form: one queue per call, its acks at index 1; want 0 only acks."""
    redis_client.lpush(IP2, b"done", b"busy")
    fill(redis_client, Q2, b"b1")
    assert scripts.fetch(keys=[Q2, IP2], args=[0, "1", 1, 1, b"done"]) == []
    assert redis_client.lrange(IP2, 0, -1) == [b"busy"]
    assert next_out(redis_client, Q2) == [b"b1"]
    assert pairs(scripts.fetch(keys=[Q2, IP2], args=[3, "1", 0])) == [(1, b"b1")]


# -- schedule ---------------------------------------------------------------------------------------

DEAD_CAP = 1000


def schedule(scripts, now: float, batch: int = 100, *, queue: str = "q1", kind: str = "scheduled",
             dead_cap: int = DEAD_CAP, oldest_dead: float = 0, keys: Keys = KEYS) -> tuple[int, int]:
    """Run schedule.lua once on one queue's scheduled (or retry) set; returns
    (moved to the queue, sent to the dead set)."""
    q = keys.queue_keys(queue)
    moved, buried = scripts.schedule(
        keys=[getattr(q, kind), q.pending, q.dead],
        args=[now, batch, dead_cap, oldest_dead, queue],
    )
    return moved, buried


def dead_entries(client, queue: str = "q1") -> list[tuple[dict, float]]:
    return [(json.loads(m), s) for m, s in client.zrange(KEYS.dead(queue), 0, -1, withscores=True)]


def raw_of(entry: dict) -> bytes:
    """The member bytes a dead entry kept (as text, or as hex when not printable ASCII)."""
    assert ("raw" in entry) != ("raw_hex" in entry), entry
    return bytes.fromhex(entry["raw_hex"]) if "raw_hex" in entry else entry["raw"].encode()


def test_schedule_moves_only_due_jobs_with_their_bytes_unchanged(redis_client, scripts):
    now = 1_700_000_000.0
    early = b'{"queue": "q1",   "name": "x", "args": [1.50, "\xc3\xa9"], "z": {}}'
    on_time = job("q1", 2)
    late = job("q1", 3)
    redis_client.zadd(KEYS.scheduled("q1"), {early: now - 10, on_time: now, late: now + 0.001})
    assert schedule(scripts, now) == (2, 0)
    assert next_out(redis_client, Q1) == [early, on_time]
    assert redis_client.zrange(KEYS.scheduled("q1"), 0, -1) == [late]
    assert not redis_client.exists(KEYS.dead("q1"))


def test_schedule_moves_to_the_sets_own_queue_whatever_the_payload_says(redis_client, scripts):
    """The queue is the set's: a payload's queue or retry_queue field never names a key."""
    members = [job("q2", 1), job(None, 2), job("q1", 3, retry_queue="slow"), job("a:b", 4),
               job("q1:in_progress:host", 5), job("*", 6), job("{q}", 7)]
    for kind in ("scheduled", "retries"):
        redis_client.zadd(getattr(KEYS, kind)("q1"), {m: 1 for m in members})
        assert schedule(scripts, 10, kind=kind) == (len(members), 0)
        assert next_out(redis_client, Q1) == members
        redis_client.delete(Q1)
    assert redis_client.keys("*") == []


def test_schedule_appends_behind_jobs_already_waiting(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    redis_client.zadd(KEYS.scheduled("q1"), {job("q1", 1): 5})
    schedule(scripts, 10)
    assert next_out(redis_client, Q1) == [b"waiting", job("q1", 1)]


def test_schedule_batch_takes_the_earliest_first(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled("q1"), {job("q1", n): n for n in range(5)})
    assert schedule(scripts, 100, batch=2) == (2, 0)
    assert next_out(redis_client, Q1) == [job("q1", 0), job("q1", 1)]
    assert redis_client.zcard(KEYS.scheduled("q1")) == 3
    assert schedule(scripts, 100, batch=10) == (3, 0)
    assert schedule(scripts, 100, batch=10) == (0, 0)
    assert next_out(redis_client, Q1) == [job("q1", n) for n in range(5)]


def test_schedule_touches_one_queue_only(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled("q1"), {job("q1", 1): 1})
    redis_client.zadd(KEYS.scheduled("q2"), {job("q2", 2): 1})
    assert schedule(scripts, 10, queue="q2") == (1, 0)
    assert next_out(redis_client, Q2) == [job("q2", 2)]
    assert redis_client.zcard(KEYS.scheduled("q1")) == 1 and not redis_client.exists(Q1)


def test_schedule_honours_the_namespace(redis_client, scripts):
    keys = Keys("myapp")
    redis_client.zadd(keys.scheduled("q1"), {job("q1", 1): 1})
    assert schedule(scripts, 10, keys=keys) == (1, 0)
    assert redis_client.keys("*") == [keys.queue("q1").encode()]


def _member(**fields) -> bytes:
    return json.dumps(fields).encode()


BAD_MEMBERS = {
    "not JSON": b"not json at all",
    "JSON list": b'["q1"]',
    "empty JSON list": b"[]",
    "JSON string": b'"q1"',
    "JSON number": b"42",
    "empty object": b"{}",
    "no name": _member(queue="q1", args=[]),
    "numeric name": _member(name=5, queue="q1"),
    "null name": _member(name=None, queue="q1"),
    "non-UTF-8 bytes": b'\xff\xfe{"name": "x", "queue": "q1"}',
    "NUL and newline": b'{"name": "x", "queue": "q\x00"}\n',
    "deeply nested": b'{"name": "x", "queue": "q1", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


@pytest.mark.parametrize("member", BAD_MEMBERS.values(), ids=BAD_MEMBERS.keys())
def test_schedule_sends_invalid_members_to_the_dead_set(redis_client, scripts, member):
    good = job("q1", 7)
    redis_client.zadd(KEYS.scheduled("q1"), {member: 1, good: 2})
    assert schedule(scripts, 50) == (1, 1)
    assert next_out(redis_client, Q1) == [good]
    assert redis_client.zcard(KEYS.scheduled("q1")) == 0
    ((entry, score),) = dead_entries(redis_client)  # valid UTF-8 JSON whatever the bytes
    assert score == 50
    assert raw_of(entry) == member
    assert entry["error_class"] == "PayloadError"
    assert KEYS.scheduled("q1") in entry["error_message"]
    assert entry["failed_at"] == 50 and entry["queue"] == "q1" and entry["name"] is None
    assert isinstance(entry["jid"], str) and len(entry["jid"]) == 24
    assert sorted(redis_client.keys("*")) == sorted([KEYS.dead("q1").encode(), Q1.encode()])


def test_schedule_keeps_printable_ascii_as_text(redis_client, scripts):
    member = b'{"queue": "q1", "args": []}'
    redis_client.zadd(KEYS.scheduled("q1"), {member: 1})
    schedule(scripts, 5)
    ((entry, _),) = dead_entries(redis_client)
    assert entry["raw"] == member.decode() and "raw_hex" not in entry


def test_schedule_sends_a_bad_retry_entry_to_its_queues_dead_set(redis_client, scripts):
    raw = b'{"queue": "q2", "retry_queue": "q2"}'
    redis_client.zadd(KEYS.retries("q2"), {raw: 1})
    assert schedule(scripts, 10, queue="q2", kind="retries") == (0, 1)
    ((entry, _),) = dead_entries(redis_client, "q2")
    assert raw_of(entry) == raw and entry["queue"] == "q2"
    assert KEYS.retries("q2") in entry["error_message"]


def test_schedule_trims_the_dead_set_by_size_and_age(redis_client, scripts):
    redis_client.zadd(KEYS.dead("q1"), {b"ancient": 1, b"old": 50, b"recent": 90})
    redis_client.zadd(KEYS.scheduled("q1"), {b"bad-1": 1, b"bad-2": 2})
    assert schedule(scripts, 100, dead_cap=3, oldest_dead=10) == (0, 2)
    members = redis_client.zrange(KEYS.dead("q1"), 0, -1)
    assert len(members) == 3 and b"ancient" not in members and b"old" not in members
    assert members[0] == b"recent"
    assert sorted(raw_of(json.loads(m)) for m in members[1:]) == [b"bad-1", b"bad-2"]


def test_schedule_survives_script_flush(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled("q1"), {job("q1", 1): 1, job("q1", 2): 20})
    assert schedule(scripts, 10) == (1, 0)
    redis_client.script_flush()
    assert schedule(scripts, 30) == (1, 0)
    redis_client.script_flush()
    assert scripts.fetch(keys=[Q1], args=[5, "0"]) == [1, job("q1", 1), 1, job("q1", 2)]


def test_schedule_from_many_pollers_moves_each_job_once(redis_client, redis_url):
    import gevent

    jobs = {job("q1", n): 1000.0 for n in range(2000)}  # all due at one timestamp
    redis_client.zadd(KEYS.scheduled("q1"), jobs)
    clients = [redis.Redis.from_url(redis_url) for _ in range(8)]
    try:
        def poll(client):
            scripts, total = Scripts(client), 0
            while True:
                moved, _ = schedule(scripts, 1000.0, batch=50)
                if not moved:
                    return total
                total += moved

        greenlets = [gevent.spawn(poll, c) for c in clients]
        gevent.joinall(greenlets, timeout=30, raise_error=True)
        assert sum(g.value for g in greenlets) == 2000
    finally:
        for c in clients:
            c.close()
    queued = redis_client.lrange(Q1, 0, -1)
    assert len(queued) == 2000 and set(queued) == set(jobs)


# -- recover and unregister -------------------------------------------------------------------------

OWNER = "dead-owner"
MAX_RECOVERIES = 2


def recover(scripts, queue: str = "q1", owner: str = OWNER, now: float = 1000.0,
            max_recoveries: int = MAX_RECOVERIES) -> list[int]:
    q = KEYS.queue_keys(queue)
    keys = [q.in_progress(owner), q.pending, q.lease(owner), q.recoveries, q.dead, q.quarantine]
    assert {hash_tag(k) for k in keys} == {f"jiggler:q:{queue}"}  # one cluster slot
    return [int(n) for n in scripts.recover(keys=keys,
                                            args=[max_recoveries, now, 3600, DEAD_CAP, 0, queue])]


def test_recover_leaves_a_list_whose_owner_has_a_lease(redis_client, scripts):
    reserved = KEYS.in_progress("q1", OWNER)
    redis_client.lpush(reserved, b"a")
    redis_client.set(KEYS.queue_keys("q1").lease(OWNER), 1, px=5000)
    assert recover(scripts) == [-1, 0]
    assert redis_client.lrange(reserved, 0, -1) == [b"a"] and not redis_client.exists(Q1)


def test_recover_moves_the_jobs_back_oldest_at_the_head(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    redis_client.lpush(KEYS.in_progress("q1", OWNER), b"p1", b"p2")  # p1 reserved first
    redis_client.set(KEYS.queue_keys("q2").lease(OWNER), 1)  # a lease in another queue: not ours
    assert recover(scripts) == [2, 0]
    assert next_out(redis_client, Q1) == [b"p1", b"p2", b"waiting"]
    assert not redis_client.exists(KEYS.in_progress("q1", OWNER))


def test_recover_quarantines_a_second_offender_and_buries_a_poison_pill(redis_client, scripts):
    reserved = KEYS.in_progress("q1", OWNER)
    pill = job("q1", 1)
    outcomes = []
    for _ in range(MAX_RECOVERIES + 1):
        redis_client.lpush(reserved, pill)
        outcomes.append(recover(scripts))
        redis_client.delete(Q1, KEYS.quarantine("q1"))
    assert outcomes == [[1, 0], [1, 0], [0, 1]]
    ((entry, _),) = dead_entries(redis_client)
    assert entry["error_class"] == "PoisonPill" and entry["raw"] == pill.decode()
    assert entry["queue"] == "q1" and entry["jid"] == "j1" and entry["name"] == "app.Job"
    assert redis_client.keys(KEYS.queue_keys("q1").recoveries + "*") == []


def test_recover_sends_a_second_recovery_to_the_quarantine(redis_client, scripts):
    reserved = KEYS.in_progress("q1", OWNER)
    redis_client.lpush(reserved, b"suspect")
    assert recover(scripts) == [1, 0]
    assert next_out(redis_client, Q1) == [b"suspect"]
    redis_client.delete(Q1)
    redis_client.lpush(reserved, b"suspect")
    assert recover(scripts) == [1, 0]
    assert not redis_client.exists(Q1)
    assert redis_client.lrange(KEYS.quarantine("q1"), 0, -1) == [b"suspect"]


def test_unregister_forgets_a_dead_owner_but_not_one_that_came_back(redis_client, scripts):
    reserved = KEYS.in_progress("q1", OWNER)
    redis_client.hset(KEYS.reservations, reserved, OWNER)
    redis_client.zadd(KEYS.processes, {OWNER: 1})
    keys = [KEYS.process(OWNER), KEYS.reservations, KEYS.processes]
    assert {hash_tag(k) for k in keys} == {"jiggler"}
    redis_client.hset(KEYS.process(OWNER), "beat_at", 1)  # back: its heartbeat exists again
    assert scripts.unregister(keys=keys, args=[reserved, OWNER]) == 0
    assert redis_client.hget(KEYS.reservations, reserved) == OWNER.encode()
    redis_client.delete(KEYS.process(OWNER))
    assert scripts.unregister(keys=keys, args=[reserved, OWNER]) == 1
    assert not redis_client.exists(KEYS.reservations, KEYS.processes)


# -- stats ------------------------------------------------------------------------------------------


def test_stats_applies_each_batch_once(redis_client, scripts):
    keys = [KEYS.processed, KEYS.failures, KEYS.processed_on("2024-01-31"),
            KEYS.failures_on("2024-01-31"), KEYS.counted("p")]
    assert {hash_tag(k) for k in keys} == {"jiggler"}
    assert scripts.stats(keys=keys, args=[100, 100, 1, 5, 1, 2, 3, 0]) == 2
    assert scripts.stats(keys=keys, args=[100, 100, 2, 3, 0, 3, 1, 1]) == 3  # 2 again: skipped
    assert redis_client.get(KEYS.processed) == b"9" and redis_client.get(KEYS.failures) == b"2"


# -- requeue ----------------------------------------------------------------------------------------


def test_requeue_pushes_to_the_head_only_if_still_reserved(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    redis_client.lpush(IP1, b"p1", b"p2")  # p1 reserved first
    assert scripts.requeue(keys=[Q1, IP1], args=[b"p1"]) == 1
    assert next_out(redis_client, Q1) == [b"p1", b"waiting"]  # runs next
    assert redis_client.lrange(IP1, 0, -1) == [b"p2"]
    # already requeued (or acked): pushed back no second time
    assert scripts.requeue(keys=[Q1, IP1], args=[b"p1"]) == 0
    assert scripts.requeue(keys=[Q1, IP1], args=[b"never-reserved"]) == 0
    assert next_out(redis_client, Q1) == [b"p1", b"waiting"]


def test_requeue_several_pairs_in_one_call(redis_client, scripts):
    redis_client.lpush(IP1, b"a")
    redis_client.lpush(IP2, b"b")
    pushed = scripts.requeue(keys=[Q1, IP1, Q2, IP2, Q1, IP1], args=[b"a", b"b", b"gone"])
    assert pushed == 2
    assert next_out(redis_client, Q1) == [b"a"] and next_out(redis_client, Q2) == [b"b"]
    assert not redis_client.exists(IP1, IP2)


def test_requeue_removes_one_copy_of_a_duplicate_reservation(redis_client, scripts):
    redis_client.lpush(IP1, b"same", b"other", b"same")
    assert scripts.requeue(keys=[Q1, IP1], args=[b"same"]) == 1
    assert redis_client.lrange(IP1, 0, -1) == [b"same", b"other"]
    assert next_out(redis_client, Q1) == [b"same"]


def test_requeue_at_most_once_form_pushes_unconditionally(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    assert scripts.requeue(keys=[Q1, Q1], args=[b"in-flight"]) == 1
    assert scripts.requeue(keys=[Q1, Q1, Q2, Q2], args=[b"x", b"y"]) == 2
    assert next_out(redis_client, Q1) == [b"x", b"in-flight", b"waiting"]
    assert next_out(redis_client, Q2) == [b"y"]


def test_requeue_of_nothing(scripts):
    assert scripts.requeue(keys=[], args=[]) == 0


# -- drain ------------------------------------------------------------------------------------------


def test_drain_puts_every_reservation_back_oldest_at_the_head(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    redis_client.lpush(IP1, b"p1", b"p2", b"p3")  # p1 reserved first
    assert scripts.drain(keys=[IP1, Q1]) == 3
    assert next_out(redis_client, Q1) == [b"p1", b"p2", b"p3", b"waiting"]
    assert not redis_client.exists(IP1)


def test_drain_of_an_empty_list(redis_client, scripts):
    assert scripts.drain(keys=[IP1, Q1]) == 0
    assert redis_client.keys("*") == []


def test_fetch_then_drain_restores_the_queue_exactly(redis_client, scripts):
    jobs = [job("q1", n) for n in range(7)]
    fill(redis_client, Q1, *jobs)
    assert len(pairs(scripts.fetch(keys=[Q1, IP1], args=[4, "1"]))) == 4
    assert scripts.drain(keys=[IP1, Q1]) == 4
    assert next_out(redis_client, Q1) == jobs


def test_scripts_work_after_a_server_restart(fresh_server):
    client = redis.Redis.from_url(fresh_server.url)
    try:
        scripts = Scripts(client)
        fill(client, Q1, b"a")
        assert scripts.fetch(keys=[Q1], args=[1, "0"]) == [1, b"a"]
        fresh_server.restart()  # empty script cache
        client.connection_pool.disconnect()
        fill(client, Q1, b"b")
        assert scripts.fetch(keys=[Q1], args=[1, "0"]) == [1, b"b"]
        client.zadd(KEYS.scheduled("q2"), {job("q2", 1): time.time() - 1})
        assert schedule(scripts, time.time(), queue="q2") == (1, 0)
    finally:
        client.close()

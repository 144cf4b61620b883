"""The Lua scripts (fetch, schedule, requeue, drain) against a real server."""

from __future__ import annotations

import json
import time

import pytest
import redis

from jiggler_gevent.keys import Keys
from jiggler_gevent.scripts import SCRIPT_NAMES, Scripts, source

KEYS = Keys()
PREFIX = KEYS.queue_prefix
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


# -- schedule ---------------------------------------------------------------------------------------

DEAD_CAP = 1000


def schedule(scripts, now: float, batch: int = 100, retries: bool = False,
             zset: str = KEYS.scheduled, dead_cap: int = DEAD_CAP,
             oldest_dead: float = 0) -> tuple[int, int]:
    """Run schedule.lua once; returns (moved to queues, sent to the dead set)."""
    moved, buried = scripts.schedule(
        keys=[zset, KEYS.dead],
        args=[now, batch, PREFIX, "1" if retries else "0", dead_cap, oldest_dead],
    )
    return moved, buried


def dead_entries(client) -> list[tuple[dict, float]]:
    return [(json.loads(m), s) for m, s in client.zrange(KEYS.dead, 0, -1, withscores=True)]


def raw_of(entry: dict) -> bytes:
    """The member bytes a dead entry kept (as text, or as hex when not printable ASCII)."""
    assert ("raw" in entry) != ("raw_hex" in entry), entry
    return bytes.fromhex(entry["raw_hex"]) if "raw_hex" in entry else entry["raw"].encode()


def test_schedule_moves_only_due_jobs_with_their_bytes_unchanged(redis_client, scripts):
    now = 1_700_000_000.0
    early = b'{"queue": "q1",   "name": "x", "args": [1.50, "\xc3\xa9"], "z": {}}'
    on_time = job("q2", 2)
    late = job("q1", 3)
    redis_client.zadd(KEYS.scheduled, {early: now - 10, on_time: now, late: now + 0.001})
    assert schedule(scripts, now) == (2, 0)
    assert next_out(redis_client, Q1) == [early]
    assert next_out(redis_client, Q2) == [on_time]
    assert redis_client.zrange(KEYS.scheduled, 0, -1) == [late]
    assert not redis_client.exists(KEYS.dead)


def test_schedule_appends_behind_jobs_already_waiting(redis_client, scripts):
    fill(redis_client, Q1, b"waiting")
    redis_client.zadd(KEYS.scheduled, {job("q1", 1): 5})
    schedule(scripts, 10)
    assert next_out(redis_client, Q1) == [b"waiting", job("q1", 1)]


def test_schedule_batch_takes_the_earliest_first(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled, {job("q1", n): n for n in range(5)})
    assert schedule(scripts, 100, batch=2) == (2, 0)
    assert next_out(redis_client, Q1) == [job("q1", 0), job("q1", 1)]
    assert redis_client.zcard(KEYS.scheduled) == 3
    assert schedule(scripts, 100, batch=10) == (3, 0)
    assert schedule(scripts, 100, batch=10) == (0, 0)
    assert next_out(redis_client, Q1) == [job("q1", n) for n in range(5)]


def test_schedule_without_a_queue_field_goes_to_default(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled, {job(None, 1): 1})
    assert schedule(scripts, 10) == (1, 0)
    assert next_out(redis_client, KEYS.queue("default")) == [job(None, 1)]


@pytest.mark.parametrize("retries, expected", [(True, "slow"), (False, "q1")])
def test_schedule_prefers_retry_queue_only_for_retries(redis_client, scripts, retries, expected):
    raw = job("q1", 1, retry_queue="slow")
    redis_client.zadd(KEYS.retries, {raw: 1, job("q2", 2): 2})
    assert schedule(scripts, 10, retries=retries, zset=KEYS.retries) == (2, 0)
    assert next_out(redis_client, KEYS.queue(expected)) == [raw]
    assert next_out(redis_client, Q2) == [job("q2", 2)]
    assert redis_client.zcard(KEYS.retries) == 0


def test_schedule_honours_the_namespace_prefix(redis_client, scripts):
    keys = Keys("myapp")
    redis_client.zadd(keys.scheduled, {job("q1", 1): 1})
    moved = scripts.schedule(keys=[keys.scheduled, keys.dead],
                             args=[10, 10, keys.queue_prefix, "0", DEAD_CAP, 0])
    assert moved == [1, 0]
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
    "queue with colon": job("a:b"),
    "queue aliasing an in-progress list": job("q1:in_progress:host"),
    "queue wildcard": job("*"),
    "queue newline": job("a\nb"),
    "queue brace": job("{q}"),
    "queue 200 chars": job("q" * 200),
    "queue empty": job(""),
    "queue null": _member(name="x", queue=None),
    "queue number": _member(name="x", queue=5),
    "queue non-ASCII": job("caf\u00e9"),
    "raw UTF-8 queue": b'{"name": "x", "queue": "caf\xc3\xa9"}',
    "non-UTF-8 bytes": b'\xff\xfe{"name": "x", "queue": "q1"}',
    "NUL and newline": b'{"name": "x", "queue": "q\x00"}\n',
    "deeply nested": b'{"name": "x", "queue": "q1", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


@pytest.mark.parametrize("member", BAD_MEMBERS.values(), ids=BAD_MEMBERS.keys())
def test_schedule_sends_invalid_members_to_the_dead_set(redis_client, scripts, member):
    good = job("q2", 7)
    redis_client.zadd(KEYS.scheduled, {member: 1, good: 2})
    assert schedule(scripts, 50) == (1, 1)
    assert next_out(redis_client, Q2) == [good]
    assert redis_client.zcard(KEYS.scheduled) == 0
    ((entry, score),) = dead_entries(redis_client)  # valid UTF-8 JSON whatever the bytes
    assert score == 50
    assert raw_of(entry) == member
    assert entry["error_class"] == "PayloadError"
    assert KEYS.scheduled in entry["error_message"]
    assert entry["failed_at"] == 50 and entry["queue"] is None and entry["name"] is None
    assert isinstance(entry["jid"], str) and len(entry["jid"]) == 24
    assert sorted(redis_client.keys("*")) == sorted([KEYS.dead.encode(), Q2.encode()])


def test_schedule_keeps_printable_ascii_as_text(redis_client, scripts):
    member = b'{"name": "x", "queue": "a:b"}'
    redis_client.zadd(KEYS.scheduled, {member: 1})
    schedule(scripts, 5)
    ((entry, _),) = dead_entries(redis_client)
    assert entry["raw"] == member.decode() and "raw_hex" not in entry


def test_schedule_sends_a_bad_retry_queue_to_the_dead_set(redis_client, scripts):
    raw = job("q1", 1, retry_queue="bad:queue")
    redis_client.zadd(KEYS.retries, {raw: 1})
    assert schedule(scripts, 10, retries=True, zset=KEYS.retries) == (0, 1)
    ((entry, _),) = dead_entries(redis_client)
    assert raw_of(entry) == raw
    assert KEYS.retries in entry["error_message"]


def test_schedule_trims_the_dead_set_by_size_and_age(redis_client, scripts):
    redis_client.zadd(KEYS.dead, {b"ancient": 1, b"old": 50, b"recent": 90})
    redis_client.zadd(KEYS.scheduled, {b"bad-1": 1, b"bad-2": 2})
    assert schedule(scripts, 100, dead_cap=3, oldest_dead=10) == (0, 2)
    members = redis_client.zrange(KEYS.dead, 0, -1)
    assert len(members) == 3 and b"ancient" not in members and b"old" not in members
    assert members[0] == b"recent"
    assert sorted(raw_of(json.loads(m)) for m in members[1:]) == [b"bad-1", b"bad-2"]


def test_schedule_survives_script_flush(redis_client, scripts):
    redis_client.zadd(KEYS.scheduled, {job("q1", 1): 1, job("q1", 2): 20})
    assert schedule(scripts, 10) == (1, 0)
    redis_client.script_flush()
    assert schedule(scripts, 30) == (1, 0)
    redis_client.script_flush()
    assert scripts.fetch(keys=[Q1], args=[5, "0"]) == [1, job("q1", 1), 1, job("q1", 2)]


def test_schedule_from_many_pollers_moves_each_job_once(redis_client, redis_url):
    import gevent

    jobs = {job("q1", n): 1000.0 for n in range(2000)}  # all due at one timestamp
    redis_client.zadd(KEYS.scheduled, jobs)
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
        client.zadd(KEYS.scheduled, {job("q2", 1): time.time() - 1})
        assert schedule(scripts, time.time()) == (1, 0)
    finally:
        client.close()

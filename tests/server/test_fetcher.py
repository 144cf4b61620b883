"""Fetcher: batch size bound, queue order, namespaces, push back and reclaim."""

from __future__ import annotations

import collections
import json
import time

import gevent
import pytest

import jiggler_gevent
from jiggler_gevent.config import AT_MOST_ONCE
from jiggler_gevent.keys import Keys
from jiggler_gevent.server.fetcher import UnitOfWork

from . import jobs
from .helpers import in_progress_keys, new_worker

KEYS = Keys()


class CountingScript:
    """Wraps the real fetch script to record each round trip (the server still runs it)."""

    def __init__(self, fetcher) -> None:
        self.fetcher = fetcher
        self.script = fetcher.scripts.fetch
        self.calls: list[dict] = []

    def __call__(self, keys, args):
        call = {"want": int(args[0]), "waiting": self.fetcher._waiting}
        reply = self.script(keys=keys, args=args)
        call["got"] = len(reply) // 2
        self.calls.append(call)
        return reply


def test_batch_never_exceeds_the_idle_waiters(redis_client, make_launcher):
    launcher = make_launcher(concurrency=5)
    fetcher = launcher.fetcher
    fetcher.scripts.fetch = counter = CountingScript(fetcher)
    jobs.Ok.enqueue_bulk([[i] for i in range(100)])

    greenlets = [gevent.spawn(fetcher.fetch) for _ in range(5)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    units = [g.value for g in greenlets]

    assert all(unit is not None for unit in units)
    assert len({unit.raw for unit in units}) == 5
    assert redis_client.llen(KEYS.queue("default")) == 95
    assert redis_client.llen(KEYS.in_progress("default", launcher.identity)) == 5
    assert list(fetcher._buffer) == []
    assert fetcher.held == set(units)
    for call in counter.calls:
        assert call["got"] <= call["want"] <= call["waiting"] <= 5, counter.calls
    assert sum(call["got"] for call in counter.calls) == 5
    # the waiters share round trips: 5 fetchers never need 5 round trips
    assert len(counter.calls) <= 2, counter.calls


def test_one_round_trip_serves_every_waiting_worker(redis_client, make_launcher):
    """Workers already waiting when a round starts are all served by that round."""
    launcher = make_launcher(queues="a,b", concurrency=5, fetch_timeout=0.2)
    fetcher = launcher.fetcher
    fetcher.scripts.fetch = counter = CountingScript(fetcher)

    def fetch_until_one():
        while True:
            unit = fetcher.fetch()
            if unit is not None:
                return unit

    greenlets = [gevent.spawn(fetch_until_one) for _ in range(5)]
    # all five are in fetch: one leads (blocked in BLMOVE on one queue), four wait
    deadline = time.monotonic() + 5
    while not any(c.get("cmd") == "blmove" for c in redis_client.client_list()):
        assert time.monotonic() < deadline, "the leader never blocked"
        gevent.sleep(0.005)
    assert fetcher._waiting == 5
    # fill the queue the leader is not blocked on, so its pop times out without a job
    # and the next round starts with all five waiting
    other = ("a", "b")[1 - fetcher._block_turn]
    jobs.Ok.with_options(queue=other).enqueue_bulk([[i] for i in range(100)])
    gevent.joinall(greenlets, timeout=10, raise_error=True)

    assert redis_client.llen(KEYS.queue(other)) == 95
    served = [call for call in counter.calls if call["got"]]
    assert served == [{"want": 5, "waiting": 5, "got": 5}], counter.calls


def test_strict_order_serves_the_first_queue_first(redis_client, make_launcher):
    launcher = make_launcher(queues="high,mid,low")
    assert launcher.config.is_strict
    for queue in ("low", "mid", "high"):
        jobs.Ok.with_options(queue=queue).enqueue_bulk([[f"{queue}{i}"] for i in range(3)])

    # one batch of 4 takes high first, then mid
    batch = [gevent.spawn(launcher.fetcher.fetch) for _ in range(4)]
    gevent.joinall(batch, timeout=10, raise_error=True)
    order = [g.value.queue for g in batch]
    worker = new_worker(launcher)
    while worker.process_one():
        pass
    assert sorted(order) == ["high", "high", "high", "mid"]
    assert [e[3] for e in jobs.events("ok")] == ["mid", "mid", "low", "low", "low"]
    # FIFO inside a queue: the order they were enqueued in
    assert [e[2] for e in jobs.events("ok")][-3:] == ["low0", "low1", "low2"]


def test_weighted_order_is_roughly_proportional(redis_client, make_launcher):
    launcher = make_launcher(queues="heavy:3,light:1", concurrency=1)
    assert not launcher.config.is_strict
    for queue in ("heavy", "light"):
        jobs.Ok.with_options(queue=queue).enqueue_bulk([[i] for i in range(250)])
    picks = collections.Counter()
    for _ in range(200):
        unit = launcher.fetcher.fetch()  # one waiter: one job per round
        picks[unit.queue] += 1
    # expected 150 / 50; the binomial sd is about 6
    assert 120 <= picks["heavy"] <= 180, picks
    assert picks["light"] >= 20, picks


def test_namespace_prefixes_every_key(redis_client, make_launcher):
    jiggler_gevent.configure(namespace="myapp")
    launcher = make_launcher(namespace="myapp")
    ns = Keys("myapp")
    jobs.Ok.enqueue("a")
    jobs.Boom.enqueue()
    assert redis_client.llen(ns.queue("default")) == 2

    unit = launcher.fetcher.fetch()
    assert unit.queue_key == ns.queue("default")
    assert redis_client.llen(ns.in_progress("default", launcher.identity)) == 1
    worker = new_worker(launcher)
    worker.process(unit)
    worker.process_one()
    launcher.acker.flush()
    launcher.monitor.beat_once()

    keys = sorted(k.decode() for k in redis_client.keys("*"))
    assert keys, "nothing was written"
    assert all(k.startswith(("{myapp:jiggler}:", "{myapp:jiggler:q:")) for k in keys), keys
    assert ns.retries("default") in keys and ns.processes in keys
    assert ns.process(launcher.identity) in keys and ns.queues in keys
    assert redis_client.get(ns.processed) == b"1"
    assert redis_client.get(ns.failures) == b"1"


def test_requeue_pushes_back_to_the_head_once(redis_client, make_launcher):
    launcher = make_launcher()
    fetcher = launcher.fetcher
    first, second = jobs.Ok.enqueue("first"), jobs.Ok.enqueue("second")
    unit = fetcher.fetch()
    assert json.loads(unit.raw)["jid"] == first
    jobs.Ok.enqueue("third")

    assert fetcher.requeue([unit]) == 1
    assert fetcher.requeue([unit]) == 0  # pushed back already: never twice
    copy = UnitOfWork(unit.queue, unit.queue_key, unit.reserved_key, unit.raw)
    assert fetcher.requeue([copy]) == 0  # no longer reserved: the script pushes nothing
    assert redis_client.llen(KEYS.in_progress("default", launcher.identity)) == 0
    assert redis_client.lindex(KEYS.queue("default"), -1) == unit.raw  # the head
    assert redis_client.llen(KEYS.queue("default")) == 3
    assert fetcher.held == set()
    assert json.loads(fetcher.fetch().raw)["jid"] == first
    assert json.loads(fetcher.fetch().raw)["jid"] == second


def test_requeue_at_most_once_pushes_unconditionally(redis_client, make_launcher):
    launcher = make_launcher(mode=AT_MOST_ONCE)
    jobs.Ok.enqueue("only")
    unit = launcher.fetcher.fetch()
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert launcher.fetcher.requeue([unit]) == 1
    assert redis_client.lrange(KEYS.queue("default"), 0, -1) == [unit.raw]


def test_reclaim_pushes_back_jobs_no_worker_holds(redis_client, make_launcher):
    launcher = make_launcher()
    fetcher = launcher.fetcher
    held_jid = jobs.Ok.enqueue("held")
    held = fetcher.fetch()
    assert json.loads(held.raw)["jid"] == held_jid
    reserved = KEYS.in_progress("default", launcher.identity)
    # jobs that reached our in-progress list without any worker getting them
    orphan_a = json.dumps({"name": "srv.ok", "args": ["a"], "jid": "a" * 24})
    orphan_b = json.dumps({"name": "srv.ok", "args": ["b"], "jid": "b" * 24})
    redis_client.lpush(reserved, orphan_a, orphan_b)

    assert fetcher.reclaim_unowned() == 2
    assert redis_client.lrange(reserved, 0, -1) == [held.raw]
    assert sorted(redis_client.lrange(KEYS.queue("default"), 0, -1)) == sorted(
        [orphan_a.encode(), orphan_b.encode()])
    # with nothing held, everything reserved goes back
    fetcher.release([held])
    assert fetcher.reclaim_unowned() == 1
    assert in_progress_keys(redis_client) == []
    assert redis_client.llen(KEYS.queue("default")) == 3


def test_reclaim_keeps_a_held_duplicate_and_returns_the_extra_copy(redis_client, make_launcher):
    launcher = make_launcher()
    raw = json.dumps({"name": "srv.ok", "args": [], "jid": "c" * 24})
    redis_client.lpush(KEYS.queue("default"), raw)
    held = launcher.fetcher.fetch()
    reserved = KEYS.in_progress("default", launcher.identity)
    redis_client.lpush(reserved, raw)  # a second, byte-identical reservation
    assert launcher.fetcher.reclaim_unowned() == 1
    assert redis_client.lrange(reserved, 0, -1) == [held.raw]
    assert redis_client.lrange(KEYS.queue("default"), 0, -1) == [raw.encode()]


def test_fetch_after_a_lost_reply_reclaims_orphans(redis_client, make_launcher):
    """A connection killed mid-fetch makes the next fetch push back what it never received."""
    launcher = make_launcher(fetch_timeout=1.0)
    fetcher = launcher.fetcher
    reserved = KEYS.in_progress("default", launcher.identity)
    orphan = json.dumps({"name": "srv.ok", "args": ["orphan"], "jid": "d" * 24})
    redis_client.lpush(reserved, orphan)

    blocked = gevent.spawn(fetcher.fetch)
    gevent.sleep(0.2)  # blocked in BLMOVE on the empty queue
    assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert blocked.get(timeout=5) is None  # the error is handled, not raised

    unit = fetcher.fetch()
    assert unit is not None and unit.raw == orphan.encode()
    assert redis_client.lrange(reserved, 0, -1) == [orphan.encode()]  # reserved once
    new_worker(launcher).process(unit)
    launcher.acker.flush()
    assert jobs.events("ok")[0][2] == "orphan"
    assert in_progress_keys(redis_client) == []


@pytest.mark.parametrize("mode", ["at-least-once", AT_MOST_ONCE])
def test_blocking_fetch_returns_a_job_pushed_while_waiting(redis_client, make_launcher, mode):
    launcher = make_launcher(mode=mode, fetch_timeout=2.0)
    waiting = gevent.spawn(launcher.fetcher.fetch)
    gevent.sleep(0.1)
    jid = jobs.Ok.enqueue()
    unit = waiting.get(timeout=5)
    assert unit is not None and json.loads(unit.raw)["jid"] == jid


def test_acks_ride_along_with_the_next_fetch(redis_client, make_launcher):
    launcher = make_launcher()
    fetcher = launcher.fetcher
    fetcher.scripts.fetch = counter = CountingScript(fetcher)
    first, second = jobs.Ok.enqueue(1), jobs.Ok.enqueue(2)
    worker = new_worker(launcher)
    reserved = KEYS.in_progress("default", launcher.identity)

    assert worker.process_one()
    assert len(launcher.acker.pending) == 1
    assert worker.process_one()  # its fetch carried the first job's ack
    assert [json.loads(raw)["jid"] for raw in redis_client.lrange(reserved, 0, -1)] == [second]
    assert len(launcher.acker.pending) == 1
    assert launcher.acker.flush() == 1
    assert redis_client.llen(reserved) == 0
    assert [e[1] for e in jobs.events("ok")] == [first, second]
    assert len(counter.calls) == 2  # two fetches, no separate ack round trip before flush
    assert fetcher.held == set()


def test_acks_survive_a_failed_fetch_and_nothing_runs_twice(redis_client, make_launcher):
    launcher = make_launcher(fetch_timeout=0.2)
    first = jobs.Ok.enqueue("first")
    worker = new_worker(launcher)
    reserved = KEYS.in_progress("default", launcher.identity)
    assert worker.process_one()
    assert len(launcher.acker.pending) == 1
    jobs.Ok.enqueue("second")

    # hold the next fetch (a script: paused under WRITE) and cut its connection
    redis_client.client_pause(2000, all=False)
    try:
        step = gevent.spawn(worker.process_one)
        gevent.sleep(0.1)
        assert not step.ready()
        assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
        assert step.get(timeout=5) is False  # the error is handled: no job this time
    finally:
        redis_client.client_unpause()
    assert len(launcher.acker.pending) == 1  # the ack was kept for the next call

    for _ in range(5):
        if len(jobs.events("ok")) == 2:
            break
        worker.process_one()
    launcher.acker.flush()
    assert [e[2] for e in jobs.events("ok")] == ["first", "second"]
    assert jobs.events("ok")[0][1] == first
    assert redis_client.llen(reserved) == 0
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert launcher.fetcher.held == set()


def test_idle_workers_take_one_suspect_between_them(redis_client, make_launcher):
    """A suspect finishes while more wait: its ack wakes every idle worker at once, and
    exactly one of them takes the next suspect. (The LMOVE yields to the hub: without a
    claim taken before it, each woken worker saw nothing held and took a suspect of its
    own, so suspects ran side by side and a crash blamed them all.)"""
    launcher = make_launcher(concurrency=4, fetch_timeout=2)
    fetcher = launcher.fetcher
    quarantine = KEYS.quarantine("default")
    redis_client.rpush(quarantine, *[json.dumps({"name": "x", "n": i}) for i in range(3)])
    jobs.Ok.enqueue_bulk([[i] for i in range(10)])
    previous = UnitOfWork("default", KEYS.queue("default"), None, b"previous suspect")
    fetcher.held.add(previous)
    fetcher.isolating = previous  # a suspect runs alone; the four workers wait for it
    fetcher.quarantine_waiting()

    def worker_loop():  # as a worker does: fetch again after each empty fetch
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            unit = fetcher.fetch()
            if unit is not None:
                return unit
        return None

    greenlets = [gevent.spawn(worker_loop) for _ in range(4)]
    gevent.sleep(0.05)
    assert fetcher._waiting == 4
    fetcher.release([previous])  # its ack landed: wakes every waiting worker
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    taken = [g.value for g in greenlets if g.value is not None]

    assert len(taken) == 1, taken
    assert fetcher.isolating is taken[0]
    assert redis_client.llen(quarantine) == 2
    assert redis_client.llen(KEYS.in_progress("default", launcher.identity)) == 1
    assert redis_client.llen(KEYS.queue("default")) == 10  # nothing else runs beside it


def test_a_suspect_taken_with_its_reply_lost_is_pushed_back(redis_client, make_launcher):
    """The LMOVE out of quarantine happened but its reply was lost: the job sits in our
    in-progress list with no worker holding it, and our lease keeps other processes away.
    The next round pushes it back to its queue (and fetches it) instead of leaving it
    there until we exit."""
    import redis

    launcher = make_launcher(concurrency=1, fetch_timeout=0.2)
    fetcher = launcher.fetcher
    suspect = json.dumps({"name": "srv.ok", "args": ["suspect"], "jid": "s" * 24}).encode()
    redis_client.rpush(KEYS.quarantine("default"), suspect)
    fetcher.quarantine_waiting()
    lmove = fetcher.client.lmove
    calls = []

    def reply_lost_once(*args):
        calls.append(args)
        result = lmove(*args)
        if len(calls) == 1:
            raise redis.TimeoutError("reply lost")
        return result

    fetcher.client.lmove = reply_lost_once
    try:
        unit = fetcher.fetch()
    finally:
        fetcher.client.lmove = lmove
    assert len(calls) == 2  # the lost one, then one that found the quarantine empty
    assert unit is not None and unit.raw == suspect
    reserved = KEYS.in_progress("default", launcher.identity)
    assert redis_client.lrange(reserved, 0, -1) == [suspect]  # reserved once, held now
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert fetcher.held == {unit}

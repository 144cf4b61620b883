"""The worker side on a real local Redis Cluster (3 primaries): every script call and
every MULTI touches one slot, and the queues of one process live on different nodes.

The queues used here are picked so that each lives on its own primary: a call that
mixed them would fail with a cross-slot error (redis-py refuses it before sending).
Jobs are pushed with plain LPUSHes (the enqueue API is tested elsewhere).
"""

from __future__ import annotations

import json
import time

import gevent
import pytest
from redis.cluster import RedisCluster

from jiggler_gevent import connection
from jiggler_gevent import payload as _payload
from jiggler_gevent.config import AT_LEAST_ONCE, AT_MOST_ONCE
from jiggler_gevent.job import Enqueuer
from jiggler_gevent.keys import Keys
from jiggler_gevent.periodic import Schedule
from jiggler_gevent.server.fetcher import UnitOfWork
from jiggler_gevent.server.periodic import PeriodicScheduler

from . import jobs
from .helpers import new_worker

KEYS = Keys()


@pytest.fixture
def cluster(redis_cluster):
    """The session's local cluster (``redis_cluster`` of ``tests/conftest.py``)."""
    return redis_cluster


@pytest.fixture
def client(cluster):
    """A cluster client, every primary flushed before and after the test."""
    client = connection.make_client(cluster.url, max_connections=20)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        client.close()


@pytest.fixture
def spread(client, cluster):
    """Three queue names whose slots are on three different primaries."""
    ranges = cluster.slot_ranges()
    found: dict[int, str] = {}
    for i in range(1000):
        name = f"q{i}"
        slot = client.keyslot(KEYS.queue(name))
        node = next(n for n, (first, last) in enumerate(ranges) if first <= slot <= last)
        found.setdefault(node, name)
        if len(found) == len(ranges):
            break
    assert len(found) == 3
    return [found[n] for n in sorted(found)]


@pytest.fixture
def launch(make_launcher, cluster):
    def make(**overrides):
        launcher = make_launcher(url=cluster.url, **overrides)
        assert connection.is_cluster(launcher.client)
        return launcher
    return make


def push(client, job_class, queue: str, *args, **options) -> str:
    job = Enqueuer(job_class).with_options(queue=queue, **options).build(list(args), {})
    client.lpush(KEYS.queue(queue), _payload.dumps(job))
    client.sadd(KEYS.queues, queue)
    return job["jid"]


def jids(client, key: str) -> list[str]:
    return [json.loads(raw)["jid"] for raw in client.lrange(key, 0, -1)]


def test_queues_are_on_different_nodes(client, spread):
    nodes = {client.get_node_from_key(KEYS.queue(q)).name for q in spread}
    assert len(nodes) == 3


def test_a_batch_spans_queues_on_different_nodes_in_strict_order(client, launch, spread):
    a, b, c = spread
    launcher = launch(queues=",".join(spread), concurrency=5)
    fetcher = launcher.fetcher
    assert launcher.config.is_strict and fetcher.cluster
    pushed = {q: [push(client, jobs.Ok, q, f"{q}-{i}") for i in range(2)] for q in spread}

    batch = [gevent.spawn(fetcher.fetch) for _ in range(5)]
    gevent.joinall(batch, timeout=10, raise_error=True)
    units = [g.value for g in batch]
    assert [u.queue for u in units] == [a, a, b, b, c]
    for q, count in ((a, 2), (b, 2), (c, 1)):
        assert client.llen(KEYS.in_progress(q, launcher.identity)) == count
    assert fetcher.held == set(units)

    # the acks ride along with the next fetch, one call per queue with its own acks
    for unit in units:
        launcher.acker.ack(unit)
    assert len(launcher.acker.pending) == 5
    last = fetcher.fetch()
    assert last.queue == c and json.loads(last.raw)["jid"] == pushed[c][1]
    assert launcher.acker.pending == []
    assert client.llen(KEYS.in_progress(a, launcher.identity)) == 0
    assert client.llen(KEYS.in_progress(b, launcher.identity)) == 0
    assert jids(client, KEYS.in_progress(c, launcher.identity)) == [pushed[c][1]]
    assert fetcher.held == {last}


def test_acks_of_a_queue_with_no_room_left_still_go(client, launch, spread):
    a, b, _ = spread
    launcher = launch(queues=f"{a},{b}", concurrency=1)
    push(client, jobs.Ok, b, "first")
    first = launcher.fetcher.fetch()
    assert first.queue == b
    launcher.acker.ack(first)
    push(client, jobs.Ok, a, "second")
    second = launcher.fetcher.fetch()  # filled from a: b's call only acks
    assert second.queue == a
    assert client.llen(KEYS.in_progress(b, launcher.identity)) == 0
    assert launcher.acker.pending == [] and launcher.fetcher.held == {second}


@pytest.mark.parametrize("mode", [AT_LEAST_ONCE, AT_MOST_ONCE])
def test_blocking_fetch_rotates_over_queues_on_different_nodes(client, launch, spread, mode):
    launcher = launch(queues=",".join(spread), mode=mode, fetch_timeout=3.0)

    def fetch_one():  # a fetch blocks on one queue for a slice, then returns None
        while True:
            unit = launcher.fetcher.fetch()
            if unit is not None:
                return unit

    waiting = gevent.spawn(fetch_one)
    gevent.sleep(0.3)
    assert not waiting.ready()
    jid = push(client, jobs.Ok, spread[2])
    unit = waiting.get(timeout=5)
    assert unit is not None and unit.queue == spread[2] and json.loads(unit.raw)["jid"] == jid
    assert (unit.reserved_key is not None) == (mode == AT_LEAST_ONCE)


@pytest.mark.parametrize("mode", [AT_LEAST_ONCE, AT_MOST_ONCE])
def test_requeue_pushes_back_per_queue(client, launch, spread, mode):
    launcher = launch(queues=",".join(spread), mode=mode, concurrency=3)
    for q in spread:
        push(client, jobs.Ok, q)
    units = [launcher.fetcher.fetch() for _ in range(3)]
    assert sorted(u.queue for u in units) == sorted(spread)
    assert launcher.fetcher.requeue(units) == 3
    assert launcher.fetcher.requeue(units) == 0  # pushed back once only
    for unit in units:
        assert client.lrange(KEYS.queue(unit.queue), 0, -1) == [unit.raw]
    if mode == AT_LEAST_ONCE:  # a copy of a unit: the script finds nothing reserved
        copy = UnitOfWork(units[0].queue, units[0].queue_key, units[0].reserved_key, units[0].raw)
        assert launcher.fetcher.requeue([copy]) == 0
    assert launcher.fetcher.held == set()


def test_reclaim_after_a_lost_reply_per_queue(client, launch, spread):
    launcher = launch(queues=",".join(spread))
    orphan = json.dumps({"name": "srv.ok", "args": [], "jid": "d" * 24})
    client.lpush(KEYS.in_progress(spread[1], launcher.identity), orphan)
    assert launcher.fetcher.reclaim_unowned() == 1
    assert client.lrange(KEYS.queue(spread[1]), 0, -1) == [orphan.encode()]


def test_retry_into_a_queue_on_another_node(client, launch, spread):
    home, target, _ = spread
    launcher = launch(queues=home)
    jid = push(client, jobs.Boom, home, retry_queue=target)
    worker = new_worker(launcher)
    assert worker.process_one()
    assert client.zcard(KEYS.retries(home)) == 0
    ((member, retry_at),) = client.zrange(KEYS.retries(target), 0, -1, withscores=True)
    assert json.loads(member)["jid"] == jid
    assert client.llen(KEYS.in_progress(home, launcher.identity)) == 0  # acked after the write
    assert target.encode() in client.smembers(KEYS.queues)
    assert launcher.fetcher.held == set()

    assert launcher.poller.poll_once(retry_at) == 1
    assert jids(client, KEYS.queue(target)) == [jid]


def test_dead_entries_go_to_the_queue_the_job_ran_from(client, launch, spread):
    home, target, _ = spread
    launcher = launch(queues=home)
    jid = push(client, jobs.Boom, home, retry_queue=target, retries=0)
    assert new_worker(launcher).process_one()
    (member,) = client.zrange(KEYS.dead(home), 0, -1)
    assert json.loads(member)["jid"] == jid
    assert not client.exists(KEYS.dead(target), KEYS.retries(target))
    assert client.llen(KEYS.in_progress(home, launcher.identity)) == 0


def test_poller_covers_every_registered_queue_after_a_script_flush(client, launch, spread):
    launcher = launch(queues=spread[0])
    members = {}
    for q in spread:
        members[q] = [json.dumps({"name": "srv.ok", "args": [q, i]}).encode() for i in range(3)]
        client.zadd(KEYS.scheduled(q), {m: 1 for m in members[q][:2]})
        client.zadd(KEYS.retries(q), {members[q][2]: 1})
    client.sadd(KEYS.queues, *spread[1:])
    client.script_flush()  # on every primary
    assert client.script_exists(launcher.scripts.schedule.sha) == [False]
    assert launcher.poller.poll_once(5) == 9
    for q in spread:
        assert sorted(client.lrange(KEYS.queue(q), 0, -1)) == sorted(members[q])
    client.script_flush()  # on every primary
    client.zadd(KEYS.scheduled(spread[2]), {b"not json": 1})
    assert launcher.poller.poll_once(6) == 0
    (dead,) = client.zrange(KEYS.dead(spread[2]), 0, -1)
    assert json.loads(dead)["queue"] == spread[2]


def test_heartbeat_leases_and_recovery_of_a_dead_process(client, launch, spread):
    victim = launch(queues=",".join(spread), concurrency=3)
    for q in spread:
        push(client, jobs.Ok, q, q)
    victim.monitor.beat_once()
    units = [victim.fetcher.fetch() for _ in range(3)]
    assert sorted(u.queue for u in units) == sorted(spread)
    victim.stats.processed = 2
    victim.monitor.beat_once()
    assert client.get(KEYS.processed) == b"2"
    assert client.smembers(KEYS.queues) == {q.encode() for q in spread}
    leases = [KEYS.queue_keys(q).lease(victim.identity) for q in spread]
    assert all(client.pttl(lease) > 0 for lease in leases)

    rescuer = launch(queues=spread[0])
    assert rescuer.requeuer.requeue_once() == (0, 0), "a live process is never touched"
    client.delete(KEYS.process(victim.identity))
    assert rescuer.requeuer.requeue_once() == (0, 0), "its leases still say it lives"
    for lease in leases:
        client.delete(lease)
    assert rescuer.requeuer.requeue_once() == (3, 0)
    for unit in units:
        assert client.lrange(KEYS.queue(unit.queue), 0, -1) == [unit.raw]
    assert not client.exists(KEYS.reservations)
    assert client.zscore(KEYS.processes, victim.identity) is None


def test_a_worker_process_runs_and_stops_clean_on_a_cluster(client, launch, spread):
    launcher = launch(queues=",".join(spread), concurrency=4, stats_interval=0.5)
    pushed = [push(client, jobs.Ok, q, i) for i in range(10) for q in spread]
    pushed.append(push(client, jobs.Boom, spread[0], retry_queue=spread[1]))
    launcher.start()
    deadline = time.monotonic() + 20
    while len(jobs.events("ok")) < 30 or not client.zcard(KEYS.retries(spread[1])):
        assert time.monotonic() < deadline, (len(jobs.events("ok")), jobs.EVENTS[-3:])
        gevent.sleep(0.05)
    launcher.stop()
    assert sorted(e[1] for e in jobs.events("ok")) == sorted(pushed[:-1])
    assert list(client.scan_iter(match="*:in_progress:*")) == []
    assert list(client.scan_iter(match="*:lease:*")) == []
    assert not client.exists(KEYS.process(launcher.identity), KEYS.reservations)
    assert client.get(KEYS.processed) == b"30" and client.get(KEYS.failures) == b"1"


def test_periodic_claims_in_the_queue_slot_and_registers_the_queue(client, spread):
    queue = spread[1]
    schedule = Schedule(job="srv.ok", every=60, queue=queue, name="tick")
    scheduler = PeriodicScheduler(client, KEYS, [schedule])
    scheduler.publish()
    assert queue.encode() in client.smembers(KEYS.queues)
    assert json.loads(client.hget(KEYS.periodic_schedules, "tick"))["queue"] == queue
    assert scheduler.tick_once(6000.0) == []  # first sight: recorded, not pushed
    (jid,) = scheduler.tick_once(6060.0)
    assert jids(client, KEYS.queue(queue)) == [jid]
    assert client.hget(KEYS.queue_keys(queue).periodic_last, "tick") == b"6060.0"

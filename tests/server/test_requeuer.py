"""The orphan requeuer: a dead process's reservations come back; a live one's never move.

A process is dead to the requeuer when its heartbeat hash is gone (the pre-check) and,
checked atomically by ``recover.lua`` in the queue's slot, its lease in that queue too."""

from __future__ import annotations

import json

import gevent

from jiggler_gevent.keys import Keys

from . import jobs
from .helpers import new_worker

KEYS = Keys()


def reserve(launcher, n: int) -> list:
    """Reserve ``n`` jobs as a worker would (moved into the in-progress list), and beat."""
    launcher.monitor.beat_once()
    units = []
    for _ in range(n):
        unit = launcher.fetcher.fetch()
        assert unit is not None
        units.append(unit)
    launcher.monitor.beat_once()
    return units


def die(redis_client, launcher) -> None:
    """What a SIGKILL leaves behind: the reservations, and a heartbeat and leases that
    expire."""
    redis_client.delete(KEYS.process(launcher.identity))
    for queue in launcher.config.queue_names:
        redis_client.delete(KEYS.queue_keys(queue).lease(launcher.identity))


def queue_jids(redis_client, queue: str = "default") -> list[str]:
    """jids in the order they will be popped (the right end first)."""
    return [json.loads(m)["jid"] for m in reversed(redis_client.lrange(KEYS.queue(queue), 0, -1))]


def test_a_dead_process_jobs_go_back_to_the_head_of_their_queue(redis_client, make_launcher):
    jids = jobs.Ok.enqueue_bulk([[i] for i in range(5)])
    victim = make_launcher(concurrency=1)
    reserve(victim, 3)
    in_progress = KEYS.in_progress("default", victim.identity)
    assert redis_client.llen(in_progress) == 3
    assert redis_client.hget(KEYS.reservations, in_progress) == victim.identity.encode()
    die(redis_client, victim)

    rescuer = make_launcher()
    assert rescuer.requeuer.requeue_once() == (3, 0)
    assert queue_jids(redis_client) == jids, "oldest first, ahead of the jobs still queued"
    assert not redis_client.exists(in_progress)
    assert not redis_client.hexists(KEYS.reservations, in_progress)
    assert redis_client.zscore(KEYS.processes, victim.identity) is None


def test_a_live_process_is_never_touched(redis_client, make_launcher):
    jobs.Ok.enqueue_bulk([[i] for i in range(3)])
    owner = make_launcher(concurrency=1)
    reserve(owner, 2)
    other = make_launcher()
    assert other.requeuer.requeue_once() == (0, 0)
    assert redis_client.llen(KEYS.in_progress("default", owner.identity)) == 2


def test_racing_requeuers_move_each_job_once(redis_client, make_launcher):
    jobs.Ok.enqueue_bulk([[i] for i in range(20)])
    victim = make_launcher(concurrency=1)
    reserve(victim, 20)
    die(redis_client, victim)
    rescuers = [make_launcher() for _ in range(4)]
    results = [g.get() for g in [gevent.spawn(r.requeuer.requeue_once) for r in rescuers]]
    assert sum(moved for moved, _ in results) == 20
    assert redis_client.llen(KEYS.queue("default")) == 20


def test_a_job_recovered_too_often_is_a_poison_pill(redis_client, make_launcher):
    (jid,) = jobs.Ok.enqueue_bulk([["killer"]])
    for crash in range(3):
        victim = make_launcher(concurrency=1, max_recoveries=2)
        if crash == 2:  # recovered twice: a suspect, quarantined, taken to run alone
            assert redis_client.llen(KEYS.quarantine("default")) == 1
            victim.fetcher.quarantine_waiting()
        (unit,) = reserve(victim, 1)
        assert victim.fetcher.isolating is (unit if crash == 2 else None)
        die(redis_client, victim)
        moved, buried = make_launcher(max_recoveries=2).requeuer.requeue_once()
        assert (moved, buried) == ((1, 0) if crash < 2 else (0, 1))
    (member,) = redis_client.zrange(KEYS.dead("default"), 0, -1)
    entry = json.loads(member)
    assert entry["error_class"] == "PoisonPill" and entry["jid"] == jid
    assert json.loads(entry["raw"])["jid"] == jid, "the payload is kept as it was"
    assert redis_client.llen(KEYS.queue("default")) == 0

    # "Retry now" on it pushes the job itself (its own args), not the dead-set wrapper
    from jiggler_gevent.api import Api

    api = Api(redis_client)
    [buried] = api.set_page("dead").entries
    assert api.retry_now("dead", buried.ref) == "default"
    (pushed,) = redis_client.lrange(KEYS.queue("default"), 0, -1)
    pushed = json.loads(pushed)
    assert (pushed["name"], pushed["jid"], pushed["args"]) == ("srv.ok", jid, ["killer"])
    assert "error_class" not in pushed and "raw" not in pushed
    runner = make_launcher(concurrency=1)
    assert new_worker(runner).process(runner.fetcher.fetch()) == "ok"
    assert jobs.events("ok") == [("ok", jid, "killer", "default", 0)]


def test_a_suspect_runs_alone_and_the_others_wait(redis_client, make_launcher):
    jobs.Ok.enqueue_bulk([[i] for i in range(3)])
    suspect = b'{"name": "srv.ok", "args": ["suspect"], "jid": "s1", "queue": "default"}'
    redis_client.rpush(KEYS.quarantine("default"), suspect)
    launcher = make_launcher(concurrency=2)
    launcher.requeuer.requeue_once()
    assert launcher.fetcher.quarantine_pending
    first = gevent.spawn(launcher.fetcher.fetch)
    second = gevent.spawn(launcher.fetcher.fetch)
    gevent.joinall([first, second], timeout=5)
    taken = [g.value for g in (first, second) if g.value is not None]
    assert [u.raw for u in taken] == [suspect], "the suspect alone, nothing beside it"
    assert launcher.fetcher.fetch() is None, "nothing else while the suspect runs"
    launcher.acker.ack(taken[0])
    launcher.acker.flush()
    assert launcher.fetcher.isolating is None
    assert launcher.fetcher.fetch() is not None, "normal fetching resumes after its ack"


def test_a_frozen_process_that_wakes_up_deletes_nothing_it_no_longer_owns(
        redis_client, make_launcher):
    jobs.Ok.enqueue_bulk([[i] for i in range(2)])
    frozen = make_launcher(concurrency=1)
    units = reserve(frozen, 2)
    die(redis_client, frozen)  # its heartbeat expired while it was stopped
    assert make_launcher().requeuer.requeue_once() == (2, 0)

    for unit in units:  # it wakes up, finishes its jobs, and acks them late
        frozen.acker.ack(unit)
    frozen.acker.flush()
    frozen.monitor.beat_once()  # and registers again
    assert redis_client.llen(KEYS.queue("default")) == 2, "the recovered copies stay queued"
    assert redis_client.hexists(KEYS.reservations, KEYS.in_progress("default", frozen.identity))


def test_stale_registry_entries_are_pruned(redis_client, make_launcher):
    gone = make_launcher(stats_interval=1.0)
    gone.monitor.beat_once(now=1000.0)
    die(redis_client, gone)
    make_launcher().requeuer.requeue_once(now=1000.0 + 3600)
    assert redis_client.zscore(KEYS.processes, gone.identity) is None


def test_an_owner_with_a_live_lease_is_untouched_and_a_lease_less_one_recovered(
        redis_client, make_launcher):
    """The heartbeat hash gone is not enough: the lease in the queue's slot decides."""
    jobs.Ok.enqueue_bulk([[i] for i in range(4)])
    leased, lapsed = make_launcher(concurrency=1), make_launcher(concurrency=1)
    reserve(leased, 2)
    reserve(lapsed, 2)
    lease = KEYS.queue_keys("default").lease(leased.identity)
    assert 0 < redis_client.pttl(lease) <= leased.config.heartbeat_ttl * 1000
    redis_client.delete(KEYS.process(leased.identity))  # the hash lapsed, the lease lives on
    die(redis_client, lapsed)

    assert make_launcher().requeuer.requeue_once() == (2, 0)
    assert redis_client.llen(KEYS.in_progress("default", leased.identity)) == 2
    assert redis_client.hexists(KEYS.reservations, KEYS.in_progress("default", leased.identity))
    assert redis_client.zscore(KEYS.processes, leased.identity) is not None
    assert not redis_client.exists(KEYS.in_progress("default", lapsed.identity))
    assert not redis_client.hexists(KEYS.reservations, KEYS.in_progress("default", lapsed.identity))
    assert redis_client.zscore(KEYS.processes, lapsed.identity) is None


def test_leases_are_per_queue(redis_client, make_launcher):
    """An owner whose lease lapsed in one queue only keeps its jobs there until the other
    lapses too; each queue's list is recovered against that queue's lease."""
    for queue in ("a", "b"):
        jobs.Ok.with_options(queue=queue).enqueue_bulk([[queue]])
    owner = make_launcher(queues="a,b", concurrency=2)
    units = reserve(owner, 2)
    assert sorted(u.queue for u in units) == ["a", "b"]
    redis_client.delete(KEYS.process(owner.identity), KEYS.queue_keys("a").lease(owner.identity))
    assert make_launcher().requeuer.requeue_once() == (1, 0)
    assert redis_client.llen(KEYS.queue("a")) == 1 and redis_client.llen(KEYS.queue("b")) == 0
    assert redis_client.llen(KEYS.in_progress("b", owner.identity)) == 1


def test_a_bogus_registry_entry_is_dropped(redis_client, make_launcher):
    bogus = {"not-a-key": "someone", KEYS.in_progress("default", "x"): "y",
             "{jiggler:q:a*b}:in_progress:z": "z"}
    redis_client.hset(KEYS.reservations, mapping=bogus)
    redis_client.lpush(KEYS.in_progress("default", "x"), b"kept")
    assert make_launcher().requeuer.requeue_once() == (0, 0)
    assert not redis_client.exists(KEYS.reservations)
    assert redis_client.llen(KEYS.in_progress("default", "x")) == 1  # never moved by a mismatch

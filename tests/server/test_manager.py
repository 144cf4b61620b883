"""Manager and launcher: replacing dead workers, graceful and hard stop, quiet."""

from __future__ import annotations

import json
import time

import gevent
import pytest

from jiggler_gevent.config import AT_LEAST_ONCE, AT_MOST_ONCE
from jiggler_gevent.keys import Keys

from . import jobs
from .helpers import in_progress_keys

KEYS = Keys()
QUEUE = KEYS.queue("default")


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.01)


def assert_clean_exit(client, launcher) -> None:
    assert in_progress_keys(client) == []
    assert not client.exists(KEYS.process(launcher.identity))
    assert client.zscore(KEYS.processes, launcher.identity) is None
    assert all(g.dead for g in launcher.manager.greenlets.values())
    assert all(g.dead for g in launcher._services)


def test_a_worker_that_dies_is_replaced(redis_client, make_launcher):
    launcher = make_launcher(concurrency=2)
    jobs.FlakyCheck.enqueue()  # its argument check raises RuntimeError once
    launcher.start()
    try:
        wait_for(lambda: launcher.manager.replaced == 1, what="the worker to be replaced")
        assert len(launcher.manager.alive()) == 2
        # the pool still works at full size
        jids = set(jobs.Ok.enqueue_bulk([[i] for i in range(20)]))
        wait_for(lambda: len(jobs.events("ok")) == 20, what="later jobs to run")
        assert {e[1] for e in jobs.events("ok")} == jids
    finally:
        launcher.stop()
    # the dead worker's job was pushed back and ran on a replacement
    assert len(jobs.events("flaky")) == 1 and redis_client.llen(QUEUE) == 0
    assert_clean_exit(redis_client, launcher)


def test_the_dead_workers_job_is_pushed_back_and_runs(redis_client, make_launcher):
    launcher = make_launcher(concurrency=2)
    jid = jobs.FlakyCheck.enqueue()
    launcher.start()
    try:
        wait_for(lambda: jobs.events("flaky"), timeout=3,
                 what="the job to run again after its worker died")
        assert launcher.manager.replaced == 1
        assert launcher.fetcher.held == set() or all(
            json.loads(u.raw)["jid"] != jid for u in launcher.fetcher.held)
    finally:
        launcher.stop()
    assert jobs.events("flaky") == [("flaky", jid)]
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.get(KEYS.processed) == b"1"
    assert_clean_exit(redis_client, launcher)


def test_stop_waits_for_running_jobs(redis_client, make_launcher):
    launcher = make_launcher(concurrency=3, timeout=5.0)
    jid = jobs.Sleeper.enqueue(0.5)
    launcher.start()
    try:
        wait_for(lambda: jobs.events("start"), what="the job to start")
        # the heartbeat shows the running job
        launcher.monitor.beat_once()
        info = redis_client.hgetall(KEYS.process(launcher.identity))
        assert info[b"busy"] == b"1"
        (busy,) = json.loads(info[b"busy_jobs"])
        assert busy["jid"] == jid and busy["name"] == "srv.sleeper" and busy["queue"] == "default"
        # a job that reached our in-progress list without a worker holding it
        orphan = json.dumps({"name": "srv.ok", "args": ["orphan"], "jid": "e" * 24})
        redis_client.lpush(KEYS.in_progress("default", launcher.identity), orphan)
        started = time.monotonic()
    finally:
        launcher.stop()
    elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 4
    assert jobs.events("end") == [("end", jid)]
    assert jobs.events("interrupted") == []
    assert redis_client.get(KEYS.processed) == b"1"
    # the orphan is back on its queue, not lost and not run by a stopping process
    assert redis_client.lrange(QUEUE, 0, -1) == [orphan.encode()]
    assert_clean_exit(redis_client, launcher)


@pytest.mark.parametrize("mode", [AT_LEAST_ONCE, AT_MOST_ONCE])
def test_stop_past_the_timeout_pushes_running_jobs_back(redis_client, make_launcher, mode):
    launcher = make_launcher(concurrency=2, timeout=0.3, mode=mode)
    long_jids = [jobs.Sleeper.enqueue(30) for _ in range(2)]
    launcher.start()
    try:
        wait_for(lambda: len(jobs.events("start")) == 2, what="both jobs to start")
        waiting = [jobs.Ok.enqueue(i) for i in range(3)]
        started = time.monotonic()
    finally:
        launcher.stop()
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"stop took {elapsed:.1f}s with a 0.3 s timeout"
    # the running jobs were interrupted with Shutdown, not allowed to finish
    assert sorted(e[1:] for e in jobs.events("interrupted")) == sorted(
        (jid, "Shutdown") for jid in long_jids)
    assert jobs.events("end") == []
    assert jobs.events("ok") == []
    # pushed back to the head of the queue (the right end), ahead of the waiting jobs
    queued = [json.loads(raw)["jid"] for raw in redis_client.lrange(QUEUE, 0, -1)]
    assert sorted(queued[-2:]) == sorted(long_jids)
    assert queued[:3] == list(reversed(waiting))
    # no ack, no failure: not retried, not dead, not counted
    assert redis_client.zcard(KEYS.retries("default")) == 0 and redis_client.zcard(KEYS.dead("default")) == 0
    assert redis_client.get(KEYS.failures) is None and redis_client.get(KEYS.processed) is None
    assert_clean_exit(redis_client, launcher)


@pytest.mark.parametrize("mode", [AT_LEAST_ONCE, AT_MOST_ONCE])
def test_a_failure_being_recorded_at_the_deadline_is_not_pushed_back(redis_client, make_launcher,
                                                                      mode):
    """The deadline passes while a worker writes a failed job to the retry set (Redis
    slow): that job is not pushed back as well, or it would run twice (its queue and
    the retry set); the write finishes and the job is in the retry set only."""
    launcher = make_launcher(concurrency=1, timeout=0.2, mode=mode)
    recording = []
    job_failed = launcher.retrier.job_failed

    def slow_job_failed(*args, **kwargs):
        recording.append(True)
        gevent.sleep(0.6)  # past the 0.2 s shutdown timeout
        return job_failed(*args, **kwargs)

    launcher.retrier.job_failed = slow_job_failed
    jid = jobs.Boom.enqueue("late")
    launcher.start()
    try:
        wait_for(lambda: recording, what="the failure to be recorded")
    finally:
        launcher.stop()
    assert redis_client.llen(QUEUE) == 0  # not pushed back
    [entry] = redis_client.zrange(KEYS.retries("default"), 0, -1)
    assert json.loads(entry)["jid"] == jid
    assert_clean_exit(redis_client, launcher)


def test_at_most_once_push_back_is_never_repeated_after_a_lost_reply(redis_client, make_launcher):
    """At-most-once pushes back unconditionally, so a push back whose reply was lost
    (it ran) must not be sent again: the job would be queued twice."""
    import redis

    launcher = make_launcher(concurrency=1, mode=AT_MOST_ONCE)
    jid = jobs.Ok.enqueue("once")
    unit = launcher.fetcher.fetch()
    requeue = launcher.fetcher.scripts.requeue

    def reply_lost(*args, **kwargs):
        requeue(*args, **kwargs)
        raise redis.TimeoutError("reply lost")

    launcher.fetcher.scripts.requeue = reply_lost
    with pytest.raises(redis.TimeoutError):
        launcher.fetcher.requeue([unit])
    assert launcher.fetcher.requeue([unit]) == 0  # the retry sends nothing
    assert [json.loads(raw)["jid"] for raw in redis_client.lrange(QUEUE, 0, -1)] == [jid]
    assert unit not in launcher.fetcher.held


def test_hurry_cuts_the_wait_short(redis_client, make_launcher):
    launcher = make_launcher(concurrency=1, timeout=30.0)
    jid = jobs.Sleeper.enqueue(30)
    launcher.start()
    try:
        wait_for(lambda: jobs.events("start"), what="the job to start")
        gevent.spawn_later(0.2, launcher.hurry.set)
        started = time.monotonic()
    finally:
        launcher.stop()
    assert time.monotonic() - started < 4
    assert [json.loads(raw)["jid"] for raw in redis_client.lrange(QUEUE, 0, -1)] == [jid]
    assert_clean_exit(redis_client, launcher)


def test_quiet_stops_taking_jobs_and_running_ones_finish(redis_client, make_launcher):
    launcher = make_launcher(concurrency=2, timeout=5.0)
    running = jobs.Sleeper.enqueue(0.3)
    launcher.start()
    try:
        wait_for(lambda: jobs.events("start"), what="the job to start")
        launcher.quiet()
        # a blocking pop already under way when quiet() is called may still take one
        # job (it is bounded by the fetch timeout); after that nothing is taken
        gevent.sleep(launcher.config.fetch_timeout + 0.1)
        later = jobs.Ok.enqueue("later")
        wait_for(lambda: jobs.events("end"), what="the running job to finish")
        gevent.sleep(0.5)  # several fetch timeouts: nobody takes the new job
        assert jobs.events("ok") == []
        launcher.monitor.beat_once()
        assert redis_client.hget(KEYS.process(launcher.identity), "quiet") == b"1"
    finally:
        launcher.stop()
    assert jobs.events("end") == [("end", running)]
    assert [json.loads(raw)["jid"] for raw in redis_client.lrange(QUEUE, 0, -1)] == [later]
    assert_clean_exit(redis_client, launcher)


def test_launcher_runs_a_batch_end_to_end_in_process(redis_client, make_launcher):
    launcher = make_launcher(concurrency=10)
    jids = set(jobs.Ok.enqueue_bulk([[i] for i in range(200)]))
    jobs.Boom.enqueue()
    launcher.start()
    try:
        wait_for(lambda: len(jobs.events("ok")) == 200 and redis_client.zcard(KEYS.retries("default")) == 1,
                 what="the batch to finish")
    finally:
        launcher.stop()
    assert {e[1] for e in jobs.events("ok")} == jids
    assert redis_client.get(KEYS.processed) == b"200"
    assert redis_client.get(KEYS.failures) == b"1"
    assert_clean_exit(redis_client, launcher)


def test_workers_wait_for_a_first_heartbeat_that_registers_the_process(redis_client,
                                                                        make_launcher):
    """The first heartbeat failed: until one succeeds, no job is reserved (a job moved
    into an in-progress list that no heartbeat registered would be lost if the process
    died then: no requeuer could find the list)."""
    import redis

    launcher = make_launcher(concurrency=2, stats_interval=0.3)
    beat_once = launcher.monitor.beat_once
    beats = []

    def first_beat_fails(*args):
        beats.append(1)
        if len(beats) == 1:
            raise redis.ConnectionError("Redis is failing over")
        return beat_once(*args)

    launcher.monitor.beat_once = first_beat_fails
    jid = jobs.Ok.enqueue("after registration")
    launcher.start()
    try:
        assert launcher.manager.greenlets == {}  # no worker yet
        assert redis_client.llen(QUEUE) == 1
        wait_for(lambda: jobs.events("ok"), what="the job to run after the next beat")
        assert len(beats) >= 2 and jobs.events("ok")[0][1] == jid
        assert redis_client.hget(KEYS.reservations,
                                 KEYS.in_progress("default", launcher.identity)) is not None
    finally:
        launcher.stop()
    assert_clean_exit(redis_client, launcher)

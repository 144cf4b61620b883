"""Monitor: heartbeat hash, registry, counters, and counts kept when a flush fails."""

from __future__ import annotations

import json
import os
import time

import pytest
import redis

from jiggler_gevent.keys import Keys
from jiggler_gevent.version import __version__

KEYS = Keys()


def day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def test_heartbeat_fields_ttl_and_registry(redis_client, make_launcher):
    launcher = make_launcher(queues="critical:3,default", concurrency=7, stats_interval=5.0,
                             hostname="box-1")
    now = time.time()
    launcher.monitor.beat_once(now)

    key = KEYS.process(launcher.identity)
    info = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert info["hostname"] == "box-1"
    assert int(info["pid"]) == os.getpid()
    assert info["queues"] == "critical:3,default"
    assert int(info["concurrency"]) == 7
    assert info["mode"] == "at-least-once"
    assert int(info["busy"]) == 0
    assert json.loads(info["busy_jobs"]) == []
    assert int(info["rss"]) > 1024 * 1024
    assert float(info["started_at"]) <= now
    assert float(info["beat_at"]) == pytest.approx(now)
    assert info["version"] == __version__
    assert info["quiet"] == "0"
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= max(3 * 5.0, 10)
    assert redis_client.zscore(KEYS.processes, launcher.identity) == pytest.approx(now)
    # the identity is opaque: no process fields encoded in key names
    assert str(os.getpid()) not in key and "box-1" not in key


def test_heartbeat_ttl_follows_the_interval(redis_client, make_launcher):
    launcher = make_launcher(stats_interval=20.0)
    launcher.monitor.beat_once()
    ttl = redis_client.ttl(KEYS.process(launcher.identity))
    assert 40 < ttl <= 60


def test_counters_totals_and_per_day(redis_client, make_launcher):
    launcher = make_launcher()
    now = time.time()
    launcher.stats.processed, launcher.stats.failed = 5, 2
    launcher.monitor.beat_once(now)
    assert (launcher.stats.processed, launcher.stats.failed) == (0, 0)
    assert redis_client.get(KEYS.processed) == b"5"
    assert redis_client.get(KEYS.failures) == b"2"
    assert redis_client.get(KEYS.processed_on(day(now))) == b"5"
    assert redis_client.get(KEYS.failures_on(day(now))) == b"2"
    assert redis_client.ttl(KEYS.processed_on(day(now))) > 300 * 24 * 3600

    launcher.stats.processed = 3
    launcher.monitor.beat_once(now + 1)
    assert redis_client.get(KEYS.processed) == b"8"
    assert redis_client.get(KEYS.failures) == b"2"
    assert launcher.stats.processed_total == 8 and launcher.stats.failed_total == 2


def test_two_processes_share_the_totals(redis_client, make_launcher):
    first, second = make_launcher(), make_launcher()
    assert first.identity != second.identity
    first.stats.processed, second.stats.processed = 4, 6
    first.monitor.beat_once()
    second.monitor.beat_once()
    assert redis_client.get(KEYS.processed) == b"10"
    assert redis_client.zcard(KEYS.processes) == 2


def test_remove_deletes_the_heartbeat(redis_client, make_launcher):
    launcher = make_launcher()
    launcher.monitor.beat_once()
    launcher.monitor.remove()
    assert not redis_client.exists(KEYS.process(launcher.identity))
    assert redis_client.zscore(KEYS.processes, launcher.identity) is None


def test_counts_go_with_the_next_beat_when_the_flush_fails(fresh_server, make_launcher):
    launcher = make_launcher(url=fresh_server.url, socket_timeout=1.0)
    client = redis.Redis.from_url(fresh_server.url)
    try:
        launcher.monitor.beat_once()
        fresh_server.stop()
        launcher.stats.processed, launcher.stats.failed = 7, 3
        with pytest.raises((redis.ConnectionError, redis.TimeoutError, OSError)):
            launcher.monitor.beat_once()
        # the batch is kept, numbered, for the next beat (not put back into the live counts)
        assert launcher.monitor.unconfirmed_counts() == (7, 3)
        # the totals since start still include the unflushed counts
        assert (launcher.stats.processed_total, launcher.stats.failed_total) == (7, 3)

        launcher.stats.processed += 1  # a job finished meanwhile
        fresh_server.start()  # same port, empty data
        launcher.monitor.beat_once()
        assert client.get(KEYS.processed) == b"8"
        assert client.get(KEYS.failures) == b"3"
        assert (launcher.stats.processed, launcher.stats.failed) == (0, 0)
        assert launcher.monitor.unconfirmed_counts() == (0, 0)
        assert client.exists(KEYS.process(launcher.identity))
    finally:
        client.close()


def test_refused_transaction_does_not_double_count(redis_client, make_launcher):
    """A server-side refusal of part of the beat must not count the jobs twice."""
    launcher = make_launcher()
    redis_client.set(KEYS.process(launcher.identity), "not a hash")
    launcher.stats.processed = 4
    try:
        launcher.monitor.beat_once()
    except redis.ResponseError:
        pass  # reporting the error is fine; counting the jobs twice is not
    redis_client.delete(KEYS.process(launcher.identity))
    launcher.monitor.beat_once()
    assert redis_client.get(KEYS.processed) == b"4"


def test_heartbeat_registers_the_queues_and_refreshes_a_lease_per_queue(redis_client,
                                                                          make_launcher):
    launcher = make_launcher(queues="critical:3,default", stats_interval=5.0)
    launcher.monitor.beat_once()
    assert redis_client.smembers(KEYS.queues) == {b"critical", b"default"}
    leases = [KEYS.queue_keys(q).lease(launcher.identity) for q in ("critical", "default")]
    for lease in leases:
        assert 0 < redis_client.pttl(lease) <= launcher.config.heartbeat_ttl * 1000
    assert sorted(launcher.monitor.lease_keys) == sorted(leases)
    redis_client.pexpire(leases[0], 50)
    launcher.monitor.beat_once()
    assert redis_client.pttl(leases[0]) > 1000, "each beat refreshes the lease"

    launcher.monitor.remove()
    assert not redis_client.exists(*leases)
    assert redis_client.smembers(KEYS.queues) == {b"critical", b"default"}  # the registry stays


def test_at_most_once_writes_no_lease(redis_client, make_launcher):
    launcher = make_launcher(queues="a,b", mode="at-most-once")
    launcher.monitor.beat_once()
    assert redis_client.smembers(KEYS.queues) == {b"a", b"b"}
    assert list(redis_client.scan_iter(match="*:lease:*")) == []
    assert not redis_client.exists(KEYS.reservations)


def test_a_failed_counter_script_keeps_the_counts_and_still_refreshes_the_leases(
        redis_client, make_launcher):
    launcher = make_launcher()
    lease = KEYS.queue_keys("default").lease(launcher.identity)
    redis_client.set(KEYS.processed, "not a number")
    launcher.stats.processed = 3
    with pytest.raises(redis.ResponseError):
        launcher.monitor.beat_once()
    assert launcher.monitor.unconfirmed_counts() == (3, 0), "kept for the next beat"
    assert redis_client.exists(KEYS.process(launcher.identity)) and redis_client.exists(lease)
    redis_client.delete(KEYS.processed)
    launcher.monitor.beat_once()
    assert redis_client.get(KEYS.processed) == b"3"
    assert launcher.monitor.unconfirmed_counts() == (0, 0)


def test_commands_sent_twice_before_a_beat_act_once(redis_client, make_launcher):
    """Two clicks on "stop" (and one on "quiet") before the next beat: one stop, not a
    stop and then a hurry."""
    launcher = make_launcher()
    received = []
    launcher.monitor.on_command = received.append
    redis_client.lpush(KEYS.signals(launcher.identity), "stop", "quiet", "stop", "bogus")
    launcher.monitor.beat_once()
    assert received == ["stop", "quiet"]  # the oldest first
    assert not redis_client.exists(KEYS.signals(launcher.identity))

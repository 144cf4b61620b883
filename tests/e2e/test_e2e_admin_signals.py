"""End to end: quiet and stop a real worker through Redis (the dashboard's buttons)."""

from __future__ import annotations

from jiggler_gevent.api import Api
from jiggler_gevent.keys import Keys

from .procs import wait_until

KEYS = Keys()


def test_quiet_then_stop_through_redis(redis_client, spawn_worker):
    worker = spawn_worker("-c", "2", "--stats-interval", "0.2")
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 15, "a heartbeat", worker)
    (identity,) = [i.decode() for i in redis_client.zrange(KEYS.processes, 0, -1)]
    api = Api(redis_client)

    api.signal_process(identity, "quiet")
    wait_until(lambda: redis_client.hget(KEYS.process(identity), "quiet") == b"1", 10,
               "the worker to report quiet", worker)
    wait_until(lambda: not redis_client.exists(KEYS.signals(identity)), 5, "the command taken")

    api.signal_process(identity, "stop")
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    assert redis_client.zcard(KEYS.processes) == 0
    assert not redis_client.exists(KEYS.process(identity))

"""Periodic jobs end to end: three worker processes on one Redis for about four
seconds on a one-second schedule; every tick is enqueued and run exactly once.

The jobs module is written to the test's folder; a server middleware in it appends
``<tick> <pid>`` to a ledger file (one O_APPEND write per line) after each run.
"""

from __future__ import annotations

import collections
import signal
import time

from .procs import wait_until

JOBS = '''
import os

from jiggler_gevent import Job, middleware
from jiggler_gevent.periodic import periodic

LEDGER = os.environ["PERIODIC_LEDGER"]


@periodic(every=1)
class Tick(Job):
    name = "e2e.tick"

    def perform(self):
        pass


class Ledger:
    def around_perform(self, job, payload, call_next):
        result = call_next()
        fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{payload['periodic_at']!r} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)
        return result


middleware.add(Ledger())
'''


def test_three_workers_run_every_tick_exactly_once(tmp_path, redis_client, spawn_worker):
    (tmp_path / "tickjobs.py").write_text(JOBS)
    ledger = tmp_path / "ticks.txt"
    env = {"PERIODIC_LEDGER": str(ledger)}  # the worker runs in tmp_path: tickjobs imports
    workers = [spawn_worker("-r", "tickjobs", "-c", "3", require=False, env=env)
               for _ in range(3)]
    for worker in workers:
        wait_until(lambda w=worker: "started" in w.stdout(), 15, "the worker to start", worker)
    time.sleep(4.2)
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        worker.wait_exit(15)
        assert worker.returncode == 0, worker.tail()

    lines = [line.split() for line in ledger.read_text().splitlines()]
    per_tick = collections.Counter(float(tick) for tick, _ in lines)
    ticks = sorted(per_tick)
    assert len(ticks) >= 3, lines
    assert set(per_tick.values()) == {1}, per_tick  # never twice
    assert ticks == [ticks[0] + k for k in range(len(ticks))]  # never a gap
    assert all(tick == int(tick) for tick in ticks)  # on the second

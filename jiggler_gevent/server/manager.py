"""The pool of worker greenlets: start them, replace the dead, stop them.

Owns the N named worker greenlets. A worker greenlet that dies of an unexpected
error is replaced (its job pushed back first). Stopping follows gevent's
``BaseServer.stop``: stop intake, wait up to the shutdown timeout for running jobs,
then interrupt the jobs still running with :class:`Shutdown` and push them back to
the head of their queues (in both modes: an interrupted job runs again from the
start). Only greenlets inside user code are interrupted; one idle in a
fetch or inside our own Redis write gets ``--fetch-timeout`` plus a grace period to
finish it, and is interrupted only as a last resort (redis-py then drops that
connection, and a job whose reply was lost is drained back at exit). Must not
fetch, ack or decide outcomes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import gevent
from gevent import Greenlet
from gevent.event import Event

from ..errors import Shutdown
from .backoff import REDIS_ERRORS
from .fetcher import Fetcher
from .worker import Worker

log = logging.getLogger(__name__)

STOP_POLL_S = 0.05
KILL_WAIT_S = 2.0
REPLACE_DELAY_S = 0.1


class Manager:
    """Runs ``concurrency`` :class:`Worker` loops as greenlets."""

    def __init__(self, concurrency: int, make_worker: Callable[[int], Worker],
                 fetcher: Fetcher) -> None:
        self.concurrency = concurrency
        self.make_worker = make_worker
        self.fetcher = fetcher
        self.workers: dict[int, Worker] = {}
        self.greenlets: dict[int, Greenlet] = {}
        self.stopping = False
        self.replaced = 0

    def start(self) -> None:
        for index in range(self.concurrency):
            self._spawn(index)

    def _spawn(self, index: int, delay: float = 0.0) -> None:
        worker = self.make_worker(index)
        greenlet = Greenlet(worker.run)
        greenlet.name = worker.name
        greenlet.link(self._worker_exited)
        self.workers[index], self.greenlets[index] = worker, greenlet
        if delay:
            greenlet.start_later(delay)
        else:
            greenlet.start()

    def _worker_exited(self, greenlet: Greenlet) -> None:
        index = next((i for i, g in self.greenlets.items() if g is greenlet), None)
        if index is None:
            return
        worker = self.workers[index]
        if greenlet.successful() and self.fetcher.stopping:
            return  # a normal end of the loop
        unit = worker.current
        log.error("worker %s died (%r); replacing it", worker.name, greenlet.exception)
        if unit is not None and not unit.abandoned:
            unit.abandoned = True
            gevent.spawn(self._push_back, [unit])
        if not self.stopping:
            self.replaced += 1
            self._spawn(index, delay=REPLACE_DELAY_S)  # no hot loop if a worker dies at once

    def _push_back(self, units: list) -> int:
        try:
            return self.fetcher.requeue(units)
        except REDIS_ERRORS as exc:
            fate = "they stay reserved" if self.fetcher.reliable else "they are lost"
            log.error("could not push %d job(s) back (%s): %s", len(units), fate, exc)
            self.fetcher.give_up(units)
            return 0

    # state ------------------------------------------------------------------------

    def busy(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.current is not None]

    def busy_jobs(self) -> list[dict]:
        """What each busy worker runs, for the heartbeat."""
        jobs = []
        for worker in self.busy():
            job = worker.current_job or {}
            jobs.append({
                "worker": worker.name, "jid": job.get("jid"), "name": job.get("name"),
                "queue": worker.current.queue if worker.current else None,
                "started_at": worker.started_at,
            })
        return jobs

    def alive(self) -> list[Greenlet]:
        return [g for g in self.greenlets.values() if not g.dead]

    # stopping ---------------------------------------------------------------------

    def quiet(self) -> None:
        """Stop taking new jobs; running jobs finish."""
        self.fetcher.stopping = True

    def stop(self, timeout: float, hurry: Optional[Event] = None) -> bool:
        """Quiet, wait up to ``timeout`` s (less if ``hurry`` is set) for the
        workers, then hard-stop the rest. Returns True when all finished in time."""
        self.stopping = True
        self.quiet()
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            gevent.joinall(self.alive(), timeout=STOP_POLL_S)
        if not self.alive():
            return True
        self.hard_shutdown()
        return False

    def hard_shutdown(self) -> int:
        """Interrupt the jobs still running, then push them back to their queues.

        Only workers inside user code are interrupted and their jobs pushed back. A
        worker in our own code (recording a failure, acking) finishes that: pushing its
        job back too would run it twice (it would be in its queue and in the retry
        set). Interrupting first means that a job whose code returned in the meantime
        is acked, not pushed back (at-most-once: never run twice)."""
        running = {index: w for index, w in self.workers.items()
                   if w.in_perform and w.current is not None and not w.current.abandoned}
        units = [w.current for w in running.values()]
        for unit in units:
            unit.abandoned = True
        interrupted = [self.greenlets[i] for i in running if not self.greenlets[i].dead]
        for greenlet in interrupted:
            greenlet.kill(Shutdown("shutdown deadline passed"), block=False)
        gevent.joinall(interrupted, timeout=KILL_WAIT_S)
        unfinished = [unit for unit in units if not unit.performed]
        pushed = self._push_back(unfinished) if unfinished else 0
        log.warning("hard shutdown: pushed %d running job(s) back to their queues", pushed)
        # the others are idle in a fetch (it ends within --fetch-timeout) or finishing one of
        # our own writes: give them that long before the last resort
        gevent.joinall(self.alive(), timeout=self.fetcher.config.fetch_timeout + KILL_WAIT_S)
        for greenlet in self.alive():
            greenlet.kill(Shutdown("shutdown deadline passed"), block=True, timeout=KILL_WAIT_S)
        return pushed

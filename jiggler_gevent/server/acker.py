"""Batched acknowledgements of jobs that succeeded.

Owns removing finished jobs from the in-progress lists (at-least-once mode). Workers
hand units over and go on. Pending acks ride along with the next fetch (one script
call both acks and reserves, so the in-progress list stays as short as the number
of running jobs); when no fetch comes soon (all workers busy, or idle and blocked)
this greenlet sends them in one pipeline. A failed flush keeps the acks and tries
again with backoff. Must not decide outcomes: a failed job's ack
is written by the retrier, in the same transaction as its retry or dead entry.
"""

from __future__ import annotations

import logging

import gevent
import redis
from gevent.event import Event

from .backoff import Backoff
from .fetcher import Fetcher, UnitOfWork

log = logging.getLogger(__name__)

MAX_ACKS_PER_PIPELINE = 1000
ACK_DELAY_S = 0.005  # how long acks wait for a fetch to carry them


class Acker:
    """Collects acks from workers; :meth:`flush` sends them; :meth:`run` loops."""

    def __init__(self, client: redis.Redis, fetcher: Fetcher) -> None:
        self.client = client
        self.fetcher = fetcher
        self._wake = Event()
        self._stopping = False
        self._backoff = Backoff()

    def ack(self, unit: UnitOfWork) -> None:
        """Queue the ack of a job that succeeded (no Redis call here)."""
        if unit.reserved_key is None:  # at-most-once: nothing to remove
            self.fetcher.release((unit,))
            return
        self.fetcher.pending_acks.append(unit)
        self._wake.set()

    @property
    def pending(self) -> list[UnitOfWork]:
        return self.fetcher.pending_acks

    def flush(self) -> int:
        """Send pending acks in one pipeline; returns how many; raises on Redis errors
        (the acks stay pending)."""
        pending = self.fetcher.pending_acks
        batch = pending[:MAX_ACKS_PER_PIPELINE]
        del pending[:MAX_ACKS_PER_PIPELINE]
        if not batch:
            return 0
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for unit in batch:
                    unit.acknowledge_into(pipe)
                pipe.execute()
        except BaseException:
            self.fetcher.pending_acks[:0] = batch
            raise
        self.fetcher.release(batch)
        return len(batch)

    def run(self) -> None:
        """Flush whenever acks are pending, until :meth:`stop`."""
        while not self._stopping or self.pending:
            if not self.pending:
                self._wake.wait()
                self._wake.clear()
                gevent.sleep(ACK_DELAY_S)  # let a fetch carry them first
                continue
            try:
                self.flush()
                self._backoff.reset()
            except Exception as exc:  # Redis errors, and any other: the loop must not die
                if self._stopping and self._backoff.failures >= 5:
                    log.error("giving up on %d acks at shutdown: %s (the jobs stay reserved "
                              "and will run again)", len(self.pending), exc)
                    return
                delay = self._backoff.next_delay()
                log.warning("ack flush failed, retrying in %.2fs: %s: %s", delay,
                            type(exc).__name__, exc)
                gevent.sleep(delay)

    def stop(self) -> None:
        """Let :meth:`run` finish once the pending acks are sent."""
        self._stopping = True
        self._wake.set()

"""What happens to a job that failed: the retry set, or the dead set.

Owns the failure half of the ack rule. A job that raised goes to the retry set with
its backoff, or to the dead set once its retries are used up; a payload that cannot
run at all (bad JSON, unknown name, bad arguments) goes straight to the dead set
with its raw bytes and a reason. The write and the ack are one MULTI/EXEC, so a job
is never acknowledged unless its retry or dead entry was stored; on a Redis error
the write is tried again with backoff (it is idempotent) until it lands or the
process is hard-stopped. Must not run jobs.

Where the entry goes: a retry to the retry set of the job's ``retry_queue`` (when it
is a valid queue name) or else of the queue it ran from; a dead entry to the dead
set of the queue it ran from. The retry set of another queue is in another cluster
slot: on a Redis Cluster client the entry is written first and the ack sent after
it (two steps, each retried until it lands). A crash between the two leaves the job
reserved as well as stored for a retry: it is recovered and runs again, and its
retry runs too (a duplicate, never a loss). On a single server it stays one MULTI.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Callable, Optional

import gevent
import redis

from .. import payload as _payload
from ..config import Config
from ..connection import is_cluster
from ..job import Job, QueueRegistry
from ..keys import Keys, valid_queue_name
from .backoff import REDIS_ERRORS, Backoff
from .fetcher import Fetcher, UnitOfWork

log = logging.getLogger(__name__)

BACKTRACE_LINES = 30


def _backtrace(exc: BaseException) -> list[str]:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines).splitlines()
    return text[-BACKTRACE_LINES:]


class Retrier:
    """Writes failed jobs to the retry or dead set and acks them, atomically."""

    def __init__(self, config: Config, client: redis.Redis, keys: Keys, fetcher: Fetcher,
                 hard_stopped: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.client = client
        self.keys = keys
        self.fetcher = fetcher
        self.hard_stopped = hard_stopped
        self.cluster = is_cluster(client)
        # other queues we put in the registry (keys.queues); our own queues are there
        # already: every heartbeat adds them
        self._registered = QueueRegistry()

    def job_failed(self, unit: UnitOfWork, job: dict, job_class: type, exc: BaseException,
                   now: Optional[float] = None) -> str:
        """Record a failure of a decoded job; returns "retry" or "dead"."""
        now = time.time() if now is None else now
        attempt = (job.get("attempt") or 0) + 1
        retries = job.get("retries")
        if retries is None:
            retries = job_class.retries
        if attempt <= retries:
            retry_at = now + self._delay(job_class, attempt, exc)
            entry = _payload.failed(job, exc, now=now, retry_at=retry_at)
            entry["error_backtrace"] = _backtrace(exc)
            entry["queue"] = entry.get("queue") or unit.queue  # raw producers may omit it
            target = self._retry_queue(unit, job)
            self._store(unit, target, self.keys.retries(target), retry_at, entry, dead=False)
            log.info("job failed, retry %d/%d in %.1fs jid=%s name=%s queue=%s error=%s: %s",
                     attempt, retries, retry_at - now, job.get("jid"), job.get("name"), target,
                     type(exc).__name__, exc)
            return "retry"
        entry = _payload.failed(job, exc, now=now, retry_at=None)
        entry["error_backtrace"] = _backtrace(exc)
        entry["queue"] = entry.get("queue") or unit.queue
        self._store(unit, unit.queue, self.keys.dead(unit.queue), now, entry, dead=True)
        log.warning("job dead after %d attempt(s) jid=%s name=%s error=%s: %s", attempt,
                    job.get("jid"), job.get("name"), type(exc).__name__, exc)
        return "dead"

    def bury(self, unit: UnitOfWork, exc: Exception, job: Optional[dict] = None,
             now: Optional[float] = None) -> None:
        """Send a payload that cannot run to the dead set, with the reason (no retries).

        ``job`` is the decoded payload when there is one (unknown name, bad
        arguments); without it the raw bytes are kept as they are.
        """
        now = time.time() if now is None else now
        if job is None:
            entry = _payload.dead_letter(unit.raw, str(exc), queue=unit.queue, now=now)
        else:
            entry = _payload.failed(job, exc, now=now, retry_at=None)
            entry["queue"] = entry.get("queue") or unit.queue
        self._store(unit, unit.queue, self.keys.dead(unit.queue), now, entry, dead=True)
        log.warning("job sent to the dead set queue=%s jid=%s %s: %s", unit.queue,
                    entry.get("jid"), type(exc).__name__, exc)

    def _delay(self, job_class: type, attempt: int, exc: BaseException) -> float:
        try:
            delay = float(job_class.retry_in(attempt, exc))
            if delay >= 0 and delay == delay:
                return delay
            raise ValueError(f"retry_in returned {delay!r}")
        except Exception as err:
            log.error("%s.retry_in failed (%s); using the default backoff",
                      getattr(job_class, "__qualname__", job_class), err)
            return Job.retry_in(attempt, exc)

    def _retry_queue(self, unit: UnitOfWork, job: dict) -> str:
        """The queue a failed job is retried in: its ``retry_queue``, else its own."""
        target = job.get("retry_queue")
        if target is None or target == unit.queue:
            return unit.queue
        if not valid_queue_name(target):
            log.warning("jid=%s: retry_queue %r is not a valid queue name; retrying in %s",
                        job.get("jid"), target, unit.queue)
            return unit.queue
        return target

    def _store(self, unit: UnitOfWork, queue: str, set_key: str, score: float, entry: dict,
               *, dead: bool) -> None:
        """Write ``entry`` to ``set_key`` (a set of ``queue``) and ack ``unit``: one MULTI,
        or on a cluster with ``queue`` not the unit's own, the write and then the ack."""
        member = _payload.dumps(entry, check_size=False)
        register = self._unregistered(queue)  # a retry_queue: the pollers must find it
        apart = self.cluster and queue != unit.queue
        written = False
        backoff = Backoff()
        while True:
            try:
                if register and self.cluster:  # the registry is in the global slot
                    self.client.sadd(self.keys.queues, queue)
                    self._remember(queue)
                    register = False
                if not apart:
                    with self.client.pipeline(transaction=True) as pipe:
                        if register:
                            pipe.sadd(self.keys.queues, queue)
                        self._add_entry(pipe, set_key, member, score, dead)
                        unit.acknowledge_into(pipe)
                        pipe.execute()
                else:  # another queue's slot: the entry first, then the ack
                    if not written:
                        with self.client.pipeline(transaction=True) as pipe:
                            self._add_entry(pipe, set_key, member, score, dead)
                            pipe.execute()
                        written = True
                    if unit.reserved_key is not None:
                        with self.client.pipeline(transaction=False) as pipe:
                            unit.acknowledge_into(pipe)
                            pipe.execute()
                if register:
                    self._remember(queue)
                self.fetcher.release((unit,))
                return
            except REDIS_ERRORS as exc:
                if self.hard_stopped():
                    raise
                delay = backoff.next_delay()
                log.warning("could not store a failed job (it stays reserved), retrying in "
                            "%.2fs: %s: %s", delay, type(exc).__name__, exc)
                gevent.sleep(delay)

    def _add_entry(self, pipe, set_key: str, member: bytes, score: float, dead: bool) -> None:
        pipe.zadd(set_key, {member: score})
        if dead:
            pipe.zremrangebyscore(set_key, "-inf", score - self.config.dead_timeout)
            pipe.zremrangebyrank(set_key, 0, -(self.config.max_dead_jobs + 1))

    def _unregistered(self, queue: str) -> bool:
        return queue not in self.config.queue_names and self._registered.due(queue)

    def _remember(self, queue: str) -> None:
        self._registered.remember((queue,))

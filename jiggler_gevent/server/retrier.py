"""What happens to a job that failed: the retry set, or the dead set.

Owns the failure half of the ack rule. A job that raised goes to the retry set with
its backoff, or to the dead set once its retries are used up; a payload that cannot
run at all (bad JSON, unknown name, bad arguments) goes straight to the dead set
with its raw bytes and a reason. The write and the ack are one MULTI/EXEC, so a job
is never acknowledged unless its retry or dead entry was stored; on a Redis error
the write is tried again with backoff (it is idempotent) until it lands or the
process is hard-stopped. Must not run jobs.
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
from ..job import Job
from ..keys import Keys
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
            self._store(unit, self.keys.retries, retry_at, entry, dead=False)
            log.info("job failed, retry %d/%d in %.1fs jid=%s name=%s error=%s: %s", attempt,
                     retries, retry_at - now, job.get("jid"), job.get("name"),
                     type(exc).__name__, exc)
            return "retry"
        entry = _payload.failed(job, exc, now=now, retry_at=None)
        entry["error_backtrace"] = _backtrace(exc)
        entry["queue"] = entry.get("queue") or unit.queue
        self._store(unit, self.keys.dead, now, entry, dead=True)
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
        self._store(unit, self.keys.dead, now, entry, dead=True)
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

    def _store(self, unit: UnitOfWork, set_key: str, score: float, entry: dict,
               *, dead: bool) -> None:
        member = _payload.dumps(entry, check_size=False)
        backoff = Backoff()
        while True:
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.zadd(set_key, {member: score})
                    if dead:
                        pipe.zremrangebyscore(set_key, "-inf", score - self.config.dead_timeout)
                        pipe.zremrangebyrank(set_key, 0, -(self.config.max_dead_jobs + 1))
                    unit.acknowledge_into(pipe)
                    pipe.execute()
                self.fetcher.release((unit,))
                return
            except REDIS_ERRORS as exc:
                if self.hard_stopped():
                    raise
                delay = backoff.next_delay()
                log.warning("could not store a failed job (it stays reserved), retrying in "
                            "%.2fs: %s: %s", delay, type(exc).__name__, exc)
                gevent.sleep(delay)


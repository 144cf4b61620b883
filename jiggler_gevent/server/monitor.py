"""The heartbeat: this process's entry in the process registry, and the counters.

Owns, every ``stats_interval``, one MULTI/EXEC that registers the process
(``jiggler:processes`` sorted set, score = last beat), writes its info hash with a
TTL of a few intervals (fields, never encoded in key names), and adds the
processed/failed counts to the totals and to per-day history keys. When that
write fails, the counts are put back for the next beat. At exit, :meth:`remove`
deletes the entry. Must not run jobs or touch queues.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import Callable, Optional

import redis
import ujson
from gevent.event import Event

from ..config import Config
from ..keys import Keys
from ..version import __version__
from .backoff import REDIS_ERRORS
from .stats import Stats

log = logging.getLogger(__name__)

HISTORY_TTL_S = 400 * 24 * 3600  # per-day counters are kept a bit over a year
BUSY_JOBS_SHOWN = 100


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Monitor:
    """Writes heartbeats; :meth:`beat_once` is one beat."""

    def __init__(self, config: Config, client: redis.Redis, keys: Keys, identity: str,
                 stats: Stats, busy_jobs: Callable[[], list[dict]],
                 quiet: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.client = client
        self.keys = keys
        self.identity = identity
        self.stats = stats
        self.busy_jobs = busy_jobs
        self.quiet = quiet
        self.started_at = time.time()
        self.stopping = False
        self._wake = Event()

    def info(self, now: float) -> dict:
        """The fields of this process's info hash."""
        busy = self.busy_jobs()
        return {
            "identity": self.identity,
            "hostname": self.config.hostname,
            "pid": os.getpid(),
            "queues": ",".join(f"{n}:{w}" if w != 1 else n for n, w in self.config.queues),
            "concurrency": self.config.concurrency,
            "mode": self.config.mode,
            "busy": len(busy),
            "busy_jobs": ujson.dumps(busy[:BUSY_JOBS_SHOWN]),
            "rss": rss_bytes(),
            "started_at": self.started_at,
            "beat_at": now,
            "quiet": int(bool(self.quiet())),
            "version": __version__,
            "environment": self.config.environment,
        }

    def beat_once(self, now: Optional[float] = None) -> None:
        """Register, refresh the TTL, and flush counters; raises on Redis errors
        (the counters are put back first)."""
        now = time.time() if now is None else now
        processed, failed = self.stats.take()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        key = self.keys.process(self.identity)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(self.keys.processes, {self.identity: now})
                pipe.hset(key, mapping=self.info(now))
                pipe.expire(key, max(1, int(self.config.heartbeat_ttl)))
                for total, daily, count in (
                    (self.keys.processed, self.keys.processed_on(day), processed),
                    (self.keys.failures, self.keys.failures_on(day), failed),
                ):
                    if count:
                        pipe.incrby(total, count)
                        pipe.incrby(daily, count)
                        pipe.expire(daily, HISTORY_TTL_S)
                replies = pipe.execute(raise_on_error=False)
        except BaseException:
            # nothing was applied (EXECABORT) or we cannot tell (connection lost):
            # keep the counts for the next beat
            self.stats.put_back(processed, failed)
            raise
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:  # EXEC ran: the other commands applied, so the counts are not put back
            log.error("heartbeat: %d command(s) failed inside EXEC: %s", len(errors), errors[0])

    def remove(self) -> None:
        """Delete this process's heartbeat (at clean exit)."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.processes, self.identity)
            pipe.delete(self.keys.process(self.identity))
            pipe.execute()

    def run(self) -> None:
        while not self.stopping:
            try:
                self.beat_once()
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed (counts kept for the next one): %s: %s",
                            type(exc).__name__, exc)
            self._wake.wait(self.config.stats_interval)

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()


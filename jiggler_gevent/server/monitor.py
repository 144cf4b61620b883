"""The heartbeat: this process's entry in the process registry, and the counters.

Owns, every ``stats_interval``, one MULTI/EXEC on the global slot that registers the
process (``keys.processes`` sorted set, score = last beat), writes its info hash
with a TTL of a few intervals (fields, never encoded in key names), takes the
commands sent to it, registers its in-progress lists (``keys.reservations``) and
its queue names (``keys.queues``). Then, outside the MULTI (a cluster MULTI cannot
carry a script), ``stats.lua`` adds the processed/failed counts to the totals and to
per-day history keys. Counts go in numbered batches: a batch whose write failed is
sent again with the next beat, and the script skips a batch it has applied already
(a reply lost to a timeout), so counts are neither lost nor doubled. Last, in
at-least-once mode, it refreshes this process's lease in each queue it holds
reservations in (a TTL key in the queue's slot, which the recovery script checks).
At exit, :meth:`remove` deletes the entry and the leases. Must not run jobs or touch
queues.
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
from ..scripts import Scripts
from ..version import __version__
from .backoff import REDIS_ERRORS
from .stats import Stats

log = logging.getLogger(__name__)

HISTORY_TTL_S = 400 * 24 * 3600  # per-day counters are kept a bit over a year
BATCH_MARKER_TTL_S = 7 * 24 * 3600
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

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys,
                 identity: str, stats: Stats, busy_jobs: Callable[[], list[dict]],
                 quiet: Callable[[], bool] = lambda: False,
                 reservation_keys: tuple[str, ...] = (),
                 on_command: Callable[[str], None] = lambda command: None) -> None:
        self.config = config
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.identity = identity
        self.stats = stats
        self.busy_jobs = busy_jobs
        self.quiet = quiet
        self.reservation_keys = reservation_keys  # our in-progress lists (at-least-once)
        # our lease in each queue we hold reservations in (refreshed every beat)
        self.lease_keys = tuple(keys.queue_keys(found[0]).lease(identity)
                                for found in map(keys.queue_of_in_progress, reservation_keys)
                                if found is not None)
        self.on_command = on_command  # "quiet" / "stop" sent through Redis by the admin API
        self.started_at = time.time()
        self.unconfirmed: list[tuple[int, int, int]] = []  # (batch, processed, failed)
        self._batch = 0
        self.stopping = False
        self._wake = Event()
        # set by the first beat that registered our in-progress lists and leased them
        self.registered = Event()

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
        """Register, refresh the TTL and the leases, and flush counters; raises on Redis
        errors (the counts stay in :attr:`unconfirmed` and go again with the next beat)."""
        now = time.time() if now is None else now
        processed, failed = self.stats.take()
        if processed or failed:
            self._batch += 1
            self.unconfirmed.append((self._batch, processed, failed))
        ttl_ms = max(1, int(self.config.heartbeat_ttl * 1000))
        key = self.keys.process(self.identity)
        with self.client.pipeline(transaction=True) as pipe:  # every key in the global slot
            pipe.zadd(self.keys.processes, {self.identity: now})
            pipe.hset(key, mapping=self.info(now))
            pipe.pexpire(key, ttl_ms)
            signals = self.keys.signals(self.identity)
            pipe.lrange(signals, 0, -1)  # commands from the admin API (reply index 3)
            pipe.delete(signals)
            if self.reservation_keys:  # so the requeuer can find our lists if we die
                pipe.hset(self.keys.reservations,
                          mapping={k: self.identity for k in self.reservation_keys})
            if self.config.queue_names:  # so pollers and dashboards know our queues
                pipe.sadd(self.keys.queues, *self.config.queue_names)
            replies = pipe.execute(raise_on_error=False)
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:  # EXEC ran; a command inside failed (e.g. a key of the wrong type)
            log.error("heartbeat: %d command(s) failed inside EXEC: %s", len(errors), errors[0])
        commands = replies[3] if isinstance(replies[3], list) else []
        seen = set()  # two clicks on "stop" before one beat are one stop, not stop + hurry
        for command in reversed(commands):  # LPUSHed: the oldest is on the right
            text = command.decode("utf-8", "replace") if isinstance(command, bytes) else command
            if text in ("quiet", "stop") and text not in seen:
                seen.add(text)
                log.info("received %r through Redis", text)
                self.on_command(text)
        failure: Optional[BaseException] = None
        try:
            self._flush_counts(now)
        except REDIS_ERRORS as exc:  # the leases still go: they keep our jobs ours
            failure = exc
        if self.lease_keys:
            with self.client.pipeline(transaction=False) as pipe:  # one key per queue slot
                for lease in self.lease_keys:
                    pipe.set(lease, now, px=ttl_ms)
                pipe.execute()
        self.registered.set()  # our lists are findable and leased: safe to reserve jobs
        if failure is not None:
            raise failure

    def _flush_counts(self, now: float) -> None:
        """Send the unconfirmed batches through ``stats.lua``; they are confirmed (dropped)
        only when the call succeeded."""
        if not self.unconfirmed:
            return
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        batches = list(self.unconfirmed)
        self.scripts.stats(
            keys=[self.keys.processed, self.keys.failures, self.keys.processed_on(day),
                  self.keys.failures_on(day), self.keys.counted(self.identity)],
            args=[HISTORY_TTL_S, BATCH_MARKER_TTL_S, *[n for batch in batches for n in batch]],
        )
        del self.unconfirmed[:len(batches)]

    def unconfirmed_counts(self) -> tuple[int, int]:
        """Processed and failed counts not yet confirmed as stored in Redis."""
        return (sum(b[1] for b in self.unconfirmed), sum(b[2] for b in self.unconfirmed))

    def remove(self) -> None:
        """Delete this process's heartbeat and leases (at clean exit)."""
        with self.client.pipeline(transaction=True) as pipe:  # the global slot
            pipe.zrem(self.keys.processes, self.identity)
            pipe.delete(self.keys.process(self.identity))
            pipe.delete(self.keys.counted(self.identity))
            pipe.delete(self.keys.signals(self.identity))
            if self.reservation_keys:
                pipe.hdel(self.keys.reservations, *self.reservation_keys)
            pipe.execute()
        if self.lease_keys:
            with self.client.pipeline(transaction=False) as pipe:  # one key per queue slot
                for lease in self.lease_keys:
                    pipe.delete(lease)
                pipe.execute()

    def run(self) -> None:
        while not self.stopping:
            try:
                self.beat_once()
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed (counts go with the next one): %s: %s",
                            type(exc).__name__, exc)
            except Exception:  # a dead heartbeat loop would get our jobs recovered by others
                log.exception("heartbeat failed unexpectedly (counts go with the next one)")
            self._wake.wait(self.config.stats_interval)

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()


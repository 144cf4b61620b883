"""The periodic scheduler: one greenlet that enqueues each schedule's ticks.

Owns turning due ticks into jobs, exactly once across every worker process on one
Redis without a leader: for a due tick each process runs ``periodic_claim.lua``, which
compares the tick with the schedule's last recorded tick, records it and pushes the
job in one atomic step. Only the first process to arrive pushes; the others see the
tick recorded. Claim and push cannot be separated by a crash. The jid is derived from
the schedule name and the tick, so a tick's job is recognisable in logs. The last
ticks are kept per queue (``keys.queue_keys(queue).periodic_last``), beside the
queue's pending list, so the claim touches one cluster slot; the published schedule
descriptions carry the queue, so readers know where a schedule's last tick is.

:meth:`PeriodicScheduler.tick_once` is one step (tests call it with any ``now``);
:meth:`run` is the driver. Must not run jobs. The declarations and the time math
are in ``jiggler_gevent.periodic``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Optional

import gevent
import redis
import ujson

from .. import middleware as _middleware
from .. import payload as _payload
from ..errors import EnqueueError, UnknownJobError
from ..job import Enqueuer, lookup
from ..keys import Keys
from ..periodic import Schedule
from ..scripts import source as script_source
from .backoff import REDIS_ERRORS, Backoff

log = logging.getLogger(__name__)

MAX_SLEEP_S = 1.0  # the loop wakes at least this often (to notice a stop)
WAKE_MARGIN_S = 0.005  # sleep a hair past the tick so `now` is surely at or after it


def tick_jid(schedule_name: str, tick: float) -> str:
    """The jid of one tick's job: 24 hex digits derived from the schedule and tick."""
    return hashlib.sha1(f"{schedule_name}\0{tick!r}".encode()).hexdigest()[:24]


class PeriodicScheduler:
    """Enqueues due ticks of ``schedules``; one per worker process."""

    def __init__(self, client: redis.Redis, keys: Keys, schedules: list[Schedule]) -> None:
        self.client = client
        self.keys = keys
        self.schedules = list(schedules)
        self._claim = client.register_script(script_source("periodic_claim"))
        self._next: dict[str, float] = {}  # schedule name -> earliest time worth a look
        self._warned: set[str] = set()
        self._failed: set[str] = set()  # schedules whose failure was logged with a traceback
        self.stopping = False

    def tick_once(self, now: Optional[float] = None) -> list[str]:
        """Claim every tick due at ``now``; returns the jids this process pushed.
        Redis errors propagate (the driver backs off). Any other error (a client
        middleware raising, a payload that cannot be encoded) costs that schedule this
        tick only: it is logged, and the other schedules go on."""
        now = time.time() if now is None else now
        pushed = []
        for schedule in self.schedules:
            if now < self._next.get(schedule.name, -math.inf):
                continue
            tick = schedule.latest(now)
            try:
                jid = self._claim_tick(schedule, tick)
            except REDIS_ERRORS:
                raise
            except Exception as exc:
                jid = None
                first = schedule.name not in self._failed
                self._failed.add(schedule.name)
                log.error("periodic schedule=%s tick=%.3f not enqueued: %s: %s", schedule.name,
                          tick, type(exc).__name__, exc, exc_info=first)
            self._next[schedule.name] = schedule.next_after(now)
            if jid is not None:
                pushed.append(jid)
        return pushed

    def _claim_tick(self, schedule: Schedule, tick: float) -> Optional[str]:
        job = self._payload(schedule, tick)
        if job is None:
            return None
        queue = self.keys.queue_keys(job["queue"])
        result = self._claim(keys=[queue.periodic_last, queue.pending],
                             args=[schedule.name, repr(tick), _payload.dumps(job)])
        if result == 1:
            log.info("periodic schedule=%s tick=%.3f enqueued jid=%s", schedule.name, tick,
                     job["jid"])
            return job["jid"]
        if result == 2:
            log.info("periodic schedule=%s is new: first run at its next tick", schedule.name)
        return None

    def _payload(self, schedule: Schedule, tick: float) -> Optional[dict]:
        try:
            job_class = lookup(schedule.job)
            enqueuer = Enqueuer(job_class)
            if schedule.queue:
                enqueuer = enqueuer.with_options(queue=schedule.queue)
            job = enqueuer.build(schedule.args, schedule.kwargs, jid=tick_jid(schedule.name, tick))
        except (UnknownJobError, EnqueueError) as exc:
            if schedule.name not in self._warned:  # another process may know the job
                self._warned.add(schedule.name)
                log.error("periodic schedule=%s skipped here: %s", schedule.name, exc)
            return None
        job["periodic"] = schedule.name
        job["periodic_at"] = tick
        return _middleware.run_client(job_class, job)

    def publish(self) -> None:
        """Write each schedule's description where dashboards read it, with the queue its
        jobs go to (where its last tick is kept), and register those queues."""
        if not self.schedules:
            return
        described, queues = {}, set()
        for schedule in self.schedules:
            info = schedule.describe()
            queue = self._queue_of(schedule)
            if queue is not None:
                info["queue"] = queue
                queues.add(queue)
            described[schedule.name] = ujson.dumps(info)
        with self.client.pipeline(transaction=True) as pipe:  # the global slot
            pipe.hset(self.keys.periodic_schedules, mapping=described)
            if queues:
                pipe.sadd(self.keys.queues, *sorted(queues))
            pipe.execute()

    @staticmethod
    def _queue_of(schedule: Schedule) -> Optional[str]:
        """The queue a schedule's jobs go to, or None when its job is unknown here."""
        if schedule.queue:
            return schedule.queue
        try:
            return lookup(schedule.job).queue
        except UnknownJobError:
            return None

    def seconds_to_next(self, now: float) -> float:
        """How long the loop may sleep: to the next tick, at most :data:`MAX_SLEEP_S`."""
        wake = min((self._next.get(s.name, now) for s in self.schedules), default=now + MAX_SLEEP_S)
        return min(MAX_SLEEP_S, max(0.0, wake - now) + WAKE_MARGIN_S)

    def run(self) -> None:
        """The driver: publish, then step at each tick until stopped."""
        backoff = Backoff()
        published = False
        while not self.stopping:
            try:
                if not published:
                    self.publish()
                    published = True
                self.tick_once()
                backoff.reset()
                delay = self.seconds_to_next(time.time())
            except REDIS_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("periodic: Redis error, retrying in %.2fs: %s", delay, exc)
            except Exception:  # never let the scheduler die silently
                delay = backoff.next_delay()
                log.exception("periodic: unexpected error, retrying in %.2fs", delay)
            gevent.sleep(delay)

    def stop(self) -> None:
        self.stopping = True

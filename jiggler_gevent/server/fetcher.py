"""Reserving jobs from Redis, and the unit of work that hides the fetch mode.

Owns how jobs leave their queues: at-most-once pops them, at-least-once moves them
atomically into this process's in-progress list, so a crash cannot lose them.
Workers call :meth:`Fetcher.fetch` for one job each; the idle workers share one
Redis round trip, which reserves up to as many jobs as there are idle workers and
never more. Must not run jobs or decide their outcome (that is the worker's).

Cluster slots: a queue's pending list and this process's in-progress list of it
share the queue's slot. On a single server one ``fetch.lua`` call spans every
queue (one round trip, the fast path); on a Redis Cluster client each call covers
one queue, called in the round's queue order until the batch is filled, and the
blocking wait rotates over the queues one key at a time.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Optional

import gevent
import redis
from gevent.event import Event

from ..config import AT_LEAST_ONCE, Config
from ..connection import is_cluster
from ..keys import Keys
from ..scripts import Scripts
from .backoff import REDIS_ERRORS, Backoff

log = logging.getLogger(__name__)

MULTI_QUEUE_BLOCK_S = 0.2  # blocking slice per queue when one blocking call cannot cover all


class UnitOfWork:
    """One reserved job: its raw bytes and where they came from.

    ``acknowledge_into(pipe)`` adds the ack (at-least-once: remove from the
    in-progress list; at-most-once: nothing) to a pipeline; ``requeue_keys`` are the
    keys the requeue script needs to push the job back to the head of its queue.
    """

    __slots__ = ("queue", "queue_key", "reserved_key", "raw", "abandoned", "pushed_back",
                 "performed")

    def __init__(self, queue: str, queue_key: str, reserved_key: Optional[str], raw: bytes):
        self.queue = queue
        self.queue_key = queue_key
        self.reserved_key = reserved_key
        self.raw = raw
        self.abandoned = False  # set at hard shutdown: its outcome is not recorded
        self.pushed_back = False  # requeue() pushed it back: never again (at-most-once)
        self.performed = False  # the job's code returned: it ran, never push it back

    def acknowledge_into(self, pipe: redis.client.Pipeline) -> None:
        if self.reserved_key is not None:
            # reservations are pushed on the left: the oldest, likeliest done, are on the right
            pipe.lrem(self.reserved_key, -1, self.raw)

    @property
    def requeue_keys(self) -> tuple[str, str]:
        # the requeue script pushes unconditionally when both keys are the queue
        return self.queue_key, self.reserved_key or self.queue_key

    def __repr__(self) -> str:
        return f"<UnitOfWork queue={self.queue} bytes={len(self.raw)}>"


_TAKING = UnitOfWork("", "", None, b"")  # stands in for a suspect while one is being taken


class Fetcher:
    """Hands reserved jobs to worker greenlets, fetching in shared batches."""

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys,
                 identity: str) -> None:
        self.config = config
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.identity = identity
        self.reliable = config.mode == AT_LEAST_ONCE
        self.cluster = is_cluster(client)  # then a script call covers one queue's slot
        self.stopping = False
        self._queues = [
            (name, weight, keys.queue(name), keys.in_progress(name, identity))
            for name, weight in config.queues
        ]
        self._buffer: collections.deque[UnitOfWork] = collections.deque()
        self._waiting = 0
        self._round: Optional[Event] = None
        self._block_turn = 0
        self._backoff = Backoff()
        self._reply_lost = False  # a move may have happened without us seeing its reply
        self.held: set[UnitOfWork] = set()  # reserved and not yet acknowledged in Redis
        self.concurrency = config.concurrency
        self.quarantine_pending = False  # a suspect waits: drain, then run it alone
        self.isolating: Optional[UnitOfWork] = None  # the suspect running alone
        self._resume = Event()
        self.pending_acks: list[UnitOfWork] = []  # filled by the acker, sent with a fetch

    @property
    def reservation_keys(self) -> tuple[str, ...]:
        """This process's in-progress lists (none in at-most-once mode)."""
        return tuple(q[3] for q in self._queues) if self.reliable else ()

    # the one call workers make ----------------------------------------------------

    def fetch(self) -> Optional[UnitOfWork]:
        """One reserved job, or None when nothing came within the fetch timeout
        or the fetcher is stopping."""
        self._waiting += 1
        try:
            while True:
                if self._buffer:
                    return self._buffer.popleft()
                if self.stopping:
                    return None
                if self.isolating is not None or self.quarantine_pending:
                    if self._all_idle() and self.isolating is None and self._round is None:
                        unit = self._take_suspect()
                        if unit is not None:
                            return unit
                        continue
                    self._resume.wait(self.config.fetch_timeout)  # a suspect runs alone
                    return None
                current = self._round
                if current is None:
                    return self._lead_round()
                current.wait()
        finally:
            self._waiting -= 1

    # suspects: jobs recovered from more than one crash run alone ----------------------

    def quarantine_waiting(self) -> None:
        """Called when a suspect waits in one of our queues' quarantine lists."""
        if self.reliable:
            self.quarantine_pending = True

    def _all_idle(self) -> bool:
        return self._waiting >= self.concurrency and not self.held

    def _take_suspect(self) -> Optional[UnitOfWork]:
        """Reserve one quarantined job to run with nothing else beside it (the quarantine
        list and our in-progress list of a queue share the queue's slot)."""
        # Claim the turn before the Redis call: the LMOVE yields to the hub, and the other
        # idle workers, seeing nothing held yet, would each take a suspect of their own.
        self.isolating = _TAKING
        try:
            return self._take_one_suspect()
        finally:
            if self.isolating is _TAKING:
                self.isolating = None

    def _take_one_suspect(self) -> Optional[UnitOfWork]:
        try:
            for name, _, queue_key, reserved_key in self._queues:
                raw = self.client.lmove(self.keys.quarantine(name), reserved_key, "RIGHT", "LEFT")
                if raw is not None:
                    unit = UnitOfWork(name, queue_key, reserved_key, raw)
                    self.held.add(unit)
                    self.isolating = unit
                    self.quarantine_pending = False  # the requeuer flags the next one
                    log.warning("running a job recovered from more than one crash alone "
                                "(queue %s)", name)
                    return unit
        except REDIS_ERRORS as exc:
            # the move may have happened with its reply lost: the next round pushes back
            # what sits in our in-progress lists unheld
            self._reply_lost = True
            log.warning("could not take a quarantined job: %s", exc)
            gevent.sleep(self._backoff.next_delay())
            return None
        self.quarantine_pending = False
        self._wake_waiters()
        return None

    def _wake_waiters(self) -> None:
        resume, self._resume = self._resume, Event()
        resume.set()

    def _lead_round(self) -> Optional[UnitOfWork]:
        self._round = done = Event()
        try:
            gevent.sleep(0)  # let other ready workers join as waiters before sizing the batch
            units = self._reserve(self._waiting)
        finally:
            self._round = None
            done.set()
        if not units:
            return None
        self._buffer.extend(units[1:])
        return units[0]

    # talking to Redis -------------------------------------------------------------

    def _reserve(self, count: int) -> list[UnitOfWork]:
        try:
            if self._reply_lost and self.reliable:
                self.reclaim_unowned()
            units = self._reserve_batch(count)
            if not units:
                units = self._reserve_blocking()
            self._backoff.reset()
            self.held.update(units)
            return units
        except REDIS_ERRORS as exc:
            self._reply_lost = True
            delay = self._backoff.next_delay()
            log.warning("fetch failed, retrying in %.2fs: %s: %s", delay, type(exc).__name__, exc)
            gevent.sleep(delay)
            return []

    def _ordered_queues(self) -> list[tuple]:
        if self.config.is_strict or len(self._queues) == 1:
            return self._queues
        # weighted random order, re-drawn per round (a queue of weight 3 leads 3x as often)
        remaining = list(self._queues)
        ordered = []
        while remaining:
            pick = random.choices(remaining, weights=[q[1] for q in remaining])[0]
            remaining.remove(pick)
            ordered.append(pick)
        return ordered

    def _reserve_batch(self, count: int) -> list[UnitOfWork]:
        """Send the pending acks and reserve up to ``count`` jobs: one script call on a
        single server (it spans every queue), one per queue on a cluster."""
        queues = self._ordered_queues()
        acks, self.pending_acks = self.pending_acks, []
        if self.cluster and len(queues) > 1:
            return self._reserve_per_queue(queues, count, acks)
        keys: list[str] = []
        for _, _, queue_key, reserved_key in queues:
            keys.append(queue_key)
            if self.reliable:
                keys.append(reserved_key)
        args: list = [count, 1 if self.reliable else 0, len(acks)]
        if acks:
            position = {q[2]: i for i, q in enumerate(queues, 1)}
            for unit in acks:
                args += (position[unit.queue_key], unit.raw)
        try:
            reply = self.scripts.fetch(keys=keys, args=args)
        except BaseException:
            self.pending_acks[:0] = acks
            raise
        self.release(acks)
        units = []
        for i in range(0, len(reply), 2):
            index = int(reply[i])
            name, _, queue_key, reserved_key = queues[index - 1]
            units.append(UnitOfWork(name, queue_key, reserved_key if self.reliable else None,
                                    reply[i + 1]))
        return units

    def _reserve_per_queue(self, queues: list[tuple], count: int,
                           acks: list[UnitOfWork]) -> list[UnitOfWork]:
        """The cluster form of :meth:`_reserve_batch`: ``fetch.lua`` once per queue (its
        pending and in-progress lists, and only its own acks), in the round's order,
        until the batch is filled; a queue with acks but no room left gets a call that
        only acks."""
        by_queue: dict[str, list[UnitOfWork]] = {}
        for unit in acks:
            by_queue.setdefault(unit.queue_key, []).append(unit)
        units: list[UnitOfWork] = []
        for name, _, queue_key, reserved_key in queues:
            want = count - len(units)
            queue_acks = by_queue.pop(queue_key, [])
            if want <= 0 and not queue_acks:
                continue
            args: list = [want, 1 if self.reliable else 0, len(queue_acks)]
            for unit in queue_acks:
                args += (1, unit.raw)
            keys = [queue_key, reserved_key] if self.reliable else [queue_key]
            try:
                reply = self.scripts.fetch(keys=keys, args=args)
            except BaseException as exc:
                self.pending_acks[:0] = queue_acks + [u for g in by_queue.values() for u in g]
                if not units:
                    raise
                self._reply_lost = True  # jobs reserved but, if we raise, never handed out
                if not isinstance(exc, REDIS_ERRORS):
                    raise
                log.warning("fetch from queue %s failed, keeping the %d job(s) reserved "
                            "from the others: %s: %s", name, len(units), type(exc).__name__, exc)
                return units
            if queue_acks:
                self.release(queue_acks)
            reserved = reserved_key if self.reliable else None
            for i in range(1, len(reply), 2):
                units.append(UnitOfWork(name, queue_key, reserved, reply[i]))
        if by_queue:  # acks of a queue we do not fetch from (cannot happen): keep them
            self.pending_acks[:0] = [u for g in by_queue.values() for u in g]
        return units

    def _reserve_blocking(self) -> list[UnitOfWork]:
        """Wait up to the fetch timeout for one job. At-most-once on a single server:
        one BRPOP over every queue. Otherwise one queue at a time (BLMOVE takes one
        source list; on a cluster BRPOP may name keys of one slot only), in slices of
        :data:`MULTI_QUEUE_BLOCK_S` when there are several queues."""
        timeout = self.config.fetch_timeout
        if not self.reliable and (not self.cluster or len(self._queues) == 1):
            reply = self.client.brpop([q[2] for q in self._ordered_queues()], timeout=timeout)
            if reply is None:
                return []
            key, raw = reply
            key = key.decode() if isinstance(key, bytes) else key
            for name, _, queue_key, _ in self._queues:
                if queue_key == key:
                    return [UnitOfWork(name, queue_key, None, raw)]
            raise RuntimeError(f"BRPOP answered from a key we did not ask for: {key!r}")
        if len(self._queues) > 1:
            timeout = min(timeout, MULTI_QUEUE_BLOCK_S)
        self._block_turn = (self._block_turn + 1) % len(self._queues)
        name, _, queue_key, reserved_key = self._ordered_queues()[0] \
            if not self.config.is_strict else self._queues[self._block_turn]
        if not self.reliable:
            reply = self.client.brpop([queue_key], timeout=timeout)
            return [] if reply is None else [UnitOfWork(name, queue_key, None, reply[1])]
        raw = self.client.blmove(queue_key, reserved_key, timeout, "RIGHT", "LEFT")
        return [] if raw is None else [UnitOfWork(name, queue_key, reserved_key, raw)]

    # giving jobs back -------------------------------------------------------------

    def requeue(self, units: list[UnitOfWork]) -> int:
        """Push jobs back to the head of their queues; returns how many. One script call
        on a single server, one per queue on a cluster. A unit is pushed back once: a
        call again after an error skips the units an earlier call already pushed."""
        units = [u for u in units if not u.pushed_back]
        if not units:
            return 0
        if not self.cluster:
            return self._requeue_together(units)
        by_queue: dict[str, list[UnitOfWork]] = {}
        for unit in units:
            by_queue.setdefault(unit.queue_key, []).append(unit)
        return sum(self._requeue_together(group) for group in by_queue.values())

    def _requeue_together(self, units: list[UnitOfWork]) -> int:
        keys: list[str] = []
        for unit in units:
            keys.extend(unit.requeue_keys)
        # at-most-once pushes unconditionally: a call again after a lost reply could push
        # a job twice, so each unit gets one attempt (a failed one loses the job, as a
        # crash would in this mode). At-least-once marks them once the push is done.
        if not self.reliable:
            self._pushed_back(units)
        pushed = int(self.scripts.requeue(keys=keys, args=[u.raw for u in units]))
        if self.reliable:
            self._pushed_back(units)
        return pushed

    def _pushed_back(self, units: list[UnitOfWork]) -> None:
        for unit in units:
            unit.pushed_back = True
        self.release(units)

    def give_up(self, units: collections.abc.Iterable[UnitOfWork]) -> None:
        """Units whose push back failed: no longer held, so that (at-least-once) the
        next round, or the drain at exit, pushes back what our in-progress lists still
        hold; a held unit never released would keep a suspect from ever running."""
        self.release(units)
        if self.reliable:
            self._reply_lost = True

    def release(self, units: collections.abc.Iterable[UnitOfWork]) -> None:
        """Forget units whose ack (or push back) has reached Redis."""
        units = list(units)
        self.held.difference_update(units)
        if self.isolating is not None and self.isolating in units:
            self.isolating = None  # the requeuer flags the next suspect, if any
            self._wake_waiters()

    def take_buffered(self) -> list[UnitOfWork]:
        """Reserved jobs no worker has taken yet (emptied)."""
        units = list(self._buffer)
        self._buffer.clear()
        return units

    def reclaim_unowned(self, everything: bool = False) -> int:
        """Push back jobs in our in-progress lists that we do not hold.

        After a fetch whose reply was lost, the server may have moved jobs that we
        never received; they would sit in our in-progress list until we exit. At
        exit (``everything=True``, when no worker runs any more) this drains the lists.
        Each step touches one queue's keys (one cluster slot).
        """
        if not self.reliable:
            return 0
        held: dict[str, collections.Counter] = {}
        if not everything:
            for unit in self.held:
                held.setdefault(unit.queue_key, collections.Counter())[unit.raw] += 1
        moved = 0
        for name, _, queue_key, reserved_key in self._queues:
            held_raw = held.get(queue_key)
            if not held_raw:
                moved += int(self.scripts.drain(keys=[reserved_key, queue_key]))
                continue
            orphans = []
            for raw in self.client.lrange(reserved_key, 0, -1):
                if held_raw[raw] > 0:
                    held_raw[raw] -= 1
                else:
                    orphans.append(UnitOfWork(name, queue_key, reserved_key, raw))
            moved += self.requeue(orphans)
        self._reply_lost = False
        if moved:
            log.warning("pushed back %d reserved job(s) that no worker held", moved)
        return moved

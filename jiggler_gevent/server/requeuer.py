"""Recovering the jobs of worker processes that died: the orphan requeuer.

Owns, every ``requeue_interval`` (with jitter), one look at the reservations
registry (``keys.reservations``: in-progress list -> owner identity, written by
every heartbeat). A list whose owner has no heartbeat hash any more is recovered by
``recover.lua``, in the list's queue slot, which checks the owner's lease in that
queue (a TTL key the owner's heartbeat refreshes) atomically, moves the jobs back to
the head of their queue, and sends a job recovered more than ``max_recoveries``
times to the queue's dead set as a poison pill. After a recovery ``unregister.lua``
drops the list from the reservations registry and the owner from the process
registry (global keys, so not in the queue's script), unless the owner came back.
It also prunes registry entries of processes whose heartbeat is long gone. Must not
touch a live process's list, run jobs, or decode payloads.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import redis

from ..config import AT_LEAST_ONCE, Config
from ..keys import Keys
from ..scripts import Scripts
from .loop import IntervalLoop

log = logging.getLogger(__name__)

RECOVERY_COUNTS_TTL_S = 7 * 24 * 3600
PRUNE_AFTER_TTLS = 10  # registry entries silent for this many heartbeat TTLs are pruned


class Requeuer(IntervalLoop):
    """Finds orphaned in-progress lists and recovers them; :meth:`requeue_once` is one pass."""

    what = "orphan check"

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys,
                 identity: str, on_quarantine: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.identity = identity
        self.on_quarantine = on_quarantine  # suspects wait in a queue of ours: run them alone
        self.queues = config.queue_names if config.mode == AT_LEAST_ONCE else []
        super().__init__()

    def requeue_once(self, now: Optional[float] = None) -> tuple[int, int]:
        """Recover every orphaned reservation; returns (jobs moved back, poison pills)."""
        now = time.time() if now is None else now
        owners = {
            key.decode(): identity.decode()
            for key, identity in self.client.hgetall(self.keys.reservations).items()
        }
        candidates = [(key, owner) for key, owner in owners.items() if owner != self.identity]
        if candidates:
            with self.client.pipeline(transaction=False) as pipe:
                for _, owner in candidates:
                    pipe.exists(self.keys.process(owner))
                alive = pipe.execute()
            candidates = [c for c, live in zip(candidates, alive) if not live]
        moved = buried = 0
        for key, owner in candidates:
            parsed = self.keys.queue_of_in_progress(key)
            if parsed is None or parsed[1] != owner:  # not a key we build: drop the entry
                self.client.hdel(self.keys.reservations, key)
                continue
            queue = self.keys.queue_keys(parsed[0])
            result = self.scripts.recover(
                keys=[key, queue.pending, queue.lease(owner), queue.recoveries, queue.dead,
                      queue.quarantine],
                args=[self.config.max_recoveries, repr(now), RECOVERY_COUNTS_TTL_S,
                      self.config.max_dead_jobs, repr(now - self.config.dead_timeout),
                      queue.name],
            )
            if int(result[0]) < 0:
                continue  # its lease is live: the owner came back, or never left
            self.scripts.unregister(  # the global slot: not in the queue's script
                keys=[self.keys.process(owner), self.keys.reservations, self.keys.processes],
                args=[key, owner])
            moved += int(result[0])
            buried += int(result[1])
            if int(result[0]) or int(result[1]):
                log.warning("recovered %d job(s) of dead process %s from queue %s "
                            "(%d poison pill(s) to the dead set)", int(result[0]), owner,
                            queue.name, int(result[1]))
        self._prune_registry(now)
        if self.queues:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    pipe.exists(self.keys.quarantine(queue))
                if any(pipe.execute()):
                    self.on_quarantine()
        return moved, buried

    def _prune_registry(self, now: float) -> None:
        cutoff = now - PRUNE_AFTER_TTLS * self.config.heartbeat_ttl
        stale = self.client.zrangebyscore(self.keys.processes, "-inf", cutoff)
        for identity in stale:
            if not self.client.exists(self.keys.process(identity.decode())):
                self.client.zrem(self.keys.processes, identity)

    def step(self) -> tuple[int, int]:
        return self.requeue_once()

    def interval(self) -> float:
        return self.config.requeue_interval

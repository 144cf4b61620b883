"""Moving due jobs from the scheduled and retry sets to their queues.

Owns the poll loop. Every queue has its own scheduled and retry sets, in its cluster
slot; a pass covers every queue in the registry (``keys.queues``, which enqueueing,
heartbeats and the retrier keep filled) and this process's own queues. Each batch is
one Lua script call (``schedule.lua``) on one queue's keys that removes a due job and
pushes it in one atomic step, so a failure between the two can neither lose nor
double a job, and several processes polling at once move each job once. The calls of
one pass go in pipelines (one round trip for many queues), and only a set that
filled a whole batch gets another round. Must not run or decode jobs (the script
sends malformed entries to the queue's dead set).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import redis
from redis.exceptions import NoScriptError

from ..config import Config
from ..keys import Keys, QueueKeys, valid_queue_name
from ..scripts import Scripts
from .loop import IntervalLoop

log = logging.getLogger(__name__)

BATCH_SIZE = 100  # due jobs moved per script call
PIPELINE_CALLS = 500  # script calls per pipelined round trip


class Poller(IntervalLoop):
    """Every ``poll_interval`` (with jitter), move due jobs; :meth:`poll_once` is one pass."""

    what = "poll"

    def __init__(self, config: Config, client: redis.Redis, scripts: Scripts, keys: Keys) -> None:
        self.config = config
        self.client = client
        self.scripts = scripts
        self.keys = keys
        super().__init__()

    def queues(self) -> list[str]:
        """Every queue to look at: the registry's and our own (names checked)."""
        names = set(self.config.queue_names)
        for raw in self.client.smembers(self.keys.queues):
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if valid_queue_name(name):
                names.add(name)
        return sorted(names)

    def poll_once(self, now: Optional[float] = None) -> int:
        """Move every job due at ``now`` (default: the current time) in every queue;
        returns how many."""
        now = time.time() if now is None else now
        work: list[tuple[str, QueueKeys]] = []
        for name in self.queues():
            queue = self.keys.queue_keys(name)
            work += ((queue.scheduled, queue), (queue.retries, queue))
        moved = 0
        while work:
            replies = self._schedule(work, now)
            more = []
            for item, (pushed, buried) in zip(work, replies):
                moved += int(pushed)
                if int(pushed) + int(buried) >= BATCH_SIZE:  # a full batch: maybe more due
                    more.append(item)
            work = more
        if moved:
            log.debug("moved %d due job(s) to their queues", moved)
        return moved

    def _schedule(self, work: list[tuple[str, QueueKeys]], now: float) -> list:
        """One ``schedule.lua`` call per (set, queue), pipelined; their replies."""
        script = self.scripts.schedule
        calls = [
            (set_key, queue.pending, queue.dead, repr(now), BATCH_SIZE,
             self.config.max_dead_jobs, repr(now - self.config.dead_timeout), queue.name)
            for set_key, queue in work
        ]
        if len(calls) == 1:
            (call,) = calls
            return [script(keys=call[:3], args=call[3:])]
        replies: list = []
        for start in range(0, len(calls), PIPELINE_CALLS):
            chunk = calls[start:start + PIPELINE_CALLS]
            try:
                replies += self._evalsha_all(script.sha, chunk)
            except NoScriptError:  # first use, or after a restart or SCRIPT FLUSH
                script.sha = self.client.script_load(script.script)  # on every primary
                replies += self._evalsha_all(script.sha, chunk)
        return replies

    def _evalsha_all(self, sha: str, calls: list[tuple]) -> list:
        # plain EVALSHA: a Script in a pipeline would add a SCRIPT EXISTS round trip
        with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(sha, 3, *call)
            return pipe.execute()

    def step(self) -> int:
        return self.poll_once()

    def interval(self) -> float:
        return self.config.poll_interval

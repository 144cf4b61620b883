"""Moving due jobs from the scheduled and retry sets to their queues.

Owns the poll loop. Each batch is one Lua script (``schedule.lua``) that removes a
due job and pushes it in one atomic step, so a failure between the two can neither
lose nor double a job, and several processes polling at once move each job once.
Must not run or decode jobs (the script sends malformed entries to the dead set).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from ..config import Config
from ..keys import Keys
from ..scripts import Scripts
from .loop import IntervalLoop

log = logging.getLogger(__name__)

BATCH_SIZE = 100


class Poller(IntervalLoop):
    """Every ``poll_interval`` (with jitter), move due jobs; :meth:`poll_once` is one pass."""

    what = "poll"

    def __init__(self, config: Config, scripts: Scripts, keys: Keys) -> None:
        self.config = config
        self.scripts = scripts
        self.keys = keys
        super().__init__()

    def poll_once(self, now: Optional[float] = None) -> int:
        """Move every job due at ``now`` (default: the current time); returns how many."""
        now = time.time() if now is None else now
        moved = 0
        for set_key, prefer_retry_queue in ((self.keys.scheduled, 0), (self.keys.retries, 1)):
            while True:
                pushed, buried = self.scripts.schedule(
                    keys=[set_key, self.keys.dead],
                    args=[repr(now), BATCH_SIZE, self.keys.queue_prefix, prefer_retry_queue,
                          self.config.max_dead_jobs, repr(now - self.config.dead_timeout)],
                )
                moved += int(pushed)
                if int(pushed) + int(buried) < BATCH_SIZE:
                    break
        if moved:
            log.debug("moved %d due job(s) to their queues", moved)
        return moved

    def step(self) -> int:
        return self.poll_once()

    def interval(self) -> float:
        return self.config.poll_interval

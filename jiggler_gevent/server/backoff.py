"""Backoff with jitter for retrying Redis after an error.

Owns the delay schedule every loop uses when Redis fails (fetch, ack, retry
writes, poll, heartbeat). Must not sleep or log itself: callers do.
"""

from __future__ import annotations

import random

import redis

# The errors that mean "Redis is not answering right now": worth waiting and trying again.
# ResponseError is included for OOM/READONLY/LOADING/BUSY replies; callers that can
# tell a permanent error apart check it themselves.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError)


class Backoff:
    """Exponential delays from ``base`` to ``cap`` seconds with +-50% jitter."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the next one."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 20))
        self.failures += 1
        return delay * random.uniform(0.5, 1.5)

    def reset(self) -> None:
        self.failures = 0

"""In-memory job counters of this process, between two heartbeats.

Owns the processed/failed counts the workers add to and the monitor takes to flush.
Must not talk to Redis (the monitor does, and keeps a batch it could not confirm).
"""

from __future__ import annotations


class Stats:
    """Counters since the last flush (plain ints: greenlets never preempt a +=)."""

    __slots__ = ("processed", "failed", "_flushed_processed", "_flushed_failed")

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self._flushed_processed = 0
        self._flushed_failed = 0

    @property
    def processed_total(self) -> int:
        """Jobs processed since start, flushed or not."""
        return self._flushed_processed + self.processed

    @property
    def failed_total(self) -> int:
        """Failures since start, flushed or not."""
        return self._flushed_failed + self.failed

    def take(self) -> tuple[int, int]:
        """Return and reset the counts to flush."""
        counts = (self.processed, self.failed)
        self.processed = self.failed = 0
        self._flushed_processed += counts[0]
        self._flushed_failed += counts[1]
        return counts

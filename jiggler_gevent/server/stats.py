"""In-memory job counters of this process, between two heartbeats.

Owns the processed/failed counts the workers add to and the monitor flushes.
Must not talk to Redis (the monitor does, and puts counts back when it fails).
"""

from __future__ import annotations


class Stats:
    """Counters since the last flush (plain ints: greenlets never preempt a +=)."""

    __slots__ = ("processed", "failed", "processed_total", "failed_total")

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.processed_total = 0  # since start, for logs and the demo
        self.failed_total = 0

    def take(self) -> tuple[int, int]:
        """Return and reset the counts to flush."""
        counts = (self.processed, self.failed)
        self.processed = self.failed = 0
        self.processed_total += counts[0]
        self.failed_total += counts[1]
        return counts

    def put_back(self, processed: int, failed: int) -> None:
        """Undo a :meth:`take` whose flush did not reach Redis."""
        self.processed += processed
        self.failed += failed
        self.processed_total -= processed
        self.failed_total -= failed

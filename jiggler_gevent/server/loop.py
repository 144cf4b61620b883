"""The driver shared by the background loops: one step, then wait, until stopped.

Owns the timing of the poller and the requeuer: their step runs every interval with
±50% jitter (so many processes do not act in lockstep), and after a Redis error the
wait backs off from 0.5 s to 30 s instead (after any other error too, logged with its
traceback: the loop never dies). Must not know what a step does.
"""

from __future__ import annotations

import abc
import logging
import random

from gevent.event import Event

from .backoff import REDIS_ERRORS, Backoff

log = logging.getLogger(__name__)


class IntervalLoop(abc.ABC):
    """Subclasses define :meth:`step` (one pass, the single-step method tests call)
    and :meth:`interval` (seconds); :meth:`run` drives them until :meth:`stop`."""

    what = "step"  # for the log line of a failed step

    def __init__(self) -> None:
        self.stopping = False
        self._wake = Event()

    @abc.abstractmethod
    def step(self) -> object:
        """One pass of the loop's work."""

    @abc.abstractmethod
    def interval(self) -> float:
        """Seconds between two passes (before jitter)."""

    def run(self) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while not self.stopping:
            try:
                self.step()
                backoff.reset()
                delay = self.interval() * random.uniform(0.5, 1.5)
            except REDIS_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("%s failed, retrying in %.2fs: %s: %s", self.what, delay,
                            type(exc).__name__, exc)
            except Exception:  # a loop that died would fail silently: log, back off, go on
                delay = backoff.next_delay()
                log.exception("%s failed unexpectedly, retrying in %.2fs", self.what, delay)
            self._wake.wait(delay)

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

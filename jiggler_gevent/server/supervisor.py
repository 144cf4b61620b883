"""The supervisor: a CPU-bound job must not silently stall the whole process.

gevent is cooperative: a job that computes without doing I/O never gives the hub a
turn, so heartbeats, the poller, other jobs and ``gevent.Timeout`` all stop. This
ports the seed's context switcher (``CLI#patch_scheduler``): a native thread notices
that the hub has not run for longer than a threshold and signals the process
(``SIGURG``). The signal handler runs in the main thread, inside the greenlet that
hogs it, and:

* logs that greenlet's stack, once per stall;
* raises :class:`JobTimeout` when the running job is past its hard deadline (the
  job takes the retry path);
* otherwise yields to the hub for a short slice (a timed sleep: ``sleep(0)`` would
  not let the hub poll sockets or fire timers), so everything else keeps running.

It only ever interrupts user code: when the signal lands in jiggler-gevent's own
code, or outside a job, it just reports. It cannot help with C code that holds the
GIL without returning (a long regex, a big numpy call without GIL release): no
Python code, not even a signal handler, runs until it returns.

Must not run jobs, touch Redis, or use gevent primitives from its native thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from typing import Optional

import gevent
from gevent import monkey

from ..errors import JobTimeout

log = logging.getLogger(__name__)

SIGNAL = signal.SIGURG  # ignored by default, so a stray one is harmless
YIELD_SLICE_S = 0.05  # how long a preempted job lets the hub and the other greenlets run
STACK_LINES = 25


class Supervisor:
    """Watches the hub from a native thread; preempts or times out CPU-bound jobs."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.running: dict = {}  # greenlet in user code -> (deadline (monotonic), seconds) or None
        self.stalls = 0  # how many stalls were reported
        self._reported: set = set()  # greenlets whose stall was logged (once per job)
        self.preemptions = 0
        self._last_tick = time.monotonic()
        self._stalled_since: Optional[float] = None
        self._report: Optional[str] = None  # stack captured by the thread, logged by the handler
        self._stopping = False
        self._ticker: Optional[gevent.Greenlet] = None
        self._main_thread_id = None

    # called by workers around user code ---------------------------------------------

    def enter(self, timeout: Optional[float]) -> None:
        """The current greenlet starts user code with a hard ``timeout`` in seconds (or None)."""
        self.running[gevent.getcurrent()] = \
            None if timeout is None else (time.monotonic() + timeout, timeout)

    def leave(self) -> None:
        current = gevent.getcurrent()
        self.running.pop(current, None)
        self._reported.discard(current)

    # lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._main_thread_id = monkey.get_original("_thread", "get_ident")()
        signal.signal(SIGNAL, self._on_signal)
        self._ticker = gevent.spawn(self._tick)
        self._ticker.name = "jiggler.supervisor"
        start_new_thread = monkey.get_original("_thread", "start_new_thread")
        start_new_thread(self._watch, ())

    def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.kill(block=False)
        signal.signal(SIGNAL, signal.SIG_IGN)

    def _tick(self) -> None:
        """A greenlet: proves the hub runs, by moving a timestamp forward."""
        while not self._stopping:
            self._last_tick = time.monotonic()
            gevent.sleep(self.threshold / 5)

    # the native thread --------------------------------------------------------------

    def _watch(self) -> None:
        """Runs in a real OS thread: only plain Python, no gevent, no logging (locks)."""
        real_sleep = monkey.get_original("time", "sleep")
        while not self._stopping:
            real_sleep(self.threshold / 2)
            now = time.monotonic()
            if now - self._last_tick <= self.threshold:
                self._stalled_since = None
                continue
            if self._stalled_since is None:
                self._stalled_since = self._last_tick
                self._report = self._capture_stack()
            try:
                signal.pthread_kill(self._main_thread_id, SIGNAL)
            except (OSError, ValueError):  # pragma: no cover - the process is exiting
                return

    def _capture_stack(self) -> str:
        frame = sys._current_frames().get(self._main_thread_id)
        if frame is None:
            return "(no stack)"
        return "".join(traceback.format_stack(frame)[-STACK_LINES:])

    # the signal handler (main thread, inside the greenlet that hogs it) ------------

    def _on_signal(self, signum: int, frame) -> None:
        current = gevent.getcurrent()
        report, self._report = self._report, None
        if report is not None and current not in self._reported:
            self._reported.add(current)
            self.stalls += 1
            log.warning("the hub has not run for %.2fs: greenlet %s is blocking it (CPU-bound "
                        "code?); preempting it. Its stack:\n%s",
                        time.monotonic() - (self._stalled_since or time.monotonic()),
                        getattr(current, "name", current), report)
        if current not in self.running or _in_our_code(frame):
            return  # only user code is interrupted; never our own bookkeeping
        limit = self.running[current]
        if limit is not None and time.monotonic() >= limit[0]:
            self.running.pop(current, None)
            raise JobTimeout(limit[1])
        self.preemptions += 1
        gevent.sleep(YIELD_SLICE_S)


def _in_our_code(frame) -> bool:
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return module.startswith("jiggler_gevent.") or module.startswith(("gevent.", "greenlet"))


def supported() -> bool:
    """True where the supervisor can run (POSIX signals and pthread_kill)."""
    return hasattr(signal, "pthread_kill") and hasattr(signal, "SIGURG") and os.name == "posix"

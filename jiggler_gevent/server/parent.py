"""The parent of ``-p N``: N worker processes, kept alive, stopped together.

Owns starting N worker processes (each a full ``jiggler-gevent`` with its own
identity, heartbeat and in-progress lists: CPU-bound work then uses every core),
restarting a child that dies (with a growing delay when it keeps dying at once),
forwarding TERM/INT/TSTP/TTIN to the children, and exiting once they have all
stopped. A second TERM/INT is forwarded too, so the children hurry. Must not talk
to Redis or run jobs: a parent that dies loses nothing, its children stop on their
own (each holds its reservations, recovered by the others if it is killed).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

import gevent

log = logging.getLogger(__name__)

CHILD_CODE = ("from gevent import monkey; monkey.patch_all(); import sys; "
              "from jiggler_gevent.cli import main; sys.exit(main(sys.argv[1:]))")
CHECK_INTERVAL_S = 0.2
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
QUICK_DEATH_S = 5.0  # a child that dies sooner than this after its start is crashing
PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM if the parent dies, even by SIGKILL,
    so no worker process is left behind without its parent."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: the children outlive a killed parent
        pass


class Child:
    """One worker process slot."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self.restarts = 0
        self.next_start = 0.0
        self.delay = RESTART_DELAY_S


class Parent:
    """Runs ``count`` copies of the worker with ``argv`` (without ``-p``)."""

    def __init__(self, count: int, argv: Sequence[str]) -> None:
        self.count = count
        self.argv = [*argv, "--processes", "1"]  # the last -p wins: children do not fork
        self.children = [Child(i) for i in range(count)]
        self.stopping = False
        self.signals_received = 0

    def command(self) -> list[str]:
        return [sys.executable, "-c", CHILD_CODE, *self.argv]

    def start_child(self, child: Child) -> None:
        child.process = subprocess.Popen(self.command(), preexec_fn=_stop_with_parent)
        child.started_at = time.monotonic()
        log.info("started worker process %d: pid %d", child.index, child.process.pid)

    def forward(self, signum: int) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                try:
                    child.process.send_signal(signum)
                except OSError:
                    pass

    def on_stop_signal(self, signum: int) -> None:
        self.stopping = True
        self.signals_received += 1
        log.info("%s: stopping %d worker process(es)", signal.Signals(signum).name, self.count)
        self.forward(signum)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self.on_stop_signal, signum)
        for signum in (signal.SIGTSTP, signal.SIGTTIN):
            gevent.signal_handler(signum, self.forward, signum)

    def check_once(self, now: Optional[float] = None) -> None:
        """Restart children that died (unless stopping); one step of :meth:`run`."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is None:
                continue
            if self.stopping:
                continue
            if process is not None and child.next_start == 0.0:
                lived = now - child.started_at
                child.delay = min(RESTART_DELAY_MAX_S, child.delay * 2) \
                    if lived < QUICK_DEATH_S else RESTART_DELAY_S
                child.next_start = now + child.delay
                log.error("worker process %d (pid %d) exited with %s after %.1fs; restarting "
                          "in %.1fs", child.index, process.pid, process.returncode, lived,
                          child.delay)
            if now >= child.next_start:
                if process is not None:
                    child.restarts += 1
                child.next_start = 0.0
                self.start_child(child)

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is None]

    def run(self) -> int:
        """Start the children, keep them running, stop with them; returns the exit code."""
        self.install_signal_handlers()
        for child in self.children:
            self.start_child(child)
        while not self.stopping:
            gevent.sleep(CHECK_INTERVAL_S)
            self.check_once()
        while self.alive():
            gevent.sleep(CHECK_INTERVAL_S)
        codes = [c.process.returncode for c in self.children if c.process is not None]
        log.info("all worker processes stopped (exit codes %s)", codes)
        return 0 if all(code == 0 for code in codes) else 1

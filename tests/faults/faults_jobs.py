"""Jobs run by the ``bin/jiggler-gevent`` subprocesses of the fault suite.

The worker loads this module with ``-r faults_jobs`` (its folder is on PYTHONPATH);
it imports ``jobs_fixture`` from ``tests/e2e`` too, so the worker also knows every
``e2e.*`` job (``e2e.record`` is the plain job of most scenarios). The tests import
this module to enqueue. Every job has an explicit name, so both sides agree on it.

Ledger lines (``<jid> <pid> start|end <time>``, outside Redis) come from
``jobs_fixture.record``; anything else a scenario needs to look at (failure times,
the delays ``retry_in`` chose) goes to a second file, ``$FAULTS_NOTES``, one
O_APPEND write per line, so the ledger keeps only ``start`` and ``end`` lines.
"""

from __future__ import annotations

import os
import random
import signal
import time

from jiggler_gevent import Job

try:  # the tests: tests/ is on sys.path, tests/e2e is the package ``e2e``
    from e2e.jobs_fixture import record
except ImportError:  # the worker: tests/e2e itself is on PYTHONPATH
    from jobs_fixture import record

NOTES_ENV = "FAULTS_NOTES"
RETRY_MIN_S, RETRY_MAX_S = 0.1, 0.5


def note(*fields: object) -> None:
    """Append one line of space-separated fields to ``$FAULTS_NOTES``."""
    line = (" ".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(os.environ[NOTES_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class PoisonPill(Job):
    """Kills the process running it, every time (a segfaulting C extension, say)."""

    name = "faults.poison"

    def perform(self):
        record(self.jid, "start")
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # never reached: SIGKILL is not deferred


class PlannedFailure(RuntimeError):
    """Raised on purpose; carries the jid so ``retry_in`` can note its choice per job."""

    def __init__(self, jid: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt + 1} of {jid} fails on purpose")
        self.jid = jid


class _SmallJitteredBackoff(Job):
    """Base: the default backoff's shape (random jitter) at a test's time scale."""

    name = "faults._base"
    retries = 3

    @classmethod
    def retry_in(cls, attempt, exc):
        delay = random.uniform(RETRY_MIN_S, RETRY_MAX_S)
        note("delay", getattr(exc, "jid", "?"), attempt, f"{delay:.6f}")
        return delay

    def perform(self):  # pragma: no cover - a base, never enqueued
        raise NotImplementedError


class FlakyTwice(_SmallJitteredBackoff):
    """Fails on its first two attempts, succeeds on the third."""

    name = "faults.flaky_twice"

    def perform(self):
        record(self.jid, "start")
        if self.attempt < 2:
            note("fail", self.jid, self.attempt, f"{time.time():.6f}")
            raise PlannedFailure(self.jid, self.attempt)
        record(self.jid, "end")


class Hopeless(_SmallJitteredBackoff):
    """Fails on every attempt: dead after 1 + ``retries`` attempts."""

    name = "faults.hopeless"

    def perform(self):
        record(self.jid, "start")
        note("fail", self.jid, self.attempt, f"{time.time():.6f}")
        raise PlannedFailure(self.jid, self.attempt)


def burn_cpu(seconds: float) -> int:
    """Pure-Python work that never yields to the gevent hub."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


class Spin(Job):
    """Spins the CPU for ``seconds``; one retry, a minute later (so the entry stays put)."""

    name = "faults.spin"
    retries = 1

    @classmethod
    def retry_in(cls, attempt, exc):
        return 60.0

    def perform(self, seconds):
        record(self.jid, "start")
        burn_cpu(seconds)
        record(self.jid, "end")

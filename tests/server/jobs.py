"""Job classes the in-process server tests run (every name starts with ``srv.``).

Each job notes what happened to it in :data:`EVENTS` (a list of tuples) so a test
can tell which jobs started, finished or were interrupted, and how.
"""

from __future__ import annotations

import gevent

from jiggler_gevent import Job, job

EVENTS: list[tuple] = []
SWALLOWED: list[BaseException] = []


def reset() -> None:
    EVENTS.clear()
    SWALLOWED.clear()
    FlakyCheck.failures_left = 1


def events(kind: str) -> list[tuple]:
    return [event for event in EVENTS if event[0] == kind]


class Ok(Job):
    name = "srv.ok"

    def perform(self, value=None):
        EVENTS.append(("ok", self.jid, value, self.queue_name, self.attempt))


class Two(Job):
    name = "srv.two"

    def perform(self, a, b):
        EVENTS.append(("two", self.jid, a, b))


class Boom(Job):
    name = "srv.boom"
    retries = 3

    def perform(self, message="boom"):
        EVENTS.append(("boom", self.jid, self.attempt))
        raise ValueError(message)


class Slow(Job):
    """Sleeps past its own ``timeout`` class option."""

    name = "srv.slow"
    timeout = 0.2

    def perform(self, seconds=5.0):
        EVENTS.append(("start", self.jid))
        gevent.sleep(seconds)
        EVENTS.append(("end", self.jid))


class Swallow(Job):
    """Tries to swallow its timeout with ``except Exception``."""

    name = "srv.swallow"
    timeout = 0.2

    def perform(self):
        EVENTS.append(("start", self.jid))
        try:
            gevent.sleep(5)
        except Exception as exc:  # what careless user code does
            SWALLOWED.append(exc)
        EVENTS.append(("end", self.jid))


class CleanupRaisesOverTimeout(Job):
    """Its cleanup raises while the timeout propagates (``with conn:`` on a connection the
    interrupted query closed, say)."""

    name = "srv.cleanup_raises"
    timeout = 0.2

    def perform(self):
        try:
            gevent.sleep(5)
        finally:
            raise RuntimeError("connection already closed")


class Plain(Job):
    """No timeout of its own: only Config.job_timeout can stop it."""

    name = "srv.plain"

    def perform(self, seconds):
        EVENTS.append(("start", self.jid))
        gevent.sleep(seconds)
        EVENTS.append(("end", self.jid))


class Sleeper(Job):
    name = "srv.sleeper"

    def perform(self, seconds):
        EVENTS.append(("start", self.jid))
        try:
            gevent.sleep(seconds)
        except BaseException as exc:
            EVENTS.append(("interrupted", self.jid, type(exc).__name__))
            raise
        EVENTS.append(("end", self.jid))


class FlakyCheck(Job):
    """Its argument check raises an unexpected error once, killing the worker greenlet."""

    name = "srv.flaky_check"
    failures_left = 1

    @classmethod
    def check_arguments(cls, args, kwargs):
        if cls.failures_left > 0:
            cls.failures_left -= 1
            raise RuntimeError("unexpected bug outside perform")
        super().check_arguments(args, kwargs)

    def perform(self):
        EVENTS.append(("flaky", self.jid))


class RaisesGreenletExit(Job):
    """User code that raises GreenletExit itself (not an interrupt from the manager)."""

    name = "srv.raises_greenlet_exit"

    def perform(self):
        from greenlet import GreenletExit

        EVENTS.append(("start", self.jid))
        raise GreenletExit("raised by the job, not by a kill")


@job(name="srv.add", retries=1)
def add(a, b=0):
    EVENTS.append(("add", a + b))


class BadBackoff(Job):
    """retry_in misbehaves in the way ``behaviour`` (an argument) asks."""

    name = "srv.bad_backoff"

    @classmethod
    def retry_in(cls, attempt, exc):
        behaviour = str(exc)
        if behaviour == "raise":
            raise ZeroDivisionError("bad backoff")
        return {"negative": -5, "nan": float("nan"), "text": "soon"}[behaviour]

    def perform(self, behaviour):
        raise ValueError(behaviour)

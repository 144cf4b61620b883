"""Exceptions raised by jiggler-gevent.

Owns the exception tree. Everything a caller may want to catch derives from
:class:`JigglerError`. The two interrupts the server raises inside job code,
:class:`JobTimeout` and :class:`Shutdown`, derive from ``BaseException`` on purpose,
so that ``except Exception`` in user code cannot swallow them.
"""

from __future__ import annotations


class JigglerError(Exception):
    """Base class of every error jiggler-gevent raises on purpose."""


class ConfigError(JigglerError, ValueError):
    """An option has a value we cannot run with (the message names it)."""


class JobDefinitionError(JigglerError, TypeError):
    """A Job class or decorated function is declared wrongly (bad option, name clash)."""


class EnqueueError(JigglerError, ValueError):
    """A job cannot be enqueued as asked (arguments JSON cannot carry, bad schedule)."""


class UnknownJobError(JigglerError, LookupError):
    """A payload names a job that is not registered in this process."""


class PayloadError(JigglerError, ValueError):
    """A payload read from Redis cannot be turned into a job.

    ``raw`` keeps the exact bytes so they can go to the dead set unchanged;
    ``reason`` says what is wrong with them.
    """

    def __init__(self, reason: str, raw: bytes | str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class RedisUnavailable(JigglerError, ConnectionError):
    """Redis cannot be reached or refused our credentials (the message says which)."""


class JobTimeout(BaseException):
    """Raised inside a job that ran past its ``timeout``; the job takes the retry path."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"job exceeded its timeout of {seconds:g}s")
        self.seconds = seconds


class Shutdown(BaseException):
    """Raised inside a job still running when the shutdown deadline passed.

    The job is not acknowledged: it goes back to the head of its queue.
    """

"""One worker greenlet's loop, and the ack rule, written once.

Owns running one reserved job: decode, look the name up in the registry, check the
arguments, run ``perform`` inside the job's timeout, then settle the outcome:

* success -> ack (batched by the acker), processed += 1
* the job raised, or ran past its timeout -> retry set with backoff, or dead set when
  its retries are used up; the ack is part of that same write; failed += 1
* bad JSON, unknown name, bad arguments -> dead set with the raw bytes and a
  reason, acked in the same write; failed += 1
* shutdown deadline passed (:class:`Shutdown`) -> no ack: the manager has pushed
  the job back to the head of its queue

Must not fetch in bulk, talk to Redis for anything but outcomes, or swallow
:class:`Shutdown`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import gevent

from .. import payload as _payload
from ..errors import JobTimeout, PayloadError, UnknownJobError
from ..job import lookup
from .acker import Acker
from .backoff import REDIS_ERRORS
from .fetcher import Fetcher, UnitOfWork
from .retrier import Retrier
from .stats import Stats
from .supervisor import Supervisor

log = logging.getLogger(__name__)

HUB_TURN_AFTER_S = 0.002  # a job this long without one hub poll ...
HUB_TURN_S = 0.0005  # ... is followed by a timed sleep (sleep(0) does not poll)


class BadArguments(TypeError):
    """The payload's args/kwargs do not fit the job's ``perform`` signature."""


class Worker:
    """A fetch-execute loop; :meth:`process_one` is one step of it."""

    def __init__(self, index: int, fetcher: Fetcher, acker: Acker, retrier: Retrier,
                 stats: Stats, default_timeout: Optional[float] = None,
                 supervisor: Optional[Supervisor] = None,
                 middleware: Optional[Callable[[Any, dict], Any]] = None) -> None:
        self.index = index
        self.fetcher = fetcher
        self.acker = acker
        self.retrier = retrier
        self.stats = stats
        self.default_timeout = default_timeout
        self.supervisor = supervisor
        self.middleware = middleware  # the server chain (middleware.server_chain()), or None
        self.current: Optional[UnitOfWork] = None
        self.current_job: Optional[dict] = None
        self.started_at = 0.0
        self.in_perform = False  # True only while user code runs (safe to interrupt)

    @property
    def name(self) -> str:
        return f"jiggler.worker-{self.index}"

    def run(self) -> None:
        """Process jobs until the fetcher stops; Redis errors never end the loop.

        When Redis's reply is already in the socket, gevent's reads return without
        switching to the hub, so a worker with CPU-bound jobs could run job after job
        while heartbeats and timers wait. After a job that took a while without the hub
        polling even once, the worker gives the hub a real turn.
        """
        loop = gevent.get_hub().loop
        while not self.fetcher.stopping:
            polls, started = getattr(loop, "iteration", None), time.monotonic()
            self.process_one()
            if getattr(loop, "iteration", None) == polls and \
                    time.monotonic() - started > HUB_TURN_AFTER_S:
                gevent.sleep(HUB_TURN_S)

    def process_one(self) -> bool:
        """Fetch one job (waiting up to the fetch timeout) and process it.
        Returns whether a job was processed."""
        unit = self.fetcher.fetch()
        if unit is None:
            return False
        self.process(unit)
        return True

    def process(self, unit: UnitOfWork) -> str:
        """Run one reserved job and settle it; returns the outcome
        ("ok", "retry", "dead" or "requeued")."""
        self.current, self.started_at = unit, time.time()
        outcome = self._settle(unit)  # on an unexpected error `current` stays set, so the
        self.current = self.current_job = None  # manager can push the job back
        return outcome

    # the ack rule -----------------------------------------------------------------

    def _settle(self, unit: UnitOfWork) -> str:
        try:
            job, job_class = self._decode(unit)
        except (PayloadError, UnknownJobError, BadArguments) as exc:
            return self._record_failure(unit, exc, getattr(exc, "job", None), None)
        self.current_job = job
        try:
            self._perform(job_class, job)
        except BaseException as exc:  # any failure of user code takes the retry path
            if unit.abandoned:  # hard shutdown: the manager pushes the job back
                return "requeued"
            return self._record_failure(unit, exc, job, job_class)
        unit.performed = True  # from here on the manager never pushes it back
        if unit.pushed_back:
            return "requeued"
        self.acker.ack(unit)
        self.stats.processed += 1
        return "ok"

    def _decode(self, unit: UnitOfWork) -> tuple[dict, type]:
        job = _payload.loads(unit.raw)
        try:
            job_class = lookup(job["name"])
        except UnknownJobError as exc:
            exc.job = job
            raise
        try:
            job_class.check_arguments(job["args"], job["kwargs"])
        except TypeError as exc:
            err = BadArguments(f"arguments do not fit {job['name']}.perform: {exc}")
            err.job = job
            raise err from None
        return job, job_class

    def _perform(self, job_class: type, job: dict) -> Any:
        instance = job_class()
        instance.jid = job["jid"]
        instance.queue_name = job.get("queue") or self.current.queue
        instance.attempt = job.get("attempt") or 0
        seconds = job_class.timeout or self.default_timeout
        log.debug("start jid=%s name=%s", instance.jid, job["name"])
        supervisor = self.supervisor
        self.in_perform = True
        if supervisor is not None:  # preempts CPU-bound code, enforces the deadline there
            supervisor.enter(seconds)
        chain = self.middleware  # middleware errors are job failures: the retry path
        try:
            if seconds is None:
                if chain is None:
                    return instance.perform(*job["args"], **job["kwargs"])
                return chain(instance, job)
            with gevent.Timeout(seconds, JobTimeout(seconds)):  # fires when the job yields
                if chain is None:
                    return instance.perform(*job["args"], **job["kwargs"])
                return chain(instance, job)
        except BaseException as exc:
            timeout = _timeout_behind(exc)
            if timeout is None or timeout is exc:
                raise
            # the timeout fired, then cleanup code raised over it (``with conn:`` on a
            # connection the interrupted query closed): the job failed by its timeout
            raise timeout from exc
        finally:
            if supervisor is not None:
                supervisor.leave()
            self.in_perform = False

    def _record_failure(self, unit: UnitOfWork, exc: BaseException, job: Optional[dict],
                        job_class: Optional[type]) -> str:
        """Retry set or dead set, via the retrier. A job class means the job ran and
        failed; none means it could not run at all. A non-Redis error while writing
        (a payload that cannot be re-encoded, say) still ends in the dead set."""
        self.stats.failed += 1
        try:
            if job_class is None:
                self.retrier.bury(unit, exc, job)
                return "dead"
            return self.retrier.job_failed(unit, job, job_class, exc)
        except REDIS_ERRORS:
            raise  # only when hard-stopped: the job stays reserved / is pushed back
        except Exception as err:
            log.exception("could not record the failure; burying the raw payload")
            self.retrier.bury(unit, PayloadError(f"failure could not be recorded: {err}"))
            return "dead"


def _timeout_behind(exc: BaseException) -> Optional[JobTimeout]:
    """The :class:`JobTimeout` that ``exc`` is, or was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, JobTimeout):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None

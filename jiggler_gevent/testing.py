"""Testing helpers for your own test suite: inline mode, fake mode, pytest fixtures.

Owns replacing the client API's Redis client, for the length of a test, with an
in-memory stand-in that receives exactly the bytes an enqueue would push. Needs
neither gevent nor a Redis server, and does not import gevent. In the spirit of
Sidekiq::Testing, Celery's eager mode and RQ's ``is_async=False``.

Inline mode: every enqueue (``enqueue``, ``enqueue_in``, ``enqueue_at``,
``enqueue_bulk``) runs the job at once, in-process, before returning. The payload
makes the JSON round trip first, so arguments JSON cannot carry fail here as they
would in production; an exception from the job propagates to the caller::

    from jiggler_gevent import testing

    with testing.inline():
        signup(client)                  # SendWelcome.enqueue(...) ran SendWelcome.perform

Fake mode: jobs are collected in memory per queue; nothing runs until you drain::

    with testing.fake() as jobs:
        signup(client)
        assert [j.args for j in jobs.jobs_for(SendWelcome)] == [[42]]
        jobs.assert_enqueued(SendWelcome, 42)
        jobs.drain()                    # runs them, and the jobs they enqueue, in order

pytest: add ``pytest_plugins = ["jiggler_gevent.testing"]`` to your ``conftest.py``
for the fixtures ``jiggler_inline`` and ``jiggler_fake``.

Client middleware runs as it does in production (it is part of enqueueing). Server
middleware does not run unless you ask for it (``inline(server_middleware=True)``),
as in Sidekiq::Testing: a Flask app context or Django connection hygiene is rarely
what a unit test wants. Jobs are found by their registered name, as in the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, Callable, Optional

from . import middleware as _middleware
from . import payload as _payload
from .connection import settings
from .job import Job, lookup

__all__ = ["EnqueuedJob", "Fake", "Inline", "fake", "inline", "perform_payload"]

DRAIN_LIMIT = 10_000


@dataclasses.dataclass
class EnqueuedJob:
    """One job as it was pushed: the decoded payload and, for ``enqueue_in`` /
    ``enqueue_at``, the epoch time it was due (``at``)."""

    payload: dict
    at: Optional[float] = None

    @property
    def name(self) -> str:
        return self.payload["name"]

    @property
    def args(self) -> list:
        return self.payload["args"]

    @property
    def kwargs(self) -> dict:
        return self.payload.get("kwargs") or {}

    @property
    def jid(self) -> str:
        return self.payload["jid"]

    @property
    def queue(self) -> str:
        return self.payload["queue"]


def perform_payload(payload: dict, *, server_middleware: bool = False) -> Any:
    """Run one decoded payload the way the worker would (registry lookup, argument
    check, ``jid``/``queue_name``/``attempt`` set); returns what ``perform`` returned."""
    job_class = lookup(payload["name"])
    kwargs = payload.get("kwargs") or {}
    job_class.check_arguments(payload["args"], kwargs)
    instance = job_class()
    instance.jid = payload["jid"]
    instance.queue_name = payload.get("queue") or job_class.queue
    instance.attempt = payload.get("attempt") or 0
    chain = _middleware.server_chain() if server_middleware else None
    if chain is None:
        return instance.perform(*payload["args"], **kwargs)
    return chain(instance, dict(payload, kwargs=kwargs))


class _FakeClient:
    """Stands in for the client API's redis-py client: takes what enqueueing sends."""

    def __init__(self, receive: Callable[[bytes, Optional[float]], None]) -> None:
        self._receive = receive

    def lpush(self, key: str, *values: bytes) -> int:
        for value in values:
            self._receive(value, None)
        return len(values)

    def zadd(self, key: str, mapping: dict) -> int:
        for value, at in mapping.items():
            self._receive(value, at)
        return len(mapping)

    def sadd(self, key: str, *members: str) -> int:
        return 0  # the queue registry: nothing to keep in memory

    def pipeline(self, transaction: bool = True) -> _FakePipeline:
        return _FakePipeline(self)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"jiggler_gevent.testing replaced the Redis client: it takes "
                             f"enqueues only, not {name!r}")


class _FakePipeline:
    def __init__(self, client: _FakeClient) -> None:
        self._client = client
        self._calls: list[tuple] = []

    def lpush(self, key: str, *values: bytes) -> _FakePipeline:
        self._calls.append((self._client.lpush, key, *values))
        return self

    def zadd(self, key: str, mapping: dict) -> _FakePipeline:
        self._calls.append((self._client.zadd, key, mapping))
        return self

    def sadd(self, key: str, *members: str) -> _FakePipeline:
        self._calls.append((self._client.sadd, key, *members))
        return self

    def execute(self) -> list:
        calls, self._calls = self._calls, []
        return [call(*args) for call, *args in calls]

    def __enter__(self) -> _FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._calls = []


class _Mode:
    """Installs a fake client into the client settings; restores the old one after."""

    def __init__(self, *, server_middleware: bool = False) -> None:
        self.server_middleware = server_middleware
        self._saved: Optional[tuple] = None

    def _receive(self, raw: bytes, at: Optional[float]) -> None:
        """What an enqueue of ``raw`` (due at ``at``, or now) does in this mode."""
        raise TypeError(f"{type(self).__name__} must define _receive")

    def start(self) -> _Mode:
        if self._saved is not None:
            raise RuntimeError("this testing mode is already on")
        with settings._lock:
            self._saved = (settings._client, settings._owned)
            settings._client, settings._owned = _FakeClient(self._receive), False
        return self

    def stop(self) -> None:
        if self._saved is None:
            return
        with settings._lock:
            settings._client, settings._owned = self._saved
        self._saved = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, job: EnqueuedJob) -> Any:
        return perform_payload(job.payload, server_middleware=self.server_middleware)


class Inline(_Mode):
    """Enqueue runs the job at once; ``performed`` lists the jobs run, in order."""

    def __init__(self, *, server_middleware: bool = False) -> None:
        super().__init__(server_middleware=server_middleware)
        self.performed: list[EnqueuedJob] = []

    def _receive(self, raw: bytes, at: Optional[float]) -> None:
        job = EnqueuedJob(_payload.loads(raw), at)  # the JSON round trip
        self.performed.append(job)
        self._run(job)


class Fake(_Mode):
    """Enqueued jobs are kept in memory, in order, until :meth:`drain` runs them."""

    def __init__(self, *, server_middleware: bool = False) -> None:
        super().__init__(server_middleware=server_middleware)
        self._jobs: list[EnqueuedJob] = []
        self.performed: list[EnqueuedJob] = []

    def _receive(self, raw: bytes, at: Optional[float]) -> None:
        self._jobs.append(EnqueuedJob(_payload.loads(raw), at))

    @property
    def all(self) -> list[EnqueuedJob]:
        """Every job waiting, in enqueue order."""
        return list(self._jobs)

    @property
    def jobs(self) -> dict[str, list[EnqueuedJob]]:
        """Waiting jobs by queue name."""
        out: dict[str, list[EnqueuedJob]] = {}
        for job in self._jobs:
            out.setdefault(job.queue, []).append(job)
        return out

    def jobs_for(self, job: Any) -> list[EnqueuedJob]:
        """Waiting jobs of a Job class, an ``@job`` function or a registered name."""
        name = _name_of(job)
        return [j for j in self._jobs if j.name == name]

    def size(self, queue: Optional[str] = None) -> int:
        return sum(1 for j in self._jobs if queue is None or j.queue == queue)

    def clear(self) -> None:
        self._jobs.clear()

    def assert_enqueued(self, job: Any, *args: Any, **kwargs: Any) -> EnqueuedJob:
        """Assert that a job of this kind waits with these arguments (compared after
        the JSON round trip, so a tuple matches a list); returns it."""
        name = _name_of(job)
        wanted_args = _payload.check_json_args(list(args))
        wanted_kwargs = _payload.check_json_args(dict(kwargs), "kwargs")
        for queued in self._jobs:
            if queued.name == name and queued.args == wanted_args and queued.kwargs == wanted_kwargs:
                return queued
        present = [(j.name, j.args, j.kwargs) for j in self._jobs] or "nothing"
        raise AssertionError(f"{name}{tuple(args)!r} {kwargs or ''} was not enqueued; "
                             f"enqueued: {present}")

    def assert_nothing_enqueued(self) -> None:
        if self._jobs:
            raise AssertionError(f"expected no jobs, found {[(j.name, j.args) for j in self._jobs]}")

    def drain(self, queue: Optional[str] = None, *, limit: int = DRAIN_LIMIT) -> int:
        """Run waiting jobs (of one queue, or all) in enqueue order, including jobs
        they enqueue, until none is left; returns how many ran. A job's exception
        propagates (that job is gone from the list). Scheduled jobs run too, at once."""
        ran = 0
        while True:
            index = next((i for i, j in enumerate(self._jobs)
                          if queue is None or j.queue == queue), None)
            if index is None:
                return ran
            if ran >= limit:
                raise RuntimeError(f"drain ran {limit} jobs and more keep coming "
                                   "(a job that enqueues itself?)")
            job = self._jobs.pop(index)
            ran += 1
            self.performed.append(job)
            self._run(job)


def _name_of(job: Any) -> str:
    if isinstance(job, str):
        return job
    job_class = getattr(job, "job_class", job)
    if isinstance(job_class, type) and issubclass(job_class, Job):
        return job_class.name
    raise TypeError(f"{job!r} is not a Job class, an @job function or a job name")


@contextlib.contextmanager
def inline(*, server_middleware: bool = False) -> Iterator[Inline]:
    """Inline mode for the ``with`` block."""
    with Inline(server_middleware=server_middleware) as mode:
        yield mode


@contextlib.contextmanager
def fake(*, server_middleware: bool = False) -> Iterator[Fake]:
    """Fake mode for the ``with`` block."""
    with Fake(server_middleware=server_middleware) as mode:
        yield mode


try:  # the pytest plugin: pytest_plugins = ["jiggler_gevent.testing"]
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pytest = None

if pytest is not None:

    @pytest.fixture
    def jiggler_inline() -> Iterator[Inline]:
        """Inline mode for one test."""
        with inline() as mode:
            yield mode

    @pytest.fixture
    def jiggler_fake() -> Iterator[Fake]:
        """Fake mode for one test; the :class:`Fake` collects the jobs."""
        with fake() as mode:
            yield mode

"""Jobs: the :class:`Job` base class, the name registry, and the :class:`Enqueuer`.

Owns how a job is declared (class options, the ``@job`` decorator), the registry
that maps a payload's ``name`` to a class, and enqueueing (immediate, bulk,
scheduled). Must not import gevent: request handlers enqueue from here. Jobs are
found only by their registered name, never by importing a path from payload data.

Every queue that gets a job is named in the queue registry (``keys.queues``, a set
that the poller, the dashboard and the cleaner read): the first enqueue to a queue
from this process (per client and namespace, and again every
:data:`REGISTRY_REFRESH_S`) adds an ``SADD`` to the same non-transactional pipeline
as its ``LPUSH``; after that a plain enqueue is one ``LPUSH``. Scheduling
(``enqueue_in``/``enqueue_at``) always sends the ``SADD`` with its ``ZADD``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import random
import time
from collections.abc import Iterable
from typing import Any, Callable, ClassVar, Optional

from . import middleware as _middleware
from . import payload as _payload
from .connection import settings
from .errors import EnqueueError, JobDefinitionError, UnknownJobError
from .keys import DEFAULT_QUEUE, valid_queue_name

BULK_CHUNK = 1000
REGISTRY_REFRESH_S = 300.0  # re-send the SADD of a queue this often (a FLUSHDB empties the registry)
RETRY_BASE_S = 15.0
RETRY_MAX_S = 24 * 3600.0
ARITY_CACHE_SIZE = 64
_UNKNOWN = object()

_registry: dict[str, type[Job]] = {}


class QueueRegistry:
    """The queue names one client has put in the registry set (``keys.queues``) lately,
    so that their ``SADD`` is sent once, and again after :data:`REGISTRY_REFRESH_S`.
    Also used by the worker's retrier for the queues it retries jobs into."""

    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until: dict[str, float] = {}  # queue -> monotonic time its SADD is due again

    def due(self, queue: str) -> bool:
        return self.until.get(queue, 0.0) <= time.monotonic()

    def remember(self, queues: Iterable[str]) -> None:
        until = time.monotonic() + REGISTRY_REFRESH_S
        if len(self.until) > 10_000:
            self.until.clear()
        for queue in queues:
            self.until[queue] = until


class _RegisteredQueues(QueueRegistry):
    """The client API's registry cache: for one client and namespace at a time."""

    __slots__ = ("client", "root")

    def __init__(self, client: Any = None, root: str = "") -> None:
        super().__init__()
        self.client = client
        self.root = root


_registered = _RegisteredQueues()


def _registered_for(client: Any, keys: Any) -> _RegisteredQueues:
    global _registered
    known = _registered
    if known.client is not client or known.root != keys.root:
        known = _registered = _RegisteredQueues(client, keys.root)  # one client at a time
    return known


def _is_registered(client: Any, keys: Any, queue: str) -> bool:
    known = _registered
    return known.client is client and known.root == keys.root and not known.due(queue)


def _remember(client: Any, keys: Any, queues: Iterable[str]) -> None:
    _registered_for(client, keys).remember(queues)


def forget_registered_queues() -> None:
    """Send the registry ``SADD`` again with the next enqueue to each queue (tests that
    empty Redis under a live client use it)."""
    global _registered
    _registered = _RegisteredQueues()


def lookup(name: str) -> type[Job]:
    """The job class registered as ``name``; raises :class:`UnknownJobError`."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownJobError(f"no job is registered as {name!r} in this process") from None


def registered_names() -> list[str]:
    """Every registered job name, sorted."""
    return sorted(_registry)


def _register(cls: type[Job]) -> None:
    name = cls.name
    if not isinstance(name, str) or not name or len(name) > _payload.NAME_MAX_CHARS:
        raise JobDefinitionError(f"{cls.__qualname__}: name must be a non-empty string")
    old = _registry.get(name)
    same_definition = old is not None and (old.__module__, old.__qualname__) == (
        cls.__module__, cls.__qualname__)
    if old is not None and not same_definition:
        raise JobDefinitionError(
            f"job name {name!r} is taken by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__module__}.{cls.__qualname__} another name"
        )
    _registry[name] = cls


def _check_options(owner: str, queue: Any, retries: Any, retry_queue: Any, timeout: Any) -> None:
    if not valid_queue_name(queue):
        raise JobDefinitionError(f"{owner}: queue {queue!r} is not a valid queue name")
    if retry_queue is not None and not valid_queue_name(retry_queue):
        raise JobDefinitionError(f"{owner}: retry_queue {retry_queue!r} is not a valid name")
    if type(retries) is not int or not 0 <= retries <= _payload.MAX_RETRIES:
        raise JobDefinitionError(f"{owner}: retries must be an integer >= 0, not {retries!r}")
    if timeout is not None and (type(timeout) not in (int, float) or not timeout > 0):
        raise JobDefinitionError(f"{owner}: timeout must be a positive number or None")


class Job:
    """Base class of a background job.

    Subclass it, set options as class attributes and write ``perform``::

        class SendMail(Job):
            queue = "mail"
            retries = 5
            timeout = 30

            def perform(self, user_id):
                ...

        SendMail.enqueue(42)

    Inside ``perform``, ``self.jid``, ``self.queue_name`` and ``self.attempt``
    describe the running job.
    """

    name: ClassVar[str]
    queue: ClassVar[str] = DEFAULT_QUEUE
    retries: ClassVar[int] = 3
    retry_queue: ClassVar[Optional[str]] = None
    timeout: ClassVar[Optional[float]] = None

    jid: str = ""
    queue_name: str = ""
    attempt: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        _check_options(cls.__qualname__, cls.queue, cls.retries, cls.retry_queue, cls.timeout)
        if cls.perform is Job.perform:
            raise JobDefinitionError(f"{cls.__qualname__} must define perform()")
        cls._signature = inspect.signature(cls.perform)
        _register(cls)

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        """The job's work; every subclass defines it (checked when the class is made)."""
        raise JobDefinitionError(f"{type(self).__qualname__} does not define perform()")

    @classmethod
    def retry_in(cls, attempt: int, exc: BaseException) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...).

        Default: exponential backoff from 15 s, doubling per attempt up to a day,
        with +-50% random jitter so that failing jobs do not retry in lockstep.
        Override it on a job class to change the schedule.
        """
        base = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** min(attempt - 1, 32))
        return base * random.uniform(0.5, 1.5)

    @classmethod
    def check_arguments(cls, args: list, kwargs: dict) -> None:
        """Raise TypeError when ``perform`` cannot be called with these arguments.

        Whether a call binds depends only on the number of positional arguments and
        the keyword names, so the answer is cached per class on that shape.
        """
        shape = (len(args), frozenset(kwargs)) if kwargs else len(args)
        cache = cls.__dict__.get("_arity_cache")
        if cache is None:
            cache = cls._arity_cache = {}
        error = cache.get(shape, _UNKNOWN)
        if error is _UNKNOWN:
            try:
                cls._bind(args, kwargs)
                error = None
            except TypeError as exc:
                error = str(exc)
            if len(cache) < ARITY_CACHE_SIZE:
                cache[shape] = error
        if error is not None:
            raise TypeError(error)

    @classmethod
    def _bind(cls, args: list, kwargs: dict) -> None:
        cls._signature.bind(None, *args, **kwargs)

    # enqueueing, as class methods -------------------------------------------------

    @classmethod
    def with_options(cls, **options: Any) -> Enqueuer:
        """An :class:`Enqueuer` with ``queue``, ``retries``, ``retry_queue`` or ``jid`` set."""
        return Enqueuer(cls).with_options(**options)

    @classmethod
    def enqueue(cls, /, *args: Any, **kwargs: Any) -> str:
        """Push the job to its queue now; returns its jid."""
        return Enqueuer(cls).enqueue(*args, **kwargs)

    @classmethod
    def enqueue_bulk(cls, arg_lists: Iterable[Any]) -> list[str]:
        """Push one job per item of ``arg_lists`` (see :meth:`Enqueuer.enqueue_bulk`)."""
        return Enqueuer(cls).enqueue_bulk(arg_lists)

    @classmethod
    def enqueue_in(cls, seconds: float, /, *args: Any, **kwargs: Any) -> str:
        """Schedule the job to run ``seconds`` from now; returns its jid."""
        return Enqueuer(cls).enqueue_in(seconds, *args, **kwargs)

    @classmethod
    def enqueue_at(cls, when: _dt.datetime | float, /, *args: Any, **kwargs: Any) -> str:
        """Schedule the job at a datetime or epoch timestamp; returns its jid."""
        return Enqueuer(cls).enqueue_at(when, *args, **kwargs)


_ENQUEUER_OPTIONS = frozenset({"queue", "retries", "retry_queue", "jid"})


class Enqueuer:
    """Builds payloads for one job class and pushes them; immutable options."""

    def __init__(self, job_class: type[Job], options: Optional[dict] = None) -> None:
        self.job_class = job_class
        self.options = dict(options or {})

    def with_options(self, **options: Any) -> Enqueuer:
        """A new Enqueuer with these options merged over this one's."""
        unknown = set(options) - _ENQUEUER_OPTIONS
        if unknown:
            raise EnqueueError(f"unknown option(s) {sorted(unknown)}; use {sorted(_ENQUEUER_OPTIONS)}")
        return Enqueuer(self.job_class, {**self.options, **options})

    @property
    def queue(self) -> str:
        return self.options.get("queue") or self.job_class.queue

    def _options(self) -> dict:
        cls = self.job_class
        return {"queue": self.queue, "retries": self.options.get("retries", cls.retries),
                "retry_queue": self.options.get("retry_queue", cls.retry_queue)}

    def build(self, args: Any, kwargs: Any, jid: Optional[str] = None, *,
              options: Optional[dict] = None) -> dict:
        """The payload this enqueuer would push (checks the arguments, and the options
        unless ``options`` comes from :func:`payload.check_options` already)."""
        return _payload.build(self.job_class.name, args, kwargs,
                              jid=jid or self.options.get("jid"), options_checked=options is not None,
                              **(options or self._options()))

    def enqueue(self, /, *args: Any, **kwargs: Any) -> Optional[str]:
        """LPUSH the job to its queue; returns the jid (None if a client middleware
        vetoed the job)."""
        job = _middleware.run_client(self.job_class, self.build(args, kwargs))
        if job is None:
            return None
        _push(job["queue"], _payload.dumps(job))
        return job["jid"]

    def enqueue_bulk(self, arg_lists: Iterable[Any], chunk_size: int = BULK_CHUNK) -> list:
        """Push many jobs, pipelined in chunks; returns their jids in order (None in
        the place of a job a client middleware vetoed).

        Each item is a list/tuple of positional arguments, or a dict
        ``{"args": [...], "kwargs": {...}}``. Every item is checked before
        anything is sent, so bad input enqueues nothing.
        """
        if "jid" in self.options:
            raise EnqueueError("a fixed jid cannot be used with enqueue_bulk")
        options = self._options()
        _payload.check_options(**options)  # once for the whole call
        jobs = [_middleware.run_client(self.job_class,
                                       self.build(*_split_item(item), options=options))
                for item in arg_lists]
        by_queue: dict[str, list[bytes]] = {}
        for job in jobs:
            if job is not None:
                by_queue.setdefault(job["queue"], []).append(_payload.dumps(job))
        if not by_queue:
            return [None] * len(jobs)
        client, keys = settings.client, settings.keys
        new = [queue for queue in by_queue if not _is_registered(client, keys, queue)]
        with client.pipeline(transaction=False) as pipe:
            if new:
                pipe.sadd(keys.queues, *new)  # one SADD for the whole call
            for queue, encoded in by_queue.items():
                key = keys.queue(queue)
                for start in range(0, len(encoded), chunk_size):
                    pipe.lpush(key, *encoded[start:start + chunk_size])
            pipe.execute()
        if new:
            _remember(client, keys, new)
        return [job and job["jid"] for job in jobs]

    def enqueue_in(self, seconds: float, /, *args: Any, **kwargs: Any) -> str:
        """ZADD the job to its queue's scheduled set, due ``seconds`` from now."""
        if type(seconds) not in (int, float) or seconds != seconds:
            raise EnqueueError(f"seconds must be a number, not {seconds!r}")
        return self.enqueue_at(time.time() + seconds, *args, **kwargs)

    def enqueue_at(self, when: _dt.datetime | float, /, *args: Any, **kwargs: Any) -> Optional[str]:
        """ZADD the job to its queue's scheduled set, due at ``when``.

        ``when`` is an epoch timestamp or a datetime (a naive datetime is local
        time, as :meth:`datetime.timestamp` reads it). A time that has already
        passed pushes the job straight to its queue.
        """
        at = _epoch(when)
        job = _middleware.run_client(self.job_class, self.build(args, kwargs))
        if job is None:
            return None
        queue = job["queue"]
        if at <= time.time():
            _push(queue, _payload.dumps(job))
            return job["jid"]
        client, keys = settings.client, settings.keys
        with client.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.queues, queue)  # always: the poller finds scheduled sets by it
            pipe.zadd(keys.scheduled(queue), {_payload.dumps(job): at})
            pipe.execute()
        _remember(client, keys, (queue,))
        return job["jid"]


def _push(queue: str, encoded: bytes) -> None:
    """LPUSH one job; with the registry SADD in the same pipeline when this process has
    not registered the queue lately."""
    client, keys = settings.client, settings.keys
    if _is_registered(client, keys, queue):
        client.lpush(keys.queue(queue), encoded)
        return
    with client.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.queues, queue)
        pipe.lpush(keys.queue(queue), encoded)
        pipe.execute()
    _remember(client, keys, (queue,))


def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, dict):
        extra = set(item) - {"args", "kwargs"}
        if extra:
            raise EnqueueError(f"bulk item keys must be 'args' and 'kwargs', not {sorted(extra)}")
        args, kwargs = item.get("args", ()), item.get("kwargs") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise EnqueueError(f"bulk item {item!r:.80}: 'args' must be a list, 'kwargs' a dict")
        return args, kwargs
    if isinstance(item, (list, tuple)):
        return item, {}
    raise EnqueueError(f"bulk item {item!r:.80} must be a list of arguments or an args/kwargs dict")


def _epoch(when: Any) -> float:
    if isinstance(when, _dt.datetime):
        return when.timestamp()
    if type(when) in (int, float) and when == when and when not in (float("inf"), float("-inf")):
        return float(when)
    raise EnqueueError(f"run time must be a datetime or an epoch timestamp, not {when!r}")


class FunctionJob(Job):
    """The base of jobs made by :func:`job`: ``perform`` calls the wrapped function."""

    name = "jiggler_gevent.job.FunctionJob"
    function: ClassVar[Callable[..., Any]]

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        return type(self).function(*args, **kwargs)

    @classmethod
    def _bind(cls, args: list, kwargs: dict) -> None:
        cls._signature.bind(*args, **kwargs)


_registry.pop(FunctionJob.name, None)  # a base, not a job


def job(
    func: Optional[Callable[..., Any]] = None,
    *,
    name: Optional[str] = None,
    queue: str = DEFAULT_QUEUE,
    retries: int = Job.retries,
    retry_queue: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Any:
    """Turn a plain function into a job::

        @job(queue="mail", retries=5)
        def send_mail(user_id): ...

        send_mail.enqueue(42)      # runs in a worker
        send_mail(42)              # still a plain call

    The returned function also has ``enqueue_in``, ``enqueue_at``,
    ``enqueue_bulk``, ``with_options`` and ``job_class``.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        attrs = {
            "name": f"{fn.__module__}.{fn.__qualname__}" if name is None else name,
            "queue": queue,
            "retries": retries,
            "retry_queue": retry_queue,
            "timeout": timeout,
            "function": staticmethod(fn),
            "__module__": fn.__module__,
            "__qualname__": fn.__qualname__,
        }
        cls = type(fn.__name__, (FunctionJob,), attrs)
        cls._signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        call.job_class = cls
        for method in ("enqueue", "enqueue_in", "enqueue_at", "enqueue_bulk", "with_options"):
            setattr(call, method, getattr(cls, method))
        return call

    return wrap(func) if func is not None else wrap

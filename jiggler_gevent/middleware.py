"""Middleware: code that runs around every enqueue (client) and every perform (server).

Owns the two chains, how they are configured (in code with :func:`add_client`,
:func:`add_server` and :func:`add`, or by dotted path with ``--middleware`` / env
``JIGGLER_MIDDLEWARE``, see :func:`load`) and their order: **the first added is the
outermost**. Must not import gevent: the client chain runs in web processes.

Client middleware wraps the building of a payload, in the process that enqueues::

    def add_request_id(job_class, payload, call_next):
        payload["request_id"] = current_request_id()
        return call_next(payload)           # return None (or raise SkipJob) to veto

    jiggler_gevent.middleware.add_client(add_request_id)

It gets the job class, the payload dict about to be pushed and ``call_next``; it
returns the payload to push (usually what ``call_next`` returned). Returning None, or
raising :class:`SkipJob`, vetoes the job: nothing is pushed and ``enqueue`` returns
None. Any other exception propagates to the caller of ``enqueue``.

Server middleware wraps ``perform`` in the worker::

    def timed(job, payload, call_next):
        started = time.monotonic()
        try:
            return call_next()
        finally:
            log.info("jid=%s took %.3fs", job.jid, time.monotonic() - started)

    jiggler_gevent.middleware.add_server(timed)

It gets the :class:`~jiggler_gevent.Job` instance (``jid``, ``queue_name``,
``attempt`` set), the decoded payload and ``call_next`` (no arguments; it runs the
rest of the chain and then ``perform``). It runs inside the job's timeout. An
exception from it, before or after ``call_next``, is a failure of the job and takes
the retry path like an exception from ``perform``: no job is lost. Not calling
``call_next`` skips ``perform``; the job then counts as done. Never swallow
``BaseException`` (``JobTimeout``, ``Shutdown``): let them through.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any, Callable, Optional

from .errors import ConfigError, EnqueueError, JigglerError
from .keys import valid_queue_name

__all__ = [
    "SkipJob",
    "add",
    "add_client",
    "add_server",
    "clear",
    "client_middleware",
    "load",
    "remove",
    "run_client",
    "server_chain",
    "server_middleware",
]

log = logging.getLogger(__name__)

ClientMiddleware = Callable[[type, dict, Callable[[dict], Optional[dict]]], Optional[dict]]
ServerMiddleware = Callable[[Any, dict, Callable[[], Any]], Any]

_client: list[tuple[Optional[str], ClientMiddleware]] = []
_server: list[tuple[Optional[str], ServerMiddleware]] = []
_client_chain: Optional[Callable[[type, dict], Optional[dict]]] = None


class SkipJob(JigglerError):
    """Raised by a client middleware to veto a job: nothing is pushed, ``enqueue``
    returns None. (In server middleware it is an ordinary failure.)"""


# -- configuring ---------------------------------------------------------------------


def _add(entries: list, func: Callable, key: Optional[str]) -> None:
    if not callable(func):
        raise ConfigError(f"middleware {func!r} is not callable")
    if key is not None:
        for index, (old_key, _) in enumerate(entries):
            if old_key == key:  # the same integration set up again: replace it in place
                entries[index] = (key, func)
                return
    entries.append((key, func))


def add_client(func: ClientMiddleware, *, key: Optional[str] = None) -> ClientMiddleware:
    """Append a client middleware (inside those added before). With ``key``, an
    earlier middleware of the same key is replaced in its place. Returns ``func``,
    so it works as a decorator."""
    global _client_chain
    _add(_client, func, key)
    _client_chain = _compile_client([f for _, f in _client])
    return func


def add_server(func: ServerMiddleware, *, key: Optional[str] = None) -> ServerMiddleware:
    """Append a server middleware (inside those added before); ``key`` as for
    :func:`add_client`. Worker processes take the chain as it is when they start."""
    _add(_server, func, key)
    return func


def add(obj: Any, *, key: Optional[str] = None) -> Any:
    """Add an object's ``around_enqueue`` (client) and ``around_perform`` (server)
    methods; a class is instantiated with no arguments first. Returns the object."""
    if isinstance(obj, type):
        obj = obj()
    client = getattr(obj, "around_enqueue", None)
    server = getattr(obj, "around_perform", None)
    if client is None and server is None:
        raise ConfigError(f"middleware {obj!r} has neither around_enqueue nor around_perform")
    if client is not None:
        add_client(client, key=key)
    if server is not None:
        add_server(server, key=key)
    return obj


def remove(item: Any) -> None:
    """Remove middleware by key, by function, or an object added with :func:`add`."""
    global _client_chain

    def keep(entry: tuple) -> bool:
        entry_key, func = entry
        return not (entry_key == item or func == item or getattr(func, "__self__", None) is item)

    _client[:] = [e for e in _client if keep(e)]
    _server[:] = [e for e in _server if keep(e)]
    _client_chain = _compile_client([f for _, f in _client])


def clear() -> None:
    """Remove every middleware (tests use it)."""
    global _client_chain
    _client.clear()
    _server.clear()
    _client_chain = None


def client_middleware() -> list[ClientMiddleware]:
    """The client chain, outermost first."""
    return [func for _, func in _client]


def server_middleware() -> list[ServerMiddleware]:
    """The server chain, outermost first."""
    return [func for _, func in _server]


def load(paths: Optional[str | Iterable[str]]) -> None:
    """Add middleware named by dotted paths (``pkg.mod:Name`` or ``pkg.mod.Name``),
    a comma-separated string or a list, in order (each inside the ones before).

    Each target is an object or a class (instantiated with no arguments) with
    ``around_enqueue`` and/or ``around_perform`` methods. Raises :class:`ConfigError`.
    """
    if not paths:
        return
    items = paths.split(",") if isinstance(paths, str) else list(paths)
    for path in (p.strip() for p in items):
        if path:
            target = _resolve(path)
            if not isinstance(target, type) and not hasattr(target, "around_enqueue") \
                    and not hasattr(target, "around_perform"):
                raise ConfigError(f"middleware {path}: give a class or object with around_enqueue "
                                  "and/or around_perform (add plain functions in code with "
                                  "add_client/add_server)")
            add(target, key=path)


def _resolve(path: str) -> Any:
    module_name, colon, attr = path.partition(":")
    if not colon:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"middleware {path!r}: write it as package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"middleware {path}: cannot import {module_name}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"middleware {path}: {module_name} has no {attr!r}")
    return target


# -- running -------------------------------------------------------------------------


def _compile_client(funcs: list) -> Optional[Callable[[type, dict], Optional[dict]]]:
    if not funcs:
        return None

    def run(job_class: type, payload: dict) -> Optional[dict]:
        def step(index: int, current: Optional[dict]) -> Optional[dict]:
            if current is None or index == len(funcs):
                return current
            return funcs[index](job_class, current, lambda p: step(index + 1, p))

        return step(0, payload)

    return run


def run_client(job_class: type, payload: dict) -> Optional[dict]:
    """Pass a new payload through the client chain; None if a middleware vetoed it."""
    chain = _client_chain
    if chain is None:
        return payload
    try:
        out = chain(job_class, payload)
    except SkipJob as exc:
        log.debug("enqueue of %s vetoed: %s", getattr(job_class, "name", job_class), exc)
        return None
    if out is None:
        return None
    if type(out) is not dict or type(out.get("args")) is not list or not out.get("jid") \
            or out.get("name") != payload["name"] or not valid_queue_name(out.get("queue")):
        raise EnqueueError("a client middleware returned a broken payload (it must keep name, "
                           "args, jid and a valid queue)")
    return out


def server_chain() -> Optional[Callable[[Any, dict], Any]]:
    """The server chain as one callable ``chain(job, payload)`` that ends by calling
    ``job.perform(*args, **kwargs)``; None when there is no server middleware (the
    worker then calls ``perform`` directly)."""
    funcs = server_middleware()
    if not funcs:
        return None

    def run(job: Any, payload: dict) -> Any:
        def step(index: int) -> Any:
            if index == len(funcs):
                return job.perform(*payload["args"], **payload["kwargs"])
            return funcs[index](job, payload, lambda: step(index + 1))

        return step(0)

    return run

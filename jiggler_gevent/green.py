"""Database drivers that gevent's monkey-patching cannot make cooperative.

gevent patches Python's ``socket``, ``ssl``, ``select`` and ``time`` modules. A driver
written in C that does its own network I/O never calls them: ``psycopg2`` talks to
PostgreSQL through libpq, so every query would block the whole process (every greenlet,
the heartbeat, the poller) for as long as the query runs, and ``-c 100`` would run one
query at a time. psycopg2 offers a hook for exactly this case: a *wait callback* that it
calls whenever libpq would block; ours waits on the connection's socket with gevent, so
other greenlets run meanwhile. (``psycopg`` 3 and pure-Python drivers such as PyMySQL go
through the patched modules and need nothing here.)

Owns: :func:`patch_psycopg2` (called by the worker's CLI before the app is loaded) and
the callback it installs. Must not: import a driver that is not installed, replace a
callback the app installed itself (psycogreen's, say), or run in processes that only
enqueue (Flask or Django web processes are not gevent-patched by us).

What a wait callback changes in psycopg2 (its "green" mode): ``COPY`` and large objects
are not supported by psycopg2 then; run such a worker with ``--no-green-psycopg2``.
A query interrupted by the job's timeout or by a hard shutdown is cancelled on the
server (``PQcancel``), and the connection is left unusable: Django's per-job
``close_old_connections`` replaces it, other code must reconnect.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

PATCHED = "patched"  # our callback is installed
KEPT = "kept"  # the app had installed its own callback: left in place
ABSENT = "absent"  # psycopg2 is not installed


def patch_psycopg2() -> str:
    """Install :func:`wait_for_psycopg2` as psycopg2's wait callback, unless psycopg2 is
    not installed (:data:`ABSENT`) or already has a callback (:data:`KEPT`)."""
    if importlib.util.find_spec("psycopg2") is None:
        return ABSENT
    from psycopg2 import extensions

    current = extensions.get_wait_callback()
    if current is not None and current is not wait_for_psycopg2:
        log.info("psycopg2 already has a wait callback (%s): kept", _name_of(current))
        return KEPT
    extensions.set_wait_callback(wait_for_psycopg2)
    log.debug("psycopg2: queries wait cooperatively (gevent)")
    return PATCHED


def unpatch_psycopg2() -> None:
    """Remove our callback (psycopg2 blocks again); another one is left alone."""
    if importlib.util.find_spec("psycopg2") is None:
        return
    from psycopg2 import extensions

    if extensions.get_wait_callback() is wait_for_psycopg2:
        extensions.set_wait_callback(None)


def wait_for_psycopg2(conn: Any, *_: Any) -> None:
    """psycopg2's wait callback: poll the connection, and wait for its socket with gevent
    (so other greenlets run) until the operation is complete.

    Anything raised while waiting (the job's timeout, a hard shutdown) first cancels the
    running query on the server, best effort, so that it does not run on unseen."""
    from gevent.socket import wait_read, wait_write
    from psycopg2 import OperationalError, extensions

    try:
        while True:
            state = conn.poll()
            if state == extensions.POLL_OK:
                return
            if state == extensions.POLL_READ:
                wait_read(conn.fileno())
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno())
            else:
                raise OperationalError(f"psycopg2 poll() returned the unknown state {state!r}")
    except BaseException:
        _cancel(conn)
        raise


def _cancel(conn: Any) -> None:
    try:
        conn.cancel()
    except Exception as exc:  # closed, or the server is gone: nothing left to cancel
        log.debug("could not cancel the interrupted query: %s", exc)


def _name_of(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"

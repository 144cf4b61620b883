"""Database drivers that gevent's monkey-patching cannot make cooperative.

gevent patches Python's ``socket``, ``ssl``, ``select`` and ``time`` modules. A driver
written in C that does its own network I/O never calls them: ``psycopg2`` talks to
PostgreSQL through libpq, so every query would block the whole process (every greenlet,
the heartbeat, the poller) for as long as the query runs, and ``-c 100`` would run one
query at a time. psycopg2 offers a hook for exactly this case: a *wait callback* that it
calls whenever libpq would block; ours waits on the connection's socket with gevent, so
other greenlets run meanwhile. (``psycopg`` 3 and pure-Python drivers such as PyMySQL go
through the patched modules and need nothing here.)

Owns: :func:`patch_psycopg2` (called by the worker's CLI before the app is loaded), the
callback it installs, and :func:`blocking_psycopg2` to step out of it. Must not: import
a driver that is not installed, replace a callback the app installed itself
(psycogreen's, say), or run in processes that only enqueue (Flask or Django web
processes are not gevent-patched by us).

What a wait callback changes in psycopg2 (its "green" mode): it refuses ``COPY`` and
large objects then; wrap those calls in :func:`blocking_psycopg2`, or run the worker
with ``--no-green-psycopg2``.
A query interrupted by the job's timeout or by a hard shutdown ends with its
connection closed (psycopg2 closes it): Django's per-job ``close_old_connections``
replaces it, other code must reconnect. The server notices the closed connection at
its next read or write, or sooner with ``client_connection_check_interval``
(PostgreSQL 14+); bound queries on the server with ``statement_timeout`` below the
job's timeout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
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


@contextlib.contextmanager
def blocking_psycopg2() -> Iterator[None]:
    """Run a block with psycopg2 blocking, for the calls it refuses in green mode
    (``ProgrammingError: copy_from cannot be used with an asynchronous callback``)::

        with blocking_psycopg2():
            cursor.copy_expert("COPY t FROM STDIN", data)

    The whole process waits for those calls, as it does for any blocking C code; keep
    the block to them. Queries other jobs already started keep waiting cooperatively.
    Without our callback installed (``--no-green-psycopg2``), it changes nothing."""
    from psycopg2 import extensions

    if extensions.get_wait_callback() is not wait_for_psycopg2:
        yield
        return
    extensions.set_wait_callback(None)
    try:
        yield
    finally:
        extensions.set_wait_callback(wait_for_psycopg2)


def wait_for_psycopg2(conn: Any, *_: Any) -> None:
    """psycopg2's wait callback: poll the connection, and wait for its socket with gevent
    (so other greenlets run) until the operation is complete.

    Anything raised while waiting (the job's timeout, a hard shutdown) propagates, and
    psycopg2 then closes the connection. There is deliberately no ``conn.cancel()``:
    libpq's ``PQcancel`` holds the GIL while it connects to the server and waits for its
    answer, so against a hung or unreachable server (the likeliest reason a query ran
    past its job's timeout) it would freeze the whole process, heartbeat included."""
    from gevent.socket import wait_read, wait_write
    from psycopg2 import OperationalError, extensions

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


def _name_of(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"

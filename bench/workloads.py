"""What a benchmark job does, shared by the jobs (``bench_jobs.py``) and the raw loop
(``raw_brpop.py``) so both do exactly the same work per job.

Plain blocking "legacy" code: no gevent import here. The worker and the raw loop
monkey-patch the standard library first, which makes the HTTP GET below cooperative.
"""

from __future__ import annotations

import urllib.request

HTTP_TIMEOUT_S = 30.0
FIB_N = 25


def http_get(url: str) -> int:
    """One blocking HTTP GET (a new connection each time, as ``urlopen`` does);
    returns the body's length. Raises on an error status or a short body."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        body = response.read()
    if not body:
        raise RuntimeError(f"GET {url}: empty answer")
    return len(body)


def fib(n: int) -> int:
    """Naive recursive Fibonacci: pure CPU, never yields to the gevent hub."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


_pg = None  # set on first use: a greenlet-local holder of one psycopg2 connection


def pg_sleep(dsn: str, seconds: float) -> None:
    """``SELECT pg_sleep(seconds)`` on this greenlet's own psycopg2 connection (kept, as an
    app with persistent connections keeps them; ``threading.local`` is per greenlet once
    gevent has patched it)."""
    global _pg
    import threading

    import psycopg2

    if _pg is None:
        _pg = threading.local()
    conn = getattr(_pg, "conn", None)
    if conn is None or conn.closed:
        conn = _pg.conn = psycopg2.connect(dsn)
        conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", (seconds,))

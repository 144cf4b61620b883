"""Jobs for the benchmarks in bench/: load with ``jiggler-gevent -r bench/bench_jobs.py``.

* ``Noop`` does nothing, so a run measures only the job system's own cost per job.
* ``HttpGet(url)`` does one blocking ``urllib.request`` GET (no gevent import here:
  the worker's monkey-patching makes it cooperative).
* ``Fib(n)`` computes ``fib(n)`` naively: CPU-bound, never yields.
* ``PgSleep(dsn, seconds, key)`` runs ``SELECT pg_sleep(seconds)`` through psycopg2
  on its greenlet's own connection, then INCRs the Redis counter ``key``.
* ``Latency(sent_at, key)`` records ``"<sent_at> <time.time() at start>"`` in the
  Redis list ``key`` (through the client jobs enqueue with), for enqueue->start latency.

``workloads.py`` holds the work itself, shared with the raw loop (``raw_brpop.py``).
"""

from __future__ import annotations

import os
import sys
import time

from jiggler_gevent import Job, connection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


class Noop(Job):
    """A job whose ``perform`` is ``pass``."""

    name = "bench.noop"

    def perform(self, *args):
        pass


class HttpGet(Job):
    """One blocking HTTP GET of ``url``."""

    name = "bench.http_get"

    def perform(self, url):
        workloads.http_get(url)


class Fib(Job):
    """``fib(n)``, pure CPU."""

    name = "bench.fib"

    def perform(self, n):
        workloads.fib(n)


class Latency(Job):
    """Records when it was enqueued and when it started."""

    name = "bench.latency"

    def perform(self, sent_at, key):
        started = time.time()
        connection.settings.client.rpush(key, f"{sent_at!r} {started!r}")


class PgSleep(Job):
    """A query that waits on PostgreSQL, through psycopg2 (``bench/postgres.py``)."""

    name = "bench.pg_sleep"

    def perform(self, dsn, seconds, key):
        workloads.pg_sleep(dsn, seconds)
        connection.settings.client.incr(key)

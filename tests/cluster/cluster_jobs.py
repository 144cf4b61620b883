"""Jobs run by the ``bin/jiggler-gevent`` workers of the cluster end-to-end tests.

The worker loads this module with ``-r cluster_jobs`` (its folder is put on
PYTHONPATH); the tests import it too, to enqueue. Every job has an explicit name, so
both sides agree whatever the module is called there. Each job appends
``<jid> <pid> start|end <time>`` lines to the ledger named by ``$E2E_LEDGER`` (the
format of ``tests/e2e``), outside Redis.
"""

from __future__ import annotations

import os
import time

from jiggler_gevent import Job

LEDGER_ENV = "E2E_LEDGER"


def record(jid: str, kind: str) -> None:
    line = f"{jid} {os.getpid()} {kind} {time.time():.6f}\n".encode()
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def started_before(jid: str) -> bool:
    try:
        with open(os.environ[LEDGER_ENV], encoding="utf-8") as ledger:
            return any(line.startswith(jid + " ") for line in ledger)
    except FileNotFoundError:
        return False


class Work(Job):
    """Queue ``default``: notes its start and end, sleeping ``sleep`` seconds between."""

    name = "cluster.work"

    def perform(self, sleep=0.0):
        record(self.jid, "start")
        if sleep:
            time.sleep(sleep)  # cooperative: the worker monkey-patched time.sleep
        record(self.jid, "end")


class Mail(Job):
    """The same on queue ``mail``."""

    name = "cluster.mail"
    queue = "mail"

    def perform(self, sleep=0.0):
        record(self.jid, "start")
        if sleep:
            time.sleep(sleep)
        record(self.jid, "end")


class FailsOnce(Job):
    """Queue ``mail``: fails its first run, succeeds on the retry (at once)."""

    name = "cluster.fails_once"
    queue = "mail"
    retries = 3

    @classmethod
    def retry_in(cls, attempt, exc):
        return 0

    def perform(self):
        first = not started_before(self.jid)
        record(self.jid, "start")
        if first:
            raise RuntimeError("first run fails on purpose")
        record(self.jid, "end")

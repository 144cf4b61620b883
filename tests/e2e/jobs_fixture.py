"""Jobs run by the ``bin/jiggler-gevent`` subprocesses of the end-to-end tests.

The worker imports this module with ``-r jobs_fixture`` (its folder is on
PYTHONPATH); the tests import it too, to enqueue. Every job has an explicit name,
so both sides agree on it whatever the module is called there.

Each job appends ``<jid> <pid> start|end <time>`` lines to the ledger file named by
``$E2E_LEDGER`` with one O_APPEND write per line, outside Redis, so a Redis fault
cannot corrupt the count.
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
    """Whether the ledger already shows a start of this job (an earlier run)."""
    try:
        with open(os.environ[LEDGER_ENV], encoding="utf-8") as ledger:
            return any(line.startswith(jid + " ") for line in ledger)
    except FileNotFoundError:
        return False


class Record(Job):
    """Notes its start and end, sleeping ``sleep`` seconds in between."""

    name = "e2e.record"

    def perform(self, sleep=0.0):
        record(self.jid, "start")
        if sleep:
            time.sleep(sleep)  # cooperative: the worker monkey-patched time.sleep
        record(self.jid, "end")


class LongOnce(Job):
    """Sleeps ``sleep`` seconds on its first run only, so a re-run after a push back is quick."""

    name = "e2e.long_once"

    def perform(self, sleep):
        first_run = not started_before(self.jid)
        record(self.jid, "start")
        if first_run:
            time.sleep(sleep)
        record(self.jid, "end")


class AlwaysFails(Job):
    name = "e2e.always_fails"
    retries = 2

    @classmethod
    def retry_in(cls, attempt, exc):
        return 0

    def perform(self):
        record(self.jid, "start")
        raise RuntimeError(f"attempt {self.attempt + 1} failed on purpose")


class Mail(Job):
    name = "e2e.mail"
    queue = "mail"

    def perform(self, to):
        record(self.jid, "start")
        record(self.jid, "end")

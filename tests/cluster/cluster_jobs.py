"""Jobs run by the ``bin/jiggler-gevent`` workers of the cluster end-to-end tests.

The worker loads this module with ``-r cluster_jobs`` (its folder is put on
PYTHONPATH); the tests import it too, to enqueue. Every job has an explicit name, so
both sides agree whatever the module is called there. Each job appends
``<jid> <pid> start|end <time>`` lines to the ledger named by ``$E2E_LEDGER`` with
``record`` of ``tests/e2e/jobs_fixture.py`` (imported from there, so the worker also
knows the ``e2e.*`` jobs), outside Redis.
"""

from __future__ import annotations

from jiggler_gevent import Job

try:  # the tests: tests/ is on sys.path, tests/e2e is the package ``e2e``
    from e2e.jobs_fixture import Record, record, started_before
except ImportError:  # the worker: tests/e2e itself is on PYTHONPATH
    from jobs_fixture import Record, record, started_before


class Work(Record):
    """Queue ``default``: ``e2e.record``'s work (its start and end noted, ``sleep``
    seconds in between) under a name of its own."""

    name = "cluster.work"


class Mail(Record):
    """The same on queue ``mail``."""

    name = "cluster.mail"
    queue = "mail"


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

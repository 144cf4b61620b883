"""Jobs of the Redis fault tests (``test_e2e_redis_faults.py``).

The worker loads this module with ``-r fault_jobs`` (its folder is on PYTHONPATH);
it imports ``jobs_fixture`` too, so the worker also knows every ``e2e.*`` job. Each
job writes the same ``<jid> <pid> start|end <time>`` ledger lines as the jobs of
``jobs_fixture``, outside Redis.
"""

from __future__ import annotations

import time

from jiggler_gevent import Job

try:  # imported by the tests, as part of their package
    from .jobs_fixture import record
except ImportError:  # imported by the worker, as a top-level module
    from jobs_fixture import record


class FailOnceSlow(Job):
    """First attempt: sleeps ``sleep`` seconds, then raises. Later attempts end at once."""

    name = "e2e.fault.fail_once_slow"
    retries = 2

    @classmethod
    def retry_in(cls, attempt, exc):
        return 1.0  # long enough for the retry set to be seen holding the entry

    def perform(self, sleep):
        record(self.jid, "start")
        if self.attempt == 0:
            time.sleep(sleep)  # cooperative: the worker monkey-patched time.sleep
            raise RuntimeError("first attempt fails on purpose")
        record(self.jid, "end")


class DieSlow(Job):
    """Sleeps ``sleep`` seconds, then raises; no retries, so it goes to the dead set."""

    name = "e2e.fault.die_slow"
    retries = 0

    def perform(self, sleep):
        record(self.jid, "start")
        time.sleep(sleep)
        raise RuntimeError("dies on purpose")

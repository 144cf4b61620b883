"""Jobs that query a real PostgreSQL through psycopg2 (``$PGJOBS_DSN``), run by the
worker subprocesses of ``test_psycopg2.py``; each notes its start and end in the e2e
ledger (``$E2E_LEDGER``), so the test can see how many queries ran at once."""

from __future__ import annotations

import psycopg2

from jiggler_gevent import Job

try:
    from jobs_fixture import record  # in the worker: tests/e2e is on its PYTHONPATH
except ImportError:
    from e2e.jobs_fixture import record  # in the tests


def connect():
    import os

    return psycopg2.connect(os.environ["PGJOBS_DSN"], application_name="pgjobs")


class PgSleep(Job):
    """One ``SELECT pg_sleep(seconds)`` on a connection of its own."""

    name = "pg.sleep"
    retries = 1

    def perform(self, seconds):
        record(self.jid, "start")
        with connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(%s)", (seconds,))
        conn.close()
        record(self.jid, "end")


class PgSleepPastTimeout(PgSleep):
    """A query far longer than the job's timeout: the timeout interrupts it."""

    name = "pg.sleep_past_timeout"
    timeout = 1
    retries = 1


class PgCopy(Job):
    """COPY, which psycopg2 refuses in green mode: ``use_blocking`` steps out of it."""

    name = "pg.copy"
    retries = 0

    def perform(self, rows, use_blocking):
        import io

        from jiggler_gevent.green import blocking_psycopg2

        record(self.jid, "start")
        conn = connect()
        try:
            with conn, conn.cursor() as cur:
                data = io.StringIO("".join(f"{n}\n" for n in rows))
                if use_blocking:
                    with blocking_psycopg2():
                        cur.copy_expert("COPY copied (n) FROM STDIN", data)
                else:
                    cur.copy_expert("COPY copied (n) FROM STDIN", data)
        finally:
            conn.close()
        record(self.jid, "end")

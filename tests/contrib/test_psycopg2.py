"""psycopg2 under the worker, against a real PostgreSQL the test starts: queries of
many jobs overlap (the wait callback of ``jiggler_gevent.green``), they serialize with
``--no-green-psycopg2``, a job timeout interrupts its query and closes its connection,
COPY works inside ``blocking_psycopg2()``, and Django's ORM on PostgreSQL."""

from __future__ import annotations

import signal

import pytest

psycopg2 = pytest.importorskip("psycopg2")

from e2e.procs import Ledger, wait_until  # noqa: E402
from pgserver import LocalPostgres, find_bindir  # noqa: E402

from jiggler_gevent import green  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql, or set "
                    "JIGGLER_TEST_PG_BIN)")
    try:
        server = LocalPostgres(bindir)
    except RuntimeError as exc:  # root, and no 'postgres' user to run the server as
        pytest.skip(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_worker(start_worker, postgres, tmp_path):
    """``pg_worker(*args)``: a worker running ``pgjobs`` on the test's PostgreSQL; returns
    it and its ledger."""
    ledger = Ledger(tmp_path / "ledger")

    def start(*args: str):
        worker = start_worker("-r", "pgjobs", *args,
                              env={"PGJOBS_DSN": postgres.dsn, "E2E_LEDGER": str(ledger.path)})
        return worker, ledger

    return start


def peak_overlap(ledger: Ledger) -> int:
    """The most jobs that were between their start and end lines at one time."""
    running = peak = 0
    for _, _, kind, _ in sorted(ledger.entries(), key=lambda e: (e[3], e[2] == "start")):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def stop(worker) -> None:
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


def active_sleeps(postgres) -> int:
    return pg_count(postgres, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                              "'pgjobs' AND state = 'active' AND query LIKE '%pg_sleep%'")


def where_is(redis_client, jid: str):
    """Where the job is (queue, retries, scheduled, dead), or None."""
    from jiggler_gevent.api import Api

    found = Api(redis_client).find_job(jid)
    return None if found is None else found.where


def pg_count(postgres, sql: str) -> int:
    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        count = cur.fetchone()[0]
    conn.close()
    return count


def test_queries_of_many_jobs_overlap(pg_worker, redis_client):
    import pgjobs

    worker, ledger = pg_worker("-c", "20")
    jids = pgjobs.PgSleep.enqueue_bulk([[1] for _ in range(20)])
    wait_until(lambda: ledger.ended() >= set(jids), 30, "20 one-second queries", worker)
    assert "psycopg2 queries wait cooperatively" in worker.stdout()
    # 20 jobs each in a one-second query: they waited side by side, not one after another
    assert peak_overlap(ledger) >= 15, ledger.entries()
    assert ledger.lost_and_dup(jids) == (0, 0)
    stop(worker)


def test_no_green_psycopg2_leaves_queries_blocking(pg_worker, redis_client):
    import pgjobs

    worker, ledger = pg_worker("-c", "5", "--no-green-psycopg2", "--watchdog-threshold", "0")
    jids = pgjobs.PgSleep.enqueue_bulk([[0.3] for _ in range(5)])
    wait_until(lambda: ledger.ended() >= set(jids), 30, "5 queries", worker)
    assert "psycopg2 queries wait cooperatively" not in worker.stdout()
    assert peak_overlap(ledger) == 1  # each query held the whole process
    stop(worker)


def test_job_timeout_interrupts_the_query_and_closes_its_connection(pg_worker, redis_client,
                                                                     postgres):
    """A query past its job's timeout: the job takes the retry path as JobTimeout (not
    as the InterfaceError its ``with conn:`` raised over it), its connection is closed
    (the server, checking every 0.5 s here, ends the backend), and the worker goes on."""
    import pgjobs

    from jiggler_gevent.api import Api

    worker, ledger = pg_worker("-c", "5")
    [jid] = pgjobs.PgSleepPastTimeout.enqueue_bulk([[60]])
    wait_until(lambda: jid in ledger.started(), 15, "the long query to start", worker)
    wait_until(lambda: where_is(redis_client, jid) == "retries", 15,
               "the timed-out job in the retry set", worker)
    found = Api(redis_client).find_job(jid)
    assert found.field("error_class") == "JobTimeout", found.job
    if postgres.major_version >= 14:  # client_connection_check_interval: see pgserver.py
        wait_until(lambda: active_sleeps(postgres) == 0, 10, "the server to end the query",
                   worker)
    # the worker goes on: a query after the interrupted one runs
    [after] = pgjobs.PgSleep.enqueue_bulk([[0.1]])
    wait_until(lambda: after in ledger.ended(), 15, "a query after the timeout", worker)
    stop(worker)


def test_copy_needs_blocking_psycopg2_in_green_mode(pg_worker, redis_client, postgres):
    """psycopg2 refuses COPY in green mode with a clear error (the job fails, into the
    dead set here as it has no retries); inside ``blocking_psycopg2()`` it works."""
    import pgjobs

    from jiggler_gevent.api import Api

    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS copied (n int)")
        cur.execute("TRUNCATE copied")
    conn.close()
    worker, ledger = pg_worker("-c", "2")
    [refused] = pgjobs.PgCopy.enqueue_bulk([[[1, 2, 3], False]])
    wait_until(lambda: where_is(redis_client, refused) == "dead", 15,
               "the refused COPY in the dead set", worker)
    entry = Api(redis_client).find_job(refused)
    assert entry.field("error_class") == "ProgrammingError"
    assert "asynchronous callback" in entry.field("error_message")
    [copied] = pgjobs.PgCopy.enqueue_bulk([[[4, 5, 6], True]])
    wait_until(lambda: copied in ledger.ended(), 15, "the COPY in blocking mode", worker)
    assert pg_count(postgres, "SELECT count(*) FROM copied") == 3
    # and the callback is back: queries of many jobs still overlap afterwards
    jids = pgjobs.PgSleep.enqueue_bulk([[0.5] for _ in range(2)])
    wait_until(lambda: ledger.ended() >= set(jids), 15, "two queries", worker)
    stop(worker)


def test_patch_keeps_a_callback_the_app_installed():
    from psycopg2 import extensions

    def theirs(conn, *_):
        raise AssertionError("not called here")

    before = extensions.get_wait_callback()
    try:
        extensions.set_wait_callback(theirs)
        assert green.patch_psycopg2() == green.KEPT
        assert extensions.get_wait_callback() is theirs
        extensions.set_wait_callback(None)
        assert green.patch_psycopg2() == green.PATCHED
        assert extensions.get_wait_callback() is green.wait_for_psycopg2
        green.unpatch_psycopg2()
        assert extensions.get_wait_callback() is None
    finally:
        extensions.set_wait_callback(before)


# -- Django's ORM on PostgreSQL --------------------------------------------------------------


def test_django_orm_on_postgres_from_many_greenlets(django_setup, start_worker, postgres,
                                                    redis_client):
    """``manage.py jiggler_gevent -c 20`` on a Django project whose database is PostgreSQL:
    ten slow ORM queries run on the server at once, 100 rows arrive, and after TERM no
    connection of the worker is left open."""
    import os
    import subprocess
    import sys

    from djapp.jobs import DbSleep, WriteRow
    from test_django import CONTRIB_DIR, MANAGE

    env = dict(django_setup, DJPROJECT_PG_PORT=str(postgres.port))
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(CONTRIB_DIR), str(CONTRIB_DIR.parents[1])])
    subprocess.run([sys.executable, str(MANAGE), "migrate", "--run-syncdb", "-v", "0"],
                   env=full_env, cwd=CONTRIB_DIR, check=True, timeout=60)
    WriteRow.enqueue_bulk([[n] for n in range(100)])
    DbSleep.enqueue_bulk([[3] for _ in range(10)])

    worker = start_worker(env=env, name="django-pg",
                          argv=[sys.executable, str(MANAGE), "jiggler_gevent", "-c", "20",
                                "-q", "default,rows"])
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' " \
               "AND query LIKE 'SELECT pg_sleep%'"
    wait_until(lambda: pg_count(postgres, sleeping) == 10, 20,
               "ten ORM queries running at once", worker)
    wait_until(lambda: pg_count(postgres, "SELECT count(DISTINCT n) FROM djapp_row") == 100, 30,
               "100 rows", worker)
    wait_until(lambda: pg_count(postgres, sleeping) == 0, 20, "the slow queries to end", worker)
    stop(worker)
    others = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' " \
             "AND pid <> pg_backend_pid() AND client_port IS NOT NULL"
    wait_until(lambda: pg_count(postgres, others) == 0, 5, "the worker's connections to close",
               worker)

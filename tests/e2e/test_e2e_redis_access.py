"""End to end: real ``bin/jiggler-gevent`` workers reach Redis over TLS, as an ACL user
and through Sentinel (RELIABILITY.md, "Redis access").

Each test starts its own servers on 127.0.0.1 (``devserver``), stops them by PID and
removes their directories; certificates are made with ``openssl`` in a temporary
directory. A wrong password must end the worker at once with one clear line that
does not echo the password, after a handful of connections at most.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
import redis

from jiggler_gevent import connection, devserver
from jiggler_gevent.config import Config
from jiggler_gevent.errors import ConfigError
from jiggler_gevent.keys import Keys

from . import jobs_fixture as jf
from .procs import BIN, wait_until, worker_env

KEYS = Keys()
QUEUE = KEYS.queue("default")
RUN_TIMEOUT_S = 30
WRONG_PASSWORD = "wr0ng-Pa55-xyz"

pytestmark = pytest.mark.timeout(60)


def run_bin(*args: str, cwd) -> tuple[subprocess.CompletedProcess, float]:
    """Run the worker command to completion; returns the result and the seconds it took."""
    started_at = time.monotonic()
    try:
        result = subprocess.run([sys.executable, str(BIN), *args], capture_output=True,
                                text=True, timeout=RUN_TIMEOUT_S, env=worker_env(),
                                cwd=str(cwd), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it by now
        pytest.fail(f"jiggler-gevent {' '.join(args)} did not exit within {RUN_TIMEOUT_S}s; "
                    f"stdout: {exc.stdout!r} stderr: {exc.stderr!r}")
    return result, time.monotonic() - started_at


def assert_one_clear_error(result: subprocess.CompletedProcess, *secrets: str) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("jiggler-gevent: error:"), lines[0]
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    return lines[0]


def run_jobs(worker, ledger, n: int, jids) -> None:
    wait_until(lambda: len(ledger.ended()) >= n, 30, f"{n} jobs to end", worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    assert ledger.lost_and_dup(jids) == (0, 0)


# -- TLS --------------------------------------------------------------------------------


def test_worker_runs_jobs_over_tls(tls_server, enqueue_to, spawn_worker, ledger):
    url = (f"rediss://127.0.0.1:{tls_server.port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={quote(tls_server.tls.ca_cert)}")
    enqueue_to(url)
    n = 50
    jids = jf.Record.enqueue_bulk([[] for _ in range(n)])
    worker = spawn_worker("-c", "5", url=url)
    run_jobs(worker, ledger, n, jids)
    client = connection.make_client(url)
    try:
        assert client.llen(QUEUE) == 0
        assert client.get(KEYS.processed) == str(n).encode()
    finally:
        client.close()


def test_worker_that_does_not_trust_the_server_certificate_exits_with_one_line(
        tls_server, tmp_path):
    result, took = run_bin("-r", "jobs_fixture", "--redis-url",
                           f"rediss://127.0.0.1:{tls_server.port}/0", cwd=tmp_path)
    line = assert_one_clear_error(result)
    assert "certificate verify failed" in line.lower(), line
    assert took < 15


# -- ACL --------------------------------------------------------------------------------


def test_worker_runs_jobs_as_an_acl_user(acl_server, enqueue_to, spawn_worker, ledger):
    url = f"redis://worker:{acl_server.worker_password}@127.0.0.1:{acl_server.port}/0"
    enqueue_to(url)
    n = 50
    jids = jf.Record.enqueue_bulk([[] for _ in range(n)])
    worker = spawn_worker("-c", "5", url=url)
    wait_until(lambda: len(ledger.ended()) >= 1, 30, "a first job to end", worker)
    ours = [c for c in acl_server.admin.client_list() if c["name"].startswith("jiggler-")]
    assert ours and all(c["user"] == "worker" for c in ours), ours
    run_jobs(worker, ledger, n, jids)
    assert acl_server.admin.llen(QUEUE) == 0
    assert acl_server.worker_password not in worker.stdout() + worker.stderr()


@pytest.mark.parametrize("user", ["worker", "nobody", ""])
def test_wrong_password_exits_at_once_with_one_line_and_no_retry_storm(acl_server, tmp_path,
                                                                       user):
    url = f"redis://{user}:{WRONG_PASSWORD}@127.0.0.1:{acl_server.port}/0"
    before = int(acl_server.admin.info("stats")["total_connections_received"])
    result, took = run_bin("-r", "jobs_fixture", "--redis-url", url, cwd=tmp_path)
    after = int(acl_server.admin.info("stats")["total_connections_received"])
    line = assert_one_clear_error(result, WRONG_PASSWORD)
    assert "refused our credentials" in line and f"127.0.0.1:{acl_server.port}" in line, line
    assert after - before <= 3, f"{after - before} connections for one wrong password"
    assert took < 15


# -- Sentinel ---------------------------------------------------------------------------


def skip_unless_config_accepts_sentinel_urls(url: str) -> None:
    try:
        Config(redis_url=url).validate()
    except ConfigError as exc:
        pytest.skip(f"config.py does not accept redis+sentinel:// urls yet ({exc})")


@pytest.fixture
def sentinel_group():
    group = devserver.LocalSentinelGroup("mymaster", replicas=1, sentinels=1)
    group.start()
    try:
        yield group
    finally:
        group.cleanup()


def test_worker_runs_jobs_through_sentinel(sentinel_group, enqueue_to, spawn_worker, ledger):
    url = sentinel_group.url
    skip_unless_config_accepts_sentinel_urls(url)
    enqueue_to(url)
    n = 50
    jids = jf.Record.enqueue_bulk([[] for _ in range(n)])
    master = redis.Redis(port=sentinel_group.master.port)
    try:
        assert master.llen(QUEUE) == n  # the jobs went to the master Sentinel named
        worker = spawn_worker("-c", "5", url=url)
        run_jobs(worker, ledger, n, jids)
        assert master.llen(QUEUE) == 0
    finally:
        master.close()


def test_sentinel_failover_while_a_worker_runs_jobs_loses_nothing(sentinel_group, enqueue_to,
                                                                  spawn_worker, ledger, report):
    url = sentinel_group.url
    skip_unless_config_accepts_sentinel_urls(url)
    old, new = sentinel_group.master.port, sentinel_group.replicas[0].port
    enqueue_to(url)
    n = 400
    jids = jf.Record.enqueue_bulk([[0.1] for _ in range(n)])  # ~4 s of work at -c 10, so the
    # failover (1 to 3 s from the command to the switch) lands while jobs still run
    master = redis.Redis(port=old)
    assert master.wait(1, 2000) == 1  # the replica has every job before the failover
    worker = spawn_worker("-c", "10", "--poll-interval", "0.5", url=url)
    wait_until(lambda: len(ledger.ended()) >= n // 10, 30, "the first jobs", worker)
    in_flight = ledger.in_flight()
    sentinel = redis.Redis(port=sentinel_group.sentinels[0].port)
    assert sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
    wait_until(lambda: sentinel_group.master_port() == new, 10, "Sentinel to switch masters")
    switched_at = time.time()
    wait_until(lambda: set(jids) <= ledger.ended(), 40, "every job to end after the failover",
               worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    # Writes the worker made to the old master between the promotion and its switch
    # are gone (Redis replication is asynchronous): acks lost there leave jobs that
    # already ran reserved on the new master, pushed back to the queue at shutdown.
    # They would run again: at-least-once allows that; losing a job it does not.
    new_master = redis.Redis(port=new)
    leftover = [jf_payload_jid(raw) for raw in new_master.lrange(QUEUE, 0, -1)]
    lost, dup = ledger.lost_and_dup(jids)
    report("sentinel failover (SENTINEL FAILOVER) at -c 10", lost, dup + len(leftover), n,
           in_flight)
    assert lost == 0
    assert set(leftover) <= ledger.ended()
    assert any(kind == "start" and when > switched_at for _, _, kind, when in ledger.entries()), \
        "no job started after the switch: the failover did not happen while jobs ran"
    for client in (master, sentinel, new_master):
        client.close()


def jf_payload_jid(raw: bytes) -> str:
    return json.loads(raw)["jid"]

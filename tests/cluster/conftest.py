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

# the end-to-end harness, reused as is (tests/ is on sys.path: tests/e2e is ``e2e``)
from e2e.conftest import ledger, report, worker_spawner  # noqa: F401
from e2e.procs import worker_env
from redis.cluster import RedisCluster

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
def cluster_client(local_cluster, enqueue_to) -> Iterator[redis.cluster.RedisCluster]:
    """``make_client(cluster url)``, flushed before and after the test; the client API
    (``Job.enqueue`` ...) enqueues to the cluster for the duration of the test."""
    client = connection.make_client(local_cluster.url)
    flush_cluster(client)
    enqueue_to(local_cluster.url)
    try:
        yield client
    finally:
        try:
            flush_cluster(client)
        finally:
            client.close()


@pytest.fixture(scope="module")
def tls_cluster(tls_files):
    """A 3-primary cluster serving TLS only (cluster bus too), with ``tls_files``."""
    cluster = start_cluster(masters=3, tls=tls_files)
    try:
        yield cluster
    finally:
        cluster.cleanup()


# -- workers (end to end) ---------------------------------------------------------------


@pytest.fixture
def spawn_cluster_worker(tmp_path, local_cluster, ledger):  # noqa: F811
    """``spawn_cluster_worker(*args, name=..., url=...)``: a started ``bin/jiggler-gevent``
    on the session cluster (or ``url``) that loads ``cluster_jobs`` (this folder);
    killed by its PID at teardown if still running."""
    with worker_spawner(tmp_path, ledger, local_cluster.url) as spawn_worker:

        def spawn(*args: str, name: str | None = None, url: str | None = None):
            pythonpath = os.pathsep.join([str(CLUSTER_DIR), worker_env()["PYTHONPATH"]])
            return spawn_worker("-r", "cluster_jobs", *args, name=name, url=url, require=False,
                                env={"PYTHONPATH": pythonpath})

        yield spawn

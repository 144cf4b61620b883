"""End to end on a real local Redis Cluster: ``bin/jiggler-gevent`` workers started
with a ``redis+cluster://`` url run jobs of two queues (on different nodes) in
at-least-once mode, enqueued through the client API, retries and scheduled jobs
included; a worker SIGKILLed with jobs in flight loses none of them (a second
worker recovers them); and a worker on a TLS cluster (``rediss+cluster://``).

Workers are started and killed by their PID (``tests/e2e/procs.py``); the cluster
is the session's (``conftest.py``).
"""

from __future__ import annotations

import signal
import time

import pytest
from e2e.procs import wait_until
from redis.crc import key_slot

from jiggler_gevent import connection
from jiggler_gevent.keys import Keys

from . import cluster_jobs as cj

pytestmark = pytest.mark.timeout(120)

KEYS = Keys()
QUEUES = ("default", "mail")
FAST = ("--poll-interval", "0.3", "--stats-interval", "0.5", "--requeue-interval", "0.5")


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def queue_nodes(local_cluster) -> dict[str, int]:
    return {q: local_cluster.slot_owner(slot_of(KEYS.queue(q))).port for q in QUEUES}


def leftovers(client) -> dict[str, int]:
    """Every job still in a list or set of the two queues (should be none)."""
    left = {}
    for name in QUEUES:
        queue = KEYS.queue_keys(name)
        for key, count in ((queue.pending, client.llen(queue.pending)),
                           (queue.scheduled, client.zcard(queue.scheduled)),
                           (queue.retries, client.zcard(queue.retries)),
                           (queue.dead, client.zcard(queue.dead)),
                           (queue.quarantine, client.llen(queue.quarantine))):
            if count:
                left[key] = count
    return left


def _scan_all(client, pattern: str) -> list[bytes]:
    found = []
    for node in client.get_primaries():
        found += list(client.scan_iter(match=pattern, target_nodes=node))
    return found


def test_two_queues_retries_and_a_scheduled_job_run_on_a_cluster(cluster_client, local_cluster,
                                                                   spawn_cluster_worker, ledger):
    nodes = queue_nodes(local_cluster)
    assert nodes["default"] != nodes["mail"], nodes  # the two queues live on different nodes
    n = 100
    work = cj.Work.enqueue_bulk([[] for _ in range(n)])
    mail = [cj.Mail.enqueue() for _ in range(n)]
    flaky = cj.FailsOnce.enqueue()
    later = cj.Work.enqueue_in(1.0, 0.0)
    scheduled_at = time.time()
    assert cluster_client.llen(KEYS.queue("default")) == n
    assert cluster_client.llen(KEYS.queue("mail")) == n + 1
    assert set(cluster_client.smembers(KEYS.queues)) >= {b"default", b"mail"}

    worker = spawn_cluster_worker("-q", ",".join(QUEUES), "-c", "10", *FAST)
    jids = [*work, *mail, flaky, later]
    wait_until(lambda: set(jids) <= ledger.ended(), 60, "every job to end", worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(20)
    assert worker.returncode == 0, worker.tail()

    starts, ends = ledger.counts()
    assert starts[flaky] == 2 and ends[flaky] == 1  # failed once, then the retry ran
    assert ledger.lost_and_dup([*work, *mail, later]) == (0, 0)
    later_start = min(t for jid, _, kind, t in ledger.entries() if jid == later and kind == "start")
    assert later_start >= scheduled_at + 0.9  # not before its time
    assert leftovers(cluster_client) == {}
    assert _scan_all(cluster_client, "*in_progress*") == []
    assert int(cluster_client.get(KEYS.processed) or 0) == len(jids)  # successes
    assert int(cluster_client.get(KEYS.failures) or 0) == 1  # the first run of the flaky one
    assert "Traceback" not in worker.stderr(), worker.tail()


def test_a_sigkilled_worker_loses_nothing_on_a_cluster(cluster_client, local_cluster,
                                                       spawn_cluster_worker, ledger, report):
    n = 60
    jids = cj.Work.enqueue_bulk([[0.5] for _ in range(n)]) + \
        [cj.Mail.enqueue(0.5) for _ in range(n)]
    victim = spawn_cluster_worker("-q", ",".join(QUEUES), "-c", "10", *FAST, name="victim")
    wait_until(lambda: ledger.in_flight() >= 10 and len(ledger.ended()) >= 5, 30,
               "jobs in flight", victim)
    victim.proc.kill()  # SIGKILL: no cleanup at all
    victim.proc.wait(timeout=10)
    in_flight = ledger.in_flight()
    assert in_flight >= 1
    assert _scan_all(cluster_client, "*in_progress*"), "the killed worker held no reservation"

    rescuer = spawn_cluster_worker("-q", ",".join(QUEUES), "-c", "10", *FAST, name="rescuer")
    wait_until(lambda: set(jids) <= ledger.ended(), 60, "every job to end after the kill",
               rescuer)
    rescuer.send(signal.SIGTERM)
    rescuer.wait_exit(20)
    assert rescuer.returncode == 0, rescuer.tail()
    lost, dup = ledger.lost_and_dup(jids)
    report("cluster: SIGKILL of a worker (2 queues, -c 10)", lost, dup, len(jids), in_flight)
    assert lost == 0
    assert dup <= in_flight  # only the jobs in flight at the kill may run twice
    assert leftovers(cluster_client) == {}
    assert _scan_all(cluster_client, "*in_progress*") == []


def test_a_worker_on_a_tls_cluster(tls_cluster, spawn_cluster_worker, ledger, enqueue_to):
    url = tls_cluster.url  # rediss+cluster://...?ssl_ca_certs=...
    enqueue_to(url)
    jids = cj.Work.enqueue_bulk([[] for _ in range(30)]) + [cj.Mail.enqueue() for _ in range(30)]
    worker = spawn_cluster_worker("-q", ",".join(QUEUES), "-c", "5", *FAST, url=url)
    wait_until(lambda: set(jids) <= ledger.ended(), 60, "every job to end", worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(20)
    assert worker.returncode == 0, worker.tail()
    assert ledger.lost_and_dup(jids) == (0, 0)
    client = connection.make_client(url)
    assert leftovers(client) == {}
    client.close()

"""Fault suite: a poison pill, a job that kills the process running it (SIGKILL on
itself), among normal jobs (RELIABILITY.md, "Fault scenarios").

A supervisor loop in the test restarts every worker that dies, as systemd or
Kubernetes would. The orphan requeuer brings the jobs of each dead process back;
after ``--max-recoveries`` recoveries the pill goes to the dead set as
``PoisonPill`` with its raw payload, and every other job runs to its end.

With ``-c 1`` the pill is alone in its process's in-progress list at every crash.
With ``-c 5`` the jobs that shared the process with the pill (its "companions")
are recovered with it; from their second recovery they are quarantined and run
alone (one at a time per process), so the next crash blames the pill alone.
"""

from __future__ import annotations

import random
import time

import pytest
import ujson
from e2e import jobs_fixture as jf

from . import faults_jobs as fj
from .harness import (
    KEYS,
    QUEUE,
    TEST_TIMEOUT_S,
    Tally,
    assert_no_worker_state,
    heartbeat_pids,
    reserved_count,
    reserved_jids,
    scaled,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

MAX_RECOVERIES = 2
ARGS = ["--stats-interval", "0.5", "--requeue-interval", "0.5",
        "--max-recoveries", str(MAX_RECOVERIES)]


def dead_entries(client) -> list[dict]:
    return [ujson.loads(m) for m in client.zrange(KEYS.dead("default"), 0, -1)]


@pytest.mark.parametrize("concurrency", [1, 5])
def test_poison_pill_goes_to_the_dead_set(concurrency, fleet, ledger, redis_client, report):
    n, pills = scaled((200, 1), (2000, 3))
    args = ["-c", str(concurrency), *ARGS]
    tally = Tally(ledger)
    try:
        workers = [fleet.spawn(*args), fleet.spawn(*args)]
        for worker in workers:
            fleet.identity_of(worker)
        jids: list[str] = []
        pill_jids: list[str] = []
        chunk = n // (pills + 1)
        for i in range(pills + 1):  # each pill somewhere in the middle of normal jobs
            size = chunk if i < pills else n - pills * chunk
            jids += jf.Record.enqueue_bulk([[random.uniform(0.02, 0.05)] for _ in range(size)])
            if i < pills:
                pill_jids.append(fj.PoisonPill.enqueue())
        pill_raw = {ujson.loads(raw)["jid"]: raw for raw in redis_client.lrange(QUEUE, 0, -1)
                    if ujson.loads(raw)["jid"] in pill_jids}

        # the supervisor loop: restart whatever dies, note what each dead one held
        deaths: list[tuple[int, int]] = []  # (pid, return code)
        in_flight_at_deaths: list[set[str]] = []
        deadline = time.monotonic() + scaled(60, 300)
        quiet_since = None
        while True:
            settled = (set(pill_jids) <= {e.get("jid") for e in dead_entries(redis_client)}
                       and redis_client.llen(QUEUE) == 0 and reserved_count(redis_client) == 0)
            if not settled:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.3:
                break
            if time.monotonic() > deadline:
                fleet.fail(f"never settled: {len(deaths)} deaths, dead set "
                           f"{dead_entries(redis_client)}, queue {redis_client.llen(QUEUE)}, "
                           f"reserved {reserved_count(redis_client)}")
            for index, worker in enumerate(workers):
                if worker.running:
                    continue
                deaths.append((worker.pid, worker.returncode))
                # its heartbeat and reservations are still there: recovery waits for the TTL
                identity = next((i for i, pid in heartbeat_pids(redis_client).items()
                                 if pid == worker.pid), None)
                assert identity is not None, f"{worker.name} died after its heartbeat lapsed"
                in_flight_at_deaths.append(
                    set(reserved_jids(redis_client, identity)) & tally.started_by(worker.pid))
                workers[index] = fleet.spawn(*args, name=f"restart{len(deaths)}")
            time.sleep(0.02)

        fleet.stop(workers)
        assert_no_worker_state(redis_client)
        fleet.assert_clean_logs()

        lost, dup = ledger.lost_and_dup(jids)
        hit = sum(len(s - set(pill_jids)) for s in in_flight_at_deaths)
        entries = dead_entries(redis_client)
        buried = [e for e in entries if e["jid"] not in pill_jids]
        report(f"poison pill x{pills} (SIGKILL self, --max-recoveries {MAX_RECOVERIES}, "
               f"{len(deaths)} deaths, 2 x -c {concurrency}, 20-50 ms jobs"
               f"{f', {len(buried)} other jobs buried as PoisonPill' if buried else ''})",
               lost, dup, len(jids), hit)

        # each pill ran (and killed its process) once, then once per recovery
        starts, _ = ledger.counts()
        for pill in pill_jids:
            assert starts[pill] == MAX_RECOVERIES + 1, (pill, starts[pill])
        assert all(code == -9 for _, code in deaths), deaths
        assert len(deaths) == pills * (MAX_RECOVERIES + 1), deaths
        for entry in entries:
            if entry["jid"] in pill_jids:
                assert entry["error_class"] == "PoisonPill"
                assert entry["name"] == fj.PoisonPill.name
                assert entry["queue"] == "default"
                assert entry["raw"].encode() == pill_raw[entry["jid"]]  # the exact bytes
        # every other job ran to its end (those in the pill's process ran again)
        assert buried == [], f"{len(buried)} innocent jobs buried: {buried[:3]}"
        assert lost == 0
        assert dup <= hit
        assert redis_client.zcard(KEYS.retries("default")) == 0
    finally:
        fleet.kill_all()

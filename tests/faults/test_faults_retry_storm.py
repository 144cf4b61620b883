"""Fault suite: a retry storm, many jobs failing at once, then recovering
(RELIABILITY.md, "Fault scenarios").

The jobs keep the default backoff's shape, random jitter, at a test's time scale
(``retry_in`` = uniform 0.1-0.5 s, noted per job in ``$FAULTS_NOTES``). Expected:
the retries are spread out (not in lockstep), every job that recovers ends exactly
once, and a job whose retries run out is dead after its last attempt, not before.
"""

from __future__ import annotations

import collections
import statistics

import pytest
import ujson

from . import faults_jobs as fj
from .harness import (
    KEYS,
    QUEUE,
    TEST_TIMEOUT_S,
    assert_no_worker_state,
    read_notes,
    reserved_count,
    scaled,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def test_retry_storm(fleet, ledger, redis_client, report):
    n, hopeless_n = scaled((300, 10), (3000, 100))
    retries = fj.FlakyTwice.retries
    assert retries == fj.Hopeless.retries == 3
    try:
        workers = [fleet.spawn("-c", "20", "--poll-interval", "0.1") for _ in range(2)]
        for worker in workers:
            fleet.identity_of(worker)
        flaky = fj.FlakyTwice.enqueue_bulk([[] for _ in range(n)])
        hopeless = fj.Hopeless.enqueue_bulk([[] for _ in range(hopeless_n)])
        fleet.wait(lambda: set(flaky) <= ledger.ended()
                   and redis_client.zcard(KEYS.dead("default")) >= hopeless_n, scaled(30, 120),
                   "every flaky job to end and every hopeless one to die", must_run=workers)
        fleet.wait(lambda: reserved_count(redis_client) == 0 and redis_client.llen(QUEUE) == 0
                   and redis_client.zcard(KEYS.retries("default")) == 0, 10, "the last acks",
                   must_run=workers)
        fleet.stop(workers)
        assert_no_worker_state(redis_client)
        fleet.assert_clean_logs()

        entries = ledger.entries()
        starts, ends = ledger.counts()
        start_times = collections.defaultdict(list)
        for jid, _, kind, when in entries:
            if kind == "start":
                start_times[jid].append(when)
        notes = read_notes(fleet.notes)
        delays = {(jid, int(attempt)): float(value)
                  for kind, jid, attempt, value in notes if kind == "delay"}
        fails = {(jid, int(attempt)): float(when)
                 for kind, jid, attempt, when in notes if kind == "fail"}
        dead = {e["jid"]: e for e in map(ujson.loads, redis_client.zrange(KEYS.dead("default"), 0, -1))}

        lost = sum(1 for jid in flaky if ends[jid] == 0) + \
            sum(1 for jid in hopeless if jid not in dead)
        dup = sum(max(0, ends[jid] - 1) + max(0, starts[jid] - 3) for jid in flaky) + \
            sum(max(0, starts[jid] - (retries + 1)) for jid in hopeless)
        values = list(delays.values())
        # how late each retry started after its failure: the delay, plus the poll
        lags = [start_times[jid][attempt] - fails[(jid, attempt - 1)] - delays[(jid, attempt)]
                for (jid, attempt) in delays if len(start_times[jid]) > attempt]
        report(f"retry storm ({n} jobs failing twice + {hopeless_n} hopeless, retries=3, "
               f"retry_in U(0.1, 0.5) s: delays sd {statistics.pstdev(values):.3f} s, "
               f"{len({round(v, 2) for v in values})} distinct at 10 ms, median start "
               f"{statistics.median(lags):.2f} s after due)",
               lost, dup, n + hopeless_n, 0)

        assert lost == 0 and dup == 0
        # every flaky job: two failures, then one success
        assert all(starts[jid] == 3 and ends[jid] == 1 for jid in flaky)
        # jittered: the delays are spread over the whole range, not in lockstep
        assert len(values) == 2 * n + retries * hopeless_n
        assert all(fj.RETRY_MIN_S <= v <= fj.RETRY_MAX_S for v in values)
        assert len({round(v, 2) for v in values}) >= 30  # of the 41 10-ms steps
        assert min(values) < 0.15 and max(values) > 0.45
        assert statistics.pstdev(values) > 0.08  # uniform on 0.4 s: 0.115
        # the retries really ran at those spread times: never early, and spread too
        assert len(lags) == len(values)
        # no retry before its time (clock rounding); later by the poll interval and by
        # the backlog: a due retry is pushed behind the jobs already queued
        assert min(lags) > -0.02, min(lags)
        gaps = [lag + delays[key] for lag, key in zip(lags, delays)]
        assert statistics.pstdev(gaps) > 0.05
        # hopeless: 1 + retries attempts, dead after the last one, with its error
        for jid in hopeless:
            assert starts[jid] == retries + 1 and ends[jid] == 0, (jid, starts[jid])
            entry = dead[jid]
            assert entry["error_class"] == "PlannedFailure"
            assert entry["attempt"] == retries + 1
            assert entry["name"] == fj.Hopeless.name
            # failed_at keeps the first failure, retried_at the last one: the death
            assert min(start_times[jid]) <= entry["failed_at"] < start_times[jid][1]
            assert entry["retried_at"] >= max(start_times[jid])
        assert set(dead) == set(hopeless)
        assert redis_client.zcard(KEYS.retries("default")) == 0
    finally:
        fleet.kill_all()

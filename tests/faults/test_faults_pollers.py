"""Fault suite: many pollers racing for jobs due at one identical timestamp
(RELIABILITY.md, "Fault scenarios"): several worker processes polling every 0.1 s,
thousands of jobs scheduled with ``enqueue_at`` for the same instant. Each job must
be moved to its queue, and run, exactly once.
"""

from __future__ import annotations

import re
import time

import pytest
from e2e import jobs_fixture as jf

from jiggler_gevent import payload as _payload

from .harness import (
    KEYS,
    QUEUE,
    TEST_TIMEOUT_S,
    assert_no_worker_state,
    reserved_count,
    scaled,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


MOVED_RE = re.compile(r"moved (\d+) due job\(s\) to their queues")


def moved_by(worker) -> int:
    """Jobs this worker's poller moved (its -v log says so after each pass)."""
    return sum(int(m) for m in MOVED_RE.findall(worker.stdout()))


def test_many_pollers_racing(fleet, ledger, redis_client, report):
    processes, n = scaled((4, 2000), (8, 20000))
    try:
        workers = [fleet.spawn("-c", "20", "--poll-interval", "0.1", "-v") for _ in range(processes)]
        for worker in workers:
            fleet.identity_of(worker)
        at = time.time() + 1.0
        # the first ones through enqueue_at itself; the rest written the same way (the
        # same payload bytes, ZADD at the same score) in pipelined chunks, so that
        # thousands fit in the lead time even on a busy machine
        jids = [jf.Record.enqueue_at(at) for _ in range(100)]
        enqueuer = jf.Record.with_options()
        for start in range(100, n, 1000):
            jobs = [enqueuer.build([], {}) for _ in range(min(1000, n - start))]
            redis_client.zadd(KEYS.scheduled("default"), {_payload.dumps(job): at for job in jobs})
            jids += [job["jid"] for job in jobs]
        assert time.time() < at, "enqueueing took longer than the lead: nothing raced"
        scores = {s for _, s in redis_client.zrange(KEYS.scheduled("default"), 0, -1, withscores=True)}
        assert scores == {at}  # one identical timestamp
        fleet.wait(lambda: set(jids) <= ledger.ended(), scaled(30, 120), "every job to end",
                   must_run=workers)
        time.sleep(0.5)  # room for a (wrong) second run to show up
        fleet.wait(lambda: reserved_count(redis_client) == 0, 10, "the last acks",
                   must_run=workers)
        fleet.stop(workers)
        assert_no_worker_state(redis_client)
        fleet.assert_clean_logs()

        starts, ends = ledger.counts()
        lost, dup = ledger.lost_and_dup(jids)
        pids = {pid for _, pid, _, _ in ledger.entries()}
        moved = [moved_by(w) for w in workers]
        report(f"many pollers racing ({processes} processes, --poll-interval 0.1, {n} jobs "
               f"due at one timestamp, moved {'+'.join(map(str, moved))}, run by {len(pids)} "
               "processes)", lost, dup, n, 0)
        assert sum(moved) == n  # every job moved once, by one poller or another
        assert (lost, dup) == (0, 0)
        assert all(starts[jid] == 1 and ends[jid] == 1 for jid in jids)
        assert redis_client.zcard(KEYS.scheduled("default")) == 0
        assert redis_client.llen(QUEUE) == 0
        assert redis_client.zcard(KEYS.dead("default")) == 0
        assert len(pids) >= 2  # the due jobs really were shared out
    finally:
        fleet.kill_all()

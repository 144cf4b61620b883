"""Fault suite: a worker process killed with SIGKILL (both modes), and one frozen
with SIGSTOP past its heartbeat TTL (RELIABILITY.md, "Fault scenarios").

Real ``bin/jiggler-gevent`` processes run ``e2e.record`` jobs that note
``<jid> <pid> start|end`` in a ledger outside Redis. From it: **lost** = jobs that
never ended, **dup** = extra starts.

"In flight at fault" is what the process held when it was killed or frozen:

* at-least-once, SIGKILL: the jobs it had started and not yet acknowledged (read
  from its in-progress list right after the kill, before any recovery, intersected
  with its ledger starts). This includes a job whose end is in the ledger but whose
  ack had not reached Redis yet: that one runs again too, by design.
* at-most-once, SIGKILL: the jobs it had started and not ended (ledger).
* SIGSTOP: everything in its in-progress list, started or not: after SIGCONT the
  frozen process also runs the jobs it had reserved but not yet started, while the
  other worker has run them already.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from e2e import jobs_fixture as jf

from jiggler_gevent.cli import build_parser
from jiggler_gevent.config import Config

from .harness import (
    KEYS,
    QUEUE,
    TEST_TIMEOUT_S,
    Tally,
    assert_no_worker_state,
    reserved_count,
    reserved_jids,
    scaled,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

STATS_INTERVAL, REQUEUE_INTERVAL = 0.5, 0.5
FAST = ["-c", "20", "--stats-interval", str(STATS_INTERVAL),
        "--requeue-interval", str(REQUEUE_INTERVAL)]
ORPHAN_BOUND_S = 15.0  # RELIABILITY.md: orphans back on their queue within 15 s


def new_jobs(n: int) -> list[str]:
    return jf.Record.enqueue_bulk([[random.uniform(0.05, 0.1)] for _ in range(n)])


# -- the default settings bound the orphan delay (a unit check) -------------------------


def test_default_settings_bring_orphans_back_within_15_s():
    """A crashed process's heartbeat lapses at most one TTL after its last beat, and the
    next requeuer pass comes at most 1.5 requeue intervals later (jitter 0.5-1.5)."""
    config = Config()
    assert config.heartbeat_ttl == 9.0  # 3 x --stats-interval 3
    assert config.requeue_interval == 2.0
    worst = config.heartbeat_ttl + 1.5 * config.requeue_interval
    assert worst < ORPHAN_BOUND_S, worst
    # the command line has the same defaults
    args = build_parser().parse_args(["--redis-url", "redis://127.0.0.1:1/0"])
    assert args.stats_interval == config.stats_interval
    assert args.requeue_interval == config.requeue_interval
    assert Config(stats_interval=0.5).heartbeat_ttl == 2.0  # the floor these tests run at


# -- 1, 2. worker SIGKILL mid-job -------------------------------------------------------


@pytest.mark.parametrize("mode", ["at-least-once", "at-most-once"])
def test_worker_sigkill_mid_job(mode, fleet, ledger, redis_client, report):
    kills, per_round = scaled((3, 400), (12, 1500))
    reliable = mode == "at-least-once"
    args = [*FAST, "--mode", mode]
    ttl = Config(stats_interval=STATS_INTERVAL).heartbeat_ttl
    # the last beat is at most one TTL before the list is orphaned, the requeuer comes
    # at most 1.5 intervals later; 2 s for a loaded test machine
    tight_bound = ttl + 1.5 * REQUEUE_INTERVAL + 2.0
    tally = Tally(ledger)
    try:
        workers = [fleet.spawn(*args), fleet.spawn(*args)]
        identities = {w.pid: fleet.identity_of(w) for w in workers}
        jids: list[str] = []
        in_flight_at_kills: list[set[str]] = []
        recovery_s: list[float] = []
        rerun_s: list[float] = []
        killed_identities: list[str] = []
        for round_no in range(kills):
            jids += new_jobs(per_round)
            victim, survivor = workers
            fleet.wait(lambda: len(tally.unfinished_by(victim.pid)) >= 10, 20,  # noqa: B023
                       f"{victim.name} to run jobs", must_run=workers, interval=0.002)
            identity = identities[victim.pid]
            killed_identities.append(identity)
            victim.proc.kill()  # SIGKILL
            victim.proc.wait(timeout=10)
            killed_at = time.monotonic()
            key = KEYS.in_progress("default", identity)
            unfinished = tally.unfinished_by(victim.pid)
            if reliable:
                reserved = set(reserved_jids(redis_client, identity))
                # everything it had started and not finished is still reserved
                assert unfinished <= reserved, unfinished - reserved
                in_flight_at_kills.append(reserved & tally.started_by(victim.pid))
            else:
                assert not redis_client.exists(key)
                in_flight_at_kills.append(unfinished)
            replacement = fleet.spawn(*args, name=f"replacement{round_no + 1}")
            identities[replacement.pid] = fleet.identity_of(replacement)
            workers = [survivor, replacement]
            if reliable:
                fleet.wait(lambda: not redis_client.exists(key),  # noqa: B023
                           ORPHAN_BOUND_S, f"the orphans of {victim.name} to go back to "
                           "their queue", must_run=workers)
                recovery_s.append(time.monotonic() - killed_at)
                assert recovery_s[-1] < tight_bound, (recovery_s[-1], tight_bound)
                # the registry entry goes right after, in the recoverer's next round trip
                fleet.wait(lambda: redis_client.hget(KEYS.reservations, key) is None,  # noqa: B023
                           2, f"the reservation of {victim.name} to be forgotten",
                           must_run=workers)
                # and they run again, elsewhere, before the next kill (else the next
                # victim would be killed running them, and after --max-recoveries such
                # crashes in a row a job is taken for a poison pill, as designed)
                fleet.wait(lambda: tally.ended_elsewhere(reserved, victim.pid),  # noqa: B023
                           20, f"the orphans of {victim.name} to run again", must_run=workers)
                rerun_s.append(time.monotonic() - killed_at)

        if reliable:
            fleet.wait(lambda: set(jids) <= ledger.ended(), 60, "every job to end",
                       must_run=workers)
            fleet.wait(lambda: reserved_count(redis_client) == 0, 10, "the last acks",
                       must_run=workers)
        else:
            live = [w.pid for w in workers]
            fleet.wait(lambda: redis_client.llen(QUEUE) == 0
                       and not any(tally.unfinished_by(pid) for pid in live),
                       60, "the queue to drain", must_run=workers)
        fleet.stop(workers)
        assert redis_client.llen(QUEUE) == 0
        # at-least-once: recovery unregisters a dead process; at-most-once: pruned later
        assert_no_worker_state(redis_client, killed=() if reliable else killed_identities)
        assert redis_client.zcard(KEYS.dead("default")) == 0  # nothing taken for a poison pill
        fleet.assert_clean_logs()

        lost, dup = ledger.lost_and_dup(jids)
        hit = sum(len(s) for s in in_flight_at_kills)
        n = len(jids)
        if reliable:
            report(f"worker SIGKILL x{kills} (at-least-once, 2 x -c 20, 50-100 ms jobs, "
                   f"orphans back in {min(recovery_s):.1f}-{max(recovery_s):.1f} s, "
                   f"re-run by {max(rerun_s):.1f} s)",
                   lost, dup, n, hit)
            assert lost == 0
            assert dup <= hit
        else:
            ended = ledger.ended()
            started = ledger.started()
            lost_started = {j for j in jids if j in started and j not in ended}
            lost_unstarted = {j for j in jids if j not in started}
            unstarted = f"; {len(lost_unstarted)} of the lost were fetched, not yet started" \
                if lost_unstarted else ""
            report(f"worker SIGKILL x{kills} (at-most-once, 2 x -c 20, 50-100 ms jobs{unstarted})",
                   lost, dup, n, hit)
            assert dup == 0
            # documented: jobs in flight at the kill are lost; nothing else
            assert lost_started <= set().union(*in_flight_at_kills)
            # a job popped by the fetch and not yet started by a greenlet is lost too;
            # at most one fetch batch (-c 20) per kill
            assert len(lost_unstarted) <= 20 * kills
            assert lost <= hit + len(lost_unstarted)
    finally:
        fleet.kill_all()


# -- 3. a process frozen past its heartbeat TTL -------------------------------------------


def test_process_frozen_past_its_heartbeat_ttl(fleet, ledger, redis_client, report):
    freezes, per_round = scaled((1, 400), (4, 1500))
    ttl = Config(stats_interval=STATS_INTERVAL).heartbeat_ttl
    tally = Tally(ledger)
    try:
        workers = [fleet.spawn(*FAST), fleet.spawn(*FAST)]
        identities = {w.pid: fleet.identity_of(w) for w in workers}
        jids: list[str] = []
        held_at_freezes: list[set[str]] = []
        frozen_for: list[float] = []
        for round_no in range(freezes):
            jids += new_jobs(per_round)
            victim, other = workers[round_no % 2], workers[(round_no + 1) % 2]
            identity = identities[victim.pid]
            key = KEYS.in_progress("default", identity)
            fleet.wait(lambda: len(tally.unfinished_by(victim.pid)) >= 10, 20,  # noqa: B023
                       f"{victim.name} to run jobs", must_run=workers, interval=0.002)
            os.kill(victim.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            time.sleep(0.05)  # the stop is asynchronous; let it land before reading
            held = set(reserved_jids(redis_client, identity))
            assert tally.unfinished_by(victim.pid) <= held
            held_at_freezes.append(held)
            # the other worker takes over: heartbeat lapsed, list recovered, jobs re-run
            fleet.wait(lambda: not redis_client.exists(key)  # noqa: B023
                       and not redis_client.exists(KEYS.process(identity)),  # noqa: B023
                       ttl + 10, f"the jobs of frozen {victim.name} to be recovered",
                       must_run=[other])
            assert time.monotonic() - stopped_at >= ttl - 0.6  # not before the TTL
            fleet.wait(lambda: tally.ended_elsewhere(held, victim.pid),  # noqa: B023
                       20, "the other worker to run the recovered jobs", must_run=[other])
            os.kill(victim.pid, signal.SIGCONT)
            frozen_for.append(time.monotonic() - stopped_at)
            # it wakes up, finishes its stale jobs (late acks), and beats again
            fleet.wait(lambda: redis_client.exists(KEYS.process(identity)), 10,  # noqa: B023
                       f"{victim.name} to beat again after SIGCONT", must_run=workers)
            fleet.wait(lambda: not tally.unfinished_by(victim.pid), 10,  # noqa: B023
                       f"{victim.name} to finish its stale jobs", must_run=workers)
            time.sleep(0.5)
            assert victim.running, victim.tail()

        fleet.wait(lambda: set(jids) <= ledger.ended(), 60, "every job to end",
                   must_run=workers)
        fleet.wait(lambda: reserved_count(redis_client) == 0 and redis_client.llen(QUEUE) == 0,
                   10, "the last acks", must_run=workers)
        fleet.stop(workers)  # the frozen one exits 0 on TERM like the other
        assert_no_worker_state(redis_client)  # no in-progress list left
        assert redis_client.zcard(KEYS.dead("default")) == 0
        assert redis_client.zcard(KEYS.retries("default")) == 0
        fleet.assert_clean_logs()
        assert "recovered" in "".join(w.stdout() for w in workers)

        lost, dup = ledger.lost_and_dup(jids)
        hit = sum(len(h) for h in held_at_freezes)
        report(f"process frozen x{freezes} (SIGSTOP {min(frozen_for):.1f}-"
               f"{max(frozen_for):.1f} s > heartbeat TTL {ttl:g} s, 2 x -c 20, 50-100 ms jobs)",
               lost, dup, len(jids), hit)
        assert lost == 0
        assert dup <= hit
    finally:
        fleet.kill_all()

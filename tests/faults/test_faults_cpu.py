"""Fault suite: a CPU-bound job hogging the gevent hub (RELIABILITY.md, "Fault
scenarios"; DESIGN.md section 6: "A CPU-bound job cannot silently stall the process").

A job spins in pure Python, never yielding, for longer than the heartbeat TTL. The
watchdog (``--watchdog-threshold``) must keep the process alive meanwhile: the
heartbeat's ``beat_at`` still moves (the test polls it), the log names the blocking
greenlet with its stack (the spinning function ``burn_cpu`` in it), and a job past
its hard timeout is interrupted (``JobTimeout``, the retry path). A second worker
with a fast orphan requeuer watches: if the heartbeat lapsed it would take the
spinning job and run it again.
"""

from __future__ import annotations

import time

import pytest
import ujson

from jiggler_gevent.cli import build_parser
from jiggler_gevent.config import Config

from . import faults_jobs as fj
from .harness import (
    KEYS,
    QUEUE,
    TEST_TIMEOUT_S,
    assert_no_worker_state,
    reserved_count,
    scaled,
)

WATCHDOG_OPTION = "--watchdog-threshold"
HAS_WATCHDOG = WATCHDOG_OPTION in build_parser()._option_string_actions

pytestmark = [
    pytest.mark.timeout(TEST_TIMEOUT_S),
    pytest.mark.xfail(not HAS_WATCHDOG, strict=False, reason="supervisor not yet in"),
]

STATS_INTERVAL = 0.5
TTL = Config(stats_interval=STATS_INTERVAL).heartbeat_ttl  # 2 s


def worker_args(*extra: str) -> list[str]:
    args = ["-c", "2", "--stats-interval", str(STATS_INTERVAL), "--requeue-interval", "0.5",
            *extra]
    if HAS_WATCHDOG:
        args += [WATCHDOG_OPTION, "0.5"]
    return args


class HeartbeatProbe:
    """Samples one process's heartbeat hash: (time, key exists, beat_at)."""

    def __init__(self, client, identity: str) -> None:
        self.client = client
        self.key = KEYS.process(identity)
        self.samples: list[tuple[float, bool, float]] = []

    def sample(self) -> None:
        beat_at = self.client.hget(self.key, "beat_at")
        self.samples.append((time.time(), beat_at is not None,
                             float(beat_at) if beat_at is not None else 0.0))

    def beats_between(self, start: float, end: float) -> list[float]:
        """The distinct beat_at values written in (start, end)."""
        return sorted({b for _, ok, b in self.samples if ok and start < b < end})

    def missing_between(self, start: float, end: float) -> int:
        return sum(1 for t, ok, _ in self.samples if start <= t <= end and not ok)


def start_of(ledger, jid: str) -> float:
    return next(when for j, _, kind, when in ledger.entries() if j == jid and kind == "start")


def assert_stack_reported(worker) -> None:
    log = worker.stdout()
    assert "burn_cpu" in log and 'File "' in log, \
        f"the blocking greenlet's stack is not in the log\n{worker.tail()}"


def test_cpu_bound_job_interrupted_by_its_timeout(fleet, ledger, redis_client, report):
    spin_s = scaled(3.0, 6.0)
    try:
        worker = fleet.spawn(*worker_args("--job-timeout", "1"), name="spinner")
        probe = HeartbeatProbe(redis_client, fleet.identity_of(worker))
        jid = fj.Spin.enqueue(spin_s)

        def settled() -> bool:
            probe.sample()
            return redis_client.zcard(KEYS.retries("default")) > 0 or jid in ledger.ended()

        fleet.wait(settled, spin_s + 10, "the spinning job to be interrupted or to end",
                   must_run=[worker], interval=0.02)
        started = start_of(ledger, jid)
        ended = jid in ledger.ended()
        entries = [ujson.loads(m) for m in redis_client.zrange(KEYS.retries("default"), 0, -1)]
        stopped = entries[0]["failed_at"] if entries else \
            next(w for j, _, kind, w in ledger.entries() if j == jid and kind == "end")
        beats = probe.beats_between(started + 0.1, stopped)  # written while it spun
        report(f"CPU-bound job ({spin_s:g} s pure-Python spin, --job-timeout 1, heartbeat "
               f"TTL {TTL:g} s, {len(beats)} beats during the spin)",
               0 if ended or entries else 1, 0, 1, 1)

        # the job was interrupted, well before its spin would have ended
        assert not ended, "the job spun to its end: nothing interrupted it"
        assert len(entries) == 1, entries
        entry = entries[0]
        assert entry["jid"] == jid and entry["error_class"] == "JobTimeout"
        assert entry["attempt"] == 1  # the retry path, not the dead set
        assert entry["failed_at"] - started < spin_s - 0.5, entry["failed_at"] - started
        assert redis_client.zcard(KEYS.dead("default")) == 0
        # the heartbeat kept beating while the job spun
        assert beats, f"no heartbeat during the spin: {probe.samples[-20:]}"
        assert probe.missing_between(started, stopped) == 0
        assert_stack_reported(worker)

        time.sleep(0.5)
        assert worker.running
        fleet.stop([worker])
        assert_no_worker_state(redis_client)
        assert redis_client.zcard(KEYS.retries("default")) == 1  # the retry is kept for later
    finally:
        fleet.kill_all()


def test_cpu_bound_job_longer_than_the_heartbeat_ttl(fleet, ledger, redis_client, report):
    spin_s = scaled(3.0, 8.0)  # longer than the 2 s TTL; no job timeout
    try:
        spinner = fleet.spawn(*worker_args(), name="spinner")
        probe = HeartbeatProbe(redis_client, fleet.identity_of(spinner))
        watcher = fleet.spawn(*worker_args(), name="watcher")  # recovers orphans every 0.5 s
        fleet.identity_of(watcher)
        jid = fj.Spin.enqueue(spin_s)
        fleet.wait(lambda: jid in ledger.started(), 10, "the spin to start",
                   must_run=[spinner, watcher])
        owner = next(pid for j, pid, kind, _ in ledger.entries() if j == jid)
        assert owner in (spinner.pid, watcher.pid)
        if owner == watcher.pid:  # whichever took it spins; the other one watches
            spinner, watcher = watcher, spinner
            probe = HeartbeatProbe(redis_client, fleet.identity_of(spinner))

        def ended() -> bool:
            probe.sample()
            return jid in ledger.ended()

        fleet.wait(ended, spin_s + 10, "the spin to end", must_run=[spinner, watcher],
                   interval=0.02)
        time.sleep(0.5)  # room for a (wrong) second run by the watcher
        started = start_of(ledger, jid)
        finished = next(w for j, _, kind, w in ledger.entries() if j == jid and kind == "end")
        beats = probe.beats_between(started, finished)
        gaps = [b - a for a, b in zip([started, *beats], [*beats, finished])]
        lost, dup = ledger.lost_and_dup([jid])
        report(f"CPU-bound job longer than the heartbeat TTL ({spin_s:g} s spin > TTL {TTL:g} s, "
               f"{len(beats)} beats, longest gap {max(gaps):.2f} s)", lost, dup, 1, 1)

        assert (lost, dup) == (0, 0), "the watcher took the spinning job for an orphan"
        assert probe.missing_between(started, finished) == 0, "the heartbeat lapsed"
        assert max(gaps) < TTL, gaps
        assert len(beats) >= int(spin_s / STATS_INTERVAL) // 2, beats
        assert_stack_reported(spinner)
        assert "recovered" not in watcher.stdout()
        fleet.wait(lambda: reserved_count(redis_client) == 0 and redis_client.llen(QUEUE) == 0,
                   10, "the ack", must_run=[spinner, watcher])
        fleet.stop([spinner, watcher])
        assert_no_worker_state(redis_client)
        assert redis_client.zcard(KEYS.retries("default")) == 0
        assert redis_client.zcard(KEYS.dead("default")) == 0
    finally:
        fleet.kill_all()

"""The supervisor preempts CPU-bound user code, reports it once, and enforces deadlines."""

from __future__ import annotations

import logging
import time

import gevent
import pytest

from jiggler_gevent.errors import JobTimeout
from jiggler_gevent.server.supervisor import Supervisor, supported

pytestmark = pytest.mark.skipif(not supported(), reason="needs POSIX signals and pthread_kill")


def spin(seconds: float) -> None:
    """Pure-Python CPU work that never yields to the hub."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1


@pytest.fixture
def supervisor():
    sup = Supervisor(threshold=0.2)
    sup.start()
    try:
        yield sup
    finally:
        sup.stop()


def test_other_greenlets_keep_running_while_a_job_spins(supervisor, caplog):
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.02)

    def job():
        supervisor.enter(None)
        try:
            spin(1.5)
        finally:
            supervisor.leave()

    background = gevent.spawn(ticker)
    gevent.sleep(0.05)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jiggler_gevent.server.supervisor"):
        gevent.spawn(job).join(timeout=10)
    background.kill()
    during = [t for t in ticks if started + 0.3 < t < started + 1.4]
    assert len(during) >= 2, f"the hub ran only {len(during)} times during a 1.5 s spin"
    assert supervisor.preemptions >= 2
    reports = [r for r in caplog.records if "is blocking it" in r.getMessage()]
    assert len(reports) == 1, "the stall is reported once per job"
    assert "spin" in reports[0].getMessage(), "the report carries the blocking stack"


def test_a_spinning_job_past_its_deadline_gets_job_timeout(supervisor):
    outcome = {}

    def job():
        supervisor.enter(0.5)
        try:
            spin(5)
            outcome["result"] = "finished"
        except JobTimeout as exc:
            outcome["result"] = exc
        finally:
            supervisor.leave()

    started = time.monotonic()
    gevent.spawn(job).join(timeout=10)
    elapsed = time.monotonic() - started
    assert isinstance(outcome["result"], JobTimeout)
    assert outcome["result"].seconds == 0.5
    assert elapsed < 2.0, f"interrupted only after {elapsed:.2f}s"


def test_code_outside_a_job_is_reported_but_never_interrupted(supervisor, caplog):
    with caplog.at_level(logging.WARNING, logger="jiggler_gevent.server.supervisor"):
        gevent.spawn(spin, 0.8).join(timeout=10)
    assert supervisor.preemptions == 0
    assert any("is blocking it" in r.getMessage() for r in caplog.records)

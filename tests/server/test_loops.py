"""The background loops never die of an unexpected error: they log it with its
traceback, back off, and go on (a dead heartbeat loop would get a live process's jobs
recovered by others; a dead poller would leave retries waiting forever)."""

from __future__ import annotations

import gevent

from jiggler_gevent.server import loop as loop_module
from jiggler_gevent.server.loop import IntervalLoop


class Flaky(IntervalLoop):
    what = "flaky step"

    def __init__(self, failures: list) -> None:
        super().__init__()
        self.failures = failures
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.failures:
            raise self.failures.pop(0)

    def interval(self) -> float:
        return 0.01


def test_interval_loop_survives_any_error(monkeypatch, caplog):
    monkeypatch.setattr(loop_module, "Backoff", lambda **_: _NoWait())
    flaky = Flaky([KeyError("surprise"), ValueError("again")])
    runner = gevent.spawn(flaky.run)
    try:
        deadline = gevent.get_hub().loop.now() + 5
        while flaky.steps < 4 and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.01)
    finally:
        flaky.stop()
        runner.join(timeout=5)
    assert runner.dead and runner.successful()
    assert flaky.steps >= 4  # went on after both errors
    assert "flaky step failed unexpectedly" in caplog.text
    assert "KeyError: 'surprise'" in caplog.text and "ValueError: again" in caplog.text


def test_monitor_loop_survives_any_error(make_launcher, caplog):
    launcher = make_launcher(stats_interval=0.05)
    monitor = launcher.monitor
    beats = []
    beat_once = monitor.beat_once

    def beat_fails_once():
        beats.append(1)
        if len(beats) == 1:
            raise TypeError("unexpected")
        return beat_once()

    monitor.beat_once = beat_fails_once
    runner = gevent.spawn(monitor.run)
    try:
        deadline = gevent.get_hub().loop.now() + 5
        while len(beats) < 3 and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.01)
    finally:
        monitor.stop()
        runner.join(timeout=5)
    assert len(beats) >= 3 and runner.successful()
    assert "heartbeat failed unexpectedly" in caplog.text and "TypeError: unexpected" in caplog.text


class _NoWait:
    def next_delay(self) -> float:
        return 0.0

    def reset(self) -> None:
        pass

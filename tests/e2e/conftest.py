"""Fixtures of the end-to-end tests: worker subprocesses, the ledger, scenario lines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .procs import Ledger, WorkerProcess


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@contextlib.contextmanager
def worker_spawner(workdir: Path, ledger: Ledger,
                   default_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn(*args, name=..., url=..., require=True, env=None)``: a started worker on
    ``url`` (else ``default_url``) that writes to ``ledger``; ``require`` adds
    ``-r jobs_fixture``, ``env`` adds variables to its environment. Every worker
    spawned is killed (by its PID) on leaving. Used by ``spawn_worker`` and by the
    fixtures of ``tests/cluster``."""
    workers: list[WorkerProcess] = []

    def spawn(*args: str, name: str | None = None, url: str | None = None,
              require: bool = True, env: dict | None = None) -> WorkerProcess:
        worker = WorkerProcess(list(args), workdir=workdir, redis_url=url or default_url,
                               ledger=ledger.path, name=name or f"worker{len(workers) + 1}",
                               require=require)
        worker.env.update(env or {})
        workers.append(worker)
        return worker.start()

    try:
        yield spawn
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture
def spawn_worker(tmp_path, redis_url, ledger):
    """``spawn_worker(*args, name=..., url=..., require=True, env=None)``: a started worker
    (``env`` adds variables to its environment).

    Every worker spawned is killed (by its PID) at teardown if it is still running.
    """
    with worker_spawner(tmp_path, ledger, redis_url) as spawn:
        yield spawn


@pytest.fixture
def report(capsys):
    """``report(scenario, lost, dup, n, in_flight)``: print the one scenario line,
    past pytest's capture so it shows in the run's output."""

    def write(scenario: str, lost: int, dup: int, n: int, in_flight: int) -> str:
        line = f"{scenario}: lost {lost} / dup {dup} of {n} (in flight at fault: {in_flight})"
        with capsys.disabled():
            print(f"\n{line}", flush=True)
        return line

    return write

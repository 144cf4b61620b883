"""Helpers of the end-to-end tests: a ``bin/jiggler-gevent`` subprocess with a hang
guard, waiting with a deadline, and the job ledger."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from .jobs_fixture import LEDGER_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
BIN = REPO_ROOT / "bin" / "jiggler-gevent"
HANG_DUMP_WAIT_S = 1.0


def worker_env(ledger: Optional[Path] = None) -> dict:
    """The environment of a worker: our jobs module importable, no stray JIGGLER_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JIGGLER_") and k != "REDIS_URL"}
    paths = [str(E2E_DIR), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if ledger is not None:
        env[LEDGER_ENV] = str(ledger)
    return env


class WorkerProcess:
    """One ``bin/jiggler-gevent`` process, started by us and killed by its PID.

    stdout/stderr go to files in ``workdir`` (no pipe to fill up). On a hang the
    process first gets SIGTTIN, so it logs every greenlet's stack to its stdout,
    then SIGKILL; the test fails with the tail of that output.
    """

    def __init__(self, args: list[str], *, workdir: Path, redis_url: Optional[str] = None,
                 ledger: Optional[Path] = None, name: str = "worker", require: bool = True) -> None:
        self.name = name
        self.workdir = workdir
        self.argv = [sys.executable, str(BIN)]
        if require:
            self.argv += ["-r", "jobs_fixture"]
        if redis_url is not None:
            self.argv += ["--redis-url", redis_url]
        self.argv += list(args)
        self.env = worker_env(ledger)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> WorkerProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         cwd=str(self.workdir))
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def send(self, signum: int) -> None:
        if self.running:
            os.kill(self.proc.pid, signum)

    def wait_exit(self, timeout: float) -> float:
        """Wait for the exit; returns the seconds waited. On a hang: dump, kill, fail."""
        started = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.dump_and_kill()
            pytest.fail(f"{self.name} (pid {self.pid}) did not exit within {timeout}s\n"
                        f"{self.tail()}")
        return time.monotonic() - started

    def dump_and_kill(self) -> None:
        """SIGTTIN (the worker logs its greenlet stacks), then SIGKILL."""
        if self.running:
            self.send(signal.SIGTTIN)
            time.sleep(HANG_DUMP_WAIT_S)
        self.kill()

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def tail(self, lines: int = 80) -> str:
        out = "\n".join(self.stdout().splitlines()[-lines:])
        err = "\n".join(self.stderr().splitlines()[-lines:])
        return f"--- {self.name} stdout (tail) ---\n{out}\n--- {self.name} stderr (tail) ---\n{err}"

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               worker: Optional[WorkerProcess] = None, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; on timeout dump the worker's stacks and fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if worker is not None and worker.proc is not None and not worker.running:
            pytest.fail(f"{worker.name} exited ({worker.returncode}) while waiting for {what}\n"
                        f"{worker.tail()}")
        if time.monotonic() > deadline:
            detail = ""
            if worker is not None:
                worker.dump_and_kill()
                detail = "\n" + worker.tail()
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


class Ledger:
    """The ``<jid> <pid> start|end <time>`` lines the jobs append."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[tuple[str, int, str, float]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.split("\n")[:-1]:  # the last piece may be a line being written
            jid, pid, kind, when = line.split()
            out.append((jid, int(pid), kind, float(when)))
        return out

    def counts(self) -> tuple[collections.Counter, collections.Counter]:
        starts, ends = collections.Counter(), collections.Counter()
        for jid, _, kind, _ in self.entries():
            (starts if kind == "start" else ends)[jid] += 1
        return starts, ends

    def ended(self) -> set[str]:
        return {jid for jid, _, kind, _ in self.entries() if kind == "end"}

    def started(self) -> set[str]:
        return {jid for jid, _, kind, _ in self.entries() if kind == "start"}

    def in_flight(self) -> int:
        starts, ends = self.counts()
        return sum(1 for jid in starts if starts[jid] > ends[jid])

    def lost_and_dup(self, jids) -> tuple[int, int]:
        """lost: jobs never ended; dup: extra starts."""
        starts, ends = self.counts()
        lost = sum(1 for jid in jids if ends[jid] == 0)
        dup = sum(max(0, starts[jid] - 1) for jid in jids)
        return lost, dup

"""Helpers of the fault suite: the scale, a fleet of worker processes with one hang
guard for all of them, and reading a worker's state from Redis and the ledger.

``JIGGLER_FAULTS_SCALE=long`` (``make faults``) runs every scenario with more jobs
and more faults; without it each scenario is short enough for every ``make test``.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

import pytest
import redis
import ujson
from e2e.procs import E2E_DIR, HANG_DUMP_WAIT_S, REPO_ROOT, Ledger, WorkerProcess

from jiggler_gevent.keys import Keys

from .faults_jobs import NOTES_ENV

SCALE_ENV = "JIGGLER_FAULTS_SCALE"
LONG = os.environ.get(SCALE_ENV, "short").strip().lower() == "long"
FAULTS_DIR = Path(__file__).resolve().parent
KEYS = Keys()
QUEUE = KEYS.queue("default")

# pytest-timeout, the last hang guard (the fleet's own waits fail first, with stacks)
TEST_TIMEOUT_S = 900 if LONG else 120


def scaled(short, long):
    """``long`` under JIGGLER_FAULTS_SCALE=long, else ``short``."""
    return long if LONG else short


def worker_pythonpath() -> str:
    paths = [str(FAULTS_DIR), str(E2E_DIR), str(REPO_ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(paths)


class Fleet:
    """The worker processes of one test, started with ``-r faults_jobs``.

    :meth:`wait` is the hang guard of every wait: on timeout (or when a worker that
    must keep running exits) every worker still running gets SIGCONT and SIGTTIN
    (it logs its greenlet stacks), then SIGKILL, and the test fails with their logs.
    :meth:`kill_all` (in each test's ``finally``) kills them by PID.
    """

    def __init__(self, spawn_worker: Callable[..., WorkerProcess], ledger: Ledger,
                 client: redis.Redis, notes: Path) -> None:
        self._spawn = spawn_worker
        self.ledger = ledger
        self.client = client
        self.notes = notes
        self.workers: list[WorkerProcess] = []

    def spawn(self, *args: str, name: Optional[str] = None) -> WorkerProcess:
        worker = self._spawn("-r", "faults_jobs", *args, require=False,
                             name=name or f"worker{len(self.workers) + 1}",
                             env={"PYTHONPATH": worker_pythonpath(),
                                  NOTES_ENV: str(self.notes)})
        self.workers.append(worker)
        return worker

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.running]

    def logs(self, lines: int = 60) -> str:
        return "\n".join(w.tail(lines) for w in self.workers)

    def dump_and_kill_all(self) -> None:
        alive = self.running()
        for worker in alive:
            worker.send(signal.SIGCONT)  # a frozen worker cannot dump its stacks
            worker.send(signal.SIGTTIN)
        if alive:
            time.sleep(HANG_DUMP_WAIT_S)
        self.kill_all()

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.running:
                worker.send(signal.SIGCONT)
            worker.kill()

    def fail(self, message: str) -> None:
        try:
            state = redis_state(self.client)
        except Exception as exc:  # the state is a help, never the failure itself
            state = f"(could not read the Redis state: {exc!r})"
        self.dump_and_kill_all()
        pytest.fail(f"{message}\nRedis: {state}\n{self.logs()}")

    def wait(self, predicate: Callable[[], object], timeout: float, what: str,
             must_run: Iterable[WorkerProcess] = (), interval: float = 0.01) -> float:
        """Poll until true; returns the seconds waited. Hang guard as above."""
        must_run = list(must_run)
        started = time.monotonic()
        while not predicate():
            for worker in must_run:
                if not worker.running:
                    self.fail(f"{worker.name} (pid {worker.pid}) exited ({worker.returncode}) "
                              f"while waiting for {what}")
            if time.monotonic() - started > timeout:
                self.fail(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)
        return time.monotonic() - started

    def stop(self, workers: Optional[Iterable[WorkerProcess]] = None,
             timeout: float = 20) -> None:
        """TERM the workers (default: every one running); each must exit 0 in time."""
        workers = list(self.running() if workers is None else workers)
        for worker in workers:
            worker.send(signal.SIGCONT)
            worker.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                self.fail(f"{worker.name} (pid {worker.pid}) did not exit within {timeout}s "
                          "of TERM")
            if worker.returncode != 0:
                self.fail(f"{worker.name} (pid {worker.pid}) exited {worker.returncode} on TERM")

    def identity_of(self, worker: WorkerProcess, timeout: float = 15) -> str:
        """The worker's identity, from the heartbeat hash that carries its pid."""
        found: list[str] = []

        def look() -> bool:
            found[:] = [i for i, pid in heartbeat_pids(self.client).items()
                        if pid == worker.pid]
            return bool(found)

        self.wait(look, timeout, f"the heartbeat of {worker.name}", must_run=[worker])
        return found[0]

    def assert_clean_logs(self) -> None:
        """No worker greenlet died, no traceback escaped (a killed worker's log may end
        anywhere, but it has no traceback either)."""
        for worker in self.workers:
            log = worker.stdout() + worker.stderr()
            assert "replacing it" not in log, f"a worker greenlet died\n{worker.tail()}"
            assert "Traceback" not in log, f"a traceback escaped\n{worker.tail()}"


def redis_state(client: redis.Redis) -> str:
    """A one-line summary of the keys a fault can leave behind."""
    reserved = {key.decode(): client.llen(key) for key in in_progress_keys(client)}
    queue = KEYS.queue_keys("default")
    dead = [ujson.loads(m) for m in client.zrange(queue.dead, 0, 4)]
    recoveries = len(list(client.scan_iter(match=queue.recoveries + "*")))
    return (f"queue {client.llen(QUEUE)}, reserved {reserved}, "
            f"reservations {client.hgetall(KEYS.reservations)}, "
            f"heartbeats {heartbeat_pids(client)}, retries {client.zcard(queue.retries)}, "
            f"scheduled {client.zcard(queue.scheduled)}, dead {client.zcard(queue.dead)} "
            f"{[(e.get('jid'), e.get('error_class')) for e in dead]}, "
            f"recoveries {recoveries}")


def heartbeat_pids(client: redis.Redis) -> dict[str, int]:
    """identity -> pid of every live heartbeat."""
    out = {}
    prefix = KEYS.process("")
    for key in client.scan_iter(match=prefix + "*"):
        pid = client.hget(key, "pid")
        if pid is not None:
            out[key.decode()[len(prefix):]] = int(pid)
    return out


def reserved_jids(client: redis.Redis, identity: str, queue: str = "default") -> list[str]:
    """The jids in a process's in-progress list."""
    return [ujson.loads(raw)["jid"]
            for raw in client.lrange(KEYS.in_progress(queue, identity), 0, -1)]


def in_progress_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="*:in_progress:*"))


def reserved_count(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in in_progress_keys(client))


class Tally:
    """The ledger read incrementally (only the bytes appended since the last look), so
    a test can poll it every few milliseconds without burning the CPU its workers need.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.path = ledger.path
        self._offset = 0
        self.starts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.ends: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.enders: dict[str, set[int]] = collections.defaultdict(set)  # jid -> pids

    def refresh(self) -> Tally:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self
        complete = data.rfind(b"\n") + 1  # the last piece may be a line being written
        self._offset += complete
        for line in data[:complete].decode().splitlines():
            jid, pid, kind, _ = line.split()
            if kind == "start":
                self.starts[int(pid)][jid] += 1
            else:
                self.ends[int(pid)][jid] += 1
                self.enders[jid].add(int(pid))
        return self

    def started_by(self, pid: int) -> set[str]:
        return set(self.refresh().starts[pid])

    def unfinished_by(self, pid: int) -> set[str]:
        """Jobs this process started (more often) than it ended."""
        self.refresh()
        starts, ends = self.starts[pid], self.ends[pid]
        return {jid for jid, n in starts.items() if n > ends[jid]}

    def ended_elsewhere(self, jids: Iterable[str], pid: int) -> bool:
        """Whether every one of ``jids`` has ended in some process other than ``pid``."""
        self.refresh()
        return all(self.enders[jid] - {pid} for jid in jids)


def assert_no_worker_state(client: redis.Redis, killed: Iterable[str] = ()) -> None:
    """Every worker exited cleanly: no reservation, no heartbeat, and no registry entry
    but those of ``killed`` processes that had nothing to recover (at-most-once: the
    requeuer prunes them after 10 heartbeat TTLs)."""
    assert in_progress_keys(client) == []
    assert client.hlen(KEYS.reservations) == 0, client.hgetall(KEYS.reservations)
    assert heartbeat_pids(client) == {}
    registered = {m.decode() for m in client.zrange(KEYS.processes, 0, -1)}
    assert registered <= set(killed), registered - set(killed)


def read_notes(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.split("\n")[:-1]]

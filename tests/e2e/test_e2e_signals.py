"""End to end: TERM (graceful and past the deadline), a second TERM, TSTP, TTIN."""

from __future__ import annotations

import json
import signal
import time

import pytest

from jiggler_gevent.keys import Keys

from . import jobs_fixture as jf
from .procs import wait_until

KEYS = Keys()
MODES = ["at-least-once", "at-most-once"]


def assert_no_worker_state(client) -> None:
    assert list(client.scan_iter(match="*:in_progress:*")) == []
    assert list(client.scan_iter(match=KEYS.process("*"))) == []
    assert list(client.scan_iter(match="*:lease:*")) == []
    assert client.zcard(KEYS.processes) == 0


def drain(spawn_worker, ledger, jids, mode: str, timeout: float = 30) -> None:
    """Run a second worker until every job has ended, then stop it."""
    worker = spawn_worker("-c", "20", "--mode", mode, name="drainer")
    wait_until(lambda: set(jids) <= ledger.ended(), timeout, "the second worker to drain", worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


@pytest.mark.parametrize("mode", MODES)
def test_term_under_load_loses_nothing(redis_client, spawn_worker, ledger, report, mode):
    n = 300
    jids = jf.Record.enqueue_bulk([[0.05] for _ in range(n)])
    worker = spawn_worker("-c", "20", "--mode", mode, "-t", "10")
    wait_until(lambda: len(ledger.ended()) >= 100, 30, "a third of the jobs to end", worker)
    worker.send(signal.SIGTERM)
    in_flight = ledger.in_flight()
    took = worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    assert took < 10, f"took {took:.1f}s to stop with 50 ms jobs"
    # a clean exit leaves no reservation and no heartbeat behind
    assert_no_worker_state(redis_client)
    assert ledger.in_flight() == 0  # every job it started, it finished
    done_by_first = len(ledger.ended())
    assert done_by_first < n, "the TERM came too late to test anything"

    drain(spawn_worker, ledger, jids, mode)
    lost, dup = ledger.lost_and_dup(jids)
    report(f"TERM under load ({mode}, -c 20, 50 ms jobs)", lost, dup, n, in_flight)
    assert (lost, dup) == (0, 0)
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert redis_client.get(KEYS.processed) == str(n).encode()


@pytest.mark.parametrize("mode", MODES)
def test_term_with_jobs_longer_than_the_timeout(redis_client, spawn_worker, ledger, report, mode):
    n = 10
    jids = jf.LongOnce.enqueue_bulk([[5] for _ in range(n)])
    worker = spawn_worker("-c", "10", "--mode", mode, "-t", "1")
    wait_until(lambda: len(ledger.started()) == n, 15, "every job to start", worker)
    worker.send(signal.SIGTERM)
    in_flight = ledger.in_flight()
    took = worker.wait_exit(10)
    assert worker.returncode == 0, worker.tail()
    assert took < 3.5, f"took {took:.1f}s to stop with -t 1"
    assert ledger.ended() == set()
    # every interrupted job is back on its queue, none reserved, none failed
    assert redis_client.llen(KEYS.queue("default")) == n
    assert redis_client.zcard(KEYS.retries("default")) == 0 and redis_client.zcard(KEYS.dead("default")) == 0
    assert_no_worker_state(redis_client)

    drain(spawn_worker, ledger, jids, mode)
    lost, dup = ledger.lost_and_dup(jids)
    report(f"TERM past -t 1 ({mode}, 5 s jobs)", lost, dup, n, in_flight)
    assert lost == 0
    assert dup <= in_flight


def test_second_term_hurries_the_exit(redis_client, spawn_worker, ledger, report):
    n = 5
    jids = jf.LongOnce.enqueue_bulk([[5] for _ in range(n)])
    worker = spawn_worker("-c", "5", "-t", "30")
    wait_until(lambda: len(ledger.started()) == n, 15, "every job to start", worker)
    worker.send(signal.SIGTERM)
    in_flight = ledger.in_flight()
    time.sleep(0.3)
    assert worker.running, "the first TERM should wait for the running jobs"
    worker.send(signal.SIGTERM)
    took = worker.wait_exit(10)
    assert worker.returncode == 0, worker.tail()
    assert took < 3.5, f"took {took:.1f}s after the second TERM"
    assert "second stop signal" in worker.stdout()
    assert redis_client.llen(KEYS.queue("default")) == n
    assert_no_worker_state(redis_client)

    drain(spawn_worker, ledger, jids, "at-least-once")
    lost, dup = ledger.lost_and_dup(jids)
    report("second TERM (5 s jobs, -t 30)", lost, dup, n, in_flight)
    assert lost == 0 and dup <= in_flight


def test_tstp_quiets_the_worker(redis_client, spawn_worker, ledger):
    worker = spawn_worker("-c", "5", "--stats-interval", "0.3", "--fetch-timeout", "0.2")
    first = jf.Record.enqueue()
    wait_until(lambda: first in ledger.ended(), 15, "a first job to run", worker)
    heartbeat = KEYS.process(redis_client.zrange(KEYS.processes, 0, -1)[0].decode())
    assert redis_client.hget(heartbeat, "quiet") == b"0"
    assert redis_client.hget(heartbeat, "pid") == str(worker.pid).encode()

    worker.send(signal.SIGTSTP)
    wait_until(lambda: redis_client.hget(heartbeat, "quiet") == b"1", 5,
               "the heartbeat to show quiet=1", worker)
    assert worker.running
    later = jf.Record.enqueue_bulk([[] for _ in range(5)])
    time.sleep(1.0)  # five fetch timeouts: a working worker would have run them
    assert ledger.started() == {first}
    assert redis_client.llen(KEYS.queue("default")) == 5
    assert redis_client.hget(heartbeat, "busy") == b"0"

    worker.send(signal.SIGTERM)
    worker.wait_exit(10)
    assert worker.returncode == 0, worker.tail()
    queued = [json.loads(raw)["jid"] for raw in redis_client.lrange(KEYS.queue("default"), 0, -1)]
    assert sorted(queued) == sorted(later)  # still there after the exit: not lost
    assert_no_worker_state(redis_client)


def test_ttin_logs_every_greenlet_stack(redis_client, spawn_worker):
    worker = spawn_worker("-c", "3")
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 15, "the first heartbeat", worker)
    worker.send(signal.SIGTTIN)
    wait_until(lambda: "jiggler.worker-2" in worker.stdout(), 5, "the stack dump", worker)
    out = worker.stdout()
    assert "greenlet stacks" in out
    for name in ("jiggler.worker-0", "jiggler.worker-1", "jiggler.monitor", "jiggler.poller"):
        assert name in out, name
    assert 'File "' in out  # real stack frames, not just names
    assert worker.running  # a dump does not stop the worker
    worker.send(signal.SIGINT)  # INT stops like TERM
    worker.wait_exit(10)
    assert worker.returncode == 0, worker.tail()
    assert worker.stderr().strip() == ""
    assert_no_worker_state(redis_client)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_while_the_app_loads_exits_cleanly(tmp_path, spawn_worker, redis_client, signum):
    """TERM or INT while the ``-r`` module is still importing (a slow Django setup, say):
    the worker ends at once with exit code 0 and one log line, not killed by the signal,
    and leaves nothing in Redis (it never started)."""
    marker = tmp_path / "loading"
    app = tmp_path / "slow_app.py"
    app.write_text("import pathlib, time\n"
                   f"pathlib.Path({str(marker)!r}).write_text('x')\n"
                   "time.sleep(30)\n")
    worker = spawn_worker("-r", str(app), require=False)
    wait_until(marker.exists, 15, "the app to start loading", worker)
    worker.send(signum)
    took = worker.wait_exit(10)
    assert worker.returncode == 0, worker.tail()
    assert took < 5
    assert f"{signal.Signals(signum).name} during startup" in worker.stdout()
    assert_no_worker_state(redis_client)


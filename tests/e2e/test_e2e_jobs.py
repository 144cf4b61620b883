"""End to end: real ``bin/jiggler-gevent`` processes run jobs exactly as promised."""

from __future__ import annotations

import json
import signal
import time

from jiggler_gevent.keys import Keys

from . import jobs_fixture as jf
from .procs import wait_until

KEYS = Keys()


def assert_no_worker_state(client) -> None:
    """Nothing a stopped worker should leave: no reservations, no heartbeat."""
    assert list(client.scan_iter(match="*:in_progress:*")) == []
    assert list(client.scan_iter(match=KEYS.process("*"))) == []
    assert list(client.scan_iter(match="*:lease:*")) == []
    assert client.zcard(KEYS.processes) == 0


def test_a_thousand_jobs_each_run_exactly_once(redis_client, spawn_worker, ledger, report):
    n = 1000
    jids = jf.Record.enqueue_bulk([[] for _ in range(n)])
    worker = spawn_worker("-c", "50")
    wait_until(lambda: len(ledger.ended()) >= n, 60, f"{n} jobs to end", worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()

    lost, dup = ledger.lost_and_dup(jids)
    report(f"{n} jobs at -c 50", lost, dup, n, 0)
    starts, ends = ledger.counts()
    assert set(starts) == set(jids)
    assert all(starts[jid] == 1 and ends[jid] == 1 for jid in jids)
    assert (lost, dup) == (0, 0)
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert redis_client.get(KEYS.processed) == str(n).encode()
    assert_no_worker_state(redis_client)


def test_failing_job_is_dead_after_exactly_three_attempts(redis_client, spawn_worker, ledger):
    jid = jf.AlwaysFails.enqueue()
    worker = spawn_worker("-c", "2", "--poll-interval", "0.2")
    wait_until(lambda: redis_client.zcard(KEYS.dead("default")) == 1, 20, "the job to die", worker)
    time.sleep(0.5)  # room for a (wrong) fourth attempt to show up
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()

    starts, ends = ledger.counts()
    assert starts == {jid: 3} and not ends
    (member,) = redis_client.zrange(KEYS.dead("default"), 0, -1)
    entry = json.loads(member)
    assert entry["jid"] == jid and entry["name"] == "e2e.always_fails"
    assert entry["attempt"] == 3
    assert entry["error_class"] == "RuntimeError"
    assert entry["error_message"] == "attempt 3 failed on purpose"
    assert entry["error_backtrace"]
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert redis_client.get(KEYS.failures) == b"3"
    assert_no_worker_state(redis_client)


def test_enqueue_in_runs_on_its_own_queue_after_the_delay(redis_client, spawn_worker, ledger):
    worker = spawn_worker("-q", "mail", "-c", "2", "--poll-interval", "0.2")
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 15, "the first heartbeat", worker)
    other = jf.Record.enqueue_in(0.5)  # due first, but on 'default', which this worker skips
    t0 = time.time()
    jid = jf.Mail.enqueue_in(1, "someone@example.com")
    scheduled = {q: [json.loads(m)["jid"] for m in redis_client.zrange(KEYS.scheduled(q), 0, -1)]
                 for q in ("mail", "default")}
    assert scheduled == {"mail": [jid], "default": [other]}  # each queue has its own set

    wait_until(lambda: jid in ledger.ended(), 10, "the mail job to run", worker)
    ran_at = next(when for j, _, kind, when in ledger.entries() if j == jid and kind == "start")
    assert t0 + 0.9 <= ran_at <= t0 + 3.0, f"ran {ran_at - t0:.2f}s after enqueue_in(1)"
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()

    assert other not in ledger.started()
    assert [json.loads(r)["jid"] for r in redis_client.lrange(KEYS.queue("default"), 0, -1)] == [other]
    assert redis_client.llen(KEYS.queue("mail")) == 0
    # the poller moved both: 'default' is in the registry though no worker listens to it
    assert redis_client.zcard(KEYS.scheduled("default")) == 0
    assert redis_client.zcard(KEYS.scheduled("mail")) == 0


def test_bad_payloads_are_dead_lettered_and_the_worker_keeps_going(redis_client, spawn_worker,
                                                                   ledger, tmp_path):
    canary = tmp_path / "pwned"
    bad = [
        b"{not json",
        b"[1, 2, 3]",
        b"\xff\xfe\x00 not utf-8",
        json.dumps({"name": "os.system", "args": [f"touch {canary}"]}).encode(),
        json.dumps({"name": "e2e.record", "args": "not a list"}).encode(),
        json.dumps({"name": "e2e.record", "args": [1, 2, 3, 4]}).encode(),
        json.dumps({"name": "e2e.record", "args": [], "attempt": "x"}).encode(),
        b'{"name": "e2e.record", "args": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ]
    redis_client.lpush(KEYS.queue("default"), *bad)
    good = jf.Record.enqueue()
    worker = spawn_worker("-c", "4")
    wait_until(lambda: good in ledger.ended() and redis_client.zcard(KEYS.dead("default")) == len(bad), 15,
               "the good job to run and the bad ones to be dead-lettered", worker)
    assert worker.running
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    assert not canary.exists()
    assert "Traceback" not in worker.stdout() and worker.stderr().strip() == ""
    assert ledger.started() == {good}
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert_no_worker_state(redis_client)

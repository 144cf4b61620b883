"""End to end: Redis faults (RELIABILITY.md, "Fault scenarios").

The promise under test: a dropped connection or a server restart is retried with
backoff, never kills a worker, never re-sends a non-idempotent command blindly, and
the worker resumes by itself. Each test runs a real ``bin/jiggler-gevent``, injects
the fault for real (restart, ``CLIENT KILL``, ``DEBUG SLEEP``, ``SCRIPT FLUSH``,
``maxmemory``), counts from the ledger (outside Redis) and prints one line
``<scenario>: lost X / dup Y of N (in flight at fault: Z)``.
"""

from __future__ import annotations

import random
import signal
import time

import pytest
import redis
import ujson
from redis.backoff import NoBackoff
from redis.retry import Retry

from jiggler_gevent import payload as _payload
from jiggler_gevent.keys import Keys

from . import fault_jobs as fj
from . import jobs_fixture as jf
from .procs import Ledger, WorkerProcess, wait_until

KEYS = Keys()
QUEUE = KEYS.queue("default")

# a second hang guard besides the ones of wait_until / wait_exit (pytest-timeout)
pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------


@pytest.fixture
def fresh_client(fresh_server, enqueue_to):
    """A client of this test's own server; ``Job.enqueue`` goes there too."""
    client = redis.Redis.from_url(fresh_server.url)
    enqueue_to(fresh_server.url)
    try:
        yield client
    finally:
        client.close()


def in_flight_jids(ledger: Ledger) -> set[str]:
    """Jobs that have started (as often as) more than they ended."""
    starts, ends = ledger.counts()
    return {jid for jid, count in starts.items() if count > ends[jid]}


def reserved_count(client: redis.Redis) -> int:
    """Jobs in every in-progress list."""
    return sum(client.llen(key) for key in client.scan_iter(match="*:in_progress:*"))


def wait_for_heartbeat(client: redis.Redis, worker: WorkerProcess) -> str:
    """The worker's identity, once its first heartbeat is in."""
    wait_until(lambda: client.zcard(KEYS.processes) > 0, 15, "the first heartbeat", worker)
    return client.zrange(KEYS.processes, 0, -1)[0].decode()


def assert_worker_survived(worker: WorkerProcess) -> None:
    """Still running; no worker greenlet died; no traceback escaped to the log."""
    assert worker.running, f"{worker.name} exited ({worker.returncode})\n{worker.tail()}"
    log = worker.stdout() + worker.stderr()
    assert "replacing it" not in log, f"a worker greenlet died\n{worker.tail()}"
    assert "Traceback" not in log, f"a traceback escaped\n{worker.tail()}"


def assert_retried_with_backoff(worker: WorkerProcess) -> None:
    """The fault was met, and handled by the backoff loops (not by luck)."""
    assert "retrying in" in worker.stdout(), f"the fault never reached the worker\n{worker.tail()}"


def assert_nothing_lost(worker: WorkerProcess, ledger: Ledger, report, scenario: str, jids,
                        hit: set) -> None:
    """Report the scenario's line; no job lost, only jobs in flight at the fault run twice,
    and the worker backed off instead of failing."""
    lost, dup = ledger.lost_and_dup(jids)
    report(scenario, lost, dup, len(jids), len(hit))
    assert lost == 0
    assert dup <= len(hit)
    assert_retried_with_backoff(worker)


def finish(worker: WorkerProcess, ledger: Ledger, client: redis.Redis, jids, timeout: float,
           what: str) -> None:
    """Wait (with a hang guard) for every job to end and every ack to land, the worker
    still running, then stop it with TERM."""
    wanted = set(jids)
    wait_until(lambda: wanted <= ledger.ended(), timeout, what, worker)
    wait_until(lambda: reserved_count(client) == 0 and client.llen(QUEUE) == 0, 10,
               "the last acks to land", worker)
    assert_worker_survived(worker)
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


# -- 1. server restart -----------------------------------------------------------------


@pytest.mark.fresh_server(persistent=True)
def test_server_restart_with_persistence(fresh_server, fresh_client, spawn_worker, ledger,
                                         report):
    n = 400
    worker = spawn_worker("-c", "20", "--socket-timeout", "2", "--fetch-timeout", "1",
                          url=fresh_server.url)
    try:
        wait_for_heartbeat(fresh_client, worker)
        jids = jf.Record.enqueue_bulk([[0.02] for _ in range(n)])
        wait_until(lambda: len(ledger.ended()) >= 60, 20, "the first jobs to end", worker)
        hit = in_flight_jids(ledger)
        fresh_server.stop()  # TERM: the append-only file keeps every acknowledged write
        hit |= in_flight_jids(ledger)
        ended_at_fault = len(ledger.ended())
        time.sleep(1.0)
        assert_worker_survived(worker)
        fresh_server.start()  # same port, same directory: the data comes back
        assert ended_at_fault < n, "the restart came too late to test anything"

        finish(worker, ledger, fresh_client, jids, 30, "every job to end after the restart")
        assert_nothing_lost(worker, ledger, report,
                            "Redis restart (persistent, -c 20, 20 ms jobs)", jids, hit)
    finally:
        worker.kill()


# -- 2. connection resets ----------------------------------------------------------------


def test_connection_resets(redis_client, redis_url, spawn_worker, ledger, report):
    n, ticks, tick_s = 500, 30, 0.1
    worker = spawn_worker("-c", "20")
    # one connection, used by this greenlet only; no retries, so a push is never doubled
    killer = redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0))
    try:
        wait_for_heartbeat(redis_client, worker)
        enqueuer = jf.Record.with_options()
        jobs = [enqueuer.build([0.01], {}) for _ in range(n)]
        jids = [job["jid"] for job in jobs]
        raw = [_payload.dumps(job) for job in jobs]
        batches = [raw[i::ticks] for i in range(ticks)]  # the jobs arrive during the resets
        kill = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        hit: set[str] = set()
        killed = 0
        for i, batch in enumerate(batches):
            started = time.monotonic()
            hit |= in_flight_jids(ledger)
            with killer.pipeline(transaction=False) as pipe:
                pipe.lpush(QUEUE, *batch)
                if i % 2 == 0:
                    # in the same read as the push: a blocked BLMOVE is served and its
                    # client killed before the reply leaves (a move whose reply is lost)
                    pipe.execute_command(*kill)
                replies = pipe.execute()
            if i % 2 == 0:
                killed += replies[-1]
            else:
                # while the jobs just pushed run, their acks and the next fetches fly
                time.sleep(random.uniform(0, 0.03))
                hit |= in_flight_jids(ledger)
                killed += killer.execute_command(*kill)
            hit |= in_flight_jids(ledger)
            time.sleep(max(0.0, started + tick_s - time.monotonic()))
        assert killed >= ticks // 2, f"only {killed} connections were killed in {ticks} rounds"
        assert_worker_survived(worker)

        finish(worker, ledger, redis_client, jids, 30, "every job to end after the resets")
        assert_nothing_lost(worker, ledger, report, f"connection resets ({ticks} x CLIENT KILL, "
                            f"{killed} killed, -c 20, 10 ms jobs)", jids, hit)
    finally:
        killer.close()
        worker.kill()


# -- 3. server stall longer than the socket timeout ---------------------------------------


def test_server_stall_longer_than_the_socket_timeout(redis_client, spawn_worker, ledger,
                                                     report):
    n, c, stall_s = 300, 10, 3
    worker = spawn_worker("-c", str(c), "--socket-timeout", "1", "--fetch-timeout", "0.5",
                          "--stats-interval", "0.2")
    try:
        identity = wait_for_heartbeat(redis_client, worker)
        heartbeat = KEYS.process(identity)
        jids = jf.Record.enqueue_bulk([[0.05] for _ in range(n)])
        # stall while jobs run, so their acks and the next fetch meet it
        wait_until(lambda: len(ledger.ended()) >= 10 and ledger.in_flight() >= c // 2, 20,
                   "jobs to be running", worker, interval=0.002)
        hit = in_flight_jids(ledger)
        redis_client.execute_command("DEBUG", "SLEEP", str(stall_s))  # the whole server
        stall_end = time.time()
        hit |= in_flight_jids(ledger)
        assert_worker_survived(worker)

        # heartbeats computed after the stall, while the queue still holds more jobs
        # than there are greenlets: every greenlet must be back at work
        busy: dict[float, int] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            queued = redis_client.llen(QUEUE)
            if queued <= c:
                break
            value, beat_at = redis_client.hmget(heartbeat, "busy", "beat_at")
            if beat_at is not None and float(beat_at) > stall_end:
                busy[float(beat_at)] = int(value)
            time.sleep(0.02)
        samples = [busy[at] for at in sorted(busy)]
        assert samples, "the queue drained before a heartbeat after the stall: nothing tested"
        assert c in samples, f"busy never got back to {c} with a full queue: {samples}"
        assert 0 not in samples, f"0 busy with a full queue after the stall: {samples}"

        finish(worker, ledger, redis_client, jids, 30, "every job to end after the stall")
        assert_nothing_lost(worker, ledger, report, f"server stall (DEBUG SLEEP {stall_s} > "
                            f"--socket-timeout 1, -c {c}, 50 ms jobs)", jids, hit)
    finally:
        worker.kill()


def test_processed_counter_is_exact_after_a_stall(redis_client, spawn_worker, ledger):
    n, c = 200, 10
    worker = spawn_worker("-c", str(c), "--socket-timeout", "0.5", "--fetch-timeout", "0.2",
                          "--stats-interval", "0.1")
    try:
        wait_for_heartbeat(redis_client, worker)
        jids = jf.Record.enqueue_bulk([[0.02] for _ in range(n)])
        wait_until(lambda: len(ledger.ended()) >= 20 and ledger.in_flight() >= c // 2, 20,
                   "jobs to be running", worker, interval=0.002)
        # heartbeats with counts in them are sent, and time out, during the stall
        redis_client.execute_command("DEBUG", "SLEEP", "1.5")
        finish(worker, ledger, redis_client, jids, 30, "every job to end after the stall")
        assert ledger.lost_and_dup(jids) == (0, 0)
        processed = int(redis_client.get(KEYS.processed) or 0)
        assert processed == n, f"processed counter {processed} for {n} jobs run once each"
    finally:
        worker.kill()


# -- 4. script cache flushed --------------------------------------------------------------


def script_loads(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    entry = stats.get("cmdstat_script|load") or stats.get("script|load") or {}
    return int(entry.get("calls", 0))


def test_script_flush_during_scheduling(redis_client, spawn_worker, ledger, report):
    n = 300
    worker = spawn_worker("-c", "20", "--poll-interval", "0.2")
    try:
        wait_for_heartbeat(redis_client, worker)
        loads_before = script_loads(redis_client)
        jids = [jf.Record.enqueue_in(0.5 + 1.5 * i / (n - 1)) for i in range(n)]
        hit: set[str] = set()
        flushes = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            hit |= in_flight_jids(ledger)
            redis_client.script_flush()
            flushes += 1
            time.sleep(0.1)
        assert_worker_survived(worker)

        finish(worker, ledger, redis_client, jids, 20, "every scheduled job to end")
        time.sleep(0.3)  # room for a (wrong) second run to show up
        lost, dup = ledger.lost_and_dup(jids)
        report(f"SCRIPT FLUSH x{flushes} during scheduling (poll 0.2 s)", lost, dup, n, len(hit))
        starts, ends = ledger.counts()
        assert (lost, dup) == (0, 0)
        assert all(starts[jid] == 1 and ends[jid] == 1 for jid in jids)
        assert redis_client.zcard(KEYS.scheduled("default")) == 0
        assert redis_client.zcard(KEYS.dead("default")) == 0
        log = worker.stdout() + worker.stderr()
        assert "Traceback" not in log and " ERROR " not in log, worker.tail()
        # the worker really met NOSCRIPT and loaded its scripts again, many times
        assert script_loads(redis_client) - loads_before >= 5
    finally:
        worker.kill()


# -- 5. Redis out of memory ---------------------------------------------------------------


@pytest.mark.fresh_server(extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"))
def test_warns_when_redis_may_evict_jobs(fresh_server, spawn_worker):
    worker = spawn_worker("-c", "2", url=fresh_server.url)
    try:
        wait_until(lambda: "maxmemory-policy" in worker.stdout(), 10, "the eviction warning",
                   worker)
        line = next(x for x in worker.stdout().splitlines() if "maxmemory-policy" in x)
        assert " WARNING " in line and "allkeys-lru" in line and "noeviction" in line
        worker.send(signal.SIGTERM)
        worker.wait_exit(15)
        assert worker.returncode == 0, worker.tail()
    finally:
        worker.kill()


def is_oom(exc: BaseException) -> bool:
    """redis-py maps "-OOM ..." to OutOfMemoryError (and drops the "OOM" prefix)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and "OOM" in str(exc))


def fill_memory(client: redis.Redis) -> None:
    """A junk key that takes the server to ``maxmemory``, so writes fail with OOM.

    A write is refused only when memory is *already* over the limit (its own
    arguments count), so writes alone stop just below it: append to the junk key
    until one is refused, then set ``maxmemory`` a little below what is used, so
    the small ups and downs of client buffers cannot let a write through.
    """
    chunk = b"x" * (64 * 1024)
    for _ in range(1000):
        try:
            client.append("junk", chunk)
        except redis.ResponseError as exc:
            assert is_oom(exc), exc
            break
    else:
        pytest.fail("maxmemory was never reached")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 256 * 1024)
    with pytest.raises(redis.ResponseError) as probe:
        client.set("probe", b"1")
    assert is_oom(probe.value), probe.value


@pytest.mark.fresh_server(extra_args=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction"))
def test_out_of_memory(fresh_server, fresh_client, spawn_worker, ledger, report):
    client, m, sleep = fresh_client, 5, 1.5
    worker = spawn_worker("-c", "10", "--poll-interval", "0.2", "--stats-interval", "0.5",
                          "-r", "fault_jobs", url=fresh_server.url, require=False)
    try:
        wait_for_heartbeat(client, worker)
        assert "maxmemory-policy" not in worker.stdout()  # noeviction: no warning
        retried = fj.FailOnceSlow.enqueue_bulk([[sleep] for _ in range(m)])
        buried = fj.DieSlow.enqueue_bulk([[sleep] for _ in range(m)])
        jids = retried + buried
        wait_until(lambda: ledger.started() >= set(jids), 10, "every job to start", worker)
        in_flight = len(in_flight_jids(ledger))
        fill_memory(client)

        # producers get a clear error, nothing is dropped silently
        with pytest.raises(redis.ResponseError) as single:
            jf.Record.enqueue()
        with pytest.raises(redis.ResponseError) as bulk:
            jf.Record.enqueue_bulk([[] for _ in range(3)])
        assert is_oom(single.value) and is_oom(bulk.value), (single.value, bulk.value)

        # every job fails while Redis refuses writes: its retry/dead write fails, so it
        # must not be acknowledged; it stays in the in-progress list
        wait_until(lambda: worker.stdout().count("could not store a failed job") >= 2 * m,
                   sleep + 10, "the failed jobs' writes to be refused", worker)
        last_start = max(when for jid, _, kind, when in ledger.entries() if kind == "start")
        time.sleep(max(0.0, last_start + sleep + 0.2 - time.time()))  # every job has raised
        for _ in range(10):
            assert reserved_count(client) == 2 * m
            assert client.zcard(KEYS.retries("default")) == 0 and client.zcard(KEYS.dead("default")) == 0
            assert client.llen(QUEUE) == 0
            time.sleep(0.1)
        assert_worker_survived(worker)

        client.delete("junk")
        late = jf.Record.enqueue()  # enqueueing works again, and the worker takes it
        wait_until(lambda: client.zcard(KEYS.dead("default")) == m, 20, "the dead entries to land",
                   worker)
        finish(worker, ledger, client, retried + [late], 20,
               "the retried jobs to run again after the memory came back")

        starts, ends = ledger.counts()
        dead = {ujson.loads(member)["jid"] for member in client.zrange(KEYS.dead("default"), 0, -1)}
        lost = sum(1 for jid in retried + [late] if ends[jid] == 0) + \
            sum(1 for jid in buried if jid not in dead)
        expected_starts = {**{jid: 2 for jid in retried}, **{jid: 1 for jid in buried}, late: 1}
        dup = sum(max(0, starts[jid] - count) for jid, count in expected_starts.items())
        report(f"Redis OOM (noeviction, {2 * m} failing jobs + 1 after)", lost, dup,
               2 * m + 1, in_flight)
        assert lost == 0
        assert dup <= in_flight
        assert dead == set(buried)
        assert client.zcard(KEYS.retries("default")) == 0
        assert all(starts[jid] == 2 and ends[jid] == 1 for jid in retried)
        assert all(starts[jid] == 1 and ends[jid] == 0 for jid in buried)
    finally:
        worker.kill()

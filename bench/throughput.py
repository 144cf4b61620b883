"""jiggler-gevent against a raw redis-py + gevent BRPOP loop, in one run (``make bench``).

Usage: ``.venv/bin/python bench/throughput.py [--quick] [--repeat N] [--only noop,io,...]``

Starts its own throwaway server (jiggler_gevent.devserver.LocalServer) unless
``--redis-url`` or ``$REDIS_URL`` names one; then only keys under a random namespace
are written and deleted. Sections (``--only`` picks some):

* ``enqueue``: ``Job.enqueue`` one at a time and ``enqueue_bulk``, against raw redis-py
  LPUSH one at a time and pipelined in chunks of 1000 of payloads encoded before the
  clock starts (the raw column is the Redis floor).
* ``latency``: enqueue->start on an idle worker (``-c 10``): ``bench_jobs.Latency`` jobs
  enqueued one at a time, 5 ms apart (500 per repeat, pooled over the repeats); each
  records ``time.time()`` when it starts next to the ``time.time()`` taken just before
  its enqueue call. Both modes, and the raw loop (10 greenlets) doing the same.
* ``noop``: steady throughput of noop jobs at ``-c 10, 100, 1000``, both modes, against
  the raw loop (``raw_brpop.py``: N greenlets looping ``BRPOP key 1``, nothing else).
* ``io``: jobs doing one blocking ``urllib.request`` GET against a local gevent pywsgi
  endpoint (``http_endpoint.py``, its own process) that answers in 100 ms, at
  ``-c 100, 500`` (at-least-once), against the raw loop doing BRPOP + the same GET.
  Efficiency = jobs/s / (concurrency / 0.1 s). The endpoint's CPU share is reported,
  to show it is not what limits the rate.
* ``cpu``: ``fib(25)`` per job at ``-c 10``: the raw loop, the worker with the
  supervisor on (default ``--watchdog-threshold 0.5``; this is also the ``-p 1`` run) and
  off (``--watchdog-threshold 0``), and ``-p 2``.

How a throughput run works: the worker (or raw loop) starts on an empty queue; once it
is up (its heartbeat is registered; the raw loop says so), the bench pushes enough
pre-encoded payloads that the queue cannot run dry, then only polls LLEN (and the
in-progress lists) every 20 ms. The rate is the number of jobs that left the queue
in a window that starts ``--warmup`` seconds (1) after the push ended, divided by its
length; then the process is stopped (SIGTERM) and the bench checks that every job
is either processed (the worker's counter, or the raw loop's count) or back in the
queue. CPU per job (the process tree's /proc, the server's INFO cpu) is measured
over the same window.

Every throughput scenario runs ``--repeat`` times (default 3), interleaved, so each
ratio is taken between runs a few seconds apart; the table shows the median of the
per-repeat ratios and their range. Results go to bench/results/throughput.json
(``--quick``: throughput-quick.json; ``--profile``, ``--only``: -profile, -partial),
with the targets of issue 6 marked PASS/MISS. Exit status: 1 when a run lost or failed
jobs or a process misbehaved (and with ``--strict`` also when a target is missed).

``--profile DIR`` records every throughput run with py-spy (collapsed stacks);
``bench/profile_summary.py DIR/*.txt`` says where the CPU time goes. ``--worker-args``
passes extra options to every worker (experiments). On a shared machine jobs/s swing
with the load average (printed); the paired ratios much less.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Optional

import gevent
import redis
import ujson

import jiggler_gevent
from jiggler_gevent import connection
from jiggler_gevent import payload as _payload
from jiggler_gevent.devserver import LocalServer
from jiggler_gevent.job import Enqueuer, forget_registered_queues
from jiggler_gevent.keys import DEFAULT_QUEUE, Keys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import workloads  # noqa: E402
from bench_jobs import Fib, HttpGet, Latency, Noop  # noqa: E402

WORKER_BIN = os.path.join(ROOT, "bin", "jiggler-gevent")
JOBS_FILE = os.path.join(HERE, "bench_jobs.py")
RAW_BIN = os.path.join(HERE, "raw_brpop.py")
ENDPOINT_BIN = os.path.join(HERE, "http_endpoint.py")
RESULTS_DIR = os.path.join(HERE, "results")
PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")

ALO, AMO = "at-least-once", "at-most-once"
MODES = (ALO, AMO)
SECTIONS = ("enqueue", "latency", "noop", "io", "cpu")
POLL_S = 0.02
READY_TIMEOUT_S = 30.0
STALL_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 40.0  # the worker's own shutdown timeout is 25 s
SETTLE_S = 0.2  # after the heartbeat: the worker greenlets are spawned and fetching
PUSH_CHUNK = 1000
IO_DELAY_S = 0.1
# push this many times the jobs the rate needs: noop payloads are many (memory), the
# others few, and the CPU-bound rates swing with the machine's load
SIZING_MARGIN = {"noop": 1.5, "io": 2.0, "cpu": 3.0}
# first guesses of the rates (jobs/s), to size the first push; later pushes use the
# rates measured in this run. Too low a guess only shortens that run's window.
GUESS = {"noop ours": 100_000, "noop raw": 30_000, "fib": 150}
STALL_MESSAGE = "the hub has not run for"  # the supervisor's warning

# targets (issue 6)
TARGET_NOOP_RATIO = 1.0
TARGET_IO_RATIO = 0.95
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
TARGET_RSS_RATIO = 1.2
TARGET_BULK_RATE = 100_000


class BenchError(RuntimeError):
    pass


# processes ----------------------------------------------------------------------------


def rss_kb(pid: int) -> Optional[int]:
    """VmRSS of a process in kB (Linux), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children", encoding="ascii") as f:
                    todo.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def tree_cpu(pids: list[int]) -> Optional[float]:
    values = [cpu_seconds(p) for p in pids]
    return None if any(v is None for v in values) else sum(values)


def machine_cpu() -> Optional[tuple[float, float]]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(fields[:8]) - fields[3] - fields[4] - fields[7]
    steal = fields[7] if len(fields) > 7 else 0
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict:
    """Our environment without JIGGLER_* settings (the worker would read them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JIGGLER_")}


def read_json_line(proc: subprocess.Popen, want: str, timeout: float, what: str) -> dict:
    """The next JSON line on the child's stdout that has the key ``want``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if want in data:
            return data
    raise BenchError(f"{what} (pid {proc.pid}) did not report {want!r} within {timeout:g}s")


class Proc:
    """A process we started (by PID), with its log and what the bench needs of it."""

    def __init__(self, popen: subprocess.Popen, log_path: str, label: str) -> None:
        self.popen = popen
        self.log_path = log_path
        self.label = label
        self.pids = [popen.pid]
        self.reserved_keys: list[str] = []
        self.identities: list[str] = []
        self.startup_seconds: Optional[float] = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.label}: pid {self.pid} exited with {self.popen.returncode} "
                             f"mid-run:\n{tail(self.log_path)}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> float:
        """SIGTERM, wait; returns the seconds it took to exit."""
        if self.popen.poll() is not None:
            return 0.0
        started = time.perf_counter()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise BenchError(f"{self.label}: pid {self.pid} did not exit within {timeout:g}s "
                             f"of SIGTERM (killed)") from None
        return time.perf_counter() - started


@dataclasses.dataclass
class Snapshot:
    t: float
    consumed: int
    cpu: Optional[float]
    server_cpu: float
    endpoint_cpu: Optional[float]
    endpoint_served: Optional[int]
    machine: Optional[tuple[float, float]]


# the bench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, url: str, namespace: str, own_server: bool, log_dir: str,
                 plan: argparse.Namespace, client: Optional[redis.Redis] = None) -> None:
        self.url = url
        self.namespace = namespace
        self.own_server = own_server
        self.log_dir = log_dir
        self.plan = plan
        self.keys = Keys(namespace)
        self.queue_key = self.keys.queue(DEFAULT_QUEUE)
        # what the workers listen on (``-q`` items, ``name`` or ``name:weight``); the raw
        # loop, the latency and enqueue runs use ``queue_key`` (bench/cluster.py sets more)
        self.queues: list[str] = [DEFAULT_QUEUE]
        self.latency_key = self.keys.tag + ":bench:latency"  # in the global slot
        self.client = redis.Redis.from_url(url) if client is None else client
        self.children: list[Proc] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.runs = 0
        self.pools: dict[tuple, list[bytes]] = {}
        self.estimates: dict[str, float] = {}
        self.endpoint: Optional[Proc] = None
        self.endpoint_url: Optional[str] = None
        connection.configure(redis_url=url, namespace=namespace)

    def log_path(self, name: str) -> str:
        self.runs += 1
        return os.path.join(self.log_dir, f"{self.runs:03d}-{name}.log")

    def reset(self) -> None:
        """An empty keyspace for the next scenario (only our keys on a shared server).
        Enqueues register their queue again afterwards, as after any FLUSHDB."""
        forget_registered_queues()
        if self.own_server:
            self.client.flushdb()
            return
        batch = [key for pattern in self.keys.all_key_patterns()
                 for key in self.client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(batch), 1000):
            self.client.delete(*batch[start:start + 1000])

    # payloads -------------------------------------------------------------------------

    @property
    def queue_names(self) -> list[str]:
        return [item.partition(":")[0] for item in self.queues]

    def pending_keys(self) -> list[str]:
        """The pending lists the workers take from (one, ``queue_key``, by default)."""
        return [self.keys.queue(name) for name in self.queue_names]

    def payloads(self, job_class: type, args: tuple, count: int,
                 queue: Optional[str] = None) -> list[bytes]:
        """``count`` encoded payloads, exactly as ``job_class.enqueue(*args)`` would push
        them (distinct jids; to ``queue`` when given); encoded once and reused by later
        runs."""
        key = (job_class.name, args) if queue is None else (job_class.name, args, queue)
        pool = self.pools.setdefault(key, [])
        if len(pool) < count:
            enqueuer = Enqueuer(job_class) if queue is None \
                else Enqueuer(job_class).with_options(queue=queue)
            pool.extend(_payload.dumps(enqueuer.build(args, {}))
                        for _ in range(count - len(pool)))
        return pool[:count]

    def push(self, encoded: list[bytes], key: Optional[str] = None) -> None:
        key = key or self.queue_key
        with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(encoded), PUSH_CHUNK):
                pipe.lpush(key, *encoded[start:start + PUSH_CHUNK])
            pipe.execute()

    def jobs_needed(self, section: str, estimate_key: str, guess: float, window: float,
                    inflight: int, minimum: int) -> int:
        # the guess is a floor: a run slowed down by other processes must not make the
        # next one too short (rates swing by 2x on a busy machine; payloads are cheap)
        rate = max(guess, self.estimates.get(estimate_key, 0.0))
        return max(minimum, math.ceil(rate * (self.plan.warmup + window + 0.3)
                                      * SIZING_MARGIN[section]) + 2 * inflight)

    # starting things ------------------------------------------------------------------

    def start_worker(self, label: str, concurrency: int, mode: str = ALO, processes: int = 1,
                     watchdog: Optional[float] = None) -> Proc:
        log_path = self.log_path(label.replace(" ", "_").replace("/", "-"))
        cmd = [sys.executable, WORKER_BIN, "-r", JOBS_FILE, "-c", str(concurrency),
               "--redis-url", self.url, "--mode", mode]
        if processes != 1:
            cmd += ["-p", str(processes)]
        if self.queues != [DEFAULT_QUEUE]:
            cmd += ["-q", ",".join(self.queues)]
        if watchdog is not None:
            cmd += ["--watchdog-threshold", f"{watchdog:g}"]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        cmd += self.plan.worker_args
        spawned = time.perf_counter()
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, env=child_env())
        proc = Proc(popen, log_path, label)
        self.children.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.client.zcard(self.keys.processes) < processes:
            proc.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: no heartbeat within {READY_TIMEOUT_S:g}s:\n"
                                 f"{tail(log_path)}")
            time.sleep(POLL_S)
        proc.startup_seconds = time.perf_counter() - spawned
        time.sleep(SETTLE_S)
        proc.identities = [i.decode() for i in self.client.zrange(self.keys.processes, 0, -1)]
        if mode == ALO:
            proc.reserved_keys = [self.keys.in_progress(name, i) for i in proc.identities
                                  for name in self.queue_names]
        proc.pids = process_tree(popen.pid)
        return proc

    def raw_command(self) -> list[str]:
        """The raw loop's command up to its ``--key`` option."""
        return [sys.executable, RAW_BIN, "--redis-url", self.url]

    def start_raw(self, label: str, greenlets: int, work: str, url: Optional[str] = None) -> Proc:
        log_path = self.log_path(label.replace(" ", "_").replace("/", "-"))
        spawned = time.perf_counter()
        cmd = self.raw_command() + [
            "--key", self.queue_key, "--greenlets", str(greenlets), "--work", work,
            "--fib-n", str(self.plan.fib_n)]
        if url:
            cmd += ["--url", url]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, env=child_env(),
                                     bufsize=0)  # unbuffered: select() sees every line
        proc = Proc(popen, log_path, label)
        self.children.append(proc)
        try:
            read_json_line(popen, "ready", READY_TIMEOUT_S, label)
        except BenchError as exc:
            raise BenchError(f"{exc}:\n{tail(log_path)}") from None
        proc.startup_seconds = time.perf_counter() - spawned
        time.sleep(SETTLE_S)
        return proc

    def stop_raw(self, proc: Proc) -> tuple[float, dict]:
        try:
            seconds = proc.stop()
            final = read_json_line(proc.popen, "popped", 10, proc.label)
        finally:
            proc.popen.stdout.close()
        return seconds, final

    def start_endpoint(self) -> None:
        log_path = self.log_path("http-endpoint")
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([sys.executable, ENDPOINT_BIN, "--delay", str(IO_DELAY_S)],
                                     stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, env=child_env(), bufsize=0)
        self.endpoint = Proc(popen, log_path, "http endpoint")
        self.children.append(self.endpoint)
        port = read_json_line(popen, "port", READY_TIMEOUT_S, "http endpoint")["port"]
        self.endpoint_url = f"http://127.0.0.1:{port}/job"
        started = time.perf_counter()
        workloads.http_get(self.endpoint_url)
        took = time.perf_counter() - started
        if not IO_DELAY_S <= took < IO_DELAY_S + 0.1:
            self.problems.append(f"http endpoint answered in {took * 1000:.0f} ms, "
                                 f"not ~{IO_DELAY_S * 1000:.0f} ms")

    def endpoint_served(self) -> Optional[int]:
        if self.endpoint is None:
            return None
        port = self.endpoint_url.rsplit(":", 1)[1].split("/")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            return json.loads(response.read())["served"]

    # profiling (--profile DIR) --------------------------------------------------------

    def start_profiler(self, proc: Proc, window: float) -> Optional[tuple]:
        """py-spy record of the process (and its children) from the push to past the
        window, in collapsed-stack text (``--format raw``); None without --profile."""
        if not self.plan.profile:
            return None
        os.makedirs(self.plan.profile, exist_ok=True)
        name = os.path.splitext(os.path.basename(proc.log_path))[0]
        output = os.path.join(os.path.abspath(self.plan.profile), f"{name}.txt")
        seconds = math.ceil(self.plan.warmup + window + 1)
        cmd = [PY_SPY, "record", "--format", "raw", "--rate", "200", "--nonblocking",
               "--subprocesses", "--duration", str(seconds), "--pid", str(proc.pid),
               "--output", output]
        with open(proc.log_path + ".py-spy", "wb") as log:
            spy = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        time.sleep(0.2)  # attached before the push
        return spy, output

    def finish_profiler(self, profiler: Optional[tuple]) -> None:
        if profiler is None:
            return
        spy, output = profiler
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            spy.wait(timeout=10)
        print(f"      profile: {os.path.relpath(output)}", flush=True)

    # measuring ------------------------------------------------------------------------

    def server_cpu(self) -> float:
        """CPU seconds the server has used so far (user + system)."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def snapshot(self, t: float, consumed: int, proc: Proc, with_endpoint: bool) -> Snapshot:
        return Snapshot(
            t, consumed, tree_cpu(proc.pids),
            self.server_cpu(),
            cpu_seconds(self.endpoint.pid) if with_endpoint else None,
            self.endpoint_served() if with_endpoint else None,
            machine_cpu(),
        )

    def measure(self, proc: Proc, total: int, window: float, with_endpoint: bool = False) -> dict:
        """Polls from the end of the push: warm-up, then a window of ``window`` s (shorter
        if the queue runs dry). Jobs count as consumed once they have left the queue and
        (at-least-once) the in-progress lists."""
        t0 = time.perf_counter()
        start: Optional[Snapshot] = None
        prev_t = t0
        last_consumed, last_progress = -1, t0
        while True:
            proc.check_alive()
            with self.client.pipeline(transaction=False) as pipe:
                for key in self.pending_keys():
                    pipe.llen(key)
                for key in proc.reserved_keys:
                    pipe.llen(key)
                lengths = pipe.execute()
            now = time.perf_counter()
            consumed = total - sum(lengths)
            if consumed != last_consumed:
                last_consumed, last_progress = consumed, now
            elif now - last_progress > STALL_TIMEOUT_S:
                raise BenchError(f"{proc.label}: no job done for {STALL_TIMEOUT_S:g}s "
                                 f"({consumed} of {total}):\n{tail(proc.log_path)}")
            if start is None:
                if consumed >= total:  # ran dry within the warm-up: no steady figure
                    return {"rate": None, "drained": "in warm-up", "jobs": consumed,
                            "seconds": now - t0, "rough_rate": consumed / (now - t0)}
                if now - t0 >= self.plan.warmup:
                    start = self.snapshot(now, consumed, proc, with_endpoint)
            elif consumed >= total or now - start.t >= window:
                drained = consumed >= total
                end = self.snapshot((prev_t + now) / 2 if drained else now, consumed, proc,
                                    with_endpoint)
                break
            prev_t = now
            time.sleep(POLL_S)
        jobs, seconds = end.consumed - start.consumed, end.t - start.t
        out: dict[str, Any] = {
            "rate": jobs / seconds if seconds > 0 else None, "jobs": jobs, "seconds": seconds,
            "drained": "in window" if drained else None,
            "cpu_us_per_job": None if start.cpu is None or end.cpu is None or not jobs
            else (end.cpu - start.cpu) / jobs * 1e6,
            "cpu_cores": None if start.cpu is None or end.cpu is None
            else (end.cpu - start.cpu) / seconds,
            "server_cpu_us_per_job": (end.server_cpu - start.server_cpu) / jobs * 1e6 if jobs else None,
            "server_cpu_cores": (end.server_cpu - start.server_cpu) / seconds,
        }
        if start.machine is not None and end.machine is not None:
            # every process on the machine, and what is left after the measured process, the
            # server and the endpoint: the bench itself and anything else (other tests...)
            busy = (end.machine[0] - start.machine[0]) / seconds
            out["machine_busy_cores"] = busy
            out["steal_cores"] = (end.machine[1] - start.machine[1]) / seconds
            ours = (out["cpu_cores"] or 0) + out["server_cpu_cores"]
            if with_endpoint and start.endpoint_cpu is not None and end.endpoint_cpu is not None:
                ours += (end.endpoint_cpu - start.endpoint_cpu) / seconds
            out["other_cores"] = max(0.0, busy - ours)
        if with_endpoint:
            out["endpoint_cpu_cores"] = (end.endpoint_cpu - start.endpoint_cpu) / seconds \
                if start.endpoint_cpu is not None and end.endpoint_cpu is not None else None
            out["endpoint_served_rate"] = (end.endpoint_served - start.endpoint_served) / seconds
        return out

    # scenarios ------------------------------------------------------------------------

    def run_throughput(self, *, section: str, scenario: str, kind: str, job_class: type,
                       args: tuple, concurrency: int, window: float, mode: str = ALO,
                       processes: int = 1, watchdog: Optional[float] = None,
                       raw_work: str = "noop", estimate_key: str, guess: float,
                       minimum: int = 0, repeat: int = 0) -> dict:
        """One run: start on an empty queue, push, measure, stop, check."""
        self.reset()
        label = f"{section} {scenario} {kind}"
        with_endpoint = section == "io"
        total = self.jobs_needed(section, estimate_key, guess, window, concurrency * processes,
                                 minimum)
        encoded = self.payloads(job_class, args, total)
        if kind == "raw":
            proc = self.start_raw(label, concurrency, raw_work, self.endpoint_url)
        else:
            proc = self.start_worker(label, concurrency, mode, processes, watchdog)
        final: dict = {}
        profiler = self.start_profiler(proc, window)
        try:
            self.push(encoded)
            result = self.measure(proc, total, window, with_endpoint)
            rss = rss_kb(proc.pid) if processes == 1 else None
        finally:
            if kind == "raw":
                stop_seconds, final = self.stop_raw(proc)
            else:
                stop_seconds = proc.stop()
            self.finish_profiler(profiler)
        rate = result["rate"] or result.get("rough_rate")
        self.estimates[estimate_key] = max(self.estimates.get(estimate_key, 0.0), rate or 0.0)
        run = {"section": section, "scenario": scenario, "kind": kind, "repeat": repeat,
               "concurrency": concurrency, "mode": None if kind == "raw" else mode,
               "processes": processes, "watchdog": watchdog, "pushed": total, "window": window,
               **result, "rss_kb": rss, "startup_seconds": proc.startup_seconds,
               "stop_seconds": stop_seconds}
        self.check_run(run, proc, total, final)
        return run

    def check_run(self, run: dict, proc: Proc, total: int, final: dict) -> None:
        """Every pushed job is processed or back in the queue; nothing failed."""
        label = proc.label
        left = sum(self.client.llen(key) for key in self.pending_keys())
        reserved = sum(self.client.llen(k) for k in proc.reserved_keys)
        if run["kind"] == "raw":
            done, failed = final.get("popped", 0), final.get("failed", 0)
            if final.get("error"):
                self.problems.append(f"{label}: {failed} job(s) failed, last: {final['error']} "
                                     f"(log {proc.log_path})")
        else:
            done = int(self.client.get(self.keys.processed) or 0)
            failed = int(self.client.get(self.keys.failures) or 0)
            log_text = tail(proc.log_path, 100_000)
            warnings = [line for line in log_text.splitlines()
                        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line]
            stalls = [line for line in warnings if STALL_MESSAGE in line]
            run["stall_warnings"] = len(stalls)
            if run["section"] == "cpu":  # CPU-bound jobs: the supervisor reporting is expected
                warnings = [line for line in warnings if STALL_MESSAGE not in line]
            run["log_warnings"] = len(warnings)
            if warnings:
                self.problems.append(f"{label}: {len(warnings)} warning/error line(s), first: "
                                     f"{warnings[0][:200]} (log {proc.log_path})")
            if proc.popen.returncode != 0:
                self.problems.append(f"{label}: exit code {proc.popen.returncode} "
                                     f"(log {proc.log_path})")
        run.update(processed=done, failed=failed, left_in_queue=left, left_reserved=reserved)
        if failed or reserved or done + left != total:
            self.problems.append(f"{label}: processed {done} + left {left} != pushed {total}, "
                                 f"failed {failed}, still reserved {reserved} "
                                 f"(log {proc.log_path})")
        if run.get("drained"):
            message = (f"{label}: the queue ran dry {run['drained']} (pushed {total}); that "
                       f"run's rate covers {run.get('seconds') or 0:.2f} s, not {run['window']:g} s")
            if run["rate"] is None or run["seconds"] < run["window"] / 2:
                self.problems.append(message)
            else:
                self.notes.append(message)

    def run_latency(self, kind: str, mode: str = ALO, count: int = 500, gap: float = 0.005,
                    concurrency: int = 10, repeat: int = 0) -> dict:
        """Enqueue ``count`` Latency jobs one at a time, ``gap`` s apart, to an idle
        worker; each records when it started."""
        self.reset()
        label = f"latency {kind}" + ("" if kind == "raw" else f" {mode}")
        if kind == "raw":
            proc = self.start_raw(label, concurrency, "latency")
        else:
            proc = self.start_worker(label, concurrency, mode)
        final: dict = {}
        try:
            time.sleep(0.5)  # idle: every greenlet waits in its fetch
            enqueuer = Enqueuer(Latency)
            for _ in range(count):
                enqueuer.enqueue(time.time(), self.latency_key)
                time.sleep(gap)
            deadline = time.monotonic() + 15
            while self.client.llen(self.latency_key) < count and time.monotonic() < deadline:
                proc.check_alive()
                time.sleep(POLL_S)
            entries = self.client.lrange(self.latency_key, 0, -1)
        finally:
            if kind == "raw":
                _, final = self.stop_raw(proc)
            else:
                proc.stop()
        pairs = sorted((float(a), float(b)) for a, b in (e.decode().split() for e in entries))
        samples = [round((b - a) * 1000, 4) for a, b in pairs]  # in enqueue order, ms
        run = {"section": "latency", "kind": kind, "mode": None if kind == "raw" else mode,
               "concurrency": concurrency, "jobs": count, "gap_s": gap, "repeat": repeat,
               "recorded": len(samples), **percentiles(sorted(samples)), "samples_ms": samples}
        if len(samples) != count:
            self.problems.append(f"{label}: {len(samples)} of {count} jobs recorded a start")
        if kind == "raw" and final.get("failed"):
            self.problems.append(f"{label}: {final['failed']} failed: {final.get('error')}")
        return run

    def run_enqueue(self, singles: int, bulk: int, repeat: int) -> list[dict]:
        raw = redis.Redis.from_url(self.url)
        out = []
        self.reset()
        Noop.enqueue()  # connect first
        raw.ping()

        def timed(label: str, kind: str, count: int, fn) -> None:
            self.reset()
            started = time.perf_counter()
            fn()
            seconds = time.perf_counter() - started
            pushed = self.client.llen(self.queue_key)
            if pushed != count:
                self.problems.append(f"{label} {kind}: {pushed} jobs in Redis, not {count}")
            out.append({"section": "enqueue", "scenario": label, "kind": kind, "jobs": count,
                        "seconds": seconds, "rate": count / seconds, "repeat": repeat})

        def ours_single() -> None:
            for _ in range(singles):
                Noop.enqueue()

        timed("single", "ours", singles, ours_single)
        one = self.payloads(Noop, (), 1)[0]

        def raw_single() -> None:
            for _ in range(singles):
                raw.lpush(self.queue_key, one)

        timed("single", "raw", singles, raw_single)
        timed("bulk", "ours", bulk, lambda: Noop.enqueue_bulk([()] * bulk))
        encoded = self.payloads(Noop, (), bulk)
        timed("bulk", "raw", bulk, lambda: self.push(encoded))
        raw.close()
        self.reset()
        return out

    def cleanup(self) -> None:
        for proc in self.children:
            if proc.popen.poll() is None:
                try:
                    proc.stop(timeout=10)
                except BenchError:
                    pass
            if proc.popen.stdout is not None and not proc.popen.stdout.closed:
                proc.popen.stdout.close()
        try:
            if not self.own_server:
                self.reset()
        finally:
            self.client.close()


def percentiles(values: list[float]) -> dict:
    """Nearest-rank percentiles of sorted ``values`` (ms)."""
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}

    def rank(p: float) -> float:
        return values[max(0, math.ceil(p / 100 * len(values)) - 1)]

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99), "max_ms": values[-1],
            "mean_ms": sum(values) / len(values)}


# the plan -----------------------------------------------------------------------------


def run_all(bench: Bench, plan: argparse.Namespace) -> dict:
    runs: list[dict] = []
    latency: list[dict] = []
    loads: list[str] = []
    sections = plan.only
    fib_args = (plan.fib_n,)

    def throughput(**kw) -> None:
        run = bench.run_throughput(**kw)
        runs.append(run)
        rate = "n/a" if run["rate"] is None else f"{run['rate']:,.0f}"
        print(f"    {kw['section']} {kw['scenario']} {kw['kind']}: {rate} jobs/s", flush=True)

    if "io" in sections:
        bench.start_endpoint()
    for repeat in range(plan.repeat):
        tag = f"run {repeat + 1}/{plan.repeat}"
        loads.append(loadavg())
        print(f"{tag}: load average {loads[-1]}", flush=True)
        if "enqueue" in sections:
            print(f"{tag}: enqueue {plan.enqueue_single:,} single, {plan.enqueue_bulk:,} bulk",
                  flush=True)
            runs.extend(bench.run_enqueue(plan.enqueue_single, plan.enqueue_bulk, repeat))
        if "latency" in sections:
            print(f"{tag}: latency, {plan.latency_jobs} jobs {plan.latency_gap * 1000:g} ms "
                  "apart to an idle -c 10", flush=True)
            for mode in MODES:
                latency.append(bench.run_latency("ours", mode, plan.latency_jobs, plan.latency_gap,
                                                 repeat=repeat))
            latency.append(bench.run_latency("raw", ALO, plan.latency_jobs, plan.latency_gap,
                                             repeat=repeat))
        if "noop" in sections:
            for c in plan.noop_concurrency:
                print(f"{tag}: noop c={c}: raw loop, then both modes", flush=True)
                common = dict(section="noop", scenario=f"c={c}", job_class=Noop, args=(),
                              concurrency=c, window=plan.noop_window, minimum=plan.min_jobs,
                              repeat=repeat)
                throughput(kind="raw", estimate_key=f"noop raw c={c}", guess=GUESS["noop raw"],
                           **common)
                for mode in MODES:
                    throughput(kind="ours", mode=mode, estimate_key=f"noop {mode} c={c}",
                               guess=GUESS["noop ours"], **common)
        if "io" in sections:
            for c in plan.io_concurrency:
                print(f"{tag}: I/O c={c}: raw loop, then at-least-once", flush=True)
                common = dict(section="io", scenario=f"c={c}", job_class=HttpGet,
                              args=(bench.endpoint_url,), concurrency=c, window=plan.io_window,
                              guess=c / IO_DELAY_S, repeat=repeat)
                throughput(kind="raw", raw_work="http", estimate_key=f"io raw c={c}", **common)
                throughput(kind="ours", mode=ALO, estimate_key=f"io ours c={c}", **common)
        if "cpu" in sections:
            c = plan.cpu_concurrency
            print(f"{tag}: fib({plan.fib_n}) c={c}: raw loop, supervisor on (-p 1), supervisor "
                  "off, -p 2", flush=True)
            common = dict(section="cpu", job_class=Fib, args=fib_args, concurrency=c,
                          window=plan.cpu_window, repeat=repeat)
            throughput(scenario="raw loop", kind="raw", raw_work="fib", estimate_key="fib raw",
                       guess=GUESS["fib"], **common)
            throughput(scenario="supervisor on, -p 1", kind="ours", estimate_key="fib on",
                       guess=GUESS["fib"], **common)
            throughput(scenario="supervisor off", kind="ours", watchdog=0.0,
                       estimate_key="fib off", guess=GUESS["fib"], **common)
            throughput(scenario="supervisor on, -p 2", kind="ours", processes=2,
                       estimate_key="fib p2", guess=2 * GUESS["fib"], **common)
    return {"runs": runs, "latency": latency, "loadavg_per_repeat": loads}


# summarizing --------------------------------------------------------------------------


def median(values: list) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def pick(runs: list[dict], **where) -> list[dict]:
    return [r for r in runs if all(r.get(k) == v for k, v in where.items())]


def stat(runs: list[dict], field: str = "rate") -> dict:
    values = [r.get(field) for r in runs if r.get(field) is not None]
    return {"median": median(values), "min": min(values, default=None),
            "max": max(values, default=None), "n": len(values)}


def paired(a: list[dict], b: list[dict], field: str = "rate") -> dict:
    """Median, min and max of a/b over the repeats (pairs of runs of the same repeat)."""
    by_repeat = {r["repeat"]: r.get(field) for r in b}
    ratios = [r.get(field) / by_repeat[r["repeat"]] for r in a
              if r.get(field) and by_repeat.get(r["repeat"])]
    return {"median": median(ratios), "min": min(ratios, default=None),
            "max": max(ratios, default=None), "values": ratios}


def summarize(data: dict, plan: argparse.Namespace) -> dict:
    runs = data["runs"]
    out: dict[str, Any] = {"noop": [], "io": [], "cpu": {}, "enqueue": [], "latency": [],
                           "rss": None}
    for c in plan.noop_concurrency if "noop" in plan.only else ():
        raw = pick(runs, section="noop", scenario=f"c={c}", kind="raw")
        for mode in MODES:
            ours = pick(runs, section="noop", scenario=f"c={c}", kind="ours", mode=mode)
            out["noop"].append({
                "concurrency": c, "mode": mode, "ours": stat(ours), "raw": stat(raw),
                "ratio": paired(ours, raw),
                "cpu_us": stat(ours, "cpu_us_per_job")["median"],
                "raw_cpu_us": stat(raw, "cpu_us_per_job")["median"],
                "server_us": stat(ours, "server_cpu_us_per_job")["median"],
                "raw_server_us": stat(raw, "server_cpu_us_per_job")["median"],
                "rss_kb": max((r["rss_kb"] for r in ours if r.get("rss_kb")), default=None),
                "raw_rss_kb": max((r["rss_kb"] for r in raw if r.get("rss_kb")), default=None),
                "jobs_pushed": min((r["pushed"] for r in ours + raw), default=None),
                "jobs_in_window": min((r["jobs"] for r in ours + raw if r.get("jobs")), default=None),
            })
    for c in plan.io_concurrency if "io" in plan.only else ():
        raw = pick(runs, section="io", scenario=f"c={c}", kind="raw")
        ours = pick(runs, section="io", scenario=f"c={c}", kind="ours")
        ideal = c / IO_DELAY_S
        o, w = stat(ours), stat(raw)
        out["io"].append({
            "concurrency": c, "mode": ALO, "ours": o, "raw": w, "ratio": paired(ours, raw),
            "ideal": ideal,
            "efficiency": None if o["median"] is None else o["median"] / ideal,
            "raw_efficiency": None if w["median"] is None else w["median"] / ideal,
            "cpu_us": stat(ours, "cpu_us_per_job")["median"],
            "raw_cpu_us": stat(raw, "cpu_us_per_job")["median"],
            "endpoint_cores": max((r.get("endpoint_cpu_cores") or 0 for r in ours + raw),
                                  default=None),
            "endpoint_served": stat(ours, "endpoint_served_rate")["median"],
            "raw_endpoint_served": stat(raw, "endpoint_served_rate")["median"],
            "worker_cores": stat(ours, "cpu_cores")["median"],
            "raw_cores": stat(raw, "cpu_cores")["median"],
        })
    if "cpu" in plan.only:
        cpu = pick(runs, section="cpu")
        raw = pick(cpu, kind="raw")
        on = pick(cpu, scenario="supervisor on, -p 1")
        off = pick(cpu, scenario="supervisor off")
        p2 = pick(cpu, scenario="supervisor on, -p 2")
        overhead = paired(off, on)  # off/on: > 1 means the supervisor costs
        cpu_overhead = paired(on, off, "cpu_us_per_job")  # on/off CPU per job
        out["cpu"] = {
            "rows": [{"scenario": name, "rate": stat(group), "vs_raw": paired(group, raw),
                      "cpu_us": stat(group, "cpu_us_per_job")["median"],
                      "cores": stat(group, "cpu_cores")["median"],
                      "stalls": None if name == "raw loop"
                      else sum(r.get("stall_warnings") or 0 for r in group),
                      "runs": len(group)}
                     for name, group in (("raw loop", raw), ("supervisor on, -p 1", on),
                                         ("supervisor off", off), ("supervisor on, -p 2", p2))],
            # 1 - on/off of jobs/s (paired runs), and on/off - 1 of CPU per job
            "supervisor_overhead": {k: (None if v is None else 1 - 1 / v)
                                    for k, v in overhead.items() if k != "values"},
            "supervisor_cpu_overhead": {k: (None if v is None else v - 1)
                                        for k, v in cpu_overhead.items() if k != "values"},
            "scaling_p2": paired(p2, on),
        }
    if "enqueue" in plan.only:
        for label in ("single", "bulk"):
            ours = pick(runs, section="enqueue", scenario=label, kind="ours")
            raw = pick(runs, section="enqueue", scenario=label, kind="raw")
            out["enqueue"].append({"scenario": label, "jobs": ours[0]["jobs"] if ours else None,
                                   "ours": stat(ours), "raw": stat(raw),
                                   "ratio": paired(ours, raw)})
    for kind, mode in (("ours", ALO), ("ours", AMO), ("raw", None)):
        group = pick(data["latency"], kind=kind, mode=mode)
        if not group:
            continue
        pooled = sorted(x for r in group for x in r["samples_ms"])
        out["latency"].append({
            "kind": kind, "mode": mode, "concurrency": group[0]["concurrency"],
            "jobs": sum(r["jobs"] for r in group), "runs": len(group),
            "gap_s": group[0]["gap_s"], **percentiles(pooled),
            "p99_ms_per_run": [r["p99_ms"] for r in group],
        })
    out["noise"] = {}
    for section in ("noop", "io", "cpu"):
        group = pick(runs, section=section)
        if group:
            out["noise"][section] = {
                "other_cores": stat(group, "other_cores"),
                "steal_cores": stat(group, "steal_cores"),
                "machine_busy_cores": stat(group, "machine_busy_cores"),
            }
    c1000 = [r for r in out["noop"] if r["concurrency"] == 1000]
    if c1000:
        out["rss"] = {"concurrency": 1000, "raw_kb": c1000[0]["raw_rss_kb"],
                      "ours_kb": {r["mode"]: r["rss_kb"] for r in c1000}}
    return out


def targets(summary: dict, plan: argparse.Namespace) -> list[dict]:
    """PASS/MISS per target of issue 6 (those whose section ran)."""
    out = []

    def add(name: str, measured: Optional[float], ok: Optional[bool], shown: str) -> None:
        out.append({"target": name, "measured": measured,
                    "result": "n/a" if ok is None else ("PASS" if ok else "MISS"), "shown": shown})

    for row in summary["noop"]:
        r = row["ratio"]["median"]
        add(f"noop c={row['concurrency']} {row['mode']} steady >= raw loop", r,
            None if r is None else r >= TARGET_NOOP_RATIO,
            "n/a" if r is None else f"{r:.2f}x")
    for row in summary["io"]:
        r = row["ratio"]["median"]
        add(f"I/O c={row['concurrency']} >= {TARGET_IO_RATIO}x raw loop", r,
            None if r is None else r >= TARGET_IO_RATIO, "n/a" if r is None else f"{r:.2f}x")
    for row in summary["latency"]:
        if row["kind"] != "ours":
            continue
        for key, limit in (("p50_ms", TARGET_P50_MS), ("p99_ms", TARGET_P99_MS)):
            v = row[key]
            add(f"latency {key[:3]} <= {limit:g} ms idle, {row['mode']}", v,
                None if v is None else v <= limit, "n/a" if v is None else f"{v:.2f} ms")
    rss = summary["rss"]
    if rss:
        for mode, kb in rss["ours_kb"].items():
            r = kb / rss["raw_kb"] if kb and rss["raw_kb"] else None
            add(f"RSS c=1000 {mode} <= {TARGET_RSS_RATIO}x raw loop", r,
                None if r is None else r <= TARGET_RSS_RATIO, "n/a" if r is None else f"{r:.2f}x")
    for row in summary["enqueue"]:
        if row["scenario"] == "bulk":
            v = row["ours"]["median"]
            add(f"bulk enqueue >= {TARGET_BULK_RATE:,} jobs/s", v,
                None if v is None else v >= TARGET_BULK_RATE, fmt_rate(v))
    return out


# reporting ----------------------------------------------------------------------------


def machine_info(client: redis.Redis, binary: str) -> dict:
    info = client.info("server")
    server_name = info.get("server_name") or "redis"
    version = info.get("valkey_version") or info.get("redis_version")
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "server_binary": binary,
        "server": f"{server_name} {version}",
        "redis_py": redis.__version__,
        "gevent": gevent.__version__,
        "ujson": ujson.__version__,
        "jiggler_gevent": jiggler_gevent.__version__,
        "git": commit,
    }


def fmt_rate(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def fmt_us(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def fmt_x(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def fmt_range(p: dict) -> str:
    if p.get("min") is None or p.get("max") is None or len(p.get("values", [0, 0])) < 2:
        return ""
    return f"{p['min']:.2f}-{p['max']:.2f}"


def fmt_pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def fmt_mb(kb: Optional[int]) -> str:
    return "n/a" if not kb else f"{kb / 1024:.1f} MB"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths))).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths))).rstrip())
    return lines


def render(result: dict) -> str:
    m, p, s = result["machine"], result["plan"], result["summary"]
    lines = [
        f"machine: {m['nproc']} cpu(s) {m['cpu']}; {m['python']}; {m['platform']}",
        f"server:  {m['server']} ({m['server_binary']})",
        f"libs:    redis-py {m['redis_py']}, gevent {m['gevent']}, ujson {m['ujson']}, "
        f"jiggler-gevent {m['jiggler_gevent']} ({m['git'] or 'no git'})",
        f"load:    load average {m['loadavg_before']} before, "
        f"{' / '.join(m.get('loadavg_per_repeat') or [])} at each repeat's start, "
        f"{m['loadavg_after']} after; {result['seconds']:.0f} s in all",
        f"runs:    median of {p['repeat']} interleaved run(s) per scenario; rates are steady: "
        f"jobs per second in a window after a {p['warmup']:g} s warm-up, the queue kept full; "
        "ratio = median of the per-run ours/raw ratios (their range after it)",
    ]
    if s["noop"]:
        lines += ["", f"NOOP THROUGHPUT (window {p['noop_window']:g} s; at least "
                      f"{min(r['jobs_pushed'] for r in s['noop']):,} jobs pushed per run, "
                      f"at least {min(r['jobs_in_window'] or 0 for r in s['noop']):,} "
                      "in a window)"]
        rows = [[f"c={r['concurrency']} {r['mode']}", fmt_rate(r["ours"]["median"]),
                 fmt_rate(r["raw"]["median"]), fmt_x(r["ratio"]["median"]), fmt_range(r["ratio"]),
                 fmt_us(r["cpu_us"]), fmt_us(r["raw_cpu_us"]), fmt_us(r["server_us"]),
                 fmt_us(r["raw_server_us"])] for r in s["noop"]]
        lines += table(["scenario", "ours jobs/s", "raw jobs/s", "ratio", "range",
                        "CPU us/job", "raw", "redis us/job", "raw"], rows)
        lines += noise_line(s, "noop")
    if s["io"]:
        lines += ["", f"I/O-BOUND: one urllib GET per job, endpoint answers in "
                      f"{IO_DELAY_S * 1000:.0f} ms (window {p['io_window']:g} s; "
                      "efficiency = jobs/s / (c / 0.1 s))"]
        rows = [[f"c={r['concurrency']} {r['mode']}", fmt_rate(r["ours"]["median"]),
                 fmt_pct(r["efficiency"]), fmt_rate(r["raw"]["median"]),
                 fmt_pct(r["raw_efficiency"]), fmt_x(r["ratio"]["median"]), fmt_range(r["ratio"]),
                 fmt_us(r["cpu_us"]), fmt_us(r["raw_cpu_us"]),
                 "n/a" if r["endpoint_cores"] is None else f"{r['endpoint_cores'] * 100:.0f}%"]
                for r in s["io"]]
        lines += table(["scenario", "ours jobs/s", "eff", "raw jobs/s", "eff", "ratio", "range",
                        "CPU us/job", "raw", "endpoint CPU"], rows)
        lines.append("(endpoint CPU = the pywsgi process's busiest window, % of one core: "
                     "well below 100% means it is not the limit; it answered "
                     + ", ".join(f"c={r['concurrency']} {fmt_rate(r['endpoint_served'])}/s "
                                 f"(raw {fmt_rate(r['raw_endpoint_served'])}/s)"
                                 for r in s["io"])
                     + " in the windows, one GET per job)")
        lines += noise_line(s, "io")
    if s["cpu"]:
        c = s["cpu"]
        lines += ["", f"CPU-BOUND: fib({p['fib_n']}) per job, -c {p['cpu_concurrency']} "
                      f"(window {p['cpu_window']:g} s)"]
        rows = [[r["scenario"], fmt_rate(r["rate"]["median"]),
                 "" if r["scenario"] == "raw loop" else fmt_x(r["vs_raw"]["median"]),
                 fmt_us(r["cpu_us"]), fmt_x(r["cores"]),
                 "" if r["stalls"] is None else f"{r['stalls']} in {r['runs']} run(s)"]
                for r in c["rows"]]
        lines += table(["scenario", "jobs/s", "vs raw", "CPU us/job", "cores used",
                        "stall warnings"], rows)
        o, oc, sc = c["supervisor_overhead"], c["supervisor_cpu_overhead"], c["scaling_p2"]

        def pct_range(d: dict) -> str:
            if d["min"] is None or d["min"] == d["max"]:
                return ""
            return f" (range {fmt_pct(d['min'])} to {fmt_pct(d['max'])})"

        lines.append(f"supervisor overhead, paired runs: jobs/s {fmt_pct(o['median'])}"
                     f"{pct_range(o)}; CPU per job {fmt_pct(oc['median'])}{pct_range(oc)}")
        lines.append(f"-p 2 / -p 1 scaling (paired): {fmt_x(sc['median'])}x"
                     + (f" (range {fmt_range(sc)})" if fmt_range(sc) else ""))
        lines += noise_line(s, "cpu")
    if s["latency"]:
        first = s["latency"][0]
        lines += ["", f"ENQUEUE->START LATENCY on an idle worker (-c {first['concurrency']}): "
                      f"{first['jobs'] // first['runs']} single enqueues "
                      f"{first['gap_s'] * 1000:g} ms apart per run, {first['runs']} run(s) pooled"]
        rows = [[("raw loop" if r["kind"] == "raw" else f"ours {r['mode']}"),
                 *(fmt_ms(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
                 " ".join(fmt_ms(x) for x in r["p99_ms_per_run"])]
                for r in s["latency"]]
        lines += table(["scenario", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 per run"], rows)
    if s["enqueue"]:
        lines += ["", "ENQUEUE (ours: Job.enqueue / enqueue_bulk; raw: LPUSH of pre-encoded "
                      "payloads, one by one / pipelined in chunks of 1000)"]
        rows = [[f"{r['scenario']} ({r['jobs']:,})", fmt_rate(r["ours"]["median"]),
                 fmt_rate(r["raw"]["median"]), fmt_x(r["ratio"]["median"]), fmt_range(r["ratio"])]
                for r in s["enqueue"]]
        lines += table(["scenario", "ours jobs/s", "raw jobs/s", "ratio", "range"], rows)
    if s["rss"]:
        r = s["rss"]
        lines += ["", "RSS at c=1000 (VmRSS just before SIGTERM, largest of the runs): raw loop "
                  f"{fmt_mb(r['raw_kb'])}, "
                  + ", ".join(f"worker {mode} {fmt_mb(kb)}" for mode, kb in r["ours_kb"].items())]
    lines += ["", "TARGETS"]
    lines += table(["target", "measured", "result"],
                   [[t["target"], t["shown"], t["result"]] for t in result["targets"]])
    busy = m.get("loadavg_before_1m")
    if busy is not None and busy > 0.5 * m["nproc"]:
        lines.append(f"NOTE: load average {busy:.2f} on {m['nproc']} cpu(s) at the start: other "
                     "processes were busy; jobs/s are noisy, ratios (paired runs) less so")
    return "\n".join(lines)


def noise_line(summary: dict, section: str) -> list[str]:
    n = summary.get("noise", {}).get(section)
    if not n or n["other_cores"]["median"] is None:
        return []
    o, st = n["other_cores"], n["steal_cores"]
    return [f"(other processes, the bench included, used {o['median']:.2f} cores in the median "
            f"window, {o['max']:.2f} at most; steal {st['max'] or 0:.2f} at most)"]


def fmt_ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# main ---------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jiggler-gevent against a raw redis-py BRPOP loop")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (under a minute): short windows, few jobs, one repeat")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs of every throughput scenario, interleaved (default 3; 1 with --quick)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after the push before a window starts (default 1; 0.4 quick)")
    p.add_argument("--noop-window", type=float, default=None, help="seconds (default 2; 0.5 quick)")
    p.add_argument("--io-window", type=float, default=None, help="seconds (default 3; 0.75 quick)")
    p.add_argument("--cpu-window", type=float, default=None,
                   help="seconds (default 3; 0.75 quick)")
    p.add_argument("--noop-concurrency", "--concurrency", type=int_list, default=[10, 100, 1000],
                   help="comma-separated worker concurrencies of the noop runs (default "
                        "10,100,1000)")
    p.add_argument("--io-concurrency", type=int_list, default=[100, 500],
                   help="comma-separated concurrencies of the I/O runs (default 100,500)")
    p.add_argument("--cpu-concurrency", type=int, default=10)
    p.add_argument("--fib-n", type=int, default=workloads.FIB_N)
    p.add_argument("--min-jobs", "--jobs", type=int, default=None,
                   help="fewest noop jobs pushed per run (default 20000; 2000 quick); more "
                        "are pushed when the measured rate needs them")
    p.add_argument("--latency-jobs", type=int, default=None, help="default 500; 100 quick")
    p.add_argument("--latency-gap", type=float, default=0.005, help="seconds between enqueues")
    p.add_argument("--enqueue-single", type=int, default=None,
                   help="Job.enqueue calls timed one by one (default 5000; 500 quick)")
    p.add_argument("--enqueue-bulk", type=int, default=None,
                   help="jobs in the timed enqueue_bulk (default 100000; 10000 quick)")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                   help="use this server instead of starting one (default $REDIS_URL); only "
                        "keys under a random namespace are touched")
    p.add_argument("--output", default=None,
                   help="JSON results file (default bench/results/throughput.json; "
                        "throughput-quick.json with --quick, -profile with --profile, "
                        "-partial with --only)")
    p.add_argument("--worker-args", default="",
                   help="extra options for every worker run, e.g. \"--stats-interval 30\" "
                        "(experiments; the default run passes none)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="py-spy record every throughput run into DIR/<run>.txt (collapsed "
                        "stacks; summarize with bench/profile_summary.py); slows the runs, "
                        "so their figures are not for comparing")
    p.add_argument("--keep-logs", action="store_true", help="keep the logs' directory")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"repeat": (1, 3), "warmup": (0.4, 1.0), "noop_window": (0.5, 2.0),
                "io_window": (0.75, 3.0), "cpu_window": (0.75, 3.0), "min_jobs": (2_000, 20_000),
                "latency_jobs": (100, 500), "enqueue_single": (500, 5_000),
                "enqueue_bulk": (10_000, 100_000)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.worker_args = shlex.split(args.worker_args)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.output is None:  # only a full default run writes throughput.json
        kind = "quick" if q else "profile" if args.profile else \
            "partial" if set(args.only) != set(SECTIONS) else ""
        args.output = os.path.join(RESULTS_DIR, f"throughput-{kind}.json" if kind
                                   else "throughput.json")
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if min(args.repeat, args.latency_jobs, args.enqueue_single, args.enqueue_bulk,
           args.cpu_concurrency) < 1 or min(args.noop_window, args.io_window, args.cpu_window) <= 0:
        p.error("counts and windows must be positive")
    return args


def save_result(result: dict, output: str) -> None:
    """Write the result JSON to ``output``, then print its notes and problems."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"\nwrote {os.path.relpath(output)}")
    for note in result["notes"]:
        print(f"NOTE: {note}")
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")


def drop_logs(log_dir: str, *, keep: bool) -> None:
    """Remove the workers' log folder, or say where it is when it is worth a look."""
    if keep:
        print(f"logs kept in {log_dir}", file=sys.stderr)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    plan = parse_args(argv)
    log_dir = tempfile.mkdtemp(prefix="jiggler-bench-")
    server: Optional[LocalServer] = None
    bench: Optional[Bench] = None
    failed = True
    began = time.perf_counter()
    try:
        if plan.redis_url:
            url, namespace, binary = plan.redis_url, "bench-" + os.urandom(4).hex(), "external"
        else:
            server = LocalServer().start()
            url, namespace, binary = server.url, "", server.binary
        bench = Bench(url, namespace, server is not None, log_dir, plan)
        machine = machine_info(bench.client, binary)
        machine["loadavg_before"] = loadavg()
        machine["loadavg_before_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"server {machine['server']} at {url}; logs in {log_dir}; load average "
              f"{machine['loadavg_before']}", flush=True)
        data = run_all(bench, plan)
        machine["loadavg_after"] = loadavg()
        machine["loadavg_per_repeat"] = data["loadavg_per_repeat"]
        summary = summarize(data, plan)
        plan_out = {k: v for k, v in vars(plan).items() if k not in ("redis_url",)}
        result = {
            "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - began,
            "machine": machine,
            "plan": plan_out,
            "summary": summary,
            "targets": targets(summary, plan),
            "runs": data["runs"],
            "latency": data["latency"],
            "problems": bench.problems,
            "notes": bench.notes,
        }
        print()
        print(render(result))
        save_result(result, plan.output)
        missed = [t for t in result["targets"] if t["result"] == "MISS"]
        failed = bool(bench.problems) or (plan.strict and bool(missed))
        return 1 if failed else 0
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if bench is not None:
            bench.cleanup()
        if server is not None:
            server.cleanup()
        drop_logs(log_dir, keep=failed or plan.keep_logs)


if __name__ == "__main__":
    sys.exit(main())

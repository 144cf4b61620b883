"""Throughput of jiggler-gevent against a raw redis-py + gevent BRPOP loop, in one run.

Usage: ``.venv/bin/python bench/throughput.py [--quick] [--jobs N] [--concurrency 10,100]``

Starts its own throwaway server (jiggler_gevent.devserver.LocalServer) unless
``--redis-url`` or ``$REDIS_URL`` names one; then only keys under a random namespace
are written and deleted. Measures, in this order:

1. enqueue: ``Job.enqueue`` one at a time and ``enqueue_bulk``, against raw redis-py
   LPUSH one at a time and pipelined in chunks of 1000 (of payloads encoded before
   the clock starts: the raw column is the Redis floor).
2. per concurrency N: the raw floor (``raw_brpop.py``: N greenlets looping ``BRPOP key 1``,
   a BlockingConnectionPool of N+2) over ``--jobs`` pre-pushed payloads, then the real
   worker (``bin/jiggler-gevent -c N``) over as many pre-enqueued noop jobs, once per
   mode. The parent only polls LLEN every 20 ms (no per-job work of its own): a run
   starts at the first drop of the queue below the job count and ends when the queue
   and every in-progress list are empty (at-most-once: the queue; the last batch of at
   most N popped noop jobs then runs within microseconds, and the worker's processed
   counter is checked after it stops). "steady" leaves out the first second.
   The raw loop also times itself (first pop to last pop); that is the raw column of
   the overall rows, the polled figure is a check of the method. CPU per job comes
   from /proc/<pid>/stat of the worker or raw loop and INFO cpu of the server; it
   varies less than jobs/s when other processes share the machine.

Every scenario runs ``--repeat`` times (default 3, interleaved); the table shows
medians and their spread. Prints the table and writes bench/results/throughput.json.
Worker logs go to a temporary directory, kept (and named) only when something went
wrong or with ``--keep-logs``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import gevent
import redis
import ujson

import jiggler_gevent
from jiggler_gevent import connection
from jiggler_gevent import payload as _payload
from jiggler_gevent.devserver import LocalServer
from jiggler_gevent.job import Enqueuer
from jiggler_gevent.keys import DEFAULT_QUEUE, Keys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_jobs import Noop  # noqa: E402

WORKER_BIN = os.path.join(ROOT, "bin", "jiggler-gevent")
JOBS_FILE = os.path.join(HERE, "bench_jobs.py")
RAW_BIN = os.path.join(HERE, "raw_brpop.py")
RESULTS_FILE = os.path.join(HERE, "results", "throughput.json")

MODES = ("at-least-once", "at-most-once")
POLL_S = 0.02
STEADY_AFTER_S = 1.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0  # the worker's own shutdown timeout is 25 s
RAW_CHUNK = 1000


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


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> float:
    """SIGTERM the process we started (by PID), wait; returns seconds it took to exit."""
    if proc.poll() is not None:
        return 0.0
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchError(f"pid {proc.pid} did not exit within {timeout:g}s of SIGTERM (killed)")
    return time.perf_counter() - started


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict:
    """Our environment without JIGGLER_* settings (the worker would read them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JIGGLER_")}


# the bench ----------------------------------------------------------------------------


class Bench:
    def __init__(self, url: str, namespace: str, own_server: bool, log_dir: str) -> None:
        self.url = url
        self.namespace = namespace
        self.own_server = own_server
        self.log_dir = log_dir
        self.keys = Keys(namespace)
        self.queue_key = self.keys.queue(DEFAULT_QUEUE)
        self.raw_key = self.keys.root + "bench:raw"
        self.in_progress_pattern = self.keys.queue_prefix + "*:in_progress:*"
        self.client = redis.Redis.from_url(url)
        self.children: list[subprocess.Popen] = []
        self.problems: list[str] = []
        self.runs = 0
        connection.configure(redis_url=url, namespace=namespace)
        self.enqueuer = Enqueuer(Noop)

    def log_path(self, name: str) -> str:
        self.runs += 1
        return os.path.join(self.log_dir, f"{self.runs:02d}-{name}.log")

    def reset(self) -> None:
        """An empty keyspace for the next scenario (only our keys on a shared server)."""
        if self.own_server:
            self.client.flushdb()
            return
        batch = list(self.client.scan_iter(match=self.keys.root + "*", count=1000))
        for start in range(0, len(batch), 1000):
            self.client.delete(*batch[start:start + 1000])

    def payloads(self, count: int) -> list[str]:
        """Encoded noop payloads, exactly as Noop.enqueue would push them."""
        return [_payload.dumps(self.enqueuer.build((), {})) for _ in range(count)]

    def push_raw(self, key: str, encoded: list[str]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(encoded), RAW_CHUNK):
                pipe.lpush(key, *encoded[start:start + RAW_CHUNK])
            pipe.execute()

    # polling --------------------------------------------------------------------------

    def poll_until_done(self, key: str, total: int, proc: subprocess.Popen, log_path: str,
                        watch_in_progress: bool) -> list[tuple]:
        """Samples every POLL_S until the queue and the in-progress lists are empty:
        (t, queue length, jobs in in-progress lists, CPU seconds of proc, of the server)."""
        samples: list[tuple] = []
        reserved_keys: set[bytes] = set()
        started_at = time.perf_counter()
        timeout = START_TIMEOUT_S + max(60.0, total / 200)
        while True:
            if proc.poll() is not None:
                raise BenchError(f"pid {proc.pid} exited with {proc.returncode} mid-run:\n"
                                 f"{tail(log_path)}")
            with self.client.pipeline(transaction=False) as pipe:
                pipe.llen(key)
                pipe.info("cpu")
                queued, cpu = pipe.execute()
            reserved = 0
            if watch_in_progress:
                if not reserved_keys or queued == 0:
                    reserved_keys.update(self.client.scan_iter(match=self.in_progress_pattern,
                                                               count=1000))
                if reserved_keys:
                    with self.client.pipeline(transaction=False) as pipe:
                        for k in reserved_keys:
                            pipe.llen(k)
                        reserved = sum(pipe.execute())
            now = time.perf_counter()
            samples.append((now, queued, reserved, cpu_seconds(proc.pid),
                            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])))
            if queued == 0 and reserved == 0:
                return samples
            if queued == total and now - started_at > START_TIMEOUT_S:
                raise BenchError(f"no job taken within {START_TIMEOUT_S:g}s:\n{tail(log_path)}")
            if now - started_at > timeout:
                raise BenchError(f"{queued + reserved} jobs left after {timeout:g}s:\n"
                                 f"{tail(log_path)}")
            time.sleep(POLL_S)

    @staticmethod
    def rates(samples: list[tuple], total: int) -> dict:
        """Overall and steady rates from the samples (times interpolated to the middle
        of the poll interval in which the event happened), and CPU per job."""
        first = next(i for i, s in enumerate(samples) if s[1] < total)
        start = samples[0][0] if first == 0 else (samples[first - 1][0] + samples[first][0]) / 2
        end = (samples[-2][0] + samples[-1][0]) / 2 if len(samples) > 1 else samples[-1][0]
        seconds = end - start
        before, after = samples[max(0, first - 1)], samples[-1]
        out: dict[str, Any] = {
            "seconds": seconds, "rate": total / seconds if seconds > 0 else None,
            "polls": len(samples), "peak_in_progress": max(s[2] for s in samples),
            "cpu_us_per_job": None if before[3] is None or after[3] is None
            else (after[3] - before[3]) / total * 1e6,
            "server_cpu_us_per_job": (after[4] - before[4]) / total * 1e6,
        }
        steady = next((s for s in samples[first:-1] if s[0] >= start + STEADY_AFTER_S), None)
        if steady is not None and end > steady[0]:
            left = steady[1] + steady[2]
            out["steady_rate"] = left / (end - steady[0])
            out["steady_jobs"] = left
        else:
            out["steady_rate"] = None  # finished within the first second
        return out

    # scenarios ------------------------------------------------------------------------

    def run_raw(self, greenlets: int, total: int) -> dict:
        self.reset()
        self.push_raw(self.raw_key, self.payloads(total))
        log_path = self.log_path(f"raw-c{greenlets}")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, RAW_BIN, "--redis-url", self.url, "--key", self.raw_key,
                 "--greenlets", str(greenlets), "--total", str(total)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=child_env(),
                bufsize=0,  # unbuffered: select() must see every line still unread
            )
        self.children.append(proc)
        try:
            samples = self.poll_until_done(self.raw_key, total, proc, log_path, False)
            own = self._read_json_line(proc, log_path, want="popped")
            rss = rss_kb(proc.pid)
        finally:
            stop_seconds = stop_process(proc)
            proc.stdout.close()
        polled = self.rates(samples, total)
        return {"kind": "raw", "concurrency": greenlets, "jobs": total, "rate": own["rate"],
                "seconds": own["seconds"], "polled": polled, "steady_rate": polled["steady_rate"],
                "cpu_us_per_job": polled["cpu_us_per_job"],
                "server_cpu_us_per_job": polled["server_cpu_us_per_job"],
                "rss_kb": rss, "stop_seconds": stop_seconds}

    def _read_json_line(self, proc: subprocess.Popen, log_path: str, want: str) -> dict:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                break
            data = json.loads(line)
            if want in data:
                return data
        raise BenchError(f"raw loop pid {proc.pid} did not report {want!r}:\n{tail(log_path)}")

    def run_ours(self, concurrency: int, mode: str, total: int) -> dict:
        self.reset()
        Noop.enqueue_bulk([()] * total)
        queued = self.client.llen(self.queue_key)
        if queued != total:
            raise BenchError(f"enqueue_bulk left {queued} jobs in the queue, not {total}")
        log_path = self.log_path(f"worker-c{concurrency}-{mode}")
        cmd = [sys.executable, WORKER_BIN, "-r", JOBS_FILE, "-c", str(concurrency),
               "--redis-url", self.url, "--mode", mode]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        spawned = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=ROOT, env=child_env())
        self.children.append(proc)
        try:
            samples = self.poll_until_done(self.queue_key, total, proc, log_path,
                                           mode == "at-least-once")
            rss = rss_kb(proc.pid)
        finally:
            stop_seconds = stop_process(proc)
        result = {"kind": "ours", "concurrency": concurrency, "mode": mode, "jobs": total,
                  **self.rates(samples, total), "rss_kb": rss, "stop_seconds": stop_seconds,
                  "exit_code": proc.returncode}
        first = next(s[0] for s in samples if s[1] < total)
        result["startup_seconds"] = first - spawned
        processed = int(self.client.get(self.keys.processed) or 0)
        failed = int(self.client.get(self.keys.failures) or 0)
        result.update(processed=processed, failed=failed)
        log_text = tail(log_path, 10_000)
        result["log_warnings"] = len(re.findall(r" (?:WARNING|ERROR|CRITICAL) ", log_text))
        label = f"ours c={concurrency} {mode}"
        if processed != total or failed:
            self.problems.append(f"{label}: processed={processed} failed={failed}, "
                                 f"expected {total} (log {log_path})")
        if proc.returncode != 0:
            self.problems.append(f"{label}: worker exit code {proc.returncode} (log {log_path})")
        if result["log_warnings"]:
            self.problems.append(f"{label}: {result['log_warnings']} warning/error line(s) "
                                 f"in {log_path}")
        return result

    def run_enqueue(self, singles: int, bulk: int) -> list[dict]:
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
            key = self.queue_key if kind == "ours" else self.raw_key
            pushed = self.client.llen(key)
            if pushed != count:
                self.problems.append(f"{label} {kind}: {pushed} jobs in Redis, not {count}")
            out.append({"scenario": label, "kind": kind, "jobs": count, "seconds": seconds,
                        "rate": count / seconds})

        def ours_single() -> None:
            for _ in range(singles):
                Noop.enqueue()

        timed("enqueue single", "ours", singles, ours_single)
        one = self.payloads(1)[0]

        def raw_single() -> None:
            for _ in range(singles):
                raw.lpush(self.raw_key, one)

        timed("enqueue single", "raw", singles, raw_single)
        timed("enqueue_bulk", "ours", bulk, lambda: Noop.enqueue_bulk([()] * bulk))
        encoded = self.payloads(bulk)
        timed("enqueue_bulk", "raw", bulk, lambda: self.push_raw(self.raw_key, encoded))
        raw.close()
        self.reset()
        return out

    def cleanup(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        try:
            if not self.own_server:
                self.reset()
        finally:
            self.client.close()


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


def fmt_ratio(ours: Optional[float], raw: Optional[float]) -> str:
    return "n/a" if not ours or not raw else f"{ours / raw:.2f}"


def median(values: list) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(runs: list[dict], key_fields: tuple[str, ...]) -> dict:
    """Median rate (and steady rate), spread and peak RSS per scenario over the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(f) for f in key_fields), []).append(run)
    out = {}
    for key, group in groups.items():
        rates = [r["rate"] for r in group if r.get("rate")]
        mid = median(rates)
        out[key] = {
            **dict(zip(key_fields, key)),
            "runs": len(group),
            "rate": mid,
            "rate_min": min(rates) if rates else None,
            "rate_max": max(rates) if rates else None,
            "spread": (max(rates) - min(rates)) / mid if mid and len(rates) > 1 else None,
            "steady_rate": median([r.get("steady_rate") for r in group]),
            "rss_kb": max((r["rss_kb"] for r in group if r.get("rss_kb")), default=None),
            "cpu_us_per_job": median([r.get("cpu_us_per_job") for r in group]),
            "server_cpu_us_per_job": median([r.get("server_cpu_us_per_job") for r in group]),
            "peak_in_progress": max((r.get("peak_in_progress") or 0 for r in group), default=0),
        }
    return out


def worst(*spreads: Optional[float]) -> Optional[float]:
    known = [x for x in spreads if x is not None]
    return max(known) if known else None


def table_rows(enqueue: dict, raws: dict, ours: dict, concurrency: list[int]) -> list[dict]:
    rows = []
    for label in ("enqueue single", "enqueue_bulk"):
        o, w = enqueue[(label, "ours")], enqueue[(label, "raw")]
        rows.append({"scenario": f"{label} ({o['jobs']:,})", "ours": o["rate"], "raw": w["rate"],
                     "spread": worst(o["spread"], w["spread"])})
    for c in concurrency:
        raw = raws[(c,)]
        for mode in MODES:
            r = ours[(c, mode)]
            rows.append({"scenario": f"process c={c} {mode}", "ours": r["rate"], "raw": raw["rate"],
                         "spread": worst(r["spread"], raw["spread"])})
            rows.append({"scenario": "  steady (after 1 s)", "ours": r["steady_rate"],
                         "raw": raw["steady_rate"], "spread": None})
    return rows


def render(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        f"machine: {m['nproc']} cpu(s) {m['cpu']}; {m['python']}; {m['platform']}",
        f"server:  {m['server']} ({m['server_binary']})",
        f"libs:    redis-py {m['redis_py']}, gevent {m['gevent']}, ujson {m['ujson']}, "
        f"jiggler-gevent {m['jiggler_gevent']} ({m['git'] or 'no git'})",
        f"runs:    {s['jobs']:,} jobs per processing run; median of {s['repeat']} run(s); "
        f"LLEN polled every {POLL_S * 1000:.0f} ms; load average {m['loadavg_before']} before, "
        f"{m['loadavg_after']} after",
        "",
    ]
    width = max(len(r["scenario"]) for r in result["rows"]) + 2
    lines.append(f"{'scenario':<{width}}{'ours jobs/s':>12}{'raw jobs/s':>12}{'ratio':>8}{'spread':>8}")
    lines.append("-" * (width + 40))
    for row in result["rows"]:
        spread = "" if row["spread"] is None else f"{row['spread'] * 100:.0f}%"
        lines.append(f"{row['scenario']:<{width}}{fmt_rate(row['ours']):>12}"
                     f"{fmt_rate(row['raw']):>12}{fmt_ratio(row['ours'], row['raw']):>8}"
                     f"{spread:>8}".rstrip())
    busy = m.get("loadavg_before_1m")
    if busy is not None and busy > 0.5 * m["nproc"]:
        lines.append(f"NOTE: load average {busy:.2f} on {m['nproc']} cpu(s) at the start: other processes "
                     "were busy, jobs/s are noisy (CPU per job below is steadier)")
    lines.append("(ratio = ours / raw; spread = (max - min) / median over the runs, the larger of "
                 "ours and raw; steady is n/a when a run lasts under 1 s)")
    lines.append("")
    lines.append("CPU per job in microseconds (medians; /proc of the process, INFO cpu of the server):")
    lines.append(f"{'':<{width}}{'worker':>12}{'server':>9}{'raw loop':>12}{'server':>9}"
                 f"{'in-progress peak':>18}")
    for c in s["concurrency"]:
        raw = result["summary"]["raw"][f"c={c}"]
        for mode in MODES:
            r = result["summary"]["ours"][f"c={c} {mode}"]
            peak = f"{r['peak_in_progress']:,}" if mode == "at-least-once" else "-"
            lines.append(f"{f'process c={c} {mode}':<{width}}{fmt_us(r['cpu_us_per_job']):>12}"
                         f"{fmt_us(r['server_cpu_us_per_job']):>9}{fmt_us(raw['cpu_us_per_job']):>12}"
                         f"{fmt_us(raw['server_cpu_us_per_job']):>9}{peak:>18}")
    lines.append("")
    lines.append("RSS (VmRSS just before SIGTERM, largest of the runs):")
    for c in s["concurrency"]:
        raw = result["summary"]["raw"][f"c={c}"]
        parts = [f"raw loop {raw['rss_kb'] / 1024:.1f} MB" if raw["rss_kb"] else "raw loop n/a"]
        for mode in MODES:
            r = result["summary"]["ours"][f"c={c} {mode}"]
            parts.append(f"worker {mode} " + (f"{r['rss_kb'] / 1024:.1f} MB" if r["rss_kb"] else "n/a"))
        lines.append(f"  c={c}: " + ", ".join(parts))
    startup = median([r["startup_seconds"] for r in result["ours"]])
    stop = median([r["stop_seconds"] for r in result["ours"]])
    lines.append(f"worker: spawn to first job {startup:.2f}s, SIGTERM to exit {stop:.2f}s (medians)")
    checks = ", ".join(f"c={c} self-timed {fmt_rate(r['rate'])} vs polled {fmt_rate(r['polled']['rate'])}"
                       for r in result["raw"] for c in [r["concurrency"]] if r["repeat"] == 0)
    lines.append(f"method check, raw loop run 1: {checks}")
    return "\n".join(lines)


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# main ---------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="jiggler-gevent throughput against a raw BRPOP loop")
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs per processing run (default 20000; 2000 with --quick)")
    p.add_argument("--concurrency", default="10,100",
                   help="comma-separated worker concurrencies (default 10,100)")
    p.add_argument("--enqueue-single", type=int, default=None,
                   help="Job.enqueue calls timed one by one (default 5000; 500 with --quick)")
    p.add_argument("--enqueue-bulk", type=int, default=None,
                   help="jobs in the timed enqueue_bulk (default 100000; 10000 with --quick)")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs of every scenario; the table shows medians (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="small counts, one run: a smoke test")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                   help="use this server instead of starting one (default $REDIS_URL); only "
                        "keys under a random namespace are touched")
    p.add_argument("--output", default=RESULTS_FILE, help="JSON results file")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker logs' directory")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2_000 if args.quick else 20_000
    if args.enqueue_single is None:
        args.enqueue_single = 500 if args.quick else 5_000
    if args.enqueue_bulk is None:
        args.enqueue_bulk = 10_000 if args.quick else 100_000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error(f"--concurrency {args.concurrency!r}: give integers like 10,100")
    if not args.concurrency or min(args.concurrency) < 1 or min(
            args.jobs, args.enqueue_single, args.enqueue_bulk, args.repeat) < 1:
        p.error("counts and concurrencies must be positive")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    log_dir = tempfile.mkdtemp(prefix="jiggler-bench-")
    server: Optional[LocalServer] = None
    bench: Optional[Bench] = None
    failed = True
    try:
        if args.redis_url:
            url, namespace, binary = args.redis_url, "bench-" + os.urandom(4).hex(), "external"
        else:
            server = LocalServer().start()
            url, namespace, binary = server.url, "", server.binary
        bench = Bench(url, namespace, server is not None, log_dir)
        machine = machine_info(bench.client, binary)
        machine["loadavg_before"] = loadavg()
        machine["loadavg_before_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        print(f"server {machine['server']} at {url}; worker logs in {log_dir}", flush=True)
        enqueue: list[dict] = []
        raws: list[dict] = []
        ours: list[dict] = []
        for repeat in range(args.repeat):
            print(f"run {repeat + 1}/{args.repeat}: enqueue {args.enqueue_single:,} single, "
                  f"{args.enqueue_bulk:,} bulk", flush=True)
            for run in bench.run_enqueue(args.enqueue_single, args.enqueue_bulk):
                enqueue.append({**run, "repeat": repeat})
            for c in args.concurrency:
                print(f"run {repeat + 1}/{args.repeat}: c={c} raw BRPOP loop, then jiggler-gevent "
                      f"{' and '.join(MODES)}", flush=True)
                raws.append({**bench.run_raw(c, args.jobs), "repeat": repeat})
                for mode in MODES:
                    ours.append({**bench.run_ours(c, mode, args.jobs), "repeat": repeat})
        machine["loadavg_after"] = loadavg()
        enqueue_summary = summarize(enqueue, ("scenario", "kind"))
        for key, summary in enqueue_summary.items():
            summary["jobs"] = next(r["jobs"] for r in enqueue if (r["scenario"], r["kind"]) == key)
        raw_summary = summarize(raws, ("concurrency",))
        ours_summary = summarize(ours, ("concurrency", "mode"))
        result = {
            "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine,
            "settings": {"jobs": args.jobs, "concurrency": args.concurrency, "repeat": args.repeat,
                         "enqueue_single": args.enqueue_single, "enqueue_bulk": args.enqueue_bulk,
                         "poll_s": POLL_S, "quick": args.quick},
            "rows": table_rows(enqueue_summary, raw_summary, ours_summary, args.concurrency),
            "summary": {
                "enqueue": {f"{k[0]} {k[1]}": v for k, v in enqueue_summary.items()},
                "raw": {f"c={k[0]}": v for k, v in raw_summary.items()},
                "ours": {f"c={k[0]} {k[1]}": v for k, v in ours_summary.items()},
            },
            "enqueue": enqueue,
            "raw": raws,
            "ours": ours,
            "problems": bench.problems,
        }
        print()
        print(render(result))
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"\nwrote {os.path.relpath(args.output)}")
        for problem in bench.problems:
            print(f"PROBLEM: {problem}")
        failed = bool(bench.problems)
        return 1 if failed else 0
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if bench is not None:
            bench.cleanup()
        if server is not None:
            server.cleanup()
        if failed or args.keep_logs:
            print(f"worker logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

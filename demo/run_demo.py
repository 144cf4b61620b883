#!/usr/bin/env python3
"""The jiggler-gevent demo: 500 slow, blocking HTTP fetches run by one worker process.

It starts everything it needs (a throwaway Redis unless REDIS_URL or
JIGGLER_REDIS_URL is set, and a slow local HTTP server), enqueues the jobs of
``demo_jobs.py``, runs a real ``jiggler-gevent`` worker process on them, shows
progress, then stops everything it started and prints a summary. Exit status 0
means every job either succeeded or landed in the dead set as designed.

Run it with ``make demo`` or ``.venv/bin/python demo/run_demo.py``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

import jiggler_gevent
from jiggler_gevent.connection import describe_url
from jiggler_gevent.devserver import LocalServer, ServerNotFound
from jiggler_gevent.keys import Keys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER_BIN = os.path.join(REPO, "bin", "jiggler-gevent")
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import demo_jobs  # noqa: E402  (the same module the worker loads with -r demo_jobs)

JOBS = 500
CONCURRENCY = 100
LATENCY_S = 0.2  # every HTTP answer takes this long
FLAKY_EVERY, FLAKY_AT = 20, 3  # ids 3, 23, 43, ...: 500 on the first try only
DEAD_EVERY, DEAD_AT = 50, 49  # ids 49, 99, ...: always 500, so they end in the dead set
HANG_GUARD_S = 120.0
WORKER_STOP_WAIT_S = 30.0
REFRESH_S = 0.5  # progress line redraws
CHECK_S = 0.1  # Redis checks (for a precise wall time)
KEYS = Keys(demo_jobs.NAMESPACE)
QUEUE = demo_jobs.FetchPage.queue


class DemoError(Exception):
    """Something went wrong; the message says what."""


def page_kind(page_id: int) -> str:
    if page_id % DEAD_EVERY == DEAD_AT:
        return "dead"
    if page_id % FLAKY_EVERY == FLAKY_AT:
        return "flaky"
    return "ok"


# the slow HTTP server -----------------------------------------------------------------

class PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        started = time.monotonic()
        time.sleep(LATENCY_S)
        try:
            page_id = int(self.path.rsplit("/", 1)[-1])
        except ValueError:
            self.send_error(404)
            return
        status = self.server.status_for(page_id)
        body = (f"page {page_id}\n" + "lorem ipsum " * (50 + page_id % 200)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.count(status, time.monotonic() - started)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


class PageServer(ThreadingHTTPServer):
    """Answers GET /page/<id> after LATENCY_S; 500 for the flaky (first try) and dead ids."""

    daemon_threads = True
    request_queue_size = 1024  # 100 greenlets connect at once; the default backlog is 5

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), PageHandler)
        self.lock = threading.Lock()
        self.hits: collections.Counter = collections.Counter()
        self.requests = 0
        self.errors = 0
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="demo-http", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def status_for(self, page_id: int) -> int:
        with self.lock:
            self.hits[page_id] += 1
            first = self.hits[page_id] == 1
        kind = page_kind(page_id)
        return 500 if kind == "dead" or (kind == "flaky" and first) else 200

    def count(self, status: int, seconds: float) -> None:
        with self.lock:
            self.requests += 1
            self.errors += status >= 500
            self.busy_s += seconds

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: fine
            super().handle_error(request, client_address)

    def start(self) -> PageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
            self.thread.join(5)
        self.server_close()


class DemoRedis(LocalServer):
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# the worker process ----------------------------------------------------------------------

def start_worker(url: str, log_path: str) -> subprocess.Popen:
    """``jiggler-gevent -r demo_jobs ...`` as a subprocess, its output in ``log_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIGGLER_")}
    env["DEMO_REDIS_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    for name in ("NO_PROXY", "no_proxy"):  # never send the local fetches through a proxy
        env[name] = ",".join(p for p in (env.get(name), "127.0.0.1", "localhost") if p)
    command = [sys.executable, WORKER_BIN, "-r", "demo_jobs", "-c", str(CONCURRENCY),
               "--redis-url", url, "--namespace", demo_jobs.NAMESPACE, "--poll-interval", "0.5"]
    with open(log_path, "wb") as log_file:
        # its own session: a Ctrl-C reaches only this script, which then stops the worker
        return subprocess.Popen(command, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(worker: subprocess.Popen, redis_alive=lambda: True) -> int:
    """SIGTERM the worker (by its PID) and wait for it to finish its jobs and exit.

    SIGKILL it if it does not stop in time, or once Redis is gone: then nothing is
    left to save (a Ctrl-C in the terminal also stops a Redis server started here).
    """
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_WAIT_S
        try:
            while worker.poll() is None and time.monotonic() < deadline and redis_alive():
                time.sleep(0.05)
        finally:
            if worker.poll() is None:
                why = "Redis is gone" if not redis_alive() else "it did not stop after SIGTERM"
                print(f"killing worker pid {worker.pid}: {why}")
                worker.kill()
                worker.wait()
    return worker.returncode


def log_tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


# progress ---------------------------------------------------------------------------------

State = collections.namedtuple("State", "succeeded dead queued retrying")


def read_state(client: redis.Redis) -> State:
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(demo_jobs.RESULTS_KEY)
        pipe.zcard(KEYS.dead(QUEUE))
        pipe.llen(KEYS.queue(QUEUE))
        pipe.zcard(KEYS.retries(QUEUE))
        return State(*pipe.execute())


class Progress:
    """One line, redrawn in place on a terminal (a line per second otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0
        self.width = 0

    def show(self, state: State, elapsed: float, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_print < (REFRESH_S if self.tty else 1.0):
            return
        self.last_print = now
        done = state.succeeded + state.dead
        filled = min(20, 20 * done // JOBS)
        rate = done / elapsed if elapsed > 0 else 0.0
        line = (f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{JOBS} done  {rate:4.0f} jobs/s  "
                f"queue {state.queued}  retries pending {state.retrying}  dead {state.dead}")
        if self.tty:
            sys.stdout.write("\r" + line.ljust(self.width) + ("\n" if final else ""))
            self.width = len(line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


# the demo ---------------------------------------------------------------------------------

def clear_namespace(client: redis.Redis) -> None:
    """The demo's results list and every key of its namespace (both slot kinds)."""
    patterns = (f"{demo_jobs.NAMESPACE}:*", *KEYS.all_key_patterns())
    keys = [key for pattern in patterns for key in client.scan_iter(match=pattern, count=1000)]
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def run(stack: contextlib.ExitStack) -> int:
    print(f"jiggler-gevent demo: {JOBS} jobs, each a blocking HTTP GET that takes "
          f"{LATENCY_S * 1000:.0f} ms, one worker process with {CONCURRENCY} greenlets")

    # (1) Redis
    url = os.environ.get("JIGGLER_REDIS_URL") or os.environ.get("REDIS_URL")
    server: DemoRedis | None = None
    if url:
        print(f"Redis:   {describe_url(url)} (from the environment)")
    else:
        try:
            server = DemoRedis()
        except ServerNotFound as exc:
            raise DemoError(str(exc)) from None
        stack.callback(server.cleanup)
        try:
            server.start()
        except (OSError, RuntimeError) as exc:
            raise DemoError(f"could not start {server.binary}: {exc}") from None
        url = server.url
        print(f"Redis:   started {server.binary} on {url}")
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    stack.callback(client.close)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise DemoError(f"cannot reach Redis at {describe_url(url)}: {exc}") from None

    # (2) the slow HTTP server
    http = PageServer().start()
    stack.callback(http.stop)
    dead_ids = [i for i in range(JOBS) if page_kind(i) == "dead"]
    flaky_ids = [i for i in range(JOBS) if page_kind(i) == "flaky"]
    print(f"HTTP:    {http.base_url}/page/<id>, {LATENCY_S * 1000:.0f} ms per answer; 500 for "
          f"{len(flaky_ids)} ids on the first try and always for {len(dead_ids)} ids")

    # (3) a clean namespace, then enqueue from the plain synchronous client
    clear_namespace(client)
    jiggler_gevent.configure(redis_url=url, namespace=demo_jobs.NAMESPACE)
    urls = [f"{http.base_url}/page/{i}" for i in range(JOBS)]
    started = time.monotonic()
    demo_jobs.FetchPage.enqueue_bulk([url_] for url_ in urls)
    print(f"Enqueue: {JOBS} FetchPage jobs with enqueue_bulk in {time.monotonic() - started:.3f} s "
          f"(namespace {demo_jobs.NAMESPACE!r}, {demo_jobs.FetchPage.retries} retries, "
          f"{demo_jobs.RETRY_DELAY_S:g} s apart)")

    # (4) the worker
    log_dir = tempfile.mkdtemp(prefix="jiggler-demo-")
    log_path = os.path.join(log_dir, "worker.log")
    started = time.monotonic()
    worker = start_worker(url, log_path)
    stack.callback(stop_worker, worker, lambda: server is None or server.running())
    print(f"Worker:  pid {worker.pid}, -c {CONCURRENCY}; its log: {log_path}")

    # (5) progress until every job succeeded or is dead
    progress = Progress()
    while True:
        state = read_state(client)
        elapsed = time.monotonic() - started
        done = state.succeeded + state.dead
        finished = done >= JOBS and not (state.queued or state.retrying)
        exited = worker.poll() is not None
        hung = elapsed > HANG_GUARD_S
        progress.show(state, elapsed, final=finished or exited or hung)
        if finished:
            break
        if exited:
            raise DemoError(f"the worker exited early with code {worker.returncode}; "
                            f"the end of its log ({log_path}):\n{log_tail(log_path)}")
        if hung:
            raise DemoError(f"not done after {HANG_GUARD_S:g} s: {done}/{JOBS} done, "
                            f"{state.succeeded} succeeded, {state.dead} dead, {state.queued} "
                            f"queued, {state.retrying} waiting to retry; see {log_path}")
        time.sleep(CHECK_S)
    wall = time.monotonic() - started

    # (6) stop the worker and check every job
    code = stop_worker(worker)
    print(f"Stopped: SIGTERM -> worker exited with code {code}")
    problems = [] if code == 0 else [f"worker exit code {code} (expected 0); see {log_path}"]
    problems += check_outcome(client, urls, dead_ids, http)

    succeeded = state.succeeded
    retried = http.errors - state.dead  # every failure but a dead job's last one was retried
    latency = http.busy_s / http.requests if http.requests else LATENCY_S
    one_by_one = http.requests * latency
    print("Summary:")
    print(f"  processed  {done} of {JOBS} jobs: {succeeded} succeeded, {state.dead} dead "
          f"(still failing after {demo_jobs.FetchPage.retries + 1} attempts)")
    print(f"  retried    {retried} failures were retried ({len(flaky_ids)} jobs then succeeded)")
    print(f"  wall time  {wall:.1f} s from worker start to the last job ({JOBS / wall:.0f} jobs/s), "
          f"including the {demo_jobs.RETRY_DELAY_S:g} s retry waits")
    print(f"  one by one {http.requests} requests x {latency:.3f} s = {one_by_one:.0f} s "
          f"-> speed-up {one_by_one / wall:.0f}x")
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        return 1
    print("OK: every job succeeded or is in the dead set; nothing was lost or run twice.")
    return 0


def check_outcome(client: redis.Redis, urls: list, dead_ids: list, http: PageServer) -> list:
    """What is wrong with the final state of Redis (an empty list when all is well)."""
    problems = []
    results = [r.decode().split(" ", 1)[0] for r in client.lrange(demo_jobs.RESULTS_KEY, 0, -1)]
    dead = [json.loads(m) for m in client.zrange(KEYS.dead(QUEUE), 0, -1)]
    dead_urls = [entry.get("args", [None])[0] for entry in dead]
    expected_dead = {urls[i] for i in dead_ids}
    if len(set(results)) != len(results):
        problems.append(f"{len(results) - len(set(results))} job(s) succeeded more than once")
    if set(dead_urls) != expected_dead or len(dead_urls) != len(expected_dead):
        problems.append(f"dead set holds {len(dead_urls)} job(s), expected {len(expected_dead)}")
    lost = set(urls) - set(results) - set(dead_urls)
    if lost:
        problems.append(f"{len(lost)} job(s) lost: neither succeeded nor dead, e.g. {min(lost)}")
    bad_attempts = [e.get("jid") for e in dead if e.get("attempt") != demo_jobs.FetchPage.retries + 1]
    if bad_attempts:
        problems.append(f"{len(bad_attempts)} dead job(s) with an unexpected attempt count")
    queue = KEYS.queue_keys(QUEUE)
    leftovers = [k.decode() for k in client.scan_iter(match=queue.in_progress("*"), count=1000)]
    leftovers += [key for key in (queue.pending, queue.quarantine) if client.exists(key)]
    if leftovers:
        problems.append(f"keys left behind after the worker stopped: {sorted(leftovers)[:3]}")
    processed = int(client.get(KEYS.processed) or 0)
    failures = int(client.get(KEYS.failures) or 0)
    if (processed, failures) != (len(results), http.errors):
        problems.append(f"the worker's counters say processed={processed} failed={failures}, "
                        f"expected {len(results)} and {http.errors}")
    return problems


def main() -> int:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with INT ignored
    try:
        with contextlib.ExitStack() as stack:  # stops what was started, last first
            try:
                return run(stack)
            except KeyboardInterrupt:
                print("\ninterrupted: stopping what the demo started", flush=True)
                raise
    except (DemoError, redis.RedisError) as exc:
        sys.stdout.flush()
        kind = "" if isinstance(exc, DemoError) else f"Redis error: {type(exc).__name__}: "
        print(f"FAILED: {kind}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything the demo started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

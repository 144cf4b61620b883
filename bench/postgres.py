"""psycopg2 jobs next to their raw floor, in one run (``make bench-postgres``).

Usage: ``.venv/bin/python bench/postgres.py [--concurrency 100] [--sleep 0.05]
[--jobs 6000] [--blocking-jobs 60]``

Starts a throwaway Redis-compatible server (``jiggler_gevent.devserver.LocalServer``)
and PostgreSQL (``tests/pgserver.py``: ``apt-get install postgresql`` gives the
binaries), then measures, each in its own process:

* **raw floor**: ``--concurrency`` gevent greenlets with psycopg2 made cooperative by the
  same wait callback as the worker's (``jiggler_gevent.green``), each on its own
  connection, looping ``SELECT pg_sleep(--sleep)`` for as long as our run took;
* **ours**: a ``jiggler-gevent -c --concurrency`` worker running ``--jobs`` jobs
  ``bench.pg_sleep`` (``bench_jobs.PgSleep``: the same query on its greenlet's own kept
  connection, then one INCR), pushed in bulk before the worker starts; rate = jobs /
  (last done - the worker's "started" log line). (Not from the first job done: without
  the wait callback the INCRs all land at the end, each job's greenlet blocked behind
  the others' queries);
* **ours, blocking**: the same worker with ``--no-green-psycopg2``, on
  ``--blocking-jobs`` jobs: what psycopg2 costs when nothing makes it cooperative.

The ideal is concurrency / sleep queries per second. Prints a table, writes
``bench/results/postgres.json``; exit status 1 when a run lost jobs or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, "bin", "jiggler-gevent")
RESULTS = os.path.join(HERE, "results", "postgres.json")
COUNTER = "bench:pg:done"


def raw_child(args: argparse.Namespace) -> int:
    """The raw floor (run in a child process): greenlets looping the query."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from jiggler_gevent import green

    sys.path.insert(0, HERE)
    import workloads

    green.patch_psycopg2()
    done = [0]
    deadline = time.monotonic() + args.seconds

    def loop() -> None:
        while time.monotonic() < deadline:
            workloads.pg_sleep(args.dsn, args.sleep)
            done[0] += 1

    started = time.monotonic()
    gevent.joinall([gevent.spawn(loop) for _ in range(args.concurrency)], raise_error=True)
    print(json.dumps({"queries": done[0], "seconds": time.monotonic() - started}), flush=True)
    return 0


def run_worker(redis_url: str, dsn: str, args: argparse.Namespace, jobs: int,
               blocking: bool, log_dir: str) -> dict:
    """Push ``jobs`` jobs, start a worker, time them from its start to the last done."""
    import bench_jobs
    import redis

    from jiggler_gevent import connection

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    connection.configure(redis_url=redis_url)
    bench_jobs.PgSleep.enqueue_bulk([[dsn, args.sleep, COUNTER] for _ in range(jobs)])
    argv = [sys.executable, BIN, "-r", os.path.join(HERE, "bench_jobs.py"), "--redis-url",
            redis_url, "-c", str(args.concurrency), "--watchdog-threshold", "0"]
    if blocking:
        argv.append("--no-green-psycopg2")
    name = "blocking" if blocking else "green"
    with open(os.path.join(log_dir, f"worker-{name}.log"), "wb") as log:  # noqa: SIM115
        worker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=ROOT))
    log_path = os.path.join(log_dir, f"worker-{name}.log")
    try:
        started = last = None
        deadline = time.monotonic() + 30 + jobs * args.sleep * 1.5
        while time.monotonic() < deadline:
            if started is None:
                with open(log_path, "rb") as log:
                    if b"jiggler-gevent started" in log.read():
                        started = time.monotonic()  # from here on its workers fetch
            elif int(client.get(COUNTER) or 0) >= jobs:
                last = time.monotonic()
                break
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    if last is None or started is None:
        raise SystemExit(f"{name}: only {client.get(COUNTER)} of {jobs} jobs done in time "
                         f"(see {log_dir})")
    seconds = last - started
    return {"jobs": jobs, "seconds": seconds, "rate": jobs / seconds, "exit": worker.returncode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--sleep", type=float, default=0.05, help="seconds each query waits")
    p.add_argument("--jobs", type=int, default=6000)
    p.add_argument("--blocking-jobs", type=int, default=60)
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_child:
        return raw_child(args)

    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from pgserver import LocalPostgres, find_bindir

    from jiggler_gevent.devserver import LocalServer

    bindir = find_bindir()
    if bindir is None:
        print("no PostgreSQL server binaries: apt-get install postgresql (or set "
              "JIGGLER_TEST_PG_BIN)", file=sys.stderr)
        return 1
    log_dir = tempfile.mkdtemp(prefix="bench-pg-")
    postgres = LocalPostgres(bindir).start()
    try:
        with LocalServer() as server:
            ours = run_worker(server.url, postgres.dsn, args, args.jobs, False, log_dir)
            raw_out = subprocess.run(
                [sys.executable, __file__, "--raw-child", "--dsn", postgres.dsn,
                 "--concurrency", str(args.concurrency), "--sleep", str(args.sleep),
                 "--seconds", str(max(ours["seconds"], 3.0))],
                capture_output=True, text=True, check=True, cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=ROOT))
            raw = json.loads(raw_out.stdout.strip().splitlines()[-1])
            raw["rate"] = raw["queries"] / raw["seconds"]
            blocking = run_worker(server.url, postgres.dsn, args, args.blocking_jobs, True,
                                  log_dir)
    finally:
        postgres.stop()
    ideal = args.concurrency / args.sleep
    result = {"concurrency": args.concurrency, "sleep": args.sleep, "ideal": ideal,
              "raw": raw, "ours": ours, "blocking": blocking,
              "ours_vs_raw": ours["rate"] / raw["rate"],
              "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as out:
        json.dump(result, out, indent=2)
    print(f"psycopg2, SELECT pg_sleep({args.sleep:g}) per job, -c {args.concurrency} "
          f"(ideal {ideal:,.0f}/s)")
    rows = [("raw greenlet loop (green psycopg2)", raw["rate"]),
            ("jiggler-gevent (green psycopg2)", ours["rate"]),
            ("jiggler-gevent --no-green-psycopg2", blocking["rate"])]
    for label, rate in rows:
        print(f"  {label:<38} {rate:9,.0f}/s  efficiency {rate / ideal:6.1%}")
    print(f"  ours / raw: {result['ours_vs_raw']:.2f}x   results: {RESULTS}")
    ok = ours["exit"] == 0 and blocking["exit"] == 0
    if not ok:
        print(f"a worker did not exit 0 (logs in {log_dir})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The raw floor: N gevent greenlets looping ``BRPOP key 1`` with redis-py, plus the
same work per job as the benchmark's job (``--work``), nothing else.

``--work noop`` does nothing with the popped bytes; ``http`` does ``workloads.http_get``
of ``--url``; ``fib`` computes ``workloads.fib(--fib-n)``; ``latency`` decodes the payload
(the only kind that does: it needs the job's arguments ``[sent_at, key]``) and
RPUSHes ``"<sent_at> <time.time() at pop>"`` to ``key``, as ``bench_jobs.Latency`` does.

Started by ``throughput.py`` as a subprocess: prints ``{"ready": true}`` once its
greenlets are running, then pops until SIGTERM or SIGINT, and prints one JSON line
with how many items it popped and how many jobs failed.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.event import Event  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

WORKS = ("noop", "http", "fib", "latency")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--greenlets", type=int, required=True)
    p.add_argument("--work", choices=WORKS, default="noop")
    p.add_argument("--url", help="for --work http")
    p.add_argument("--fib-n", type=int, default=workloads.FIB_N)
    args = p.parse_args()

    pool = redis.BlockingConnectionPool.from_url(args.redis_url, max_connections=args.greenlets + 2)
    client = redis.Redis(connection_pool=pool)
    client.ping()
    stop = Event()
    state = {"popped": 0, "failed": 0, "error": None}

    def work(raw: bytes) -> None:
        if args.work == "http":
            workloads.http_get(args.url)
        elif args.work == "fib":
            workloads.fib(args.fib_n)
        elif args.work == "latency":
            now = time.time()
            sent_at, key = json.loads(raw)["args"]
            client.rpush(key, f"{sent_at!r} {now!r}")

    def loop() -> None:
        while not stop.is_set():
            reply = client.brpop(args.key, 1)
            if reply is None:
                continue
            state["popped"] += 1
            if args.work == "noop":
                continue
            try:
                work(reply[1])
            except Exception as exc:  # counted and reported: the bench checks for none
                state["failed"] += 1
                state["error"] = f"{type(exc).__name__}: {exc}"

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    greenlets = [gevent.spawn(loop) for _ in range(args.greenlets)]
    gevent.sleep(0)  # every greenlet has sent its first BRPOP (or waits for a connection)
    print(json.dumps({"ready": True}), flush=True)
    stop.wait()
    gevent.joinall(greenlets, timeout=5)
    print(json.dumps(state), flush=True)
    pool.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

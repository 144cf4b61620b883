"""The raw floor: N gevent greenlets looping ``BRPOP key 1`` with redis-py, nothing else.

Started by ``throughput.py`` as a subprocess. Prints one JSON line once ``--total``
items were popped (rate from the first pop to the last), then idles (its greenlets
keep blocking on the empty list, as an idle worker does) until SIGTERM or SIGINT.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.event import Event  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--greenlets", type=int, required=True)
    p.add_argument("--total", type=int, required=True)
    args = p.parse_args()

    pool = redis.BlockingConnectionPool.from_url(args.redis_url, max_connections=args.greenlets + 2)
    client = redis.Redis(connection_pool=pool)
    client.ping()
    stop, done = Event(), Event()
    state = {"popped": 0, "first": 0.0, "last": 0.0}

    def loop() -> None:
        while not stop.is_set():
            if client.brpop(args.key, 1) is None:
                continue
            now = time.perf_counter()
            state["popped"] += 1
            if state["popped"] == 1:
                state["first"] = now
            if state["popped"] == args.total:
                state["last"] = now
                done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    greenlets = [gevent.spawn(loop) for _ in range(args.greenlets)]
    print(json.dumps({"ready": True}), flush=True)
    while not done.wait(0.5):
        if stop.is_set():
            break
    if done.is_set():
        seconds = state["last"] - state["first"]
        print(json.dumps({"popped": state["popped"], "seconds": seconds,
                          "rate": state["popped"] / seconds if seconds > 0 else None}), flush=True)
    stop.wait()
    gevent.joinall(greenlets, timeout=5)
    pool.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

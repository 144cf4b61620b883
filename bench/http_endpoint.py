"""A local HTTP endpoint that answers every GET after ``--delay`` seconds (default 0.1).

A gevent ``pywsgi`` server in its own process, so the jobs' HTTP client and this server
do not share a core's worth of Python. Started by ``throughput.py``: prints
``{"port": N}`` once it listens (``--port 0`` picks a free one), serves until SIGTERM
or SIGINT, then prints ``{"served": n}``. ``GET /stats`` answers ``{"served": n}`` at
once. The parent reads its CPU time from /proc to check that the endpoint is not
what limits the rate.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

BODY = b"ok\n" * 100  # 300 bytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.1)
    args = p.parse_args()
    served = [0]
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/stats":  # for the bench, answered at once
            body = json.dumps({"served": served[0]}).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        gevent.sleep(args.delay)
        served[0] += 1
        start_response("200 OK", headers)
        return [BODY]

    server = WSGIServer(("127.0.0.1", args.port), app, log=None, error_log=sys.stderr,
                        backlog=4096)
    server.start()
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop.set)
    print(json.dumps({"port": server.server_port}), flush=True)
    stop.wait()
    server.stop(timeout=2)
    print(json.dumps({"served": served[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

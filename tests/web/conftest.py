"""Fixtures of the dashboard tests: hostile data in Redis, and the app over it."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import ujson

from jiggler_gevent import Job, payload, periodic
from jiggler_gevent.keys import Keys

XSS = "<script>alert(\"x'ss\")</script>"
XSS_ERROR = "bad <img src=x onerror=alert(1)> \"quoted\" 'single' & <b>"


def failed_entry(jid: str, *, name: str = "Mail", queue: str = "mail", args=None,
                 message: str = "boom", retry_at=None) -> bytes:
    built = payload.build(name, [XSS, {"k": "\"'><"}] if args is None else args, {"kw": XSS},
                          queue=queue, retries=2, jid=jid)
    out = payload.failed(built, ValueError(message), now=time.time(), retry_at=retry_at)
    out["error_class"] = "Err<script>"
    out["error_backtrace"] = ["Traceback (most recent call last):", f"  raise {XSS}", "ValueError"]
    return payload.dumps(out, check_size=False)


def seed(client, namespace: str = "") -> Keys:
    """Hostile and odd data in every structure the dashboard shows."""
    keys = Keys(namespace)
    now = time.time()
    client.set(keys.processed, 1234)
    client.set(keys.failures, 56)
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(now - 86400))
    client.set(keys.processed_on(today), 700)
    client.set(keys.processed_on(yesterday), 534)
    client.set(keys.failures_on(today), 50)
    client.lpush(keys.queue("mail"), payload.dumps(payload.build(
        "Mail", [XSS], {}, queue="mail", retries=1, jid="queued1")), b"\xff\xfe raw")
    client.sadd(keys.queues, "mail")
    client.zadd(keys.dead("mail"), {failed_entry("dead1", message=XSS_ERROR): now,
                                    b"\xff\xfe<script>not utf-8": now - 1,
                                    ujson.dumps({"name": XSS, "jid": "odd\"'<>"}).encode(): now - 2})
    client.zadd(keys.retries("mail"),
                {failed_entry("retry1", message=XSS_ERROR, retry_at=now + 60): now + 60})
    client.zadd(keys.scheduled("mail"), {payload.dumps(payload.build(
        "Mail", [XSS], {}, queue="mail", retries=1, jid="sched1")): now + 3600})
    client.zadd(keys.processes, {"proc1": now})
    client.hset(keys.process("proc1"), mapping={
        "identity": "proc1", "hostname": "host<script>", "pid": 42, "queues": "mail,<b>",
        "concurrency": 10, "busy": 1, "quiet": 0, "started_at": now - 100, "rss": 50 * 2**20,
        "mode": "at-least-once", "version": "0.1.0",
        "busy_jobs": ujson.dumps([{"worker": "jiggler.worker-1", "jid": "busy1", "name": XSS,
                                   "queue": "mail", "started_at": now - 3}]),
    })
    return keys


class WebReport(Job):
    """A job registered in the test process (not in the standalone server's)."""

    name = "web.periodic.report"
    queue = "reports"

    def perform(self, *args, **kwargs):
        pass


HOUR_AGO_S = 3600


def publish_schedules(client, namespace: str = "", now: float | None = None) -> list:
    """Two schedules published by the worker's own scheduler, as a worker starting an
    hour ago would: a cron schedule with a hostile name and kwargs, in queue ``low``,
    whose tick of an hour ago is recorded; and an interval schedule of a job no process
    here knows (no queue, no tick). Returns the schedules."""
    from jiggler_gevent.server.periodic import PeriodicScheduler

    now = time.time() if now is None else now
    schedules = [periodic.Schedule(job=WebReport.name, cron="*/10 * * * *", queue="low",
                                   args=("weekly",), kwargs={"to": XSS}, name=XSS),
                 periodic.Schedule(job="web.periodic.nobody", every=3600, tz="Europe/Paris")]
    scheduler = PeriodicScheduler(client, Keys(namespace), schedules)
    scheduler.publish()
    scheduler.tick_once(now - HOUR_AGO_S)  # first sight of the cron schedule: recorded
    return schedules


# -- the standalone server (``jiggler-gevent web``) in a subprocess --------------------

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """``python -m jiggler_gevent.admin web`` on a free loopback port."""

    def __init__(self, redis_url: str, *extra: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jiggler_gevent.admin", "web", "--port", str(self.port),
             "--redis-url", redis_url, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO_ROOT))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web server exited: {self.proc.stdout.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("web server did not start listening within 15 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()


@pytest.fixture
def web_server(redis_url):
    """``web_server(*extra_args, env=None)`` starts one; all are stopped at the end."""
    started: list[WebServer] = []

    def start(*extra: str, env: dict | None = None) -> WebServer:
        server = WebServer(redis_url, *extra, env=env)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()

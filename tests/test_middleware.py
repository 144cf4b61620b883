"""Client and server middleware (jiggler_gevent/middleware.py): order, veto, payload
fields, failures taking the retry path, dotted-path loading, and the worker's chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest

from jiggler_gevent import EnqueueError, Job, middleware
from jiggler_gevent.config import Config
from jiggler_gevent.errors import ConfigError
from jiggler_gevent.keys import Keys

KEYS = Keys()
calls: list = []


class Echo(Job):
    name = "mw.echo"

    def perform(self, value=None):
        calls.append(("perform", self.jid, value))
        return value


class Boom(Job):
    name = "mw.boom"
    retries = 2

    def perform(self):
        raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def _clean():
    middleware.clear()
    calls.clear()
    yield
    middleware.clear()
    calls.clear()


@pytest.fixture
def make_launcher(redis_client, redis_url):
    """A Launcher (not started) on the clean test server; its connections closed after."""
    from jiggler_gevent.server.launcher import Launcher

    made = []

    def make(**overrides):
        options = dict(redis_url=redis_url, concurrency=2, fetch_timeout=0.2, timeout=2.0)
        launcher = Launcher(Config(**dict(options, **overrides)).validate())
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.fetcher.stopping = True
        launcher.client.connection_pool.disconnect()


def queued(client, queue="default") -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(KEYS.queue(queue), 0, -1)]


def tracer(label: str, side: str):
    if side == "client":
        def client_mw(job_class, payload, call_next):
            calls.append((label, "in"))
            out = call_next(payload)
            calls.append((label, "out"))
            return out
        return client_mw

    def server_mw(job, payload, call_next):
        calls.append((label, "in"))
        try:
            return call_next()
        finally:
            calls.append((label, "out"))
    return server_mw


# -- client side -----------------------------------------------------------------------


def test_client_middleware_adds_a_field_to_the_pushed_payload(redis_client):
    def request_id(job_class, payload, call_next):
        payload["request_id"] = f"req-{job_class.name}"
        return call_next(payload)

    middleware.add_client(request_id)
    jid = Echo.enqueue(1)
    [job] = queued(redis_client)
    assert job["jid"] == jid and job["request_id"] == "req-mw.echo"


def test_first_added_client_middleware_is_outermost(redis_client):
    middleware.add_client(tracer("a", "client"))
    middleware.add_client(tracer("b", "client"))
    Echo.enqueue()
    assert calls == [("a", "in"), ("b", "in"), ("b", "out"), ("a", "out")]


@pytest.mark.parametrize("how", ["none", "raise"])
def test_client_middleware_can_veto(redis_client, how):
    def veto(job_class, payload, call_next):
        if payload["args"] == ["spam"]:
            if how == "raise":
                raise middleware.SkipJob("no spam")
            return None
        return call_next(payload)

    middleware.add_client(veto)
    assert Echo.enqueue("spam") is None
    assert Echo.enqueue_in(60, "spam") is None
    jids = Echo.enqueue_bulk([["ham"], ["spam"], ["eggs"]])
    assert jids[1] is None and jids[0] and jids[2]
    assert [job["args"] for job in queued(redis_client)] == [["eggs"], ["ham"]]
    assert redis_client.zcard(KEYS.scheduled("default")) == 0


def test_client_middleware_can_reroute_bulk_jobs_per_queue(redis_client):
    def reroute(job_class, payload, call_next):
        if payload["args"][0] % 2:
            payload["queue"] = "odd"
        return call_next(payload)

    middleware.add_client(reroute)
    Echo.enqueue_bulk([[n] for n in range(5)])
    assert sorted(j["args"][0] for j in queued(redis_client)) == [0, 2, 4]
    assert sorted(j["args"][0] for j in queued(redis_client, "odd")) == [1, 3]


def test_client_middleware_error_propagates_and_nothing_is_pushed(redis_client):
    def broken(job_class, payload, call_next):
        raise ValueError("middleware bug")

    middleware.add_client(broken)
    with pytest.raises(ValueError, match="middleware bug"):
        Echo.enqueue()
    assert queued(redis_client) == []


def test_a_broken_payload_from_middleware_is_refused(redis_client):
    def bad_queue(job_class, payload, call_next):
        payload["queue"] = "no:colons"
        return call_next(payload)

    middleware.add_client(bad_queue)
    with pytest.raises(EnqueueError, match="broken payload"):
        Echo.enqueue()
    assert redis_client.keys("*") == []


def test_same_key_replaces_in_place_and_remove_works(redis_client):
    first, second, other = tracer("1", "client"), tracer("2", "client"), tracer("x", "client")
    middleware.add_client(first, key="k")
    middleware.add_client(other)
    middleware.add_client(second, key="k")
    assert middleware.client_middleware() == [second, other]
    middleware.remove("k")
    middleware.remove(other)
    assert middleware.client_middleware() == []


# -- server side -----------------------------------------------------------------------


def test_server_chain_is_none_without_middleware():
    assert middleware.server_chain() is None


def test_server_middleware_wraps_perform_in_order(redis_client, make_launcher):
    seen = []

    def context(job, payload, call_next):
        seen.append((job.jid, job.queue_name, payload["name"]))
        return call_next()

    middleware.add_server(tracer("outer", "server"))
    middleware.add_server(context)
    middleware.add_server(tracer("inner", "server"))
    launcher = make_launcher()
    jid = Echo.enqueue("x")
    assert _worker(launcher).process_one()
    assert calls == [("outer", "in"), ("inner", "in"), ("perform", jid, "x"),
                     ("inner", "out"), ("outer", "out")]
    assert seen == [(jid, "default", "mw.echo")]
    launcher.acker.flush()
    assert launcher.stats.processed == 1


@pytest.mark.parametrize("when", ["before", "after"])
def test_server_middleware_error_is_a_job_failure_and_goes_to_retry(redis_client, make_launcher,
                                                                  when):
    def flaky(job, payload, call_next):
        if when == "before":
            raise RuntimeError("report failed")
        call_next()
        raise RuntimeError("report failed")

    middleware.add_server(flaky)
    launcher = make_launcher()
    Echo.enqueue("x")
    assert _worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    [(raw, _)] = redis_client.zrange(KEYS.retries("default"), 0, -1, withscores=True)
    entry = json.loads(raw)
    assert entry["error_class"] == "RuntimeError" and entry["error_message"] == "report failed"
    assert launcher.stats.failed == 1
    assert len(calls) == (1 if when == "after" else 0)


def test_server_middleware_sees_the_job_exception(redis_client, make_launcher):
    reported = []

    def reporter(job, payload, call_next):
        try:
            return call_next()
        except Exception as exc:
            reported.append((job.jid, repr(exc)))
            raise

    middleware.add_server(reporter)
    launcher = make_launcher()
    jid = Boom.enqueue()
    assert _worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    assert reported == [(jid, "RuntimeError('boom')")]


def test_server_middleware_runs_inside_the_job_timeout(redis_client, make_launcher):
    import gevent

    class Slow(Job):
        name = "mw.slow"
        timeout = 0.2
        retries = 0

        def perform(self):
            pass

    def slow_middleware(job, payload, call_next):
        gevent.sleep(5)
        return call_next()

    middleware.add_server(slow_middleware)
    launcher = make_launcher()
    Slow.enqueue()
    assert _worker(launcher).process(launcher.fetcher.fetch()) == "dead"
    [raw] = redis_client.zrange(KEYS.dead("default"), 0, -1)
    assert json.loads(raw)["error_class"] == "JobTimeout"


def _worker(launcher):
    # like the launcher's own workers: the chain as it is when the launcher was made
    launcher.server_middleware = middleware.server_chain()
    return launcher._make_worker(0)


# -- configuration by dotted path ------------------------------------------------------


class Both:
    def around_enqueue(self, job_class, payload, call_next):
        payload["tagged"] = True
        return call_next(payload)

    def around_perform(self, job, payload, call_next):
        calls.append(("both", payload.get("tagged")))
        return call_next()


@pytest.fixture
def mw_module():
    module = types.ModuleType("mw_fixture_mod")
    module.Both = Both
    module.instance = Both()
    module.plain = lambda *a: None
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_load_dotted_paths_registers_both_sides(mw_module):
    middleware.load("mw_fixture_mod:Both, mw_fixture_mod.instance")
    assert len(middleware.client_middleware()) == 2
    assert len(middleware.server_middleware()) == 2
    middleware.load(["mw_fixture_mod:Both"])  # the same path again replaces, not duplicates
    assert len(middleware.server_middleware()) == 2


@pytest.mark.parametrize("path, message", [
    ("mw_fixture_mod:plain", "around_enqueue"),
    ("mw_fixture_mod:missing", "has no"),
    ("no_such_module_xyz:Thing", "cannot import"),
    ("justaname", "package.module:Name"),
])
def test_load_refuses_bad_paths(mw_module, path, message):
    with pytest.raises(ConfigError, match=message):
        middleware.load(path)


def test_cli_middleware_option_and_env(monkeypatch):
    from jiggler_gevent.cli import build_parser

    assert build_parser().parse_args(["--middleware", "a.b:C,d.e:F"]).middleware == "a.b:C,d.e:F"
    monkeypatch.setenv("JIGGLER_MIDDLEWARE", "x.y:Z")
    assert build_parser().parse_args([]).middleware == "x.y:Z"


def test_worker_cli_loads_middleware(tmp_path, redis_url, redis_client, bin_path):
    """A real worker with --middleware: the server side runs around perform."""
    (tmp_path / "mwjobs.py").write_text(
        "import os\n"
        "from jiggler_gevent import Job\n"
        "class Note(Job):\n"
        "    name = 'mw.note'\n"
        "    def perform(self, path):\n"
        "        open(path, 'a').write('perform\\n')\n"
        "class Around:\n"
        "    def around_perform(self, job, payload, call_next):\n"
        "        open(payload['args'][0], 'a').write('before ' + job.jid + '\\n')\n"
        "        return call_next()\n"
    )
    out = tmp_path / "out.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIGGLER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    jid = "0123456789abcdef01234567"
    redis_client.lpush(KEYS.queue("default"), json.dumps(
        {"name": "mw.note", "args": [str(out)], "jid": jid, "queue": "default", "retries": 0}))
    proc = subprocess.Popen([sys.executable, bin_path, "-r", "mwjobs", "--redis-url", redis_url,
                             "--middleware", "mwjobs:Around", "--watchdog-threshold", "0"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "perform" not in (
                out.read_text() if out.exists() else ""):
            time.sleep(0.05)
        assert out.read_text() == f"before {jid}\nperform\n"
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0

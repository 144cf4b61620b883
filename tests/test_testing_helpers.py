"""jiggler_gevent.testing: inline mode, fake mode and the pytest plugin, with no Redis
server (the client settings point at a port nothing listens on)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap

import pytest

import jiggler_gevent
from jiggler_gevent import EnqueueError, Job, job, middleware, testing
from jiggler_gevent.connection import settings

RAN: list = []


class Greet(Job):
    name = "th.greet"
    queue = "mail"

    def perform(self, who, *, loud=False):
        RAN.append(("greet", who, loud, self.jid, self.queue_name))
        return who.upper() if loud else who


class Fanout(Job):
    name = "th.fanout"

    def perform(self, names):
        RAN.append(("fanout", tuple(names)))
        for who in names:
            Greet.enqueue(who)


class Forever(Job):
    name = "th.forever"

    def perform(self):
        Forever.enqueue()


@job(name="th.add")
def add(a, b):
    RAN.append(("add", a + b))


@pytest.fixture(autouse=True)
def _no_server():
    RAN.clear()
    middleware.clear()
    jiggler_gevent.configure(redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    yield
    middleware.clear()
    jiggler_gevent.configure(namespace="")
    settings.redis_url = None


def test_inline_runs_perform_at_once_with_json_round_trip():
    with testing.inline() as mode:
        jid = Greet.enqueue("ada", loud=True)
        Greet.enqueue(("tuple", "arg"))
        add.enqueue(1, 2)
        Greet.enqueue_in(3600, "later")
        Greet.enqueue_at(datetime.datetime(2000, 1, 1), "past")
        Greet.enqueue_bulk([["x"], ["y"]])
    assert RAN[0] == ("greet", "ada", True, jid, "mail")
    assert RAN[1][1] == ["tuple", "arg"]  # arrived as JSON would carry it
    assert ("add", 3) in RAN
    assert [r[1] for r in RAN if r[0] == "greet"][2:] == ["later", "past", "x", "y"]
    assert len(mode.performed) == 7


def test_inline_refuses_arguments_json_cannot_carry():
    with testing.inline(), pytest.raises(EnqueueError):
        Greet.enqueue(datetime.date(2020, 1, 1))
    assert RAN == []


def test_inline_propagates_job_errors_and_bad_arity():
    class Fails(Job):
        name = "th.fails"

        def perform(self):
            raise ValueError("nope")

    with testing.inline():
        with pytest.raises(ValueError, match="nope"):
            Fails.enqueue()
        with pytest.raises(TypeError):
            Greet.enqueue("a", "b", "c")


def test_inline_runs_jobs_enqueued_by_jobs():
    with testing.inline():
        Fanout.enqueue(["a", "b"])
    assert [r[0] for r in RAN] == ["fanout", "greet", "greet"]


def test_fake_collects_per_queue_and_drain_runs_everything():
    with testing.fake() as jobs:
        Fanout.enqueue(["a", "b"])
        Greet.enqueue("c")
        assert RAN == []
        assert jobs.size() == 2 and jobs.size("mail") == 1
        assert [j.args for j in jobs.jobs_for(Greet)] == [["c"]]
        assert list(jobs.jobs) == ["default", "mail"]
        jobs.assert_enqueued(Fanout, ("a", "b"))
        with pytest.raises(AssertionError, match="was not enqueued"):
            jobs.assert_enqueued(Greet, "zzz")
        assert jobs.drain("mail") == 1
        assert jobs.drain() == 3  # fanout, then the two greets it enqueued
        jobs.assert_nothing_enqueued()
    assert [r[0] for r in RAN] == ["greet", "fanout", "greet", "greet"]


def test_fake_records_scheduled_time_and_clear():
    with testing.fake() as jobs:
        Greet.enqueue_in(60, "soon")
        add.enqueue(1, 1)
        [scheduled] = jobs.jobs_for(Greet)
        assert scheduled.at is not None and jobs.jobs_for(add)[0].at is None
        assert jobs.jobs_for("th.add")[0].args == [1, 1]
        jobs.clear()
        assert jobs.all == []


def test_drain_stops_a_job_that_enqueues_itself():
    with testing.fake() as jobs:
        Forever.enqueue()
        with pytest.raises(RuntimeError, match="keep coming"):
            jobs.drain(limit=50)


def test_client_middleware_runs_and_server_middleware_only_on_request():
    seen = []

    def tag(job_class, payload, call_next):
        payload["tag"] = "t"
        return call_next(payload)

    def around(job, payload, call_next):
        seen.append(payload.get("tag"))
        return call_next()

    middleware.add_client(tag)
    middleware.add_server(around)
    with testing.fake() as jobs:
        Greet.enqueue("x")
        assert jobs.all[0].payload["tag"] == "t"
        jobs.drain()
    assert seen == []
    with testing.inline(server_middleware=True):
        Greet.enqueue("y")
    assert seen == ["t"]


def test_the_real_client_is_back_after_the_block():
    before = settings._client
    with testing.fake():
        assert type(settings.client).__name__ == "_FakeClient"
        with pytest.raises(AttributeError, match="enqueues only"):
            settings.client.get("x")
    assert settings._client is before


def test_testing_does_not_import_gevent(run_python):
    result = run_python(textwrap.dedent("""
        import sys
        from jiggler_gevent import Job, testing
        class T(Job):
            name = "t"
            def perform(self, x): print("ran", x)
        with testing.inline():
            T.enqueue(1)
        with testing.fake() as jobs:
            T.enqueue(2)
            jobs.drain()
        print("gevent" in sys.modules)
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ran", "1", "ran", "2", "False"]


def test_pytest_plugin_fixtures(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["jiggler_gevent.testing"]\n')
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        from jiggler_gevent import Job

        DONE = []

        class Work(Job):
            name = "user.work"
            def perform(self, n):
                DONE.append(n)

        def test_fake(jiggler_fake):
            Work.enqueue(1)
            assert jiggler_fake.jobs_for(Work)[0].args == [1]
            assert DONE == []
            jiggler_fake.drain()
            assert DONE == [1]

        def test_inline(jiggler_inline):
            Work.enqueue(2)
            assert DONE[-1] == 2
    """))
    env = dict(os.environ, JIGGLER_REDIS_URL="redis://127.0.0.1:1/0")
    env["PYTHONPATH"] = os.pathsep.join([str(testing.__file__).rsplit("/jiggler_gevent", 1)[0],
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout

"""Django: a view enqueues (Django test Client), ``manage.py jiggler_gevent -c 20`` runs
100 jobs that write through the ORM from many greenlets at once, every row arrives,
no DB connection is left open, and TERM exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

from jiggler_gevent.keys import Keys  # noqa: E402

CONTRIB_DIR = Path(__file__).resolve().parent
MANAGE = CONTRIB_DIR / "manage.py"


@pytest.fixture(scope="module")
def django_project(django_setup):
    """Django set up in this process (once per session: see conftest.py)."""
    return django_setup


def _db_fds(pid: int, db: str) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd).startswith(db)
        except OSError:
            pass
    return count


def test_view_enqueues_and_the_worker_writes_from_many_greenlets(django_project, redis_client,
                                                                 start_worker):
    from django.test import Client
    from djapp.models import Row
    from e2e.procs import wait_until

    Row.objects.all().delete()
    web = Client()
    assert web.post("/rows/enqueue", {"count": 100}).json() == {"enqueued": 100}
    assert redis_client.llen(Keys().queue("rows")) == 100

    worker = start_worker(env=django_project, name="django",
                          argv=[sys.executable, str(MANAGE), "jiggler_gevent", "-c", "20"])
    wait_until(lambda: web.get("/rows").json()["count"] == 100, 30, "100 rows", worker)
    assert web.get("/rows").json() == {"count": 100, "distinct": 100}
    assert set(Row.objects.values_list("pid", flat=True)) == {worker.pid}  # exec: same pid
    assert "concurrency=20" in worker.stdout() and "queues=default,rows" in worker.stdout()
    if Path("/proc").is_dir():  # connections were closed after each job, none left open
        wait_until(lambda: _db_fds(worker.pid, django_project["DJPROJECT_DB"]) == 0, 5,
                   "the DB connections to close", worker)

    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


def test_bad_option_is_one_line_and_exit_2(django_project):
    env = dict(os.environ, **django_project)
    env["PYTHONPATH"] = os.pathsep.join([str(CONTRIB_DIR), str(CONTRIB_DIR.parents[1])])
    result = subprocess.run([sys.executable, str(MANAGE), "jiggler_gevent", "-c", "0"],
                            capture_output=True, text=True, env=env, cwd=CONTRIB_DIR, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "positive integer" in result.stderr
    result = subprocess.run([sys.executable, str(MANAGE), "jiggler_gevent", "-r", "x"],
                            capture_output=True, text=True, env=env, cwd=CONTRIB_DIR, timeout=30)
    assert result.returncode == 2 and "installed app's jobs" in result.stderr


def test_settings_become_worker_environment(django_project, monkeypatch):
    from django.core.management.base import CommandError

    from jiggler_gevent.contrib.django.management.commands import jiggler_gevent as cmd

    monkeypatch.delenv("JIGGLER_CONCURRENCY", raising=False)
    monkeypatch.setenv("JIGGLER_NAMESPACE", "from-env")
    env = cmd.settings_env({"queues": ["a", "b:2"], "concurrency": 7, "verbose": True,
                            "namespace": "from-settings", "periodic": [], "strict": None})
    assert env == {"JIGGLER_QUEUES": "a,b:2", "JIGGLER_CONCURRENCY": "7",
                   "JIGGLER_VERBOSE": "true"}  # the environment wins over the setting
    with pytest.raises(CommandError, match="unknown option 'nope'"):
        cmd.settings_env({"nope": 1})
    argv, _ = cmd.worker_command(["--settings", "x.y", "-c", "3", "--pythonpath=/tmp/p"])
    assert argv[1] == "-c" and argv[2].startswith("from gevent import monkey\nmonkey.patch_all()")
    assert argv[3:] == ["-r", cmd.BOOT_MODULE, "-c", "3"]


def test_db_hygiene_middleware_closes_around_every_job(django_project, monkeypatch):
    from jiggler_gevent import middleware
    from jiggler_gevent.contrib.django import boot

    calls = []
    monkeypatch.setattr(boot, "close_old_connections", lambda: calls.append("close"))
    assert boot.close_connections(None, {}, lambda: calls.append("job") or 5) == 5
    with pytest.raises(ValueError):
        boot.close_connections(None, {}, lambda: (_ for _ in ()).throw(ValueError("x")))
    assert calls == ["close", "job", "close", "close", "close"]
    boot.boot()  # again: still one hygiene middleware, the outermost
    assert middleware.server_middleware()[0] is boot.close_connections
    assert middleware.server_middleware().count(boot.close_connections) == 1

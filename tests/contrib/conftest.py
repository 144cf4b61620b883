"""Fixtures of the framework tests: the Flask and Django apps live in this folder and
are imported by their top-level names (``flaskapp``, ``djproject``), by the tests and
by the worker subprocesses alike."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jiggler_gevent import middleware, periodic

CONTRIB_DIR = Path(__file__).resolve().parent
if str(CONTRIB_DIR) not in sys.path:
    sys.path.insert(0, str(CONTRIB_DIR))


@pytest.fixture(scope="session")
def django_setup(tmp_path_factory, redis_server):
    """Django set up in this process once (it reads its settings once per process), on a
    fresh sqlite file with the tables made; the worker subprocesses get the same env."""
    import os

    import django
    from django.core.management import call_command

    db = tmp_path_factory.mktemp("dj") / "db.sqlite3"
    os.environ["DJPROJECT_DB"] = str(db)
    os.environ["DJPROJECT_REDIS_URL"] = redis_server.url
    os.environ["DJANGO_SETTINGS_MODULE"] = "djproject.settings"
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    return {"DJPROJECT_DB": str(db), "DJPROJECT_REDIS_URL": redis_server.url,
            "DJANGO_SETTINGS_MODULE": "djproject.settings"}


@pytest.fixture(autouse=True)
def _no_leftover_middleware():
    yield
    middleware.clear()
    periodic.clear()


@pytest.fixture
def start_worker(tmp_path, redis_url):
    """``start_worker(*args, env=None, argv=None)``: a ``bin/jiggler-gevent`` subprocess with this
    folder importable; killed by its PID at teardown if still running."""
    from e2e.procs import WorkerProcess

    workers = []

    def start(*args: str, env: dict | None = None, name: str | None = None,
              argv: list | None = None):
        """``argv`` replaces the whole command line (then ``args`` are not used)."""
        worker = WorkerProcess(list(args), workdir=tmp_path, redis_url=redis_url,
                               name=name or f"worker{len(workers) + 1}", require=False)
        if argv is not None:
            worker.argv = list(argv)
        worker.env["PYTHONPATH"] = f"{CONTRIB_DIR}:{worker.env['PYTHONPATH']}"
        worker.env.update(env or {})
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.kill()

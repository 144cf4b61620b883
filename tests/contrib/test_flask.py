"""Flask: a request enqueues, a real worker subprocess runs the job inside the app
context (it reads current_app.config), and the next request sees the result."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("flask")

from jiggler_gevent import middleware  # noqa: E402
from jiggler_gevent.contrib.flask import EXTENSION_NAME, AppContext, Jiggler  # noqa: E402


@pytest.fixture
def app_env(monkeypatch, redis_url):
    monkeypatch.setenv("FLASKAPP_REDIS_URL", redis_url)
    return {"FLASKAPP_REDIS_URL": redis_url}


@pytest.mark.parametrize("require, module_name, greeting", [
    ("flaskapp:create_app", None, "Hello"),
    ("flaskapp_module", "flaskapp_module", "Bonjour"),
])
def test_request_enqueues_worker_runs_in_app_context(redis_client, app_env, start_worker,
                                                     require, module_name, greeting):
    import flaskapp
    from e2e.procs import wait_until

    app = flaskapp.create_app() if module_name is None else __import__(module_name).app
    web = app.test_client()
    response = web.post("/greet/k1", data={"who": "ada"})
    assert response.status_code == 200 and len(response.json["jid"]) == 24
    assert web.get("/result/k1").json == {"result": None}

    worker = start_worker("-r", require, "-c", "5", env=app_env)
    wait_until(lambda: web.get("/result/k1").json["result"] is not None, 20, "the job's result",
               worker)
    assert web.get("/result/k1").json == {"result": f"{greeting}, ada"}
    wait_until(lambda: redis_client.get("flaskapp:teardowns") == b"1", 5, "the teardown", worker)

    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


def test_init_app_reads_config_and_sets_up_once(redis_url):
    from flask import Flask

    from jiggler_gevent.connection import settings

    app = Flask("cfg")
    app.config.update(JIGGLER_REDIS_URL=redis_url, JIGGLER_NAMESPACE="myapp",
                      JIGGLER_PERIODIC=[{"job": "flaskapp.greet", "every": 60, "args": ["p", "x"]}])
    ext = Jiggler()
    ext.init_app(app)
    ext.init_app(app)  # again (tests build apps many times): no second middleware
    try:
        assert app.extensions[EXTENSION_NAME] is ext
        assert settings.redis_url == redis_url and settings.keys.namespace == "myapp"
        [mw] = middleware.server_middleware()
        assert isinstance(mw, AppContext) and mw.app is app
    finally:
        import jiggler_gevent

        jiggler_gevent.configure(namespace="")
        settings.redis_url = None


def test_app_context_middleware_tears_down_on_failure():
    from flask import Flask, current_app

    app = Flask("teardown")
    torn = []
    app.teardown_appcontext(lambda exc: torn.append(repr(exc)))
    mw = AppContext(app)

    def failing():
        assert current_app.name == "teardown"
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError):
        mw(None, {}, failing)
    assert mw(None, {}, lambda: current_app.name) == "teardown"
    assert torn == ["RuntimeError('job failed')", "None"]


def test_worker_without_a_redis_url_follows_the_app_config(redis_client, app_env, start_worker):
    """``JIGGLER_REDIS_URL`` in ``app.config`` and no ``--redis-url``: the worker fetches from
    the app's Redis (where its requests enqueue), not from the default local server."""
    import sys

    import flaskapp
    from e2e.procs import BIN, wait_until

    web = flaskapp.create_app().test_client()
    assert web.post("/greet/k2", data={"who": "grace"}).status_code == 200
    worker = start_worker(env=app_env, argv=[sys.executable, str(BIN), "-r",
                                             "flaskapp:create_app", "-c", "2"])
    wait_until(lambda: web.get("/result/k2").json["result"] is not None, 20, "the job's result",
               worker)
    assert "using the app's redis url" in worker.stdout()
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


def test_worker_given_another_redis_url_keeps_it_and_warns(redis_url, caplog):
    from jiggler_gevent import cli, connection
    from jiggler_gevent.config import Config

    config = Config(redis_url="redis://127.0.0.1:1/0").validate()
    try:
        connection.configure(redis_url=redis_url, namespace="app")
        with caplog.at_level("INFO", logger="jiggler_gevent"):
            kept = cli.follow_the_app(config, url_given=True, namespace_given=False)
        assert kept.redis_url == "redis://127.0.0.1:1/0"
        assert kept.namespace == "app"  # not given: follows the app
        assert "the app configures the redis url" in caplog.text
        assert "using the app's namespace 'app'" in caplog.text
    finally:  # as tests/conftest.py's enqueue_to does
        connection.configure(namespace="", max_connections=connection.DEFAULT_CLIENT_CONNECTIONS)
        connection.settings.redis_url = None

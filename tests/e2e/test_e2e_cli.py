"""End to end: the command line refuses bad options with one clear line, and -V."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import redis

from jiggler_gevent import __version__
from jiggler_gevent.keys import Keys

from .procs import BIN, REPO_ROOT, WorkerProcess, wait_until, worker_env

RUN_TIMEOUT_S = 30


def run_bin(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run the worker command to completion (hang guard: a timeout, the process killed)."""
    try:
        return subprocess.run([sys.executable, str(BIN), *args], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S, env=worker_env(), cwd=str(cwd),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it by now
        pytest.fail(f"jiggler-gevent {' '.join(args)} did not exit within {RUN_TIMEOUT_S}s; "
                    f"stdout: {exc.stdout!r} stderr: {exc.stderr!r}")


def assert_one_clear_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("jiggler-gevent: error:"), lines[0]
    return lines[0]


BAD_OPTIONS = {
    "concurrency-zero": (["-c", "0"], "0"),
    "concurrency-text": (["-c", "abc"], "abc"),
    "concurrency-negative": (["-c", "-5"], "-5"),
    "queue-wildcard": (["-q", "a*"], "a*"),
    "queue-two-colons": (["-q", "x:y:z"], "x:y:z"),
    "queue-empty": (["-q", ","], "queue"),
    "queue-duplicate": (["-q", "a,a"], "twice"),
    "mode": (["--mode", "nope"], "nope"),
    "timeout-negative": (["-t", "-1"], "-1"),
    "poll-interval-nan": (["--poll-interval", "nan"], "nan"),
    "fetch-above-socket-timeout": (["--fetch-timeout", "9", "--socket-timeout", "5"], "fetch"),
    "unknown-option": (["--no-such-option"], "no-such-option"),
    "namespace": (["--namespace", "a b"], "namespace"),
    "require-missing-module": (["-r", "no_such_module_xyz"], "no_such_module_xyz"),
    "require-missing-file": (["-r", "./nowhere/jobs.py"], "nowhere"),
    "redis-url-scheme": (["--redis-url", "http://127.0.0.1:6379/0"], "redis"),
}


@pytest.mark.parametrize("args,mention", list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS))
def test_bad_option_exits_with_one_line(redis_url, tmp_path, args, mention):
    full = list(args)
    if "--redis-url" not in full:
        full += ["--redis-url", redis_url]  # so only the bad option can be the problem
    line = assert_one_clear_error(run_bin(*full, cwd=tmp_path))
    assert mention.lower() in line.lower(), line


def test_unreachable_redis_exits_with_one_line(tmp_path):
    result = run_bin("--redis-url", "redis://127.0.0.1:1/0", cwd=tmp_path)
    line = assert_one_clear_error(result)
    assert "127.0.0.1:1" in line


def test_job_module_that_fails_to_import_exits_with_one_line(redis_url, tmp_path):
    (tmp_path / "broken_jobs.py").write_text("raise ImportError('the app is misconfigured')\n")
    line = assert_one_clear_error(run_bin("-r", "broken_jobs", "--redis-url", redis_url,
                                          cwd=tmp_path))
    assert "misconfigured" in line


@pytest.mark.fresh_server(extra_args=("--requirepass", "s3cret"))
@pytest.mark.parametrize("credentials", [":wrong-pw@", ""], ids=["wrong-password", "no-password"])
def test_refused_credentials_exit_with_one_line(fresh_server, tmp_path, credentials):
    url = f"redis://{credentials}127.0.0.1:{fresh_server.port}/0"
    result = run_bin("--redis-url", url, cwd=tmp_path)
    line = assert_one_clear_error(result)
    assert any(word in line.lower() for word in ("password", "credential", "auth")), line
    assert "wrong-pw" not in line and "wrong-pw" not in result.stdout  # never echo a password


def test_version(tmp_path):
    result = run_bin("-V", cwd=tmp_path)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"jiggler-gevent {__version__}"
    assert result.stderr == ""


def test_help_lists_the_options(tmp_path):
    result = run_bin("--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--queues", "--concurrency", "--require", "--timeout", "--mode"):
        assert option in result.stdout


def test_the_client_package_does_not_import_gevent():
    code = "import sys, jiggler_gevent; print('gevent' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S, cwd=str(REPO_ROOT), env=worker_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.fresh_server(extra_args=("--requirepass", "s3cret"))
def test_right_password_starts_the_worker(fresh_server, tmp_path):
    """The control case of the refused-credentials tests: same server, right password."""
    url = f"redis://:s3cret@127.0.0.1:{fresh_server.port}/0"
    client = redis.Redis.from_url(url)
    worker = WorkerProcess(["-c", "2"], workdir=tmp_path, redis_url=url, require=False)
    try:
        worker.start()
        wait_until(lambda: client.zcard(Keys().processes) == 1, 15, "the heartbeat", worker)
        worker.send(signal.SIGTERM)
        worker.wait_exit(10)
        assert worker.returncode == 0, worker.tail()
        assert "s3cret" not in worker.stdout()
    finally:
        worker.kill()
        client.close()


def test_devserver_starts_with_requirepass(monkeypatch):
    from jiggler_gevent import devserver

    monkeypatch.setattr(devserver, "START_TIMEOUT_S", 5.0)
    server = devserver.LocalServer(extra_args=("--requirepass", "s3cret"))
    try:
        server.start()
        client = redis.Redis(port=server.port, password="s3cret")
        assert client.ping()
        client.close()
    finally:
        server.cleanup()

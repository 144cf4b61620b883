"""End to end: the ways a worker is booted (-r forms, config file, env) really work."""

from __future__ import annotations

import json
import signal
import textwrap

from jiggler_gevent.keys import Keys

from .procs import wait_until

KEYS = Keys()

JOB_SOURCE = """
    import os
    import time
    from jiggler_gevent import Job

    class {cls}(Job):
        name = "{name}"

        def perform(self, word):
            with open(os.environ["E2E_LEDGER"], "a") as f:
                f.write(f"{{self.jid}} {{os.getpid()}} end {{time.time()}}\\n")
"""


def raw_job(name: str, jid: str, queue: str = "default") -> bytes:
    return json.dumps({"name": name, "args": [jid], "jid": jid, "queue": queue}).encode()


def stop(worker) -> None:
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()


def test_require_a_file_path(tmp_path, redis_client, spawn_worker, ledger):
    app = tmp_path / "app dir"
    app.mkdir()
    (app / "file_jobs.py").write_text(textwrap.dedent(JOB_SOURCE.format(cls="Hello",
                                                                        name="boot.file")))
    redis_client.lpush(KEYS.queue("default"), raw_job("boot.file", "j1"))
    worker = spawn_worker("-r", str(app / "file_jobs.py"), "-c", "2", require=False)
    wait_until(lambda: "j1" in ledger.ended(), 15, "the job from a file to run", worker)
    stop(worker)


def test_require_a_module_factory(tmp_path, redis_client, spawn_worker, ledger):
    source = textwrap.dedent(JOB_SOURCE.format(cls="Made", name="boot.factory"))
    indented = textwrap.indent(source, "    ")
    (tmp_path / "factory_app.py").write_text(
        "CALLS = []\n\ndef create_app():\n    CALLS.append(1)\n" + indented)
    redis_client.lpush(KEYS.queue("default"), raw_job("boot.factory", "j2"))
    worker = spawn_worker("-r", "factory_app:create_app", "-c", "2", require=False)
    wait_until(lambda: "j2" in ledger.ended(), 15, "the job the factory defined to run", worker)
    stop(worker)


def heartbeat(client) -> dict:
    (identity,) = client.zrange(KEYS.processes, 0, -1)
    return {k.decode(): v.decode() for k, v in client.hgetall(KEYS.process(identity.decode()))
            .items()}


def test_flag_beats_env_beats_config_file(tmp_path, redis_client, spawn_worker):
    conf = tmp_path / "worker.conf"
    conf.write_text("queues = from_file\nconcurrency = 4\nenvironment = staging\n")
    worker = spawn_worker("-C", str(conf), "-e", "production",
                          env={"JIGGLER_CONCURRENCY": "3", "JIGGLER_ENVIRONMENT": "test"})
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 15, "a heartbeat", worker)
    info = heartbeat(redis_client)
    assert info["queues"] == "from_file"        # file (no flag or env for it)
    assert info["concurrency"] == "3"           # env beats file
    assert info["environment"] == "production"  # flag beats env and file
    stop(worker)


def test_config_file_named_by_env(tmp_path, redis_client, spawn_worker):
    conf = tmp_path / "env.conf"
    conf.write_text("concurrency = 5\n")
    worker = spawn_worker(env={"JIGGLER_CONFIG": str(conf)})
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 15, "a heartbeat", worker)
    assert heartbeat(redis_client)["concurrency"] == "5"
    stop(worker)

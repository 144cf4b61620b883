"""The admin subcommands (``jiggler-gevent stats``, ``retry-dead``, ...) against a real server."""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from jiggler_gevent import Job, admin, payload, periodic
from jiggler_gevent.api import signals_key
from jiggler_gevent.keys import Keys
from jiggler_gevent.server.periodic import PeriodicScheduler

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def dead_entry(jid: str, queue: str = "mail", name: str = "Mail") -> bytes:
    built = payload.build(name, ["x"], {}, queue=queue, retries=0, jid=jid)
    return payload.dumps(payload.failed(built, ValueError("boom"), now=time.time(), retry_at=None))


def put(client, keys: Keys, name: str, queue: str, mapping: dict) -> None:
    """ZADD to a queue's retries/scheduled/dead set, the queue registered."""
    client.zadd(getattr(keys, name)(queue), mapping)
    client.sadd(keys.queues, queue)


@pytest.fixture
def run(redis_url, redis_client, capsys, monkeypatch):
    """``run(*argv) -> (status, stdout, stderr)``, Redis url from the environment."""
    monkeypatch.setenv("JIGGLER_REDIS_URL", redis_url)
    monkeypatch.delenv("JIGGLER_NAMESPACE", raising=False)

    def call(*argv: str):
        status = admin.main(list(argv))
        out = capsys.readouterr()
        return status, out.out, out.err
    return call


def test_stats_table_and_json(run, redis_client):
    keys = Keys("")
    redis_client.set(keys.processed, 42)
    redis_client.lpush(keys.queue("mail"), payload.dumps(payload.build(
        "Mail", [], {}, queue="mail", retries=1)))
    redis_client.sadd(keys.queues, "mail")
    redis_client.zadd(keys.processes, {"p1": time.time()})
    redis_client.hset(keys.process("p1"), mapping={
        "hostname": "web\x1b[31m1", "pid": "77", "busy": "2", "concurrency": "10",
        "queues": "mail", "quiet": "1", "started_at": str(time.time())})
    status, out, _ = run("stats", "--days", "2")
    assert status == 0
    assert "processed  42" in out and "mail   1" in out
    assert "web\\x1b[31m1" in out and "\x1b" not in out  # no terminal escapes from Redis
    assert "2/10" in out and "quiet" in out and out.count("-") >= 2
    status, out, _ = run("stats", "--json", "--days", "3")
    data = json.loads(out)
    assert data["totals"]["processed"] == 42 and data["totals"]["busy"] == 2
    assert data["queues"][0]["name"] == "mail" and len(data["history"]) == 3
    assert data["processes"][0]["identity"] == "p1"


def test_stats_with_namespace(run, redis_client):
    redis_client.set(Keys("app2").processed, 5)
    redis_client.set(Keys("").processed, 9)
    status, out, _ = run("stats", "--json", "--namespace", "app2")
    assert status == 0 and json.loads(out)["totals"]["processed"] == 5


class CliReport(Job):
    name = "cli.periodic.report"
    queue = "reports"

    def perform(self, *args):
        pass


def test_periodic_table_and_json(run, redis_client):
    status, out, _ = run("periodic")
    assert status == 0 and out.startswith("no periodic schedules published: declare them")
    assert run("periodic", "--json")[:2] == (0, "[]\n")
    now = time.time()
    # every second: next to run at any time of day (every 10 min would tie with the daily
    # one at midnight in Paris, and the tie goes by name)
    schedules = [periodic.Schedule(job=CliReport.name, every=1, args=(1,), name="rep\x1b[31mort"),
                 periodic.Schedule(job="cli.periodic.nobody", every=86400, tz="Europe/Paris")]
    scheduler = PeriodicScheduler(redis_client, Keys("app4"), schedules)
    scheduler.publish()
    scheduler.tick_once(now - 3600)  # recorded an hour ago
    assert run("periodic")[1].startswith("no periodic schedules")  # another namespace
    status, out, _ = run("periodic", "--namespace", "app4")
    assert status == 0 and "\x1b" not in out  # no terminal escapes from Redis
    header, first, second = out.splitlines()
    assert header.split() == ["schedule", "when", "job", "queue", "next", "run", "last", "tick"]
    cells = re.split(r"\s{2,}", first)
    assert cells[:4] == ["rep\\x1b[31mort", "every 1 s", "cli.periodic.report", "reports"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in \d+[sm]\)", cells[4])
    last_tick = schedules[0].latest(now - 3600)
    assert cells[5] == admin._ago(str(last_tick)) + " (1h ago)"
    cells = re.split(r"\s{2,}", second)
    assert cells[:4] == ["cli.periodic.nobody", "every 1 d (Europe/Paris)", "cli.periodic.nobody",
                         "(the job's own)"]
    assert cells[5] == "none yet"
    status, out, _ = run("periodic", "--json", "--namespace", "app4")
    data = json.loads(out)
    assert [d["name"] for d in data] == ["rep\x1b[31mort", "cli.periodic.nobody"]
    assert data[0]["queue"] == "reports" and data[0]["args"] == [1] and data[0]["every"] == 1
    assert data[0]["last_tick"] == last_tick and data[1]["last_tick"] is None
    assert data[1]["timing"] == "every 1 d (Europe/Paris)" and data[1]["next_run"] > now
    redis_client.hset(Keys("app4").periodic_schedules, "far", json.dumps({"job": "x", "every": 1e300}))
    status, out, _ = run("periodic", "--namespace", "app4")
    assert status == 0 and re.search(r"^far .* \? \(in \d+d\)  none yet$", out, re.M)


def test_retry_dead_by_jid_and_all(run, redis_client):
    keys = Keys("")
    put(redis_client, keys, "dead", "mail", {dead_entry("a"): 1, dead_entry("b"): 2, b"\xff junk": 3})
    put(redis_client, keys, "dead", "low", {dead_entry("c", queue="low"): 4})
    status, out, err = run("retry-dead", "a", "nope")
    assert status == 1 and "moved 1 job(s)" in out and "not found in dead: nope" in err
    status, out, err = run("retry-dead", "--queue", "low", "b")
    assert status == 1 and "not found in dead of queue low: b" in err
    status, out, _ = run("retry-dead", "--all", "--queue", "low")
    assert status == 0 and "moved 1 job(s) from dead of queue low" in out
    assert redis_client.llen(keys.queue("low")) == 1
    status, out, _ = run("retry-dead", "--all")
    assert status == 0 and "moved 1 job(s)" in out and "1 entr(ies) are not runnable" in out
    assert redis_client.llen(keys.queue("mail")) == 2
    assert redis_client.zcard(keys.dead("mail")) == 1
    with pytest.raises(SystemExit) as exit_info:  # a usage error, before touching Redis
        run("retry-dead", "--all", "--queue", "bad:name")
    assert exit_info.value.code == 2


def test_retry_and_kill(run, redis_client):
    keys = Keys("")
    put(redis_client, keys, "retries", "mail", {dead_entry("r1"): time.time() + 50,
                                                dead_entry("r2"): time.time() + 60})
    assert run("retry", "r1")[0] == 0
    assert redis_client.llen(keys.queue("mail")) == 1
    status, out, _ = run("kill", "r2")
    assert status == 0 and "killed r2 (was in retries of queue mail)" in out
    assert redis_client.zcard(keys.dead("mail")) == 1 and redis_client.zcard(keys.retries("mail")) == 0
    status, _, err = run("kill", "r2")  # now dead: not in retries/scheduled
    assert status == 1 and "r2" in err


def test_destructive_commands_need_yes_without_a_terminal(run, redis_client, monkeypatch):
    keys = Keys("")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    put(redis_client, keys, "dead", "mail", {dead_entry("a"): 1})
    put(redis_client, keys, "dead", "low", {dead_entry("b", queue="low"): 1})
    redis_client.lpush(keys.queue("mail"), b"x", b"y")
    status, _, err = run("delete-dead")
    assert status == 1 and "--yes" in err and len(err.strip().splitlines()) == 1
    assert redis_client.zcard(keys.dead("mail")) == 1
    assert run("delete-dead", "--yes", "--queue", "low")[:2] == (
        0, "deleted 1 entr(ies) of the dead set of queue low\n")
    assert run("delete-dead", "--yes")[:2] == (0, "deleted 1 entr(ies) of the dead set\n")
    status, out, _ = run("clear-queue", "mail", "--yes")
    assert status == 0 and "deleted 2 job(s)" in out
    assert run("delete-retries", "--yes")[0] == 0


def test_quiet_and_stop(run, redis_client):
    keys = Keys("")
    redis_client.hset(keys.process("p1"), mapping={"identity": "p1"})
    status, out, _ = run("quiet", "p1")
    assert status == 0 and "quiet" in out
    assert run("stop", "p1")[0] == 0
    assert redis_client.lrange(signals_key(keys, "p1"), 0, -1) == [b"stop", b"quiet"]
    status, _, err = run("stop", "missing")
    assert status == 1 and err == "jiggler-gevent stop: no live process 'missing'\n"


def test_clean(run, redis_client):
    ours = Keys("app3")
    redis_client.lpush(ours.queue("a"), b"x")
    redis_client.lpush(ours.queue("b"), b"x", b"y")
    redis_client.sadd(ours.queues, "a", "b")
    redis_client.zadd(ours.dead("a"), {b"x": 1})
    redis_client.set("unrelated", 1)
    redis_client.set(Keys("").processed, 1)
    assert run("clean", "--queue", "a", "--yes", "--namespace", "app3")[0] == 0
    status, out, _ = run("clean", "--all-queues", "--yes", "--namespace", "app3")
    assert status == 0 and "deleted 2 job(s)" in out
    status, out, _ = run("clean", "--everything", "--yes", "--namespace", "app3")
    assert status == 0
    assert "deleted 2 key(s) matching {app3:jiggler}* and {app3:jiggler:q:*" in out
    assert sorted(redis_client.keys("*")) == sorted([Keys("").processed.encode(), b"unrelated"])


@pytest.mark.parametrize("argv", [
    ["clean", "--queue", "", "--yes"], ["clean", "--queue", "a:b", "--yes"],
    ["clear-queue", "", "--yes"], ["retry-dead", "--all", "--queue", ""],
    ["delete-dead", "--queue", "{x}", "--yes"]])
def test_a_bad_or_empty_queue_name_is_a_usage_error_that_deletes_nothing(run, redis_client,
                                                                         capsys, argv):
    """``clean --queue "$Q"`` with Q unset once fell through to ``--everything``."""
    ours = Keys()
    redis_client.lpush(ours.queue("a"), b"x")
    redis_client.zadd(ours.dead("a"), {b"y": 1})
    with pytest.raises(SystemExit) as exit_info:
        admin.main(argv)
    assert exit_info.value.code == 2
    assert "is not a queue name" in capsys.readouterr().err
    assert redis_client.llen(ours.queue("a")) == 1 and redis_client.zcard(ours.dead("a")) == 1


def test_errors_are_one_line(run):
    status, _, err = run("stats", "--redis-url", "redis://127.0.0.1:1/0")
    assert status == 1 and err.startswith("jiggler-gevent stats: cannot connect to Redis")
    assert len(err.strip().splitlines()) == 1
    status, _, err = run("stats", "--redis-url", "http://x")
    assert status == 1 and "must start with redis://" in err
    status, _, err = run("stats", "--namespace", "a:b")
    assert status == 1 and "namespace" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        admin.main(["retry-dead"])  # neither --all nor a jid
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        admin.main(["no-such-command"])


def test_subcommand_names_match_the_parser():
    parser = admin.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(choices) == sorted(admin.SUBCOMMANDS)


def test_module_entry_point(redis_url, redis_client):
    redis_client.set(Keys("").processed, 3)
    env = dict(os.environ, JIGGLER_REDIS_URL=redis_url, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-m", "jiggler_gevent.admin", "stats", "--json"],
                            capture_output=True, text=True, timeout=30, env=env, cwd=str(REPO_ROOT))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["processed"] == 3


def test_migrate_keys(run, redis_client, monkeypatch):
    """``migrate-keys`` over a keyspace of the 0.1 layout (literal 0.1 key names)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    old_job = json.dumps({"name": "Mail", "args": [], "jid": "old1", "queue": "mail"})
    redis_client.lpush("app5:jiggler:list:mail", old_job)
    redis_client.zadd("app5:jiggler:set:dead", {json.dumps({"name": "Mail", "jid": "d1",
                                                            "queue": "low"}): 5})
    redis_client.set("app5:jiggler:stats:processed_counter", 12)
    redis_client.zadd("app5:jiggler:processes", {"p0": time.time()})
    redis_client.hset("app5:jiggler:process:p0", "identity", "p0")
    before = sorted(redis_client.keys("*"))

    status, out, _ = run("migrate-keys", "--dry-run", "--namespace", "app5")
    assert status == 0 and out.splitlines() == [
        "0.1 key layout (app5:jiggler:*): 1 pending job(s) in 1 list(s), 1 dead, 1 counter(s), "
        "1 bookkeeping key(s), 1 live 0.1 worker process(es)",
        "live 0.1 worker process(es): p0",
        "dry run: nothing changed"]
    assert sorted(redis_client.keys("*")) == before
    status, _, err = run("migrate-keys", "--yes", "--namespace", "app5")
    assert status == 1 and err.startswith("jiggler-gevent migrate-keys: 0.1 worker process(es) "
                                          "still alive") and len(err.splitlines()) == 1
    redis_client.delete("app5:jiggler:process:p0")  # the 0.1 worker stopped
    status, _, err = run("migrate-keys", "--namespace", "app5")
    assert status == 1 and "--yes" in err and len(err.splitlines()) == 1
    assert sorted(redis_client.keys("*")) == sorted(set(before) - {b"app5:jiggler:process:p0"})

    status, out, _ = run("migrate-keys", "--yes", "--namespace", "app5")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == ("0.1 key layout (app5:jiggler:*): 1 pending job(s) in 1 list(s), 1 dead, "
                        "1 counter(s), 1 bookkeeping key(s)")
    assert lines[1] == ("moved 1 pending job(s), 0 job(s) of gone processes (to the head of their "
                        "queues), 0 quarantined job(s), 0 scheduled, 0 retries, 1 dead")
    assert "added 12 processed and 0 failed to the totals, merged 0 day(s) of history" in lines
    assert "registered queue(s): low, mail" in lines
    assert lines[-2].startswith("dropped 1 bookkeeping key(s) of 0.1")
    assert lines[-1] == "done: nothing left in the 0.1 layout; start the new workers"
    keys = Keys("app5")
    assert redis_client.lrange(keys.queue("mail"), 0, -1) == [old_job.encode()]
    assert redis_client.zcard(keys.dead("low")) == 1 and redis_client.get(keys.processed) == b"12"
    assert redis_client.keys("app5:jiggler:*") == []
    status, out, _ = run("stats", "--json", "--namespace", "app5")
    assert json.loads(out)["totals"]["enqueued"] == 1

    status, out, _ = run("migrate-keys", "--namespace", "app5")  # nothing left: no question
    assert status == 0 and out.splitlines()[0] == "0.1 key layout (app5:jiggler:*): nothing"
    assert out.splitlines()[-1].startswith("done")

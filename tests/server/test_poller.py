"""Poller: each queue's scheduled and retry sets -> that queue, one atomic script per
batch, for every queue in the registry (``keys.queues``) and the process's own."""

from __future__ import annotations

import json
import time

import gevent
import pytest

from jiggler_gevent import Job
from jiggler_gevent.keys import Keys

from . import jobs
from .helpers import new_worker, raw_of, zset_entries

KEYS = Keys()


class Mail(Job):
    name = "srv.mail"
    queue = "mail"

    def perform(self):
        jobs.EVENTS.append(("mail", self.jid))


def test_moves_due_jobs_and_leaves_the_rest(redis_client, make_launcher):
    launcher = make_launcher()
    t0 = time.time()
    soon = jobs.Ok.enqueue_at(t0 + 10, "soon")
    later = jobs.Ok.enqueue_at(t0 + 20, "later")
    assert redis_client.zcard(KEYS.scheduled("default")) == 2
    scheduled = dict(redis_client.zrange(KEYS.scheduled("default"), 0, -1, withscores=True))

    assert launcher.poller.poll_once(t0 + 5) == 0
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert launcher.poller.poll_once(t0 + 15) == 1

    queued = redis_client.lrange(KEYS.queue("default"), 0, -1)
    assert [json.loads(raw)["jid"] for raw in queued] == [soon]
    assert queued[0] in scheduled  # the bytes are moved unchanged
    (left, _), = zset_entries(redis_client, KEYS.scheduled("default"))
    assert left["jid"] == later
    assert launcher.poller.poll_once(t0 + 20) == 1  # due exactly at its score
    assert redis_client.zcard(KEYS.scheduled("default")) == 0


def test_default_now_is_the_current_time(redis_client, make_launcher):
    launcher = make_launcher()
    jobs.Ok.enqueue_in(0.2)
    jobs.Ok.enqueue_in(3600)
    assert launcher.poller.poll_once() == 0
    gevent.sleep(0.3)
    assert launcher.poller.poll_once() == 1
    assert redis_client.zcard(KEYS.scheduled("default")) == 1


def test_scheduled_job_carries_its_own_queue(redis_client, make_launcher):
    launcher = make_launcher(queues="mail")
    t0 = time.time()
    jid = Mail.enqueue_at(t0 + 10)
    other = jobs.Ok.with_options(queue="reports").enqueue_at(t0 + 10)
    assert redis_client.zcard(KEYS.scheduled("mail")) == 1
    assert redis_client.zcard(KEYS.scheduled("reports")) == 1
    assert b"reports" in redis_client.smembers(KEYS.queues)  # how the poller finds it
    assert launcher.poller.poll_once(t0 + 11) == 2
    assert [json.loads(r)["jid"] for r in redis_client.lrange(KEYS.queue("mail"), 0, -1)] == [jid]
    assert [json.loads(r)["jid"] for r in redis_client.lrange(KEYS.queue("reports"), 0, -1)] == [other]
    assert redis_client.llen(KEYS.queue("default")) == 0


def test_each_set_moves_to_its_own_queue_whatever_the_payload_says(redis_client, make_launcher):
    """The retrier files a retry under its target queue; the poller reads no queue field."""
    launcher = make_launcher()
    redis_client.sadd(KEYS.queues, "slow")
    in_default = json.dumps({"name": "srv.ok", "args": [], "jid": "1" * 24,
                             "queue": "other", "retry_queue": "slow", "attempt": 1})
    in_slow = json.dumps({"name": "srv.ok", "args": [], "jid": "2" * 24, "queue": "default",
                          "retry_queue": "slow", "attempt": 1})
    scheduled = json.dumps({"name": "srv.ok", "args": [], "jid": "3" * 24, "queue": "fast"})
    redis_client.zadd(KEYS.retries("default"), {in_default: 100})
    redis_client.zadd(KEYS.retries("slow"), {in_slow: 100})
    redis_client.zadd(KEYS.scheduled("default"), {scheduled: 100})

    assert launcher.poller.poll_once(200) == 3
    assert redis_client.lrange(KEYS.queue("slow"), 0, -1) == [in_slow.encode()]
    assert sorted(redis_client.lrange(KEYS.queue("default"), 0, -1)) == sorted(
        [in_default.encode(), scheduled.encode()])
    assert not redis_client.exists(KEYS.queue("fast"), KEYS.queue("other"))
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert redis_client.zcard(KEYS.retries("slow")) == 0


def test_retried_job_runs_again_through_the_poller(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Boom.enqueue()
    worker = new_worker(launcher)
    worker.process_one()
    (_, retry_at), = redis_client.zrange(KEYS.retries("default"), 0, -1, withscores=True)
    assert launcher.poller.poll_once(retry_at - 1) == 0
    assert launcher.poller.poll_once(retry_at) == 1
    worker.process_one()
    assert jobs.events("boom") == [("boom", jid, 0), ("boom", jid, 1)]
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["attempt"] == 2


def test_entry_without_queue_goes_to_the_sets_queue(redis_client, make_launcher):
    launcher = make_launcher(queues="mail")
    member = json.dumps({"name": "srv.ok", "args": []})
    redis_client.zadd(KEYS.scheduled("mail"), {member: 1})
    assert launcher.poller.poll_once(2) == 1
    assert redis_client.lrange(KEYS.queue("mail"), 0, -1) == [member.encode()]


def test_malformed_scheduled_entries_go_to_the_dead_set(redis_client, make_launcher):
    launcher = make_launcher()
    bad = {
        b"not json at all": 1,
        b'"a json string"': 1,
        b"\xff\xfe not utf-8 \x00": 1,
        b'{"queue": "default", "args": []}': 1,
        b'{"name": 42, "queue": "default"}': 1,
    }
    redis_client.zadd(KEYS.scheduled("default"), bad)
    redis_client.zadd(KEYS.retries("default"), {b'{"retry_queue": "slow"}': 1})
    # a queue field the poller would once have followed: ignored, never a key name
    odd_queues = [json.dumps({"name": "srv.ok", "queue": q}).encode()
                  for q in ("a*b", "a:b", 42, "q" * 200)]
    good = json.dumps({"name": "srv.ok", "args": [], "queue": "default"}).encode()
    redis_client.zadd(KEYS.scheduled("default"), {m: 1 for m in [good, *odd_queues]})

    assert launcher.poller.poll_once(5) == 5
    assert sorted(redis_client.lrange(KEYS.queue("default"), 0, -1)) == sorted([good, *odd_queues])
    dead = zset_entries(redis_client, KEYS.dead("default"))
    assert sorted(raw_of(entry) for entry, _ in dead) == sorted(
        list(bad) + [b'{"retry_queue": "slow"}'])
    for entry, score in dead:
        assert entry["error_class"] == "PayloadError" and entry["error_message"]
        assert entry["queue"] == "default"
        assert score == 5
    assert redis_client.zcard(KEYS.scheduled("default")) == 0
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert not [k for k in redis_client.keys("*") if b"a*b" in k or b"a:b" in k]


@pytest.mark.parametrize("member", [b"[1, 2, 3]", b"[]"], ids=["list", "empty-list"])
def test_json_array_scheduled_entry_goes_to_the_dead_set(redis_client, make_launcher, member):
    launcher = make_launcher()
    redis_client.zadd(KEYS.scheduled("default"), {member: 1})
    assert launcher.poller.poll_once(5) == 0
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert raw_of(entry) == member
    assert redis_client.llen(KEYS.queue("default")) == 0


def test_script_flush_between_polls(redis_client, make_launcher):
    launcher = make_launcher()
    t0 = time.time()
    jobs.Ok.enqueue_at(t0 + 1)
    assert launcher.poller.poll_once(t0 + 2) == 1
    redis_client.script_flush()
    jobs.Ok.enqueue_at(t0 + 3)
    assert launcher.poller.poll_once(t0 + 4) == 1
    assert redis_client.llen(KEYS.queue("default")) == 2


def test_moves_more_than_one_batch(redis_client, make_launcher):
    launcher = make_launcher()
    redis_client.zadd(KEYS.scheduled("default"), {json.dumps({"name": "srv.ok", "jid": f"{i:024x}"}): 1
                                        for i in range(250)})
    assert launcher.poller.poll_once(2) == 250
    assert redis_client.llen(KEYS.queue("default")) == 250


def test_racing_pollers_move_each_job_exactly_once(redis_client, make_launcher, capsys):
    n = 2000
    members = {json.dumps({"name": "srv.ok", "args": [i], "jid": f"{i:024x}"}): 1234.5
               for i in range(n)}
    with redis_client.pipeline(transaction=False) as pipe:
        items = list(members.items())
        for start in range(0, n, 500):
            pipe.zadd(KEYS.scheduled("default"), dict(items[start:start + 500]))
        pipe.execute()
    assert redis_client.zcard(KEYS.scheduled("default")) == n
    pollers = [make_launcher().poller for _ in range(4)]  # each with its own connections
    runs = [gevent.spawn(p.poll_once, 1234.5) for p in pollers for _ in range(3)]
    gevent.joinall(runs, timeout=30, raise_error=True)
    moved = sum(g.value for g in runs)

    queued = redis_client.lrange(KEYS.queue("default"), 0, -1)
    with capsys.disabled():
        print(f"\nracing pollers (4 x 3 passes, {n} due at one timestamp): "
              f"lost {n - len(set(queued))} / dup {len(queued) - len(set(queued))} "
              f"of {n} (in flight at fault: {n})", flush=True)
    assert moved == n
    assert len(queued) == n
    assert set(queued) == {m.encode() for m in members}
    assert redis_client.zcard(KEYS.scheduled("default")) == 0
    assert redis_client.zcard(KEYS.dead("default")) == 0


def test_polls_queues_in_the_registry_that_no_worker_listens_to(redis_client, make_launcher):
    launcher = make_launcher(queues="default")
    member = json.dumps({"name": "srv.ok", "args": [], "queue": "nobody"}).encode()
    redis_client.zadd(KEYS.scheduled("nobody"), {member: 1})
    redis_client.zadd(KEYS.retries("unknown"), {member: 1})  # never registered: not found
    redis_client.sadd(KEYS.queues, "nobody", "bad:name", "a*")  # bad names are skipped
    assert launcher.poller.queues() == ["default", "nobody"]
    assert launcher.poller.poll_once(5) == 1
    assert redis_client.lrange(KEYS.queue("nobody"), 0, -1) == [member]
    assert redis_client.zcard(KEYS.retries("unknown")) == 1


def test_own_queues_are_polled_before_any_heartbeat(redis_client, make_launcher):
    launcher = make_launcher(queues="mine")
    assert not redis_client.exists(KEYS.queues)
    redis_client.zadd(KEYS.retries("mine"), {json.dumps({"name": "srv.ok"}): 1})
    assert launcher.poller.poll_once(5) == 1
    assert redis_client.llen(KEYS.queue("mine")) == 1


def test_many_queues_in_few_round_trips(redis_client, make_launcher):
    launcher = make_launcher()
    names = [f"q{i}" for i in range(400)]  # 800 sets: two pipelines of script calls
    with redis_client.pipeline(transaction=False) as pipe:
        pipe.sadd(KEYS.queues, *names)
        for i, name in enumerate(names):
            pipe.zadd(KEYS.scheduled(name), {json.dumps({"name": "srv.ok", "args": [i]}): 1})
            pipe.zadd(KEYS.retries(name), {json.dumps({"name": "srv.ok", "args": [-i]}): 1})
        pipe.zadd(KEYS.retries("q7"), {json.dumps({"name": "srv.ok", "jid": f"{i:024x}"}): 1
                                         for i in range(250)})  # three batches in one queue
        pipe.execute()
    redis_client.script_load(launcher.scripts.schedule.script)  # no NOSCRIPT round here
    redis_client.config_resetstat()
    assert launcher.poller.poll_once(5) == 800 + 250
    for name in names:
        assert redis_client.llen(KEYS.queue(name)) == (252 if name == "q7" else 2), name
    stats = redis_client.info("commandstats")
    # one call per set (400 queues and our own "default"), two more batches for q7
    assert stats["cmdstat_evalsha"]["calls"] == 802 + 2
    assert "cmdstat_script|exists" not in stats  # plain EVALSHA in the pipelines


def test_a_job_failing_with_a_retry_queue_is_retried_in_that_queue(redis_client, make_launcher):
    """retry_queue: the retry entry lands in the target queue's retry set (and the target
    in the registry), and the poller moves it to that queue's pending list."""
    launcher = make_launcher(queues="default")
    jid = jobs.Boom.with_options(retry_queue="slow").enqueue()
    worker = new_worker(launcher)
    assert worker.process_one()
    assert redis_client.zcard(KEYS.retries("default")) == 0
    ((entry, retry_at),) = [(json.loads(m), s) for m, s in
                            redis_client.zrange(KEYS.retries("slow"), 0, -1, withscores=True)]
    assert entry["jid"] == jid and entry["retry_queue"] == "slow" and entry["queue"] == "default"
    assert b"slow" in redis_client.smembers(KEYS.queues)
    assert redis_client.llen(KEYS.in_progress("default", launcher.identity)) == 0  # acked

    assert launcher.poller.poll_once(retry_at) == 1
    (raw,) = redis_client.lrange(KEYS.queue("slow"), 0, -1)
    assert json.loads(raw)["jid"] == jid
    slow = make_launcher(queues="slow")
    assert new_worker(slow).process_one()
    assert jobs.events("boom") == [("boom", jid, 0), ("boom", jid, 1)]
    # failing again from "slow": its retry_queue is its own queue now
    assert redis_client.zcard(KEYS.retries("slow")) == 1


def test_an_invalid_retry_queue_names_no_key(redis_client, make_launcher):
    """A payload with an invalid retry_queue cannot run: it goes to its own queue's dead set
    (the retrier would fall back to the job's own queue if one ever got that far)."""
    launcher = make_launcher()
    member = json.dumps({"name": "srv.boom", "args": [], "kwargs": {}, "jid": "e" * 24,
                         "queue": "default", "retry_queue": "bad:queue"})
    redis_client.lpush(KEYS.queue("default"), member)
    assert new_worker(launcher).process_one()
    assert redis_client.zcard(KEYS.dead("default")) == 1
    assert not [k for k in redis_client.keys("*") if b"bad" in k]

"""Poller: scheduled and retry sets -> queues, one atomic script per batch."""

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
    assert redis_client.zcard(KEYS.scheduled) == 2
    scheduled = dict(redis_client.zrange(KEYS.scheduled, 0, -1, withscores=True))

    assert launcher.poller.poll_once(t0 + 5) == 0
    assert redis_client.llen(KEYS.queue("default")) == 0
    assert launcher.poller.poll_once(t0 + 15) == 1

    queued = redis_client.lrange(KEYS.queue("default"), 0, -1)
    assert [json.loads(raw)["jid"] for raw in queued] == [soon]
    assert queued[0] in scheduled  # the bytes are moved unchanged
    (left, _), = zset_entries(redis_client, KEYS.scheduled)
    assert left["jid"] == later
    assert launcher.poller.poll_once(t0 + 20) == 1  # due exactly at its score
    assert redis_client.zcard(KEYS.scheduled) == 0


def test_default_now_is_the_current_time(redis_client, make_launcher):
    launcher = make_launcher()
    jobs.Ok.enqueue_in(0.2)
    jobs.Ok.enqueue_in(3600)
    assert launcher.poller.poll_once() == 0
    gevent.sleep(0.3)
    assert launcher.poller.poll_once() == 1
    assert redis_client.zcard(KEYS.scheduled) == 1


def test_scheduled_job_carries_its_own_queue(redis_client, make_launcher):
    launcher = make_launcher(queues="mail")
    t0 = time.time()
    jid = Mail.enqueue_at(t0 + 10)
    other = jobs.Ok.with_options(queue="reports").enqueue_at(t0 + 10)
    assert launcher.poller.poll_once(t0 + 11) == 2
    assert [json.loads(r)["jid"] for r in redis_client.lrange(KEYS.queue("mail"), 0, -1)] == [jid]
    assert [json.loads(r)["jid"] for r in redis_client.lrange(KEYS.queue("reports"), 0, -1)] == [other]
    assert redis_client.llen(KEYS.queue("default")) == 0


def test_retry_set_honours_retry_queue(redis_client, make_launcher):
    launcher = make_launcher()
    with_retry_queue = json.dumps({"name": "srv.ok", "args": [], "jid": "1" * 24,
                                   "queue": "default", "retry_queue": "slow", "attempt": 1})
    without = json.dumps({"name": "srv.ok", "args": [], "jid": "2" * 24, "queue": "fast",
                          "attempt": 1})
    redis_client.zadd(KEYS.retries, {with_retry_queue: 100, without: 100})
    # in the scheduled set, retry_queue does not apply
    scheduled = json.dumps({"name": "srv.ok", "args": [], "jid": "3" * 24, "queue": "default",
                            "retry_queue": "slow"})
    redis_client.zadd(KEYS.scheduled, {scheduled: 100})

    assert launcher.poller.poll_once(200) == 3
    assert redis_client.lrange(KEYS.queue("slow"), 0, -1) == [with_retry_queue.encode()]
    assert redis_client.lrange(KEYS.queue("fast"), 0, -1) == [without.encode()]
    assert redis_client.lrange(KEYS.queue("default"), 0, -1) == [scheduled.encode()]
    assert redis_client.zcard(KEYS.retries) == 0


def test_retried_job_runs_again_through_the_poller(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Boom.enqueue()
    worker = new_worker(launcher)
    worker.process_one()
    (_, retry_at), = redis_client.zrange(KEYS.retries, 0, -1, withscores=True)
    assert launcher.poller.poll_once(retry_at - 1) == 0
    assert launcher.poller.poll_once(retry_at) == 1
    worker.process_one()
    assert jobs.events("boom") == [("boom", jid, 0), ("boom", jid, 1)]
    (entry, _), = zset_entries(redis_client, KEYS.retries)
    assert entry["attempt"] == 2


def test_entry_without_queue_goes_to_default(redis_client, make_launcher):
    launcher = make_launcher()
    member = json.dumps({"name": "srv.ok", "args": []})
    redis_client.zadd(KEYS.scheduled, {member: 1})
    assert launcher.poller.poll_once(2) == 1
    assert redis_client.lrange(KEYS.queue("default"), 0, -1) == [member.encode()]


def test_malformed_scheduled_entries_go_to_the_dead_set(redis_client, make_launcher):
    launcher = make_launcher()
    bad = {
        b"not json at all": 1,
        b'"a json string"': 1,
        b"\xff\xfe not utf-8 \x00": 1,
        b'{"queue": "default", "args": []}': 1,
        b'{"name": "srv.ok", "queue": "a*b"}': 1,
        b'{"name": "srv.ok", "queue": "a:b"}': 1,
        b'{"name": "srv.ok", "queue": 42}': 1,
        b'{"name": "srv.ok", "queue": "' + b"q" * 200 + b'"}': 1,
    }
    redis_client.zadd(KEYS.scheduled, bad)
    redis_client.zadd(KEYS.retries, {b'{"name": "srv.ok", "retry_queue": "x y"}': 1})
    good = json.dumps({"name": "srv.ok", "args": [], "queue": "default"})
    redis_client.zadd(KEYS.scheduled, {good: 1})

    assert launcher.poller.poll_once(5) == 1
    assert redis_client.lrange(KEYS.queue("default"), 0, -1) == [good.encode()]
    dead = zset_entries(redis_client, KEYS.dead)
    assert sorted(raw_of(entry) for entry, _ in dead) == sorted(
        list(bad) + [b'{"name": "srv.ok", "retry_queue": "x y"}'])
    for entry, score in dead:
        assert entry["error_class"] == "PayloadError" and entry["error_message"]
        assert score == 5
    assert redis_client.zcard(KEYS.scheduled) == 0 and redis_client.zcard(KEYS.retries) == 0
    assert not [k for k in redis_client.keys("*") if b"a*b" in k or b"a:b" in k]


@pytest.mark.parametrize("member", [b"[1, 2, 3]", b"[]"], ids=["list", "empty-list"])
def test_json_array_scheduled_entry_goes_to_the_dead_set(redis_client, make_launcher, member):
    launcher = make_launcher()
    redis_client.zadd(KEYS.scheduled, {member: 1})
    assert launcher.poller.poll_once(5) == 0
    (entry, _), = zset_entries(redis_client, KEYS.dead)
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
    redis_client.zadd(KEYS.scheduled, {json.dumps({"name": "srv.ok", "jid": f"{i:024x}"}): 1
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
            pipe.zadd(KEYS.scheduled, dict(items[start:start + 500]))
        pipe.execute()
    assert redis_client.zcard(KEYS.scheduled) == n
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
    assert redis_client.zcard(KEYS.scheduled) == 0
    assert redis_client.zcard(KEYS.dead) == 0

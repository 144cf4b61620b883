"""The ack rule (server/worker.py), one test per branch, against the real server.

Each test enqueues, runs one step (``Worker.process_one`` / ``Worker.process``),
flushes the acker where the branch acks through it, and reads Redis back.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from jiggler_gevent.config import AT_MOST_ONCE
from jiggler_gevent.keys import Keys

from . import jobs
from .helpers import in_progress_keys, new_worker, raw_of, zset_entries

KEYS = Keys()
QUEUE = KEYS.queue("default")


def in_progress(client, launcher, queue="default") -> list[bytes]:
    return client.lrange(KEYS.in_progress(queue, launcher.identity), 0, -1)


# -- success ---------------------------------------------------------------------------


def test_success_is_acked_and_counted(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Ok.enqueue("hello")
    worker = new_worker(launcher)

    assert worker.process_one() is True
    assert jobs.events("ok") == [("ok", jid, "hello", "default", 0)]
    # the ack is batched: the job stays reserved until the acker flushes
    assert len(in_progress(redis_client, launcher)) == 1
    assert launcher.acker.flush() == 1
    assert in_progress(redis_client, launcher) == []
    assert redis_client.llen(QUEUE) == 0
    assert launcher.stats.processed == 1 and launcher.stats.failed == 0
    assert launcher.fetcher.held == set()
    assert redis_client.zcard(KEYS.retries("default")) == 0 and redis_client.zcard(KEYS.dead("default")) == 0


def test_process_one_returns_false_on_an_empty_queue(redis_client, make_launcher):
    launcher = make_launcher(fetch_timeout=0.1)
    started = time.monotonic()
    assert new_worker(launcher).process_one() is False
    assert time.monotonic() - started < 2
    assert launcher.stats.processed == 0


# -- the job raised ----------------------------------------------------------------------


def test_failure_goes_to_the_retry_set_and_is_acked(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Boom.enqueue("it broke")
    before = time.time()
    assert new_worker(launcher).process_one() is True

    (entry, score), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["jid"] == jid and entry["name"] == "srv.boom"
    assert entry["attempt"] == 1
    assert entry["error_class"] == "ValueError"
    assert entry["error_message"] == "it broke"
    backtrace = entry["error_backtrace"]
    assert isinstance(backtrace, list) and backtrace
    assert any("perform" in line for line in backtrace)
    assert entry["retry_at"] == pytest.approx(score)
    assert score > before  # the default backoff is >= 7.5 s from now
    assert score < time.time() + 30
    assert entry["failed_at"] >= before
    # the ack went with the retry write: nothing reserved, nothing pending in the acker
    assert in_progress(redis_client, launcher) == []
    assert launcher.acker.pending == []
    assert redis_client.llen(QUEUE) == 0
    assert launcher.stats.failed == 1 and launcher.stats.processed == 0
    assert redis_client.zcard(KEYS.dead("default")) == 0


def test_last_attempt_goes_to_the_dead_set(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Boom.with_options(retries=0).enqueue("no second chance")
    assert new_worker(launcher).process_one() is True

    assert redis_client.zcard(KEYS.retries("default")) == 0
    (entry, score), = zset_entries(redis_client, KEYS.dead("default"))
    assert entry["jid"] == jid
    assert entry["attempt"] == 1
    assert entry["error_class"] == "ValueError"
    assert entry["error_message"] == "no second chance"
    assert "retry_at" not in entry
    assert entry["error_backtrace"]
    assert score == pytest.approx(time.time(), abs=5)
    assert in_progress(redis_client, launcher) == []
    assert launcher.stats.failed == 1


def test_retries_count_up_to_the_limit_then_dead(redis_client, make_launcher):
    """A retried job (attempt == retries already) that fails again is dead, attempt + 1."""
    launcher = make_launcher()
    payload = {"name": "srv.boom", "args": ["again"], "jid": "ab" * 12, "queue": "default",
               "retries": 3, "attempt": 3, "error_class": "ValueError", "failed_at": 1.0}
    redis_client.lpush(QUEUE, json.dumps(payload))
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"

    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert entry["attempt"] == 4
    assert entry["failed_at"] == 1.0  # the first failure time is kept
    assert entry["retried_at"] >= entry["failed_at"]
    assert jobs.events("boom") == [("boom", "ab" * 12, 3)]
    assert in_progress(redis_client, launcher) == []


def test_job_timeout_class_option_takes_the_retry_path(redis_client, make_launcher):
    launcher = make_launcher()
    jid = jobs.Slow.enqueue(5.0)
    started = time.monotonic()
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    assert time.monotonic() - started < 2  # interrupted at 0.2 s, not after 5 s

    assert jobs.events("start") == [("start", jid)]
    assert jobs.events("end") == []
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["jid"] == jid
    assert entry["error_class"] == "JobTimeout"
    assert "0.2" in entry["error_message"]
    assert entry["attempt"] == 1
    assert in_progress(redis_client, launcher) == []
    assert launcher.stats.failed == 1


def test_except_exception_in_the_job_cannot_swallow_its_timeout(redis_client, make_launcher):
    launcher = make_launcher()
    jobs.Swallow.enqueue()
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"

    assert jobs.SWALLOWED == []
    assert jobs.events("end") == []
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["error_class"] == "JobTimeout"
    assert in_progress(redis_client, launcher) == []


def test_an_error_raised_over_the_timeout_still_reports_the_timeout(redis_client, make_launcher):
    launcher = make_launcher()
    jobs.CleanupRaisesOverTimeout.enqueue()
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["error_class"] == "JobTimeout" and "0.2" in entry["error_message"]
    assert "connection already closed" in "".join(entry["error_backtrace"])  # kept for reading


def test_config_job_timeout_applies_to_jobs_without_their_own(redis_client, make_launcher):
    launcher = make_launcher(job_timeout=0.2)
    jobs.Plain.enqueue(5)
    started = time.monotonic()
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    assert time.monotonic() - started < 2
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["error_class"] == "JobTimeout"


# -- payloads that cannot run: dead set with the raw bytes and a reason ------------------

BAD_PAYLOADS = {
    "malformed-json": b'{"name": "srv.ok", "args": [',
    "json-list": b'["srv.ok", [1, 2]]',
    "json-string": b'"srv.ok"',
    "json-number": b"42",
    "empty": b"",
    "non-utf8": b'\xff\xfe{"name": "srv.ok"}\x80',
    "non-utf8-inside-string": b'{"name": "srv.ok", "args": ["caf\xe9"]}',
    "args-not-a-list": b'{"name": "srv.ok", "args": "abc"}',
    "args-object": b'{"name": "srv.ok", "args": {"value": 1}}',
    "kwargs-not-an-object": b'{"name": "srv.ok", "args": [], "kwargs": [1]}',
    "name-missing": b'{"args": []}',
    "name-not-a-string": b'{"name": ["srv.ok"], "args": []}',
    "jid-not-a-string": b'{"name": "srv.ok", "args": [], "jid": 12}',
    "attempt-string": b'{"name": "srv.ok", "args": [], "attempt": "3"}',
    "attempt-negative": b'{"name": "srv.ok", "args": [], "attempt": -1}',
    "attempt-float": b'{"name": "srv.ok", "args": [], "attempt": 1.5}',
    "attempt-bool": b'{"name": "srv.ok", "args": [], "attempt": true}',
    "retries-huge": b'{"name": "srv.ok", "args": [], "retries": 1e400}',
    "retries-bignum": b'{"name": "srv.ok", "args": [], "retries": 99999999999999999999999}',
    "queue-wildcard": b'{"name": "srv.ok", "args": [], "queue": "de*ault"}',
    "queue-newline": b'{"name": "srv.ok", "args": [], "queue": "a\\nb"}',
    "deeply-nested": b'{"name": "srv.ok", "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("raw", list(BAD_PAYLOADS.values()), ids=list(BAD_PAYLOADS))
def test_bad_payload_goes_to_the_dead_set_raw(redis_client, make_launcher, raw):
    launcher = make_launcher()
    redis_client.lpush(QUEUE, raw)
    worker = new_worker(launcher)
    assert worker.process(launcher.fetcher.fetch()) == "dead"

    assert jobs.EVENTS == []
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert raw_of(entry) == raw
    assert entry["error_class"] == "PayloadError"
    assert entry["error_message"]
    assert entry["queue"] == "default"
    assert in_progress(redis_client, launcher) == []
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert launcher.stats.failed == 1
    # the worker goes on: the next job runs
    jobs.Ok.enqueue()
    assert worker.process(launcher.fetcher.fetch()) == "ok"


def test_dead_set_is_trimmed_to_max_dead_jobs(redis_client, make_launcher):
    launcher = make_launcher(max_dead_jobs=3)
    worker = new_worker(launcher)
    raws = [f"bad payload {i}".encode() for i in range(5)]
    for raw in raws:
        redis_client.lpush(QUEUE, raw)
        assert worker.process(launcher.fetcher.fetch()) == "dead"
    assert [raw_of(entry) for entry, _ in zset_entries(redis_client, KEYS.dead("default"))] == raws[2:]


def test_dead_set_drops_entries_older_than_dead_timeout(redis_client, make_launcher):
    launcher = make_launcher(dead_timeout=60.0)
    redis_client.zadd(KEYS.dead("default"), {b'{"old": true}': time.time() - 120,
                                  b'{"recent": true}': time.time() - 30})
    redis_client.lpush(QUEUE, b"not json")
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"
    members = redis_client.zrange(KEYS.dead("default"), 0, -1)
    assert b'{"old": true}' not in members
    assert b'{"recent": true}' in members and len(members) == 2


def test_oversized_payload_goes_to_the_dead_set(redis_client, make_launcher):
    launcher = make_launcher()
    raw = json.dumps({"name": "srv.ok", "args": ["x" * (9 * 1024 * 1024)]}).encode()
    redis_client.lpush(QUEUE, raw)
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert raw_of(entry) == raw
    assert "bytes" in entry["error_message"]
    assert jobs.EVENTS == []
    assert in_progress(redis_client, launcher) == []


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec", "srv.nope"])
def test_unknown_name_goes_to_the_dead_set_and_nothing_runs(redis_client, make_launcher,
                                                            tmp_path, name):
    launcher = make_launcher()
    canary = tmp_path / "pwned"
    command = f"touch {canary}"
    raw = json.dumps({"name": name, "args": [command], "jid": "cd" * 12}).encode()
    redis_client.lpush(QUEUE, raw)
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"

    assert not canary.exists()
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert entry["name"] == name and entry["args"] == [command] and entry["jid"] == "cd" * 12
    assert entry["error_class"] == "UnknownJobError"
    assert name in entry["error_message"]
    assert entry["queue"] == "default"
    assert in_progress(redis_client, launcher) == []
    assert launcher.stats.failed == 1


def test_unknown_dotted_name_imports_nothing(redis_client, make_launcher):
    assert "antigravity" not in sys.modules
    launcher = make_launcher()
    payload = {"name": "antigravity.geohash", "args": [37.4, -122.1, "2005-05-26"]}
    redis_client.lpush(QUEUE, json.dumps(payload))
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"
    assert "antigravity" not in sys.modules
    assert redis_client.zcard(KEYS.dead("default")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"args": [1]},  # missing b
        {"args": [1, 2, 3]},  # too many
        {"args": [1], "kwargs": {"c": 2}},  # unknown keyword
        {"args": [1, 2], "kwargs": {"a": 3}},  # a given twice
    ],
    ids=["too-few", "too-many", "unknown-kwarg", "duplicate-arg"],
)
def test_arguments_that_do_not_fit_go_to_the_dead_set(redis_client, make_launcher, body):
    launcher = make_launcher()
    payload = {"name": "srv.two", "jid": "ef" * 12, "queue": "default", **body}
    redis_client.lpush(QUEUE, json.dumps(payload))
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"

    assert jobs.EVENTS == []
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert entry["jid"] == "ef" * 12 and entry["args"] == body["args"]
    assert entry.get("kwargs", {}) == body.get("kwargs", {})
    assert entry["error_class"] == "BadArguments"
    assert "srv.two" in entry["error_message"]
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert in_progress(redis_client, launcher) == []


def test_failure_that_cannot_be_written_back_is_buried_raw(redis_client, make_launcher):
    """A lone surrogate decodes fine but cannot be re-encoded as UTF-8 for the retry set."""
    launcher = make_launcher()
    raw = b'{"name": "srv.boom", "args": ["\\ud800"]}'
    redis_client.lpush(QUEUE, raw)
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "dead"
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert raw_of(entry) == raw
    assert in_progress(redis_client, launcher) == []
    assert redis_client.zcard(KEYS.retries("default")) == 0


# -- at-most-once ----------------------------------------------------------------------------


def test_at_most_once_pops_the_job_and_reserves_nothing(redis_client, make_launcher):
    launcher = make_launcher(mode=AT_MOST_ONCE)
    jid = jobs.Ok.enqueue(7)
    unit = launcher.fetcher.fetch()
    assert unit is not None and unit.reserved_key is None
    # popped: gone from Redis before it runs, and no in-progress list anywhere
    assert redis_client.llen(QUEUE) == 0
    assert in_progress_keys(redis_client) == []

    assert new_worker(launcher).process(unit) == "ok"
    assert jobs.events("ok") == [("ok", jid, 7, "default", 0)]
    assert launcher.acker.pending == []
    assert launcher.fetcher.held == set()
    assert launcher.stats.processed == 1
    assert in_progress_keys(redis_client) == []


def test_at_most_once_failure_still_goes_to_the_retry_set(redis_client, make_launcher):
    launcher = make_launcher(mode=AT_MOST_ONCE)
    jobs.Boom.enqueue()
    assert new_worker(launcher).process_one() is True
    assert redis_client.zcard(KEYS.retries("default")) == 1
    assert in_progress_keys(redis_client) == []


def test_processed_and_failed_counts_for_a_mixed_batch(redis_client, make_launcher):
    launcher = make_launcher()
    for i in range(3):
        jobs.Ok.enqueue(i)
    jobs.Boom.enqueue()
    redis_client.lpush(QUEUE, b"not json")
    worker = new_worker(launcher)
    while worker.process_one():
        pass
    launcher.acker.flush()
    assert launcher.stats.processed == 3 and launcher.stats.failed == 2
    assert in_progress(redis_client, launcher) == []


def test_function_job_runs_and_checks_its_arguments(redis_client, make_launcher):
    launcher = make_launcher()
    worker = new_worker(launcher)
    jobs.add.enqueue(2, b=3)
    assert worker.process(launcher.fetcher.fetch()) == "ok"
    assert jobs.events("add") == [("add", 5)]
    redis_client.lpush(QUEUE, json.dumps({"name": "srv.add", "args": [1, 2, 3]}))
    assert worker.process(launcher.fetcher.fetch()) == "dead"
    (entry, _), = zset_entries(redis_client, KEYS.dead("default"))
    assert entry["error_class"] == "BadArguments"
    launcher.acker.flush()
    assert in_progress(redis_client, launcher) == []


@pytest.mark.parametrize("mode", ["at-least-once", AT_MOST_ONCE])
def test_job_raising_greenlet_exit_itself_takes_the_failure_path(redis_client, make_launcher,
                                                                 mode):
    launcher = make_launcher(mode=mode)
    jobs.RaisesGreenletExit.enqueue()
    """Only the manager's own interrupt (job pushed back first) skips the ack rule."""
    outcome = new_worker(launcher).process(launcher.fetcher.fetch())
    launcher.acker.flush()
    assert in_progress_keys(redis_client) == [], f"outcome {outcome!r}: still reserved"
    assert outcome in ("retry", "dead")
    assert redis_client.zcard(KEYS.retries("default")) + redis_client.zcard(KEYS.dead("default")) == 1


@pytest.mark.parametrize("behaviour", ["negative", "nan", "text", "raise"])
def test_misbehaving_retry_in_falls_back_to_the_default_backoff(redis_client, make_launcher,
                                                                 behaviour):
    launcher = make_launcher()
    jobs.BadBackoff.enqueue(behaviour)
    before = time.time()
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    (entry, score), = zset_entries(redis_client, KEYS.retries("default"))
    assert before + 7 <= score <= time.time() + 23  # 15 s +-50%
    assert entry["retry_at"] == pytest.approx(score)


def test_long_error_message_is_truncated(redis_client, make_launcher):
    launcher = make_launcher()
    jobs.Boom.enqueue("x" * 100_000)
    assert new_worker(launcher).process(launcher.fetcher.fetch()) == "retry"
    (entry, _), = zset_entries(redis_client, KEYS.retries("default"))
    assert entry["error_message"].startswith("xxx")
    assert len(entry["error_message"]) < 5000
    assert entry["args"] == ["x" * 100_000]  # the arguments themselves are kept

"""Fuzzing the whole ack path, and the poller, with a real server (hypothesis).

Every example pushes one raw payload (arbitrary bytes, hostile JSON objects, invalid
UTF-8, lone surrogate escapes, huge or deeply nested payloads) to the queue, runs
``Worker.process_one`` once and checks the ack rule's promise: exactly one of

(a) the job ran and its reservation is gone once the acker flushed,
(b) one retry entry holds it (in the retry set of its valid ``retry_queue``, else of
    the queue it ran from), or
(c) one dead entry holds it (its raw bytes, or the decoded fields), in the dead set of
    the queue it ran from,

with the queue and the in-progress lists empty, nothing escaping ``process_one``,
nothing imported or executed for a hostile name, and the same worker then running a
good job. The poller property: random members of a queue's scheduled and retry sets,
due, end either on that queue with their bytes unchanged or in its dead set; never
lost, never both, and no key named after anything in a payload.
"""

from __future__ import annotations

import json
import sys

import pytest
import ujson

from jiggler_gevent import payload
from jiggler_gevent.config import AT_LEAST_ONCE, AT_MOST_ONCE
from jiggler_gevent.errors import PayloadError
from jiggler_gevent.keys import Keys

from . import jobs
from .helpers import in_progress_keys, new_worker, raw_of

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

KEYS = Keys()
QUEUE = KEYS.queue("default")
MAX = payload.MAX_PAYLOAD_BYTES
JOB_TIMEOUT = 0.2  # bounds the sleeping jobs (srv.sleeper, srv.plain) whatever their args

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

# modules no test imports: importing one of them would mean a payload name was imported
NEVER_IMPORTED = ("antigravity", "this", "webbrowser", "turtle", "__hello__", "__phello__",
                  "tkinter", "idlelib")

# registered jobs (tests/server/jobs.py) that finish quickly or within JOB_TIMEOUT;
# srv.flaky_check is left out on purpose (it simulates a bug outside perform)
REGISTERED = ["srv.ok", "srv.two", "srv.boom", "srv.add", "srv.bad_backoff", "srv.slow",
              "srv.swallow", "srv.plain", "srv.sleeper", "srv.raises_greenlet_exit"]
HOSTILE_NAMES = [
    "os.system", "subprocess.call", "subprocess.Popen", "builtins.eval", "builtins.exec",
    "__import__", "eval", "exec", "antigravity.geohash", "this", "webbrowser.open",
    "turtle.done", "__hello__.main", "jiggler_gevent.job.FunctionJob", "tests.server.jobs.Ok",
    "srv.ok.__class__", "srv", "SRV.OK", "srv.ok ", " srv.ok", "srv.ok\x00", "\ud800",
    "srv.ok\udc00", "*", "x" * 513, "",
]
HOSTILE_QUEUES = ["de*ault", "a:b", "a\nb", "{x}", "q" * 129, "q" * 300, "", " ", "a b",
                  "[ab]", "?", "default\x00", "d\u00e9fault", "\ud800", "jiggler:list:default"]
VALID_QUEUES = ["default", "other", "q.1-_", "Q" * 128]
KWARG_NAMES = ["value", "a", "b", "seconds", "message", "behaviour", "self", "cls", "x",
               "args", "kwargs", "\ud800", ""]
SURROGATE_TEXT = ["\ud800", "a\udfffb", "\udc00\ud800", "\ud83d"]


def _text():
    return st.text(max_size=12) | st.sampled_from(SURROGATE_TEXT)


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | _text()
    | st.sampled_from(["default", "a:b", "", "x" * 200, "*", "1e9", "x", "true"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(), inner, max_size=4),
    max_leaves=10,
)
counts = (
    st.integers(-5, 20_005) | st.sampled_from([-1, 0, 1, 3, 10_000, 10_001, 10_002, 10**9, 2**63, 2**64])
    | st.sampled_from([1e9, 1.5, -0.0, float("nan"), float("inf"), "x", "3", True, False, None, [1], {}])
)
FIELD_VALUES = {
    "name": st.sampled_from(REGISTERED) | st.sampled_from(HOSTILE_NAMES) | json_values,
    "args": st.lists(json_scalars, max_size=3) | json_values,
    "kwargs": st.dictionaries(st.sampled_from(KWARG_NAMES), json_scalars, max_size=3) | json_values,
    "jid": st.text(min_size=1, max_size=70) | st.sampled_from(SURROGATE_TEXT) | json_values,
    "queue": st.sampled_from(VALID_QUEUES) | st.sampled_from(HOSTILE_QUEUES) | json_values,
    "retry_queue": st.sampled_from(VALID_QUEUES) | st.sampled_from(HOSTILE_QUEUES) | json_values,
    "retries": counts,
    "attempt": counts,
}
job_objects = st.fixed_dictionaries(
    {"name": FIELD_VALUES["name"]},
    optional={key: value for key, value in FIELD_VALUES.items() if key != "name"}
    | {"enqueued_at": json_scalars, "error_class": json_scalars, "other": json_values},
)

# objects close to a real job, so that many examples run or fail inside perform
small_args = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(0, 0.05) | _text()
PLAUSIBLE_OPTIONS = {
    "jid": st.text(min_size=1, max_size=30),
    "queue": st.sampled_from(VALID_QUEUES),
    "retry_queue": st.sampled_from(VALID_QUEUES + [None]),
    "retries": st.integers(0, 4),
    "attempt": st.integers(0, 4) | st.sampled_from([10_001, 10_002]),
    "enqueued_at": st.floats(allow_nan=False),
}
plausible_objects = st.fixed_dictionaries(
    {"name": st.sampled_from(REGISTERED + REGISTERED + HOSTILE_NAMES[:4]),
     "args": st.lists(small_args, max_size=2)},
    optional={"kwargs": st.dictionaries(st.sampled_from(KWARG_NAMES[:6]), small_args, max_size=2),
              **PLAUSIBLE_OPTIONS},
)

# arguments that fit each registered job's perform, so that most of these run
FITTING_ARGS = {
    "srv.ok": st.lists(small_args, max_size=1),
    "srv.two": st.lists(small_args, min_size=2, max_size=2),
    "srv.boom": st.lists(_text(), max_size=1),
    "srv.add": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=2),
    "srv.bad_backoff": st.lists(st.sampled_from(["negative", "nan", "text", "raise", "other"]),
                                min_size=1, max_size=1),
    "srv.slow": st.lists(st.floats(0, 0.05), max_size=1),
    "srv.swallow": st.just([]),
    "srv.plain": st.lists(st.floats(0, 0.05), min_size=1, max_size=1),
    "srv.sleeper": st.lists(st.floats(0, 0.05) | st.sampled_from([-1, 10**9, 1e308]), min_size=1,
                            max_size=1),
    "srv.raises_greenlet_exit": st.just([]),
}
fitting_objects = st.sampled_from(sorted(FITTING_ARGS)).flatmap(
    lambda name: st.fixed_dictionaries(
        {"name": st.just(name), "args": FITTING_ARGS[name]},
        optional=PLAUSIBLE_OPTIONS,
    )
)


def _encode(obj, how: str) -> bytes:
    if how == "ascii":  # lone surrogates become \\udXXX escapes
        return json.dumps(obj).encode()
    if how == "surrogatepass":  # lone surrogates become (invalid UTF-8) CESU bytes
        return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


ENCODINGS = st.sampled_from(["ascii", "surrogatepass", "compact"])
encoded_objects = st.builds(_encode, job_objects, ENCODINGS)
encoded_plausible = st.builds(_encode, plausible_objects, ENCODINGS)
encoded_fitting = st.builds(_encode, fitting_objects, ENCODINGS)
truncated_objects = st.tuples(encoded_objects, st.integers(0, 200)).map(lambda t: t[0][: t[1]])

INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xe9", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                b"\xc0\xaf", b"\x80", b"\xf4\x90\x80\x80"]
invalid_utf8 = st.builds(
    lambda name, bad, where: {
        "arg": b'{"name": "%s", "args": ["a%sb"]}' % (name.encode(), bad),
        "name": b'{"name": "srv.ok%s", "args": []}' % bad,
        "queue": b'{"name": "%s", "args": [], "queue": "q%s"}' % (name.encode(), bad),
        "key": b'{"name": "%s", "args": [], "kwargs": {"%s": 1}}' % (name.encode(), bad),
        "outside": bad + b'{"name": "%s", "args": []}' % name.encode(),
    }[where],
    st.sampled_from(["srv.ok", "srv.boom"]), st.sampled_from(INVALID_UTF8),
    st.sampled_from(["arg", "name", "queue", "key", "outside"]),
)
SURROGATE_TEMPLATES = [  # @N: a job name, @E: a lone surrogate escape
    '{"name": "@N", "args": ["@E"]}',
    '{"name": "srv.ok@E", "args": []}',
    '{"name": "@N", "args": [], "jid": "@E"}',
    '{"name": "@N", "args": [], "queue": "@E"}',
    '{"name": "@N", "args": [], "kwargs": {"@E": 1}}',
    '{"name": "srv.boom", "args": [], "kwargs": {"message": "@E"}}',
]
lone_surrogate_escapes = st.builds(
    lambda template, name, escape: template.replace("@N", name).replace("@E", escape).encode(),
    st.sampled_from(SURROGATE_TEMPLATES),
    st.sampled_from(["srv.ok", "srv.boom", "os.system"]),
    st.sampled_from(["\\ud800", "\\udfff", "\\udc00\\ud800", "x\\ud83d"]),
)


def _nested(name: str, depth: int) -> bytes:
    return b'{"name": "%s", "args": [%s%s]}' % (name.encode(), b"[" * depth, b"]" * depth)


deeply_nested = st.builds(_nested, st.sampled_from(["srv.ok", "srv.boom", "srv.nope"]),
                          st.sampled_from([50, 500, 998, 999, 1000, 1020, 1021, 1022, 1023, 1024,
                                           1025, 5000, 100_000]))


def _huge(name: str, size: int) -> bytes:
    head = b'{"name": "%s", "args": ["' % name.encode()
    return head + b"x" * (size - len(head) - 3) + b'"]}'


# built once: at most 8 MiB + 1 each
HUGE = [_huge("srv.ok", MAX), _huge("srv.ok", MAX + 1), _huge("srv.boom", MAX),
        _huge("os.system", MAX), _huge("srv.ok", 1024 * 1024)]
huge = st.sampled_from(HUGE)

raw_payloads = st.one_of(
    st.binary(max_size=300),
    encoded_plausible,
    encoded_fitting,
    encoded_fitting,
    encoded_objects,
    encoded_objects,
    truncated_objects,
    st.builds(_encode, json_values, st.just("ascii")),  # JSON that is mostly not an object
    invalid_utf8,
    lone_surrogate_escapes,
    deeply_nested,
    huge,
)


# -- the ack path -------------------------------------------------------------------------


def _zset(client, key) -> list[dict]:
    return [ujson.loads(member) for member in client.zrange(key, 0, -1)]


def _decoded(raw: bytes):
    try:
        return payload.loads(raw)
    except PayloadError:
        return None


def _same_job(entry: dict, job: dict, raw: bytes) -> bool:
    """Whether a retry/dead entry carries the decoded fields of this payload."""
    if entry.get("name") != job["name"] or entry.get("args") != job["args"]:
        return False
    if entry.get("kwargs", {}) != job["kwargs"]:
        return False
    given_jid = ujson.loads(raw).get("jid")
    return given_jid is None or entry.get("jid") == given_jid


class AckPath:
    """One launcher and worker per fetch mode, reused by every example."""

    def __init__(self, client, make_launcher, canary) -> None:
        self.client = client
        self.canary = canary
        self.sides = {}
        for mode in (AT_LEAST_ONCE, AT_MOST_ONCE):
            launcher = make_launcher(mode=mode, job_timeout=JOB_TIMEOUT, fetch_timeout=0.1)
            self.sides[mode] = (launcher, new_worker(launcher))
        self.outcomes = {"ran": 0, "retry": 0, "dead-raw": 0, "dead-decoded": 0}

    def check(self, raw: bytes, mode: str) -> None:
        client = self.client
        launcher, worker = self.sides[mode]
        client.flushdb()
        jobs.reset()
        # forget what a failed earlier example may have left, so each example stands alone
        launcher.fetcher.held.clear()
        launcher.fetcher.pending_acks.clear()
        launcher.fetcher.take_buffered()
        processed, failed = launcher.stats.processed, launcher.stats.failed
        job = _decoded(raw)

        client.lpush(QUEUE, raw)
        assert worker.process_one() is True  # nothing may escape it
        launcher.acker.flush()

        retry_sets = {q: _zset(client, KEYS.retries(q)) for q in VALID_QUEUES}
        retries = [entry for entries in retry_sets.values() for entry in entries]
        dead = _zset(client, KEYS.dead("default"))
        assert not any(client.exists(KEYS.dead(q)) for q in VALID_QUEUES if q != "default")
        ran = bool(jobs.EVENTS) and not retries and not dead
        assert ran + len(retries) + len(dead) == 1, (raw[:200], jobs.EVENTS, retries, dead)
        if ran:
            assert job is not None
            assert launcher.stats.processed == processed + 1
            self.outcomes["ran"] += 1
        else:
            assert launcher.stats.failed == failed + 1
            assert launcher.stats.processed == processed
            (entry,) = retries or dead
            assert isinstance(entry.get("error_class"), str) and entry["error_class"]
            assert isinstance(entry.get("error_message"), str)
            if retries:  # only a job that was decoded, found and run can be retried
                assert job is not None and entry["error_backtrace"], raw[:200]
                assert _same_job(entry, job, raw)
                assert entry["attempt"] == (job.get("attempt") or 0) + 1
                (target,) = [q for q, entries in retry_sets.items() if entries]
                assert target == (job.get("retry_queue") or "default"), (target, raw[:200])
                self.outcomes["retry"] += 1
            elif ("raw" in entry or "raw_hex" in entry) and raw_of(entry) == raw:
                assert entry["name"] is None and entry["error_message"]
                self.outcomes["dead-raw"] += 1
            else:
                assert job is not None, f"dead entry keeps neither the raw bytes nor the job: {entry}"
                assert _same_job(entry, job, raw), (entry, raw[:200])
                self.outcomes["dead-decoded"] += 1
        assert client.llen(QUEUE) == 0
        assert in_progress_keys(client) == []
        assert launcher.fetcher.held == set() and launcher.acker.pending == []
        assert launcher.fetcher.take_buffered() == []
        assert not self.canary.exists()
        assert not [m for m in NEVER_IMPORTED if m in sys.modules]

        # the same worker goes on with a good job
        jobs.reset()
        jid = jobs.Ok.enqueue("after")
        assert worker.process_one() is True
        launcher.acker.flush()
        assert jobs.events("ok") == [("ok", jid, "after", "default", 0)]
        assert client.llen(QUEUE) == 0 and in_progress_keys(client) == []


@pytest.fixture
def ack_path(redis_client, make_launcher, tmp_path):
    already = [m for m in NEVER_IMPORTED if m in sys.modules]
    if already:
        pytest.skip(f"modules already imported by something else: {already}")
    return AckPath(redis_client, make_launcher, tmp_path / "pwned")


def _hostile(name: str, canary) -> bytes:
    """A payload whose args would create the canary file if the name were ever called."""
    args = {
        "os.system": [f"touch {canary}"],
        "subprocess.call": [["touch", str(canary)]],
        "subprocess.Popen": [["touch", str(canary)]],
        "builtins.eval": [f"open({str(canary)!r}, 'w')"],
        "builtins.exec": [f"open({str(canary)!r}, 'w')"],
        "eval": [f"open({str(canary)!r}, 'w')"],
        "exec": [f"open({str(canary)!r}, 'w')"],
        "__import__": ["antigravity"],
    }.get(name, [f"touch {canary}"])
    return json.dumps({"name": name, "args": args, "jid": "ca" * 12}).encode()


@FUZZ
@given(raw=raw_payloads, mode=st.sampled_from([AT_LEAST_ONCE, AT_LEAST_ONCE, AT_MOST_ONCE]))
def test_any_payload_runs_retries_or_dies_and_the_worker_goes_on(ack_path, raw, mode):
    ack_path.check(raw, mode)


@settings(FUZZ, max_examples=40)
@given(name=st.sampled_from(HOSTILE_NAMES), mode=st.sampled_from([AT_LEAST_ONCE, AT_MOST_ONCE]))
def test_names_of_real_callables_are_never_imported_or_called(ack_path, name, mode):
    ack_path.check(_hostile(name, ack_path.canary), mode)
    assert not ack_path.canary.exists()


def test_fuzz_outcomes_cover_every_branch(ack_path):
    """The corpus reaches each outcome at least once (so the fuzz is not vacuous)."""
    samples = [
        b'{"name": "srv.ok", "args": [1]}',  # ran
        b'{"name": "srv.boom", "args": []}',  # retry
        b"\xff not json",  # dead, raw
        b'{"name": "os.system", "args": ["true"]}',  # dead, decoded
        HUGE[1],  # dead, raw (over the size limit)
        _nested("srv.ok", 100_000),  # dead, raw (too deep)
        b'{"name": "srv.boom", "args": ["\\ud800"]}',  # cannot be re-encoded: dead, raw
    ]
    for raw in samples:
        ack_path.check(raw, AT_LEAST_ONCE)
    assert all(ack_path.outcomes.values()), ack_path.outcomes


# -- the poller ---------------------------------------------------------------------------

NOW = 1_700_000_000.0
_ABSENT = object()  # a field left out of the object

poller_members = st.one_of(
    st.binary(max_size=120),
    encoded_objects,
    st.builds(
        lambda name, queue, retry_queue, how: _encode(
            {k: v for k, v in (("name", name), ("queue", queue), ("retry_queue", retry_queue))
             if v is not _ABSENT}, how),
        st.sampled_from(["srv.ok", "", 1, None, _ABSENT]) | _text(),
        st.sampled_from(VALID_QUEUES + HOSTILE_QUEUES + [None, 1, [], {}, _ABSENT]),
        st.sampled_from(VALID_QUEUES + HOSTILE_QUEUES + [None, 1, [], {}, _ABSENT]),
        st.sampled_from(["ascii", "surrogatepass", "compact"]),
    ),
    invalid_utf8,
    lone_surrogate_escapes,
    st.builds(_nested, st.just("srv.ok"), st.sampled_from([10, 999, 1000, 1001, 5000])),
)


@pytest.fixture
def poller(make_launcher):
    return make_launcher().poller


due_scores = st.sampled_from([float("-inf"), 0.0, -1.0, 1.0, NOW - 1e-3, NOW]) | st.floats(
    -1e12, NOW, allow_nan=False)


@settings(FUZZ, max_examples=120)
@given(
    scheduled=st.dictionaries(poller_members, due_scores, max_size=8),
    retries=st.dictionaries(poller_members, due_scores, max_size=8),
    later=st.dictionaries(poller_members, st.floats(NOW + 1, 1e12) | st.just(float("inf")), max_size=3),
)
def test_due_members_end_on_a_queue_unchanged_or_in_the_dead_set(redis_client, poller,
                                                                 scheduled, retries, later):
    client = redis_client
    client.flushdb()
    # a member in both sets would be queued twice (or dead once, the same entry): keep the
    # sets apart so "never lost, never both" can be counted
    retries = {m: s for m, s in retries.items() if m not in scheduled}
    later = {m: s for m, s in later.items() if m not in scheduled and m not in retries}
    if scheduled or later:
        client.zadd(KEYS.scheduled("default"), {**scheduled, **later})
    if retries:
        client.zadd(KEYS.retries("default"), retries)

    moved = poller.poll_once(NOW)

    # the sets' own queue only: no key is ever named after a payload's queue field
    allowed = {KEYS.queue("default"), KEYS.dead("default"), KEYS.scheduled("default")}
    assert {k.decode("utf-8", "replace") for k in client.keys("*")} <= allowed
    queued = client.lrange(KEYS.queue("default"), 0, -1)
    dead = [raw_of(entry) for entry in _zset(client, KEYS.dead("default"))]
    for entry in _zset(client, KEYS.dead("default")):
        assert entry["error_class"] == "PayloadError" and entry["error_message"]
    expected = list(scheduled) + list(retries)
    assert moved == len(queued)
    assert sorted(queued + dead) == sorted(expected)  # never lost, never both, bytes unchanged
    assert client.zcard(KEYS.retries("default")) == 0
    not_due = dict(client.zrange(KEYS.scheduled("default"), 0, -1, withscores=True))
    assert not_due == later  # untouched
    assert not set(queued) & set(dead)


# -- known disagreements between payload.loads (Python) and schedule.lua (cjson) ----------------


def test_retry_entry_with_null_retry_queue_goes_back_to_its_queue(redis_client, make_launcher):
    member = b'{"name": "srv.ok", "args": [], "queue": "default", "retry_queue": null, "attempt": 1}'
    assert payload.loads(member)["queue"] == "default"
    redis_client.zadd(KEYS.retries("default"), {member: 1})
    assert make_launcher().poller.poll_once(5) == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [member]


@pytest.mark.parametrize("depth", [1000, 1020])
def test_nesting_the_worker_accepts_is_not_buried_by_the_poller(redis_client, make_launcher, depth):
    member = _nested("srv.ok", depth)
    payload.loads(member)  # the worker would run it
    redis_client.zadd(KEYS.scheduled("default"), {member: 1})
    assert make_launcher().poller.poll_once(5) == 1
    assert redis_client.lrange(QUEUE, 0, -1) == [member]
    assert redis_client.zcard(KEYS.dead("default")) == 0



@pytest.mark.parametrize("raw", [
    b'{"name": "srv.ok", "args": ["\xed\xa0\x80"]}',
    b'{"name": "srv.ok", "args": [], "jid": "\xed\xb0\x80"}',
    b'{"name": "srv.ok", "args": ["\xed\xa0\xbd\xed\xb8\x80"]}',  # a surrogate pair, CESU-8
], ids=["lone-high", "lone-low-in-jid", "pair"])
def test_surrogate_bytes_are_not_utf8_and_never_run(ack_path, raw):
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    ack_path.check(raw, AT_LEAST_ONCE)
    assert ack_path.outcomes["dead-raw"] == 1, ack_path.outcomes  # dead with its bytes, never run

"""The payload wire format: build, dumps, loads, failed, dead_letter, check_json_args."""

from __future__ import annotations

import datetime
import decimal
import enum
import json

import pytest
import ujson

from jiggler_gevent import payload
from jiggler_gevent.errors import EnqueueError, PayloadError
from jiggler_gevent.keys import valid_queue_name

MAX = payload.MAX_PAYLOAD_BYTES


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def minimal(**fields) -> dict:
    return {"name": "app.jobs.SendMail", "args": [1], **fields}


# -- check_json_args -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308,
        "", "text", "ünïcødé ✓ 😀", [], {}, [1, "a", None, [2.5, {"k": [True]}]],
        {"a": {"b": {"c": []}}},
    ],
)
def test_check_json_args_accepts_what_json_carries(value):
    assert payload.check_json_args(value) == value
    assert ujson.loads(ujson.dumps(value)) == value


def test_check_json_args_turns_tuples_into_lists_at_any_depth():
    value = (1, (2, 3), {"k": (4, (5,))}, [(6,)])
    out = payload.check_json_args(value)
    assert out == [1, [2, 3], {"k": [4, [5]]}, [[6]]]
    assert type(out) is list and type(out[1]) is list and type(out[2]["k"][1]) is list


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        float("nan"), float("inf"), float("-inf"), 2**70, 2**64, -(2**63) - 1,
        b"bytes", bytearray(b"x"), {1, 2}, frozenset(), datetime.datetime(2024, 1, 1),
        datetime.date(2024, 1, 1), decimal.Decimal("1.5"), object(), Color.RED, Text("x"),
        {1: "int key"}, {("a",): "tuple key"}, {None: 1}, complex(1, 2), len,
    ],
    ids=repr,
)
def test_check_json_args_refuses_what_json_cannot_carry(value):
    with pytest.raises(EnqueueError):
        payload.check_json_args(value)


@pytest.mark.parametrize(
    "value, where",
    [
        ([1, {"a": [float("nan")]}], "args[1]['a'][0]"),
        ([{"when": datetime.datetime(2024, 1, 1)}], "args[0]['when']"),
        ([[1, 2**70]], "args[0][1]"),
        ([{3: "x"}], "args[0]"),
    ],
)
def test_check_json_args_error_names_where_the_bad_value_is(value, where):
    with pytest.raises(EnqueueError) as info:
        payload.check_json_args(value, "args")
    assert where in str(info.value)


# -- build --------------------------------------------------------------------------------


def test_build_has_the_documented_fields():
    job = payload.build("app.Job", (1, (2,)), {}, queue="mail", retries=3, now=1700000000.5)
    assert job == {
        "name": "app.Job", "args": [1, [2]], "jid": job["jid"], "queue": "mail",
        "retries": 3, "enqueued_at": 1700000000.5,
    }
    assert len(job["jid"]) == 24 and int(job["jid"], 16) >= 0


def test_build_includes_kwargs_only_when_given_and_retry_queue_only_when_different():
    job = payload.build("n", [], {"a": (1,)}, queue="q", retries=0, retry_queue="q")
    assert job["kwargs"] == {"a": [1]}
    assert "retry_queue" not in job
    job = payload.build("n", [], None, queue="q", retries=0, retry_queue="slow")
    assert "kwargs" not in job and job["retry_queue"] == "slow"


def test_build_keeps_a_given_jid_and_makes_unique_ones_otherwise():
    assert payload.build("n", [], {}, queue="q", retries=0, jid="abc")["jid"] == "abc"
    jids = {payload.build("n", [], {}, queue="q", retries=0)["jid"] for _ in range(200)}
    assert len(jids) == 200


@pytest.mark.parametrize(
    "options",
    [
        {"queue": "a:b"}, {"queue": ""}, {"queue": "x" * 200}, {"queue": None},
        {"retry_queue": "a*"}, {"retries": -1}, {"retries": True}, {"retries": "3"},
        {"retries": 1.0}, {"retries": payload.MAX_RETRIES + 1},
    ],
    ids=repr,
)
def test_build_refuses_bad_options(options):
    kw = {"queue": "default", "retries": 3, **options}
    with pytest.raises(EnqueueError):
        payload.build("n", [], {}, **kw)


def test_build_refuses_bad_args_and_kwargs():
    with pytest.raises(EnqueueError):
        payload.build("n", [b"x"], {}, queue="q", retries=0)
    with pytest.raises(EnqueueError):
        payload.build("n", [], {"when": datetime.date.today()}, queue="q", retries=0)


# -- dumps --------------------------------------------------------------------------------


def test_dumps_round_trips_through_loads_and_keeps_unicode_and_slashes():
    job = payload.build("n", ["é/😀", {"url": "http://x/y"}], {"k": 1}, queue="q", retries=2)
    data = payload.dumps(job)
    assert isinstance(data, bytes)
    assert "é/😀" in data.decode() and "http://x/y" in data.decode()
    assert payload.loads(data) == job


def test_dumps_refuses_a_payload_over_the_limit():
    job = payload.build("n", ["a" * MAX], {}, queue="q", retries=0)
    with pytest.raises(EnqueueError, match="over"):
        payload.dumps(job)


def test_dumps_counts_bytes_not_characters():
    # under the limit in characters, over it in UTF-8 bytes
    job = payload.build("n", ["é" * (MAX // 2)], {}, queue="q", retries=0)
    assert len(ujson.dumps(job, ensure_ascii=False)) < MAX
    with pytest.raises(EnqueueError):
        payload.dumps(job)


def test_dumps_accepts_a_payload_just_under_the_limit():
    job = payload.build("n", ["a" * (MAX - 200)], {}, queue="q", retries=0)
    assert len(payload.dumps(job)) <= MAX


# -- loads: accepted ---------------------------------------------------------------------


def test_loads_fills_defaults_for_a_minimal_payload():
    job = payload.loads(b'{"name": "x"}')
    assert job["name"] == "x" and job["args"] == [] and job["kwargs"] == {}
    assert isinstance(job["jid"], str) and job["jid"]


def test_loads_accepts_str_and_bytes_and_keeps_every_field():
    raw = minimal(kwargs={"a": 1}, jid="j1", queue="mail", retries=5, retry_queue="slow",
                  attempt=2, enqueued_at=1.5, error_class="ValueError", extra="kept")
    assert payload.loads(json.dumps(raw)) == raw
    assert payload.loads(encode(raw)) == raw


@pytest.mark.parametrize("field, value", [("retries", 0), ("retries", payload.MAX_RETRIES),
                                          ("attempt", 0), ("attempt", payload.MAX_RETRIES + 1)])
def test_loads_accepts_counts_at_the_bounds(field, value):
    assert payload.loads(encode(minimal(**{field: value})))[field] == value


# -- loads: refused ----------------------------------------------------------------------

MALFORMED = {
    "malformed JSON": b'{"name": "x", "args": [1,',
    "trailing garbage": b'{"name": "x"} {}',
    "empty": b"",
    "JSON list": b'[{"name": "x"}]',
    "JSON string": b'"x"',
    "JSON number": b"42",
    "JSON null": b"null",
    "missing name": encode({"args": []}),
    "empty name": encode(minimal(name="")),
    "null name": encode(minimal(name=None)),
    "numeric name": encode(minimal(name=5)),
    "list name": encode(minimal(name=["os.system"])),
    "long name": encode(minimal(name="x" * (payload.NAME_MAX_CHARS + 1))),
    "args string": encode(minimal(args="1,2")),
    "args object": encode(minimal(args={"a": 1})),
    "args number": encode(minimal(args=1)),
    "args null": encode(minimal(args=None)),
    "kwargs list": encode(minimal(kwargs=[1])),
    "kwargs string": encode(minimal(kwargs="a=1")),
    "jid number": encode(minimal(jid=5)),
    "jid empty": encode(minimal(jid="")),
    "jid too long": encode(minimal(jid="a" * 65)),
    "jid list": encode(minimal(jid=["a"])),
    "queue colon": encode(minimal(queue="a:b")),
    "queue wildcard": encode(minimal(queue="*")),
    "queue newline": encode(minimal(queue="a\nb")),
    "queue brace": encode(minimal(queue="{a}")),
    "queue 200 chars": encode(minimal(queue="q" * 200)),
    "queue empty": encode(minimal(queue="")),
    "queue null": encode(minimal(queue=None)),
    "queue number": encode(minimal(queue=1)),
    "queue space": encode(minimal(queue="a b")),
    "retry_queue colon": encode(minimal(retry_queue="x:in_progress:y")),
    "retry_queue wildcard": encode(minimal(retry_queue="q?")),
    "retries string": encode(minimal(retries="3")),
    "retries negative": encode(minimal(retries=-1)),
    "retries bool": encode(minimal(retries=True)),
    "retries float": encode(minimal(retries=2.0)),
    "retries huge": encode(minimal(retries=10**30)),
    "retries over max": encode(minimal(retries=payload.MAX_RETRIES + 1)),
    "attempt string": encode(minimal(attempt="1")),
    "attempt negative": encode(minimal(attempt=-5)),
    "attempt bool": encode(minimal(attempt=False)),
    "attempt huge": encode(minimal(attempt=2**64)),
    "non-UTF-8 bytes": b'{"name": "caf\xe9"}',
    "non-UTF-8 only": b"\xff\xfe\xfd",
    "NUL": b"\x00",
    "deeply nested args": b'{"name": "x", "args": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested objects": b'{"name": "x", "kwargs": ' + b'{"a":' * 100_000 + b"1"
    + b"}" * 100_000 + b"}",
    "over MAX_PAYLOAD_BYTES": b'{"name": "x", "args": ["' + b"a" * MAX + b'"]}',
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_loads_refuses_bad_payloads_keeping_raw_and_a_reason(raw):
    with pytest.raises(PayloadError) as info:
        payload.loads(raw)
    exc = info.value
    assert exc.raw is raw
    assert isinstance(exc.reason, str) and 0 < len(exc.reason) < 300
    assert str(exc) == exc.reason


@pytest.mark.parametrize(
    "field, value",
    [("name", ""), ("args", "x"), ("kwargs", []), ("jid", 1), ("queue", "a:b"),
     ("retry_queue", "*"), ("retries", "3"), ("attempt", -1)],
)
def test_loads_reason_names_the_bad_field(field, value):
    with pytest.raises(PayloadError, match=field):
        payload.loads(encode(minimal(**{field: value})))


def test_loads_refuses_oversized_str_too():
    raw = '{"name": "x", "args": ["' + "a" * MAX + '"]}'
    with pytest.raises(PayloadError) as info:
        payload.loads(raw)
    assert info.value.raw is raw




def test_a_payload_that_cannot_be_written_back_is_a_clear_error():
    # loads accepts a JSON escape of a lone surrogate; writing the failed job back then
    # raises EnqueueError, which the worker turns into a dead letter of the raw bytes
    job = payload.loads(b'{"name": "x", "args": ["\\ud800"]}')
    with pytest.raises(EnqueueError):
        payload.dumps(payload.failed(job, ValueError("boom"), now=1.0, retry_at=2.0))


def test_lone_surrogate_argument_is_an_enqueue_error():
    with pytest.raises(EnqueueError):
        payload.dumps(payload.build("n", ["\ud800"], {}, queue="q", retries=0))


# -- failed ----------------------------------------------------------------------------------


def test_failed_adds_the_failure_fields_without_touching_the_original():
    job = payload.loads(encode(minimal(queue="q", retries=3)))
    before = dict(job)
    out = payload.failed(job, ValueError("bad value"), now=100.0, retry_at=130.0)
    assert job == before
    assert out["attempt"] == 1
    assert out["error_class"] == "ValueError"
    assert out["error_message"] == "bad value"
    assert out["failed_at"] == 100.0 and out["retry_at"] == 130.0
    assert "retried_at" not in out
    assert "kwargs" not in out  # the empty default added by loads is not written back
    assert payload.loads(payload.dumps(out))["attempt"] == 1


def test_failed_again_keeps_first_failed_at_and_sets_retried_at():
    first = payload.failed(payload.loads(encode(minimal())), KeyError("k"), now=100.0,
                           retry_at=115.0)
    second = payload.failed(first, KeyError("k"), now=200.0, retry_at=None)
    assert second["attempt"] == 2
    assert second["failed_at"] == 100.0 and second["retried_at"] == 200.0
    assert "retry_at" not in second


def test_failed_keeps_kwargs_and_uses_the_qualified_class_name():
    class Outer:
        class Inner(Exception):
            pass

    job = payload.loads(encode(minimal(kwargs={"a": 1})))
    out = payload.failed(job, Outer.Inner("x"), now=1.0, retry_at=None)
    assert out["kwargs"] == {"a": 1}
    assert out["error_class"].endswith("Outer.Inner")


def test_failed_truncates_long_error_messages():
    out = payload.failed(minimal(), RuntimeError("e" * 100_000), now=1.0, retry_at=None)
    assert len(out["error_message"]) < payload.ERROR_MESSAGE_MAX_CHARS + 50
    assert out["error_message"].endswith("(truncated)")


# -- dead_letter ----------------------------------------------------------------------------


def test_dead_letter_keeps_utf8_bytes_as_text():
    raw = b'{"name": "caf\xc3\xa9"'
    entry = payload.dead_letter(raw, "not valid JSON", queue="q", now=5.0)
    assert entry["raw"] == raw.decode() and "raw_hex" not in entry
    assert entry["name"] is None and entry["queue"] == "q" and entry["failed_at"] == 5.0
    assert entry["error_class"] == "PayloadError" and entry["error_message"] == "not valid JSON"
    assert entry["jid"]
    assert ujson.loads(payload.dumps(entry)) == entry


def test_dead_letter_keeps_non_utf8_bytes_exactly_in_hex():
    raw = b"\xff\xfe\x00garbage\x80"
    entry = payload.dead_letter(raw, "not valid JSON", queue=None, now=5.0)
    assert "raw" not in entry
    assert bytes.fromhex(entry["raw_hex"]) == raw
    assert json.loads(payload.dumps(entry))["queue"] is None


def test_dead_letter_accepts_str_and_truncates_the_reason():
    entry = payload.dead_letter("[1]", "r" * 10_000, queue=None, now=1.0)
    assert entry["raw"] == "[1]"
    assert len(entry["error_message"]) < payload.ERROR_MESSAGE_MAX_CHARS + 50


def test_dead_letter_of_every_refused_payload_can_be_written():
    for raw in MALFORMED.values():
        if len(raw) > MAX:
            continue
        try:
            payload.loads(raw)
        except PayloadError as exc:
            entry = payload.dead_letter(exc.raw, exc.reason, queue=None, now=1.0)
            text = payload.dumps(entry)
            back = ujson.loads(text)
            kept = back.get("raw", "").encode() if "raw" in back \
                else bytes.fromhex(back["raw_hex"])
            assert kept == raw


# -- properties (hypothesis) ------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

if given is None:

    def test_properties_need_hypothesis():
        pytest.skip("hypothesis is not installed")

else:
    FIELDS = ["name", "args", "kwargs", "jid", "queue", "retry_queue", "retries", "attempt",
              "enqueued_at", "other"]
    json_scalars = (
        st.none() | st.booleans() | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
        | st.sampled_from(["default", "a:b", "", "x" * 200, "*", "q.1-_"])
    )
    json_values = st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    payload_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
    fuzz = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

    def check_invariants(job: dict) -> None:
        assert type(job) is dict
        assert type(job["name"]) is str and 0 < len(job["name"]) <= payload.NAME_MAX_CHARS
        assert type(job["args"]) is list
        assert type(job["kwargs"]) is dict
        assert type(job["jid"]) is str and 0 < len(job["jid"]) <= 64
        for field in ("queue", "retry_queue"):
            if field in job:
                assert valid_queue_name(job[field])
        for field, upper in (("retries", payload.MAX_RETRIES),
                             ("attempt", payload.MAX_RETRIES + 1)):
            if job.get(field) is not None:
                assert type(job[field]) is int and 0 <= job[field] <= upper

    def loads_or_payload_error(raw) -> None:
        try:
            job = payload.loads(raw)
        except PayloadError as exc:
            assert exc.raw is raw and isinstance(exc.reason, str) and exc.reason
        else:
            check_invariants(job)

    @fuzz
    @given(st.binary(max_size=300))
    def test_loads_of_arbitrary_bytes_is_a_job_or_a_payload_error(raw):
        loads_or_payload_error(raw)

    @fuzz
    @given(payload_like)
    def test_loads_of_payload_like_json_is_a_job_or_a_payload_error(obj):
        raw = json.dumps(obj).encode()
        loads_or_payload_error(raw)
        loads_or_payload_error(raw[: len(raw) // 2])

    @fuzz
    @given(st.lists(json_values, max_size=5), st.dictionaries(st.text(max_size=8),
                                                              json_values, max_size=3))
    def test_what_check_json_args_accepts_round_trips_exactly(args, kwargs):
        try:
            job = payload.build("n", args, kwargs, queue="q", retries=1)
        except EnqueueError:
            return  # an integer beyond 64 bits somewhere
        back = payload.loads(payload.dumps(job))
        assert back["args"] == job["args"]
        assert back["kwargs"] == job.get("kwargs", {})

"""End to end: every bad input of RELIABILITY.md ("Bad input") against a real worker.

A ``bin/jiggler-gevent`` subprocess runs while redis-py pushes raw bytes, bypassing
the client: malformed JSON, JSON that is not an object, names of real callables
(whose args would create a marker file if ever executed), args/kwargs of the wrong
type, a 9 MB payload, JSON nested 100,000 levels, bytes that are not UTF-8, lone
surrogate escapes, bad numeric fields, hostile queue names (inside payloads, and as
scheduled/retry set entries), and scores that are not numbers. Then a normal job.

Every bad input must end in the dead set with a reason and its raw bytes (or, for a
payload that decoded but cannot run, its decoded fields); the normal job runs; the
worker stays alive, imports and executes nothing it was named, and exits 0 on TERM;
its output has no traceback but those of the "could not record the failure" path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import redis

from jiggler_gevent.errors import EnqueueError
from jiggler_gevent.keys import Keys

from . import jobs_fixture as jf
from .procs import wait_until, worker_env

KEYS = Keys()
AUDIT_ENV = "E2E_AUDIT"  # as in bad_input_jobs.py (the worker's -r module; not imported here)
QUEUE = KEYS.queue("default")
NINE_MB = 9 * 1024 * 1024
CANARY_MODULE = "bad_input_canary"

KNOWN_KEY = re.compile(
    rb"\A(\{jiggler:q:default\}:(pending|in_progress:[0-9a-f]+|lease:[0-9a-f]+|scheduled|retries"
    rb"|dead|quarantine|recovered:[0-9a-f]{40})"
    rb"|\{jiggler\}:(queues|processes|process:[0-9a-f]+|reservations|stats:(processed_counter"
    rb"|failures_counter|(processed|failures):\d{4}-\d\d-\d\d|counted:[0-9a-f]+)))\Z")
HOSTILE_QUEUES = ["de*ault", "a:b", "a\nb", "{x}", "q" * 300, "*", "?", "[ab]",
                  "jiggler:list:default", "", " ", "default\r\n"]


def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


def _jid(i: int) -> str:
    return f"bad{i:021d}"


class Inputs:
    """The bad inputs, each with the dead entry it must leave."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)
        self.queue_raw: dict[str, bytes] = {}  # label -> bytes kept raw in the dead set
        self.queue_decoded: dict[str, tuple[bytes, str]] = {}  # label -> (bytes, error_class)
        self.scheduled: dict[str, bytes] = {}  # label -> scheduled-set member (dead, raw)
        self.retries: dict[str, bytes] = {}  # label -> retry-set member (dead, raw)
        # labels of set members the poller moves (a set's job goes to the set's own queue,
        # whatever its queue fields say) and the worker then buries for those fields
        self.worker_buried: set[str] = set()
        self.traceback_expected: set[str] = set()
        n = 0

        def raw(label: str, data: bytes) -> None:
            self.queue_raw[label] = data

        def decoded(label: str, obj: dict, error_class: str) -> None:
            nonlocal n
            n += 1
            obj = {**obj, "jid": _jid(n)}
            self.queue_decoded[label] = (_raw(obj), error_class)

        # malformed JSON
        raw("truncated", b'{"name": "e2e.record", "args": [')
        raw("unquoted", b"{name: e2e.record, args: []}")
        raw("single-quotes", b"{'name': 'e2e.record', 'args': []}")
        raw("trailing-data", b'{"name": "e2e.record", "args": []} trailing')
        raw("two-objects", b'{"name": "e2e.record"}{"name": "e2e.record"}')
        raw("hex-number", b'{"name": "e2e.record", "args": [0x10]}')
        # JSON that is not an object
        for label, data in (("list", b'["e2e.record", []]'), ("string", b'"e2e.record"'),
                            ("number", b"42"), ("null", b"null"), ("true", b"true"),
                            ("empty", b""), ("whitespace", b"  \n ")):
            raw(f"not-an-object-{label}", data)
        # names of real callables: nothing may be imported or called
        marker = self.marker
        for name, args in (
            ("os.system", [f"touch {marker}"]),
            ("subprocess.call", [["touch", marker]]),
            ("subprocess.Popen", [["touch", marker]]),
            ("builtins.eval", [f"open({marker!r}, 'w')"]),
            ("builtins.exec", [f"open({marker!r}, 'w')"]),
            ("__import__", [CANARY_MODULE]),
            ("importlib.import_module", [CANARY_MODULE]),
            (f"{CANARY_MODULE}.run", [marker]),
            (CANARY_MODULE, []),
            ("antigravity.geohash", [37.4, -122.1, "2005-05-26"]),
            ("jobs_fixture.record", ["x", "start"]),  # a real function, not a registered job
        ):
            decoded(f"callable-{name}", {"name": name, "args": args}, "UnknownJobError")
        # args that is not a list, kwargs that is not an object
        for label, body in (("args-string", {"args": "abc"}), ("args-object", {"args": {"a": 1}}),
                            ("args-null", {"args": None}), ("args-number", {"args": 3}),
                            ("kwargs-list", {"args": [], "kwargs": [1]}),
                            ("kwargs-string", {"args": [], "kwargs": "x"}),
                            ("kwargs-number", {"args": [], "kwargs": 1})):
            raw(label, _raw({"name": "e2e.record", **body}))
        decoded("args-too-many", {"name": "e2e.record", "args": [0, 1, 2]}, "BadArguments")
        decoded("kwargs-unknown", {"name": "e2e.record", "args": [], "kwargs": {"nope": 1}},
                "BadArguments")
        # huge and deep
        raw("9-MB", _raw({"name": "e2e.record", "args": ["x" * NINE_MB]}))
        raw("nested-100000", b'{"name": "e2e.record", "args": ' + b"[" * 100_000 + b"]" * 100_000
            + b"}")
        raw("nested-object-100000", b'{"name": "e2e.record", "kwargs": ' + b'{"a":' * 100_000
            + b"1" + b"}" * 100_000 + b"}")
        # not UTF-8
        raw("non-utf8-around", b'\xff\xfe{"name": "e2e.record", "args": []}\x80')
        raw("non-utf8-in-string", b'{"name": "e2e.record", "args": ["caf\xe9"]}')
        raw("non-utf8-overlong", b'{"name": "e2e.record\xc0\xae", "args": []}')
        # (surrogates encoded as bytes, b"\xed\xa0\x80", are accepted by ujson and run: a known
        # bug, see test_fuzz_ack_path.py::test_surrogate_bytes_are_not_utf8_and_never_run)
        raw("utf16", '{"name": "e2e.record", "args": []}'.encode("utf-16"))
        # lone surrogate escapes: decodable, but no entry holding them can be written as UTF-8
        raw("surrogate-name", b'{"name": "e2e.record\\ud800", "args": []}')
        raw("surrogate-arg-of-unknown", b'{"name": "nope.nope", "args": ["\\udfff"]}')
        self.traceback_expected |= {"surrogate-name", "surrogate-arg-of-unknown"}
        raw("surrogate-queue", b'{"name": "e2e.record", "args": [], "queue": "\\ud800"}')
        # bad numeric fields
        for field, value in (("attempt", "x"), ("retries", -1), ("retries", 1e9),
                             ("attempt", True), ("attempt", 1.5), ("attempt", -1),
                             ("retries", "3"), ("retries", 10_001), ("retries", 2**64),
                             ("attempt", [1]), ("retries", False)):
            raw(f"{field}={value!r}", _raw({"name": "e2e.record", "args": [], field: value}))
        raw("retries=1e400", b'{"name": "e2e.record", "args": [], "retries": 1e400}')
        raw("attempt=NaN", b'{"name": "e2e.record", "args": [], "attempt": NaN}')
        # other bad fields
        raw("name-missing", b'{"args": []}')
        raw("name-empty", b'{"name": "", "args": []}')
        raw("name-list", b'{"name": ["e2e.record"], "args": []}')
        raw("name-600-chars", _raw({"name": "e" * 600, "args": []}))
        raw("jid-number", b'{"name": "e2e.record", "args": [], "jid": 12}')
        raw("jid-100-chars", _raw({"name": "e2e.record", "args": [], "jid": "j" * 100}))
        # hostile queue names inside payloads
        for i, queue in enumerate(HOSTILE_QUEUES):
            raw(f"queue-{i}-{queue[:12]!r}", _raw({"name": "e2e.record", "args": [], "queue": queue}))
            raw(f"retry_queue-{i}-{queue[:12]!r}",
                _raw({"name": "e2e.record", "args": [], "retry_queue": queue}))
        raw("queue-number", b'{"name": "e2e.record", "args": [], "queue": 7}')
        raw("queue-null", b'{"name": "e2e.record", "args": [], "queue": null}')

        # scheduled-set and retry-set entries with hostile queue fields: the poller moves
        # them to the set's queue (it reads no queue field) and the worker buries them raw
        for i, queue in enumerate(HOSTILE_QUEUES + [7, None, ["default"], {"q": 1}]):
            label = f"scheduled-queue-{i}-{str(queue)[:12]!r}"
            self.scheduled[label] = _raw(
                {"name": "e2e.record", "args": [], "jid": f"sched{i:019d}", "queue": queue})
            self.worker_buried.add(label)
            if queue is None:
                continue  # "retry_queue": null means not set: a valid job that would run
            label = f"retry-queue-{i}-{str(queue)[:12]!r}"
            self.retries[label] = _raw(
                {"name": "e2e.record", "args": [], "jid": f"retry{i:019d}", "queue": "default",
                 "retry_queue": queue, "attempt": 1})
            self.worker_buried.add(label)
        # scheduled-set entries the poller must bury
        for label, data in (("malformed", b'{"name": "e2e.record", "args": [1,'),
                            ("not-an-object", b'["e2e.record"]'),
                            ("non-utf8", b'\xff{"name": "e2e.record", "queue": "d\xe9fault"}'),
                            ("name-missing", b'{"queue": "default", "args": []}'),
                            ("name-number", b'{"name": 1, "queue": "default", "args": []}'),
                            ("nested", b"[" * 100_000 + b"]" * 100_000),
                            ("empty", b"\t")):
            self.scheduled[f"scheduled-{label}"] = data
        every = [*self.queue_raw.values(), *(d for d, _ in self.queue_decoded.values()),
                 *self.scheduled.values(), *self.retries.values()]
        assert len(set(every)) == len(every), "two bad inputs have the same bytes"

    @property
    def count(self) -> int:
        return len(self.queue_raw) + len(self.queue_decoded) + len(self.scheduled) + len(self.retries)


def _canary_module(folder, marker) -> None:
    """A module that creates the marker when imported or called: it must never be."""
    folder.mkdir()
    (folder / f"{CANARY_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n\n"
        f"def run(*args):\n    open({str(marker)!r}, 'w').write('called')\n"
    )


def _audit_lines(path, start: int = 0) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[start:]
    except FileNotFoundError:
        return []


def _dead_entries(client) -> list[dict]:
    return [json.loads(member) for member in client.zrange(KEYS.dead("default"), 0, -1)]


def _raw_of(entry: dict) -> bytes | None:
    if "raw_hex" in entry:
        return bytes.fromhex(entry["raw_hex"])
    if "raw" in entry:
        return entry["raw"].encode("utf-8")
    return None


def test_every_bad_input_ends_in_the_dead_set_and_the_worker_goes_on(
        redis_client, spawn_worker, ledger, tmp_path, capsys):
    marker = tmp_path / "pwned"
    audit = tmp_path / "audit.txt"
    canary_dir = tmp_path / "canary"
    _canary_module(canary_dir, marker)
    path = os.pathsep.join([worker_env()["PYTHONPATH"], str(canary_dir)])
    started = time.monotonic()
    worker = spawn_worker("-r", "bad_input_jobs", "-c", "4", "--poll-interval", "0.2", "-v",
                          require=False, env={AUDIT_ENV: str(audit), "PYTHONPATH": path})
    wait_until(lambda: redis_client.zcard(KEYS.processes) == 1, 20, "the first heartbeat", worker)
    # warm up: one normal job, one bad payload, one poller-buried entry, so that modules
    # loaded lazily on these paths are loaded before the audit baseline
    warm = jf.Record.enqueue()
    redis_client.lpush(QUEUE, b"warm-up: not json")
    redis_client.zadd(KEYS.scheduled("default"), {b"warm-up: not json": 1})
    wait_until(lambda: warm in ledger.ended() and redis_client.zcard(KEYS.dead("default")) == 2, 15,
               "the warm-up", worker)
    redis_client.delete(KEYS.dead("default"))
    baseline = len(_audit_lines(audit))
    assert _audit_lines(audit), "the audit hook of bad_input_jobs is not installed"

    inputs = Inputs(marker)
    # scores that are not numbers: refused before anything reaches the worker
    with pytest.raises(redis.ResponseError, match="not a valid float"):
        redis_client.zadd(KEYS.scheduled("default"), {_raw({"name": "e2e.record", "args": []}): float("nan")})
    with pytest.raises(redis.ResponseError, match="not a valid float"):
        redis_client.zadd(KEYS.scheduled("default"), {_raw({"name": "e2e.record", "args": []}): "soon"})
    with pytest.raises(redis.ResponseError, match="not a valid float"):
        redis_client.execute_command("ZADD", KEYS.scheduled("default"), "1e400x", b'{"name": "e2e.record"}')
    for when in (float("nan"), float("inf"), float("-inf"), "soon", None, b"1"):
        with pytest.raises(EnqueueError, match="run time must be"):
            jf.Record.enqueue_at(when)
    for seconds in (float("nan"), "1", None):
        with pytest.raises(EnqueueError, match="seconds must be a number"):
            jf.Record.enqueue_in(seconds)
    assert redis_client.zcard(KEYS.scheduled("default")) == 0
    # scores that are numbers but extreme: -inf is due now, +inf never
    never = _raw({"name": "e2e.record", "args": [], "jid": "never" + "0" * 19})
    redis_client.zadd(KEYS.scheduled("default"), {never: float("inf")})

    with redis_client.pipeline(transaction=False) as pipe:
        for data in inputs.queue_raw.values():
            pipe.lpush(QUEUE, data)
        for data, _ in inputs.queue_decoded.values():
            pipe.lpush(QUEUE, data)
        for data in inputs.scheduled.values():
            pipe.zadd(KEYS.scheduled("default"), {data: float("-inf")})
        for data in inputs.retries.values():
            pipe.zadd(KEYS.retries("default"), {data: time.time() - 1})
        pipe.execute()
    # then a normal job, and one scheduled at -inf (due at once)
    normal = jf.Record.enqueue()
    scheduled_normal = _raw({"name": "e2e.record", "args": [], "jid": "minusinf" + "0" * 16})
    redis_client.zadd(KEYS.scheduled("default"), {scheduled_normal: float("-inf")})

    wait_until(lambda: redis_client.zcard(KEYS.dead("default")) >= inputs.count, 30,
               f"{inputs.count} dead entries", worker)
    wait_until(lambda: {normal, "minusinf" + "0" * 16} <= ledger.ended(), 15,
               "the normal jobs to run", worker)
    time.sleep(0.5)  # room for a wrong extra entry or a late crash to show up
    assert worker.running, worker.tail()

    # -- every bad input is in the dead set, once, with a reason --------------------------
    entries = _dead_entries(redis_client)
    by_raw: dict[bytes, list[dict]] = {}
    by_jid: dict[str, list[dict]] = {}
    for entry in entries:
        assert isinstance(entry.get("error_class"), str) and entry["error_class"], entry
        assert isinstance(entry.get("error_message"), str) and entry["error_message"], entry
        kept = _raw_of(entry)
        if kept is not None:
            by_raw.setdefault(kept, []).append(entry)
        elif isinstance(entry.get("jid"), str):
            by_jid.setdefault(entry["jid"], []).append(entry)
    missing = []
    for label, data in inputs.queue_raw.items():
        found = by_raw.get(data, [])
        if len(found) != 1:
            missing.append((label, len(found)))
            continue
        assert found[0]["error_class"] == "PayloadError" and found[0]["queue"] == "default", label
    for label, (data, error_class) in inputs.queue_decoded.items():
        sent = json.loads(data)
        found = by_jid.get(sent["jid"], [])
        if len(found) != 1:
            missing.append((label, len(found)))
            continue
        (entry,) = found
        assert entry["error_class"] == error_class, (label, entry)
        assert entry["name"] == sent["name"] and entry["args"] == sent["args"], (label, entry)
        assert entry.get("kwargs", {}) == sent.get("kwargs", {}), (label, entry)
        assert entry["queue"] == "default" and entry["attempt"] == 1, (label, entry)
    for label, data in {**inputs.scheduled, **inputs.retries}.items():
        found = by_raw.get(data, [])
        if len(found) != 1:
            missing.append((label, len(found)))
            continue
        reason = "is not a valid queue name" if label in inputs.worker_buried \
            else "not a JSON job object"
        assert found[0]["error_class"] == "PayloadError" and reason in \
            found[0]["error_message"], (label, found[0])
        assert found[0]["queue"] == "default", (label, found[0])
    assert not missing, f"bad inputs not in the dead set exactly once (label, times): {missing}"
    assert len(entries) == inputs.count

    # -- nothing else happened ---------------------------------------------------------------
    assert not marker.exists(), f"a hostile payload ran: {marker.read_text()!r}"
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.zcard(KEYS.retries("default")) == 0
    assert redis_client.zrange(KEYS.scheduled("default"), 0, -1) == [never]  # +inf: never due, not lost
    starts, ends = ledger.counts()
    assert set(starts) == set(ends) == {warm, normal, "minusinf" + "0" * 16}, ledger.entries()
    # no key was made from a hostile queue name: every key is one of the known layout
    strange = [key for key in redis_client.scan_iter(match="*") if not KNOWN_KEY.match(key)]
    assert strange == [], strange

    audit_after = _audit_lines(audit, baseline)
    imports = [line for line in audit_after if line.startswith("import ")]
    hostile_roots = {"os", "subprocess", "builtins", "importlib", CANARY_MODULE, "antigravity",
                     "jobs_fixture"}
    assert not [line for line in imports if line.split()[1].split(".")[0] in hostile_roots], imports
    run_events = [line for line in audit_after if not line.startswith("import ")]
    assert run_events == [], f"code was compiled/executed or a program started: {run_events}"
    assert imports == [], f"the worker imported modules while handling bad input: {imports}"

    # -- the worker is alive, stops cleanly, and logged no unexpected traceback ---------------
    worker.send(signal.SIGTERM)
    worker.wait_exit(15)
    assert worker.returncode == 0, worker.tail()
    assert list(redis_client.scan_iter(match="*:in_progress:*")) == []
    out, err = worker.stdout(), worker.stderr()
    assert "Traceback" not in err, err[-3000:]
    lines = out.splitlines()
    unexpected = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            context = "\n".join(lines[max(0, i - 2):i])
            if "could not record the failure" not in context:
                unexpected.append("\n".join(lines[max(0, i - 2):i + 12]))
    assert not unexpected, "unexpected tracebacks:\n" + "\n---\n".join(unexpected)
    assert out.count("could not record the failure") == len(inputs.traceback_expected), \
        [line for line in lines if "could not record" in line]
    for jid in [_jid(i) for i in range(1, len(inputs.queue_decoded) + 1)]:
        assert f"start jid={jid}" not in out  # none of them reached perform
    # 1: the warm-up payload
    failures = 1 + len(inputs.queue_raw) + len(inputs.queue_decoded) + len(inputs.worker_buried)
    assert redis_client.get(KEYS.failures) == str(failures).encode()
    with capsys.disabled():
        print(f"\nbad input e2e: {inputs.count} bad inputs ({len(inputs.queue_raw)} raw on the queue,"
              f" {len(inputs.queue_decoded)} decoded, {len(inputs.scheduled)} scheduled,"
              f" {len(inputs.retries)} retries) all dead once; worker alive, exit 0,"
              f" {time.monotonic() - started:.1f}s", flush=True)


def test_client_refuses_what_json_cannot_carry_deeply_nested(redis_client):
    """The client side of "deeply nested JSON": a clear EnqueueError, not a RecursionError."""
    value: list = []
    for _ in range(2_000):
        value = [value]
    with pytest.raises(EnqueueError):
        jf.Record.enqueue(value)
    assert redis_client.llen(QUEUE) == 0

"""The job payload: build it, encode it, decode and check it.

Owns the JSON wire format (documented in README.rst, "Wire format"). Encoding
refuses anything JSON cannot carry faithfully; decoding turns any bytes into a
:class:`Job payload dict <Payload>` or raises :class:`PayloadError` carrying the raw
bytes and a reason. Must not talk to Redis or look jobs up.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import ujson

from .errors import EnqueueError, PayloadError
from .keys import valid_queue_name

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
MAX_RETRIES = 10_000
ERROR_MESSAGE_MAX_CHARS = 2_000
MAX_NESTING = 200  # args deeper than this are refused at enqueue (JSON decoders stop near 1000)
NAME_MAX_CHARS = 512
MAX_JID_CHARS = 64

Payload = dict  # a decoded, checked payload (a plain dict, see the README for its fields)

_SCALARS = (str, bool, type(None))
_INT_MIN, _INT_LIMIT = -(2**63), 2**64  # what JSON decoders read back as the same integer


def new_jid() -> str:
    """A random 24-hex-digit job id (96 bits)."""
    return os.urandom(12).hex()


def _plain(value: Any) -> bool:
    """A scalar that JSON carries unchanged (a 64-bit int, a finite float, a string...)."""
    kind = type(value)
    return kind in _SCALARS or (kind is int and _INT_MIN <= value < _INT_LIMIT) or (
        kind is float and math.isfinite(value))


def check_json_args(value: Any, where: str = "args", depth: int = 0) -> Any:
    """Return ``value`` with tuples turned into lists, or raise :class:`EnqueueError`.

    Only what survives a JSON round trip unchanged is accepted: ``None``, bools,
    64-bit ints, finite floats, strings, lists/tuples and dicts with string keys,
    nested at most :data:`MAX_NESTING` levels.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is int:
        if _INT_MIN <= value < _INT_LIMIT:
            return value
        raise EnqueueError(f"{where}: integer {value} does not fit in 64 bits")
    if kind is float:
        if math.isfinite(value):
            return value
        raise EnqueueError(f"{where}: {value!r} is not a finite number JSON can carry")
    if kind is list or kind is tuple or kind is dict:
        if depth >= MAX_NESTING:
            raise EnqueueError(f"{where}: nested more than {MAX_NESTING} levels deep")
        # plain scalars are kept inline: no recursion, and the path of an item is only
        # built for the items that need a closer look (the bulk enqueue path is hot)
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    raise EnqueueError(f"{where}: dict key {key!r} is not a string")
            return {k: v if _plain(v) else check_json_args(v, f"{where}[{k!r}]", depth + 1)
                    for k, v in value.items()}
        return [item if _plain(item) else check_json_args(item, f"{where}[{i}]", depth + 1)
                for i, item in enumerate(value)]
    raise EnqueueError(
        f"{where}: {kind.__name__} value {value!r:.80} cannot be sent as JSON; "
        "pass ids, strings, numbers, lists or dicts instead"
    )


def check_options(*, queue: str, retries: int, retry_queue: str | None = None) -> None:
    """Raise :class:`EnqueueError` for a bad queue, retry_queue or retries count."""
    if not valid_queue_name(queue):
        raise EnqueueError(f"queue name {queue!r} is not valid (letters, digits, _ . -)")
    if retry_queue is not None and not valid_queue_name(retry_queue):
        raise EnqueueError(f"retry_queue name {retry_queue!r} is not valid")
    if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
        raise EnqueueError(f"retries must be an integer from 0 to {MAX_RETRIES}, not {retries!r}")


def build(
    name: str,
    args: Any,
    kwargs: Any,
    *,
    queue: str,
    retries: int,
    retry_queue: str | None = None,
    jid: str | None = None,
    now: float | None = None,
    options_checked: bool = False,
) -> dict:
    """A new payload dict for one job; checks the arguments and (unless the caller did,
    with :func:`check_options`, as a bulk enqueue does once) the options."""
    if not options_checked:
        check_options(queue=queue, retries=retries, retry_queue=retry_queue)
    if jid is not None and (type(jid) is not str or not 0 < len(jid) <= MAX_JID_CHARS):
        # the worker would bury it as a PayloadError, never to run
        raise EnqueueError(f"jid must be a string of 1 to {MAX_JID_CHARS} characters, "
                           f"not {jid!r:.80}")
    payload = {
        "name": name,
        "args": check_json_args(list(args), "args"),
        "jid": jid or new_jid(),
        "queue": queue,
        "retries": retries,
        "enqueued_at": time.time() if now is None else now,
    }
    if kwargs:
        payload["kwargs"] = check_json_args(dict(kwargs), "kwargs")
    if retry_queue and retry_queue != queue:
        payload["retry_queue"] = retry_queue
    return payload


def dumps(payload: dict, *, check_size: bool = True) -> bytes:
    """Encode a payload as UTF-8 JSON bytes; refuses one larger than
    :data:`MAX_PAYLOAD_BYTES` unless ``check_size`` is false (dead-set entries keep
    whatever they were given), and strings UTF-8 cannot carry (lone surrogates)."""
    text = ujson.dumps(payload, ensure_ascii=False, escape_forward_slashes=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnqueueError(f"payload of job {payload.get('name')!r} has a string UTF-8 cannot "
                           f"encode (a lone surrogate?): {exc.reason}") from None
    if check_size and len(data) > MAX_PAYLOAD_BYTES:
        raise EnqueueError(
            f"payload of job {payload.get('name')!r} is over {MAX_PAYLOAD_BYTES} bytes; "
            "store large data elsewhere and pass a reference"
        )
    return data


def _check_count(payload: dict, field: str, raw: bytes, upper: int) -> None:
    value = payload.get(field)
    if value is None:
        return
    if type(value) is not int or not 0 <= value <= upper:
        raise PayloadError(f"field {field!r} must be an integer from 0 to {upper}", raw)


def loads(raw: bytes | str) -> dict:
    """Decode and check one payload read from Redis, or raise :class:`PayloadError`.

    On success the dict has ``name`` (str), ``args`` (list), ``kwargs`` (dict),
    ``jid`` (str), and valid ``queue``/``retries``/``attempt`` when present.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(raw)} bytes, over {MAX_PAYLOAD_BYTES}", raw)
    try:
        # decode first: ujson alone accepts UTF-8-encoded lone surrogates
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8 ({exc.reason} at byte {exc.start})", raw) from None
    try:
        payload = ujson.loads(text)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise PayloadError(f"not valid JSON ({exc})", raw) from None
    if type(payload) is not dict:
        raise PayloadError(f"payload is a JSON {type(payload).__name__}, not an object", raw)
    name = payload.get("name")
    if type(name) is not str or not name or len(name) > NAME_MAX_CHARS:
        raise PayloadError("field 'name' must be a non-empty string", raw)
    args = payload.get("args", [])
    if type(args) is not list:
        raise PayloadError("field 'args' must be a list", raw)
    kwargs = payload.get("kwargs")
    if kwargs is None:
        payload["kwargs"] = {}
    elif type(kwargs) is not dict:
        raise PayloadError("field 'kwargs' must be an object", raw)
    jid = payload.get("jid")
    if jid is None:
        payload["jid"] = new_jid()
    elif type(jid) is not str or not 0 < len(jid) <= MAX_JID_CHARS:
        raise PayloadError(f"field 'jid' must be a string of 1 to {MAX_JID_CHARS} characters",
                           raw)
    if "retry_queue" in payload and payload["retry_queue"] is None:
        del payload["retry_queue"]  # null means "not set" for producers in other languages
    for field in ("queue", "retry_queue"):
        if field in payload and not valid_queue_name(payload[field]):
            raise PayloadError(f"field {field!r} is not a valid queue name", raw)
    _check_count(payload, "retries", raw, MAX_RETRIES)
    _check_count(payload, "attempt", raw, MAX_RETRIES + 1)
    payload["args"] = args
    return payload


def failed(payload: dict, exc: BaseException, *, now: float, retry_at: float | None) -> dict:
    """A copy of ``payload`` with the failure fields of one more failed attempt."""
    out = dict(payload)
    if not out.get("kwargs"):
        out.pop("kwargs", None)
    attempt = (payload.get("attempt") or 0) + 1
    out["attempt"] = attempt
    out["error_class"] = type(exc).__qualname__
    out["error_message"] = _truncate(str(exc))
    out.setdefault("failed_at", now)
    if attempt > 1:
        out["retried_at"] = now
    if retry_at is None:
        out.pop("retry_at", None)
    else:
        out["retry_at"] = retry_at
    return out


def dead_letter(raw: bytes | str, reason: str, *, queue: str | None, now: float) -> dict:
    """A dead-set entry for bytes that are not a runnable job, keeping them exactly."""
    entry: dict = {
        "name": None,
        "jid": new_jid(),
        "queue": queue,
        "error_class": "PayloadError",
        "error_message": _truncate(reason),
        "failed_at": now,
    }
    if isinstance(raw, str):
        entry["raw"] = raw
    else:
        try:
            entry["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_hex"] = raw.hex()  # the same form schedule.lua writes
    return entry


def _truncate(text: str) -> str:
    if len(text) <= ERROR_MESSAGE_MAX_CHARS:
        return text
    return text[:ERROR_MESSAGE_MAX_CHARS] + "... (truncated)"

"""The read and admin API: what the dashboard and the admin commands see and do.

Owns reading the Redis layout (README "Wire format") for people: totals, queues with
their latency, worker processes and their busy jobs, paginated listings of queues
and of the retry/scheduled/dead sets, one job by jid, per-day history, the periodic
schedules the workers published; and the actions a person takes by hand: retry now,
delete, kill, retry/delete all, clear a queue, quiet/stop a process (a command list
its heartbeat reads), enqueue a periodic schedule's job now, and the
:class:`Cleaner`. Redis only: no gevent, and the worker never imports it.

Nothing stored is trusted: members may be non-UTF-8, not JSON, or JSON of the wrong
shape. They are shown as :class:`Entry` objects whose fields are plain str/float/None
values, and every listing is bounded. An entry is addressed by its *ref*,
``<queue>:<score>:<sha1 of the member>`` for set entries (exact, even for duplicate or
missing jids) and ``<sha1>`` for queue entries.

The scheduled, retry and dead "sets" are one sorted set per queue (each in its queue's
cluster slot). The queues are the members of the queue registry (``keys.queues``) and
the queues live worker processes listen on. A listing of a set merges the queues' sorted
sets by score (ties by queue name, then bytes), so its pages read as one set; counts
are the sums of the ZCARDs. Every action touches one queue's keys, except a dead entry
retried to another queue than its own (see :meth:`Api.retry_now`). Works on a Redis
Cluster client too: every script and MULTI stays in one slot, SCAN visits every primary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import redis
import ujson

from . import middleware as _middleware
from . import payload as _payload
from . import periodic as _periodic
from .connection import is_cluster
from .errors import EnqueueError, UnknownJobError
from .job import Enqueuer, lookup
from .keys import DEFAULT_QUEUE, Keys, valid_queue_name
from .scripts import Scripts

SET_NAMES = ("retries", "scheduled", "dead")
SCAN_COUNT = 500
BATCH = 500
MAX_PAGE_SIZE = 500
JOB_SEARCH_LIMIT = 100_000  # members examined per set or queue when looking a jid up
HISTORY_MAX_DAYS = 400
QUEUE_DELETE_SEARCH_LIMIT = 100_000
SIGNALS_TTL_S = 600
PROCESS_COMMANDS = ("quiet", "stop")
_REF_RE = re.compile(r"\A([A-Za-z0-9_.\-]{1,128}):(-?(?:[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?|inf))"
                     r":([0-9a-f]{40})\Z")
_DIGEST_RE = re.compile(r"\A[0-9a-f]{40}\Z")
_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


class AdminError(Exception):
    """An admin action cannot be done as asked (the message says why)."""


class NotFound(AdminError, LookupError):
    """The job, queue or process asked for is not there (any more)."""


def signals_key(keys: Keys, identity: str) -> str:
    """``{jiggler}:process:<identity>:signals``: a list of commands (``quiet``, ``stop``)
    for one worker process. The admin API ``LPUSH``es; the process's heartbeat pops
    from the right each beat and acts as on TSTP (quiet) or TERM (stop)."""
    return keys.signals(identity)


def _text(value: Any) -> str:
    """Any Redis reply or JSON value as printable text (never raises)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    return "" if value is None else str(value)


def _number(value: Any) -> Optional[float]:
    """A finite float from a JSON value or Redis reply, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _int(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None else 0


def _json_text(value: Any) -> str:
    try:
        return _text(ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False))
    except (TypeError, ValueError, OverflowError):
        return _text(repr(value))


def relative_time(epoch: Any, now: Optional[float] = None) -> str:
    """``epoch`` relative to ``now``: ``"in 3m"``, ``"2h ago"``, ``"5s ago"`` ("" when it is
    not a number). The dashboard's ``ago`` filter and the admin commands use it."""
    number = _number(epoch)
    if number is None:
        return ""
    delta = (time.time() if now is None else now) - number
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            text = f"{delta / size:.0f}{unit}"
            break
    else:
        text = f"{delta:.0f}s"
    return f"in {text}" if future else f"{text} ago"


def clamp(value: Any, low: int, high: int, default: int) -> int:
    """``value`` as an int within [low, high]; ``default`` when it is not a number."""
    try:
        number = int(str(value).strip()[:20])
    except (TypeError, ValueError):
        return default
    return max(low, min(high, number))


def digest(raw: bytes) -> str:
    return hashlib.sha1(raw).hexdigest()


@dataclasses.dataclass
class Entry:
    """One stored job (or stored bytes that are not a job), ready to show."""

    raw: bytes
    where: str  # "retries", "scheduled", "dead" or "queue"
    score: Optional[float] = None
    queue_name: Optional[str] = None  # the queue whose list or sorted set holds it
    job: Optional[dict] = None  # the decoded object, None when the bytes are not one
    problem: Optional[str] = None  # why it is not a job object

    @classmethod
    def decode(cls, raw: bytes, where: str, score: Optional[float] = None,
               queue_name: Optional[str] = None) -> Entry:
        entry = cls(raw=raw, where=where, score=score, queue_name=queue_name)
        try:
            value = ujson.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            entry.problem = "not UTF-8"
        except (ValueError, OverflowError, RecursionError):
            entry.problem = "not JSON"
        else:
            if isinstance(value, dict):
                entry.job = value
            else:
                entry.problem = f"a JSON {type(value).__name__}, not an object"
        return entry

    def field(self, name: str) -> Any:
        return self.job.get(name) if self.job else None

    @property
    def ref(self) -> str:
        """How to address this entry in an action: ``<queue>:<score>:<sha1>`` in a set,
        ``<sha1>`` in a queue's list (the queue is given with it)."""
        if self.score is None:
            return digest(self.raw)
        return f"{self.queue_name}:{score_text(self.score)}:{digest(self.raw)}"

    @property
    def jid(self) -> str:
        return _text(self.field("jid"))

    @property
    def name(self) -> str:
        return _text(self.field("name"))

    @property
    def queue(self) -> str:
        return _text(self.field("queue") or self.queue_name)

    @property
    def args_text(self) -> str:
        args = self.field("args")
        return "" if args is None else _json_text(args)

    @property
    def kwargs_text(self) -> str:
        kwargs = self.field("kwargs")
        return _json_text(kwargs) if kwargs else ""

    @property
    def error_class(self) -> str:
        return _text(self.field("error_class"))

    @property
    def error_message(self) -> str:
        return _text(self.field("error_message"))

    @property
    def backtrace(self) -> list[str]:
        trace = self.field("error_backtrace")
        if isinstance(trace, list):
            return [_text(line) for line in trace[:200]]
        return [_text(trace)] if trace else []

    @property
    def attempt(self) -> int:
        return _int(self.field("attempt"))

    @property
    def raw_text(self) -> str:
        """The stored bytes as text (undecodable bytes as ``\\xNN``)."""
        return _text(self.raw)

    def time(self, name: str) -> Optional[float]:
        return _number(self.field(name))

    @property
    def runnable_job(self) -> Optional[dict]:
        """The job a retry-now pushes: the entry itself, or, for an entry that wraps the
        job's original bytes in ``raw`` (a ``PoisonPill`` buried by the requeuer), that
        job decoded (None when those bytes are not a job object)."""
        if not self.job:
            return None
        raw = self.job.get("raw")
        if not isinstance(raw, str):
            return self.job
        try:
            wrapped = ujson.loads(raw)
        except (ValueError, OverflowError, RecursionError):
            return None
        return wrapped if isinstance(wrapped, dict) else None

    @property
    def runnable_queue(self) -> Optional[str]:
        """The queue a retry-now sends it to, or None when it is not a runnable job.

        A scheduled or retry entry goes to the queue whose set holds it (as the poller
        would move it: a retry already sits in its ``retry_queue``'s set). A dead entry
        goes to the queue named in the job, else to the queue whose dead set holds it.
        """
        job = self.runnable_job
        if job is None or not isinstance(job.get("name"), str) or not job.get("name"):
            return None
        if self.where in ("retries", "scheduled"):
            queue = self.queue_name
        else:
            queue = job.get("queue")
            if queue is None:
                queue = self.queue_name or DEFAULT_QUEUE
        return queue if valid_queue_name(queue) else None

    def as_dict(self) -> dict:
        """A JSON-safe summary (for ``--json`` and the JSON endpoints)."""
        return {
            "ref": self.ref, "where": self.where, "in_queue": self.queue_name,
            "score": self.score, "jid": self.jid,
            "name": self.name, "queue": self.queue, "args": self.args_text,
            "kwargs": self.kwargs_text, "error_class": self.error_class,
            "error_message": self.error_message, "attempt": self.attempt,
            "problem": self.problem, "raw": None if self.job else self.raw_text,
        }


def score_text(score: float) -> str:
    """A score as it appears in a ref (``repr`` of the float, round-trips exactly)."""
    text = repr(float(score))
    return text[:-2] if text.endswith(".0") and "e" not in text else text


def parse_ref(ref: str) -> tuple[str, float, str]:
    """``<queue>:<score>:<sha1>`` -> (queue, score, sha1); raises :class:`NotFound` for
    anything else."""
    match = _REF_RE.match(ref if isinstance(ref, str) else "")
    if not match:
        raise NotFound(f"no such entry {_text(ref)[:100]!r}")
    return match.group(1), float(match.group(2)), match.group(3)


@dataclasses.dataclass
class Page:
    """One page of a listing."""

    entries: list[Entry]
    total: int
    page: int
    count: int
    queue: Optional[str] = None  # the queue a set listing was narrowed to
    by_queue: dict = dataclasses.field(default_factory=dict)  # set listings: queue -> size

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.count))


@dataclasses.dataclass
class QueueInfo:
    name: str
    size: int
    latency: float  # seconds the oldest job has waited (0 when empty or unknown)


@dataclasses.dataclass
class ProcessInfo:
    """One worker process as its heartbeat hash describes it (every value text)."""

    identity: str
    info: dict  # field name -> text
    busy_jobs: list[dict]  # each: worker, jid, name, queue, started_at (text)
    alive: bool

    def get(self, name: str) -> str:
        return self.info.get(name, "")

    @property
    def busy(self) -> int:
        return _int(self.info.get("busy"))

    @property
    def quiet(self) -> bool:
        return self.info.get("quiet") == "1"


@dataclasses.dataclass
class ScheduleInfo:
    """One periodic schedule as the workers published it (``{jiggler}:periodic:schedules``),
    with its next run and last recorded tick. Fields are text, numbers or None, except
    ``args`` and ``kwargs``: the JSON values as published (shown through ``*_text``)."""

    name: str
    job: str
    timing: str  # "every 5 min", "cron */5 * * * *", with " (<tz>)" when it has one
    every: Optional[float]
    cron: Optional[str]
    tz: Optional[str]
    queue: Optional[str]  # where its jobs go; None when the publisher did not know the job
    args: Any  # JSON values as published (a list, unless a publisher wrote something else)
    kwargs: Any
    next_run: Optional[float]  # None when this process cannot compute it (e.g. no croniter)
    last_tick: Optional[float]  # None until a worker recorded a tick
    enqueueable: bool  # its job is registered in this process (see Api.enqueue_periodic)

    @property
    def args_text(self) -> str:
        return _json_text(self.args)

    @property
    def kwargs_text(self) -> str:
        return _json_text(self.kwargs) if self.kwargs else ""

    def as_dict(self) -> dict:
        """A JSON-safe summary (for ``--json``)."""
        return {"name": self.name, "job": self.job, "timing": self.timing, "every": self.every,
                "cron": self.cron, "tz": self.tz, "queue": self.queue, "args": self.args,
                "kwargs": self.kwargs, "next_run": self.next_run, "last_tick": self.last_tick}

    @classmethod
    def from_published(cls, info: dict) -> ScheduleInfo:
        """From one item of :func:`jiggler_gevent.periodic.list_schedules`."""
        job = _text(info.get("job"))
        every = _number(info.get("every"))
        cron = _text(info["cron"]) if info.get("cron") is not None else None
        tz = _text(info["tz"]) if info.get("tz") is not None else None
        if cron is not None:
            timing = f"cron {cron}"
        elif every is not None:
            timing = f"every {_duration(every)}"
        else:
            timing = f"every {_text(info.get('every'))}" if "every" in info else "?"
        if tz is not None:
            timing += f" ({tz})"
        queue = info.get("queue")
        return cls(name=_text(info.get("name")), job=job, timing=timing, every=every, cron=cron,
                   tz=tz, queue=queue if valid_queue_name(queue) else None,
                   args=info.get("args", []), kwargs=info.get("kwargs") or {},
                   next_run=_number(info.get("next_run")), last_tick=_number(info.get("last_tick")),
                   enqueueable=_registered(job))


def _duration(seconds: float) -> str:
    """An interval for people: ``1 d``, ``2 h``, ``5 min``, ``90 s``, ``0.5 s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _registered(job_name: str) -> bool:
    try:
        lookup(job_name)
    except UnknownJobError:
        return False
    return True


class Api:
    """Reads and admin actions over one Redis client and namespace.

    ``client`` is a redis-py client, ``redis.Redis`` or ``redis.cluster.RedisCluster``
    (bytes replies; ``decode_responses`` must be off).
    """

    def __init__(self, client: redis.Redis, namespace: str = "") -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.cluster = is_cluster(client)
        self._scripts: Optional[Scripts] = None

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.client)
        return self._scripts

    # -- reads ---------------------------------------------------------------------------

    def scan(self, pattern: str) -> Iterator[str]:
        """Every key matching ``pattern``: SCAN to cursor 0 (not to the first empty page),
        on every primary of a cluster."""
        for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
            yield _text(key)

    def queue_names(self) -> list[str]:
        """Every known queue, sorted: the queue registry plus the queues live worker
        processes listen on (a registry emptied by hand fills again with their next
        heartbeat; until then they are still found)."""
        names = {_text(name) for name in self.client.smembers(self.keys.queues)}
        names.update(self._process_queues())
        return sorted(name for name in names if valid_queue_name(name))

    def _process_queues(self) -> set[str]:
        identities = [_text(i) for i in self.client.zrevrange(self.keys.processes, 0, 999)]
        if not identities:
            return set()
        with self.client.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.hget(self.keys.process(identity), "queues")
            replies = pipe.execute()
        names: set[str] = set()
        for text in replies:
            for item in _text(text).split(",")[:1000]:  # "critical:6,default:3"
                names.add(item.strip().partition(":")[0])
        return names

    def queues(self, now: Optional[float] = None) -> list[QueueInfo]:
        """Every known queue with its size and latency (age of its oldest job)."""
        now = time.time() if now is None else now
        names = self.queue_names()
        replies = self._pipelined(lambda pipe: [
            (pipe.llen(self.keys.queue(name)), pipe.lindex(self.keys.queue(name), -1))
            for name in names])  # the right end runs next
        out = []
        for i, name in enumerate(names):
            size, oldest = replies[2 * i], replies[2 * i + 1]
            out.append(QueueInfo(name, int(size or 0), _latency(oldest, now)))
        return out

    def _pipelined(self, add: Any) -> list:
        """Replies of the commands ``add(pipe)`` queues on a non-transactional pipeline."""
        with self.client.pipeline(transaction=False) as pipe:
            add(pipe)
            return pipe.execute()

    def processes(self) -> list[ProcessInfo]:
        """Registered worker processes with a live heartbeat, most recent beat first."""
        identities = [_text(i) for i in self.client.zrevrange(self.keys.processes, 0, 999)]
        with self.client.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.hgetall(self.keys.process(identity))
            hashes = pipe.execute()
        out = []
        for identity, fields in zip(identities, hashes):
            if not fields:
                continue  # heartbeat expired: the requeuer prunes the registry
            info = {_text(k): _text(v) for k, v in fields.items()}
            out.append(ProcessInfo(identity, info, _busy_jobs(info.get("busy_jobs")), True))
        return out

    def totals(self) -> dict:
        """processed, failed, enqueued, retries, scheduled, dead, busy, processes."""
        queues = self.queue_names()

        def add(pipe: Any) -> None:
            pipe.get(self.keys.processed)
            pipe.get(self.keys.failures)
            for name in queues:
                keys = self.keys.queue_keys(name)
                pipe.llen(keys.pending)
                pipe.zcard(keys.retries)
                pipe.zcard(keys.scheduled)
                pipe.zcard(keys.dead)

        replies = self._pipelined(add)
        per_queue = replies[2:]
        processes = self.processes()
        return {
            "processed": _int(replies[0]),
            "failed": _int(replies[1]),
            "enqueued": sum(int(n or 0) for n in per_queue[0::4]),
            "retries": sum(int(n or 0) for n in per_queue[1::4]),
            "scheduled": sum(int(n or 0) for n in per_queue[2::4]),
            "dead": sum(int(n or 0) for n in per_queue[3::4]),
            "busy": sum(p.busy for p in processes),
            "processes": len(processes),
        }

    def summary(self, now: Optional[float] = None) -> dict:
        """Totals, queues and processes in one JSON-safe dict."""
        return {
            "totals": self.totals(),
            "queues": [dataclasses.asdict(q) for q in self.queues(now)],
            "processes": [
                {"identity": p.identity, **{k: v for k, v in p.info.items() if k != "busy_jobs"},
                 "busy_jobs": p.busy_jobs}
                for p in self.processes()
            ],
        }

    def history(self, days: int = 30, now: Optional[float] = None) -> list[dict]:
        """Per-day processed/failed counts, oldest day first (UTC days, at most 400)."""
        days = max(1, min(HISTORY_MAX_DAYS, int(days)))
        now = time.time() if now is None else now
        names = [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * back))
                 for back in range(days - 1, -1, -1)]
        processed = self.client.mget([self.keys.processed_on(d) for d in names])  # one slot
        failed = self.client.mget([self.keys.failures_on(d) for d in names])
        return [{"day": d, "processed": _int(p), "failed": _int(f)}
                for d, p, f in zip(names, processed, failed)]

    def redis_info(self) -> dict:
        """A few fields of Redis INFO worth showing."""
        info = self.client.info()
        wanted = ("redis_version", "valkey_version", "uptime_in_days", "connected_clients",
                  "used_memory_human", "used_memory_peak_human", "maxmemory_policy")
        return {name: _text(info[name]) for name in wanted if name in info}

    def periodic(self, now: Optional[float] = None) -> list[ScheduleInfo]:
        """The periodic schedules the workers published, next to run first, each with its
        next run and last tick (:func:`jiggler_gevent.periodic.list_schedules`)."""
        now = time.time() if now is None else now
        return [ScheduleInfo.from_published(info)
                for info in _periodic.list_schedules(self.client, self.keys, now)]

    # -- listings ------------------------------------------------------------------------

    def set_key(self, name: str, queue: str) -> str:
        """The key of sorted set ``name`` (retries, scheduled or dead) of ``queue``."""
        if name not in SET_NAMES:
            raise NotFound(f"no such set {_text(name)[:40]!r} (use retries, scheduled or dead)")
        if not valid_queue_name(queue):
            raise NotFound(f"no such queue {_text(queue)[:130]!r}")
        return getattr(self.keys.queue_keys(queue), name)

    def set_keys(self, name: str, queue: Optional[str] = None) -> list[tuple[str, str]]:
        """``(queue, key)`` of set ``name`` in every known queue (or in ``queue`` only)."""
        if name not in SET_NAMES:
            raise NotFound(f"no such set {_text(name)[:40]!r} (use retries, scheduled or dead)")
        names = self.queue_names() if queue is None else [queue]
        return [(q, self.set_key(name, q)) for q in names]

    def set_sizes(self, name: str, queue: Optional[str] = None) -> dict[str, int]:
        """Queue -> entries in its set ``name`` (every known queue, or ``queue`` only)."""
        pairs = self.set_keys(name, queue)
        sizes = self._pipelined(lambda pipe: [pipe.zcard(key) for _, key in pairs])
        return {q: int(n or 0) for (q, _), n in zip(pairs, sizes)}

    def set_page(self, name: str, page: int = 1, count: int = 25,
                 queue: Optional[str] = None) -> Page:
        """Entries of a set, merged over the queues (or of one queue's set): dead and
        retries newest/latest first, scheduled soonest first."""
        sizes = self.set_sizes(name)  # every queue's, for the page's queue links
        if queue is not None and queue not in sizes:
            sizes.update(self.set_sizes(name, queue))
        listed = sizes if queue is None else {queue: sizes[queue]}
        total = sum(listed.values())
        count = max(1, min(MAX_PAGE_SIZE, count))
        page = max(1, min(page, max(1, -(-total // count))))
        filled = [(q, self.set_key(name, q)) for q, n in listed.items() if n]
        rows = self._merged(filled, (page - 1) * count, count, reverse=name != "scheduled")
        entries = [Entry.decode(member, name, score, queue_name=q) for q, member, score in rows]
        return Page(entries, total, page, count, queue=queue,
                    by_queue={q: n for q, n in sizes.items() if n})

    def _merged(self, sources: list[tuple[str, str]], start: int, count: int,
                reverse: bool) -> list[tuple[str, bytes, float]]:
        """Rows ``start`` to ``start + count - 1`` of the sorted sets ``sources`` (queue,
        key) read as one, by score, then queue name, then bytes (descending when
        ``reverse``, as ZREVRANGE orders one set). Reads each set from its top in batches
        (a k-way merge): memory stays bounded, a deep page costs its depth in transfer."""
        if not sources:
            return []
        if len(sources) == 1:
            (queue, key), = sources
            read = self.client.zrevrange if reverse else self.client.zrange
            return [(queue, member, float(score))
                    for member, score in read(key, start, start + count - 1, withscores=True)]
        need = start + count
        batch = min(need, BATCH)
        read_name = "zrevrange" if reverse else "zrange"
        buffers: dict[str, deque] = {queue: deque() for queue, _ in sources}
        offsets = dict.fromkeys(buffers, 0)
        exhausted: set[str] = set()
        keys = dict(sources)

        def refill(queues: list[str]) -> None:
            replies = self._pipelined(lambda pipe: [
                getattr(pipe, read_name)(keys[q], offsets[q], offsets[q] + batch - 1,
                                         withscores=True) for q in queues])
            for q, rows in zip(queues, replies):
                offsets[q] += len(rows)
                if len(rows) < batch:
                    exhausted.add(q)
                buffers[q].extend(rows)

        heap: list[_Head] = []

        def push_next(queue: str) -> None:
            if not buffers[queue] and queue not in exhausted:
                refill([queue])
            if buffers[queue]:
                member, score = buffers[queue].popleft()
                heapq.heappush(heap, _Head(float(score), queue, member, reverse))

        refill(list(buffers))
        for queue in buffers:
            push_next(queue)
        out = []
        for rank in range(need):
            if not heap:
                break
            head = heapq.heappop(heap)
            if rank >= start:
                out.append((head.queue, head.member, head.score))
            push_next(head.queue)
        return out

    def queue_page(self, queue: str, page: int = 1, count: int = 25) -> Page:
        """Jobs of a queue, the next to run first."""
        if not valid_queue_name(queue):
            raise NotFound(f"no such queue {queue[:130]!r}")
        key = self.keys.queue(queue)
        count = max(1, min(MAX_PAGE_SIZE, count))
        total = int(self.client.llen(key))
        page = max(1, min(page, max(1, -(-total // count))))
        start = (page - 1) * count
        rows = self.client.lrange(key, -(start + count), -(start + 1)) if total else []
        return Page([Entry.decode(m, "queue", queue_name=queue) for m in reversed(rows)],
                    total, page, count, queue=queue)

    def entry(self, name: str, ref: str) -> Entry:
        """One entry of a set by its ref (which names its queue); raises :class:`NotFound`."""
        if name not in SET_NAMES:
            raise NotFound(f"no such set {_text(name)[:40]!r} (use retries, scheduled or dead)")
        queue, score, wanted = parse_ref(ref)
        key = self.set_key(name, queue)
        for member, found in self.client.zrangebyscore(key, score, score, withscores=True):
            if digest(member) == wanted:
                return Entry.decode(member, name, float(found), queue_name=queue)
        raise NotFound(f"no entry {ref!r} in {name} (it was retried, moved or deleted)")

    def find_job(self, jid: str, limit: int = JOB_SEARCH_LIMIT) -> Optional[Entry]:
        """The first entry whose ``jid`` is ``jid``: the dead, retry and scheduled sets of
        every queue, then the queues; each set or queue searched up to ``limit`` members."""
        if not jid or len(jid) > 64:
            return None
        needle = _GLOB_SPECIALS.sub(r"\\\1", jid)
        queues = self.queue_names()
        for name in ("dead", "retries", "scheduled"):
            for queue in queues:
                matches = self.client.zscan_iter(self.set_key(name, queue), match=f"*{needle}*",
                                                 count=SCAN_COUNT)
                for seen, (member, score) in enumerate(matches, 1):
                    entry = Entry.decode(member, name, float(score), queue_name=queue)
                    if entry.field("jid") == jid:
                        return entry
                    if seen >= limit:
                        break
        for queue in queues:
            key = self.keys.queue(queue)
            for start in range(0, limit, BATCH):
                rows = self.client.lrange(key, start, start + BATCH - 1)
                for member in rows:
                    if jid.encode("utf-8", "backslashreplace") in member:
                        entry = Entry.decode(member, "queue", queue_name=queue)
                        if entry.field("jid") == jid:
                            return entry
                if len(rows) < BATCH:
                    break
        return None

    # -- actions on set entries ----------------------------------------------------------

    def retry_now(self, name: str, ref: str, now: Optional[float] = None) -> str:
        """Move one retries/scheduled/dead entry to its queue now; returns the queue.

        The move is one atomic ``move_entry.lua`` call, except for a dead entry whose
        job names another queue than the one whose dead set holds it, on a Redis
        Cluster (the two keys are in two slots): the job is pushed to its queue first,
        then removed from the dead set, so a crash in between leaves it in both places
        (it may run and stay listed as dead), never in neither."""
        entry = self.entry(name, ref)
        return self._retry_entry(entry, time.time() if now is None else now)

    def _retry_entry(self, entry: Entry, now: float, registered: Optional[set] = None) -> str:
        queue = entry.runnable_queue
        if queue is None:
            why = entry.problem or "no name or no valid queue"
            raise AdminError(f"entry {entry.ref} is not a runnable job ({why}); delete it instead")
        job = dict(entry.runnable_job or {})  # a poison pill's own bytes, not its wrapper
        job["enqueued_at"] = now  # so the queue's latency counts from now
        job.pop("retry_at", None)
        member = ujson.dumps(job, ensure_ascii=False, escape_forward_slashes=False).encode(
            "utf-8", "surrogatepass")
        source = self.set_key(entry.where, entry.queue_name)
        target = self.keys.queue(queue)
        self._register(queue, registered)
        if queue == entry.queue_name or not self.cluster:
            # one slot, or a single server where a script may span slots: atomic
            moved = self.scripts.move_entry(keys=[source, target], args=[entry.raw, member, "list"])
            if not int(moved):
                raise NotFound(f"entry {entry.ref} is gone (moved by someone else)")
            return queue
        # two slots of a cluster: write first, then remove (a crash can duplicate, not lose)
        self.client.lpush(target, member)
        if not self.client.zrem(source, entry.raw):
            self.client.lrem(target, 1, member)  # someone else moved it first: take ours back
            raise NotFound(f"entry {entry.ref} is gone (moved by someone else)")
        return queue

    def _register(self, queue: str, registered: Optional[set] = None) -> None:
        """Name ``queue`` in the queue registry (once per bulk action)."""
        if registered is not None and queue in registered:
            return
        self.client.sadd(self.keys.queues, queue)
        if registered is not None:
            registered.add(queue)

    def delete(self, name: str, ref: str) -> None:
        """Remove one entry of a set."""
        entry = self.entry(name, ref)
        if not self.client.zrem(self.set_key(name, entry.queue_name), entry.raw):
            raise NotFound(f"entry {ref} is gone")

    def kill(self, name: str, ref: str, now: Optional[float] = None) -> None:
        """Move one retries/scheduled entry to its queue's dead set (bytes kept as they are)."""
        if name == "dead":
            raise AdminError("the entry is dead already")
        entry = self.entry(name, ref)
        now = time.time() if now is None else now
        moved = self.scripts.move_entry(
            keys=[self.set_key(name, entry.queue_name), self.keys.dead(entry.queue_name)],
            args=[entry.raw, entry.raw, repr(now)])
        if not int(moved):
            raise NotFound(f"entry {ref} is gone")

    def retry_all(self, name: str, now: Optional[float] = None,
                  queue: Optional[str] = None) -> tuple[int, int]:
        """Move every runnable entry of a set (every queue's, or ``queue``'s) to its
        queue; returns (moved, skipped). Entries that are not runnable jobs stay."""
        now = time.time() if now is None else now
        moved = skipped = 0
        registered: set[str] = set()
        retried: set[str] = set()  # jids moved by this call
        for source_queue, key in self.set_keys(name, queue):
            stayed = 0  # entries left at the start of this set
            while True:
                rows = self.client.zrange(key, stayed, stayed + BATCH - 1, withscores=True)
                if not rows:
                    break
                for member, score in rows:
                    entry = Entry.decode(member, name, float(score), queue_name=source_queue)
                    jid = entry.field("jid")
                    if entry.runnable_queue is None or (isinstance(jid, str) and jid in retried):
                        # not runnable, or a job this call moved that failed again since
                        # (with live workers, walking on would retry it over and over)
                        stayed += 1
                        continue
                    try:
                        self._retry_entry(entry, now, registered)
                        moved += 1
                        if isinstance(jid, str):
                            retried.add(jid)
                    except NotFound:
                        pass  # moved meanwhile by a poller or another admin
            skipped += stayed
        return moved, skipped

    def retry_jids(self, name: str, jids: list[str],
                   queue: Optional[str] = None) -> tuple[int, list[str]]:
        """Retry the entries with these jids; returns (moved, jids not found)."""
        wanted = set(jids)
        found: set[str] = set()
        moved = 0
        now = time.time()
        registered: set[str] = set()
        for source_queue, key in self.set_keys(name, queue):
            for member, score in list(self.client.zscan_iter(key, count=SCAN_COUNT)):
                entry = Entry.decode(member, name, float(score), queue_name=source_queue)
                jid = entry.field("jid")
                if isinstance(jid, str) and jid in wanted:
                    try:
                        self._retry_entry(entry, now, registered)
                        moved += 1
                        found.add(jid)
                    except NotFound:
                        pass
        return moved, sorted(wanted - found)

    def delete_all(self, name: str, queue: Optional[str] = None) -> int:
        """Empty a set (every queue's, or ``queue``'s); returns how many entries it had."""
        deleted = 0
        for _, key in self.set_keys(name, queue):
            with self.client.pipeline(transaction=True) as pipe:  # one key: one slot
                pipe.zcard(key)
                pipe.delete(key)
                size, _ = pipe.execute()
            deleted += int(size)
        return deleted

    # -- queues --------------------------------------------------------------------------

    def clear_queue(self, queue: str) -> int:
        """Delete every pending job of a queue, the suspects waiting in its quarantine
        included (they would run later otherwise); returns how many there were."""
        if not valid_queue_name(queue):
            raise NotFound(f"no such queue {queue[:130]!r}")
        keys = self.keys.queue_keys(queue)
        with self.client.pipeline(transaction=True) as pipe:  # one slot: the queue's
            pipe.llen(keys.pending)
            pipe.llen(keys.quarantine)
            pipe.delete(keys.pending, keys.quarantine)
            pending, quarantined, _ = pipe.execute()
        return int(pending) + int(quarantined)

    def delete_queued(self, queue: str, ref: str) -> None:
        """Delete one pending job of a queue by its ref (the sha1 of its bytes)."""
        if not valid_queue_name(queue) or not _DIGEST_RE.match(ref or ""):
            raise NotFound("no such job")
        key = self.keys.queue(queue)
        for start in range(0, QUEUE_DELETE_SEARCH_LIMIT, BATCH):
            rows = self.client.lrange(key, start, start + BATCH - 1)
            for member in rows:
                if digest(member) == ref and self.client.lrem(key, 1, member):
                    return
            if len(rows) < BATCH:
                break
        raise NotFound(f"job {ref} is not in queue {queue!r} (it may have run)")

    # -- periodic schedules --------------------------------------------------------------

    def enqueue_periodic(self, name: str) -> tuple[str, str]:
        """Enqueue one job of the published schedule ``name`` now, as its tick would: its
        job, args, kwargs and queue, built by the job's :class:`~jiggler_gevent.job.Enqueuer`
        and passed through the client middleware, then pushed with this API's client and
        namespace. Returns ``(jid, queue)``.

        The job must be registered in this process (names are looked up, never imported:
        import your jobs where the dashboard runs). The schedule's tick record is left
        alone, so its next tick runs as planned. The job carries ``periodic: <name>``
        like a tick's job, without ``periodic_at`` (it is not a tick)."""
        raw = self.client.hget(self.keys.periodic_schedules, name)
        if raw is None:
            raise NotFound(f"no published schedule {_text(name)[:130]!r}")
        try:
            info = ujson.loads(raw)
        except (ValueError, OverflowError, RecursionError):
            info = None
        if not isinstance(info, dict):
            raise AdminError(f"schedule {_text(name)[:130]!r}: its description is not readable")
        job, args, kwargs = info.get("job"), info.get("args", []), info.get("kwargs") or {}
        queue = info.get("queue")
        if not isinstance(job, str) or not isinstance(args, list) or not isinstance(kwargs, dict) \
                or (queue is not None and not valid_queue_name(queue)):
            raise AdminError(f"schedule {_text(name)[:130]!r}: its description does not say which "
                             "job to enqueue with which arguments")
        try:
            job_class = lookup(job)
            enqueuer = Enqueuer(job_class)
            if queue is not None:
                enqueuer = enqueuer.with_options(queue=queue)
            built = enqueuer.build(args, kwargs)
            built["periodic"] = _text(name)
            built = _middleware.run_client(job_class, built)
            if built is None:
                raise AdminError(f"a client middleware vetoed the job of schedule {_text(name)!r}")
            encoded = _payload.dumps(built)
        except UnknownJobError as exc:
            raise AdminError(f"{exc}: import the jobs where the dashboard runs to enqueue "
                             "them from here") from None
        except EnqueueError as exc:
            raise AdminError(f"schedule {_text(name)[:130]!r}: {exc}") from None
        self._register(built["queue"])
        self.client.lpush(self.keys.queue(built["queue"]), encoded)
        return built["jid"], built["queue"]

    # -- processes -----------------------------------------------------------------------

    def signal_process(self, identity: str, command: str) -> None:
        """Ask a live worker process to ``quiet`` (stop taking jobs) or ``stop`` (as on
        TERM). Its heartbeat picks the command up (within one stats interval)."""
        if command not in PROCESS_COMMANDS:
            raise AdminError(f"unknown command {command[:20]!r} (use quiet or stop)")
        if not valid_queue_name(identity) or not self.client.exists(self.keys.process(identity)):
            raise NotFound(f"no live process {identity[:130]!r}")
        key = signals_key(self.keys, identity)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, command)
            pipe.expire(key, SIGNALS_TTL_S)
            pipe.execute()


class _Head:
    """One set's next row in a merge (the heap's smallest is the next row out)."""

    __slots__ = ("score", "queue", "member", "reverse")

    def __init__(self, score: float, queue: str, member: bytes, reverse: bool) -> None:
        self.score, self.queue, self.member, self.reverse = score, queue, member, reverse

    def __lt__(self, other: _Head) -> bool:
        mine, theirs = (self.score, self.queue, self.member), (other.score, other.queue, other.member)
        return mine > theirs if self.reverse else mine < theirs


class Cleaner:
    """Deletes our keys: one queue, all queues, or everything under our namespace."""

    def __init__(self, client: redis.Redis, namespace: str = "") -> None:
        self.api = Api(client, namespace)
        self.client = client
        self.keys = self.api.keys

    def prune_queue(self, queue: str) -> int:
        """Delete one queue's pending jobs; returns how many."""
        return self.api.clear_queue(queue)

    def prune_all_queues(self) -> int:
        """Delete every known queue's pending jobs (not the in-progress lists of running
        processes); returns how many jobs."""
        return sum(self.api.clear_queue(name) for name in self.api.queue_names())

    def patterns(self) -> tuple[str, str]:
        """The SCAN patterns :meth:`prune_all` deletes: the global slot's keys
        (``{jiggler}*``) and every queue's keys (``{jiggler:q:*``), under the namespace."""
        return self.keys.all_key_patterns()

    def prune_all(self) -> int:
        """Delete every key of ours (both :meth:`patterns`; on a cluster, on every
        primary); returns how many keys. Stop the workers first: their in-progress lists
        go too."""
        deleted = 0
        for pattern in self.patterns():
            deleted += self._unlink(self.api.scan(pattern))
        return deleted

    def _unlink(self, keys: Iterable[str]) -> int:
        deleted = 0
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= BATCH:
                deleted += self._unlink_batch(batch)
                batch = []
        if batch:
            deleted += self._unlink_batch(batch)
        return deleted

    def _unlink_batch(self, batch: list[str]) -> int:
        # redis-py's cluster client splits a multi-key UNLINK by slot itself
        return int(self.client.unlink(*batch))


def _latency(oldest: Optional[bytes], now: float) -> float:
    if not oldest:
        return 0.0
    entry = Entry.decode(oldest, "queue")
    times = [t for t in (entry.time("enqueued_at"), entry.time("retry_at")) if t is not None]
    return max(0.0, now - max(times)) if times else 0.0


def _busy_jobs(text: Optional[str]) -> list[dict]:
    try:
        jobs = ujson.loads(text or "[]")
    except (ValueError, OverflowError, RecursionError):
        return []
    if not isinstance(jobs, list):
        return []
    fields = ("worker", "jid", "name", "queue", "started_at")
    return [{f: _text(job.get(f)) for f in fields} for job in jobs[:1000] if isinstance(job, dict)]

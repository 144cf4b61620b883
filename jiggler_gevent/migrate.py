"""Upgrading from 0.1: find the keys of the 0.1 layout and move them to the current one.

Owns the 0.1 key names (:class:`OldLayout`, as ``jiggler_gevent/keys.py`` built them in
0.1.0), finding what is left in them (:func:`find_old_keys`, cheap enough for the
worker's start-up check) and moving it (:func:`migrate`, behind ``jiggler-gevent
migrate-keys``). Must not import gevent.

0.1 kept one pending list per queue (``jiggler:list:<queue>``, with ``:quarantine`` and
``:in_progress:<identity>`` beside it) and one global scheduled, retry and dead set
(``jiggler:set:*``); every key was prefixed with ``<namespace>:`` under a namespace.
The current layout (:mod:`jiggler_gevent.keys`) never reads those keys, so a job left
there would never run. :func:`migrate` moves:

* each pending list into the queue's pending list, the old jobs ahead of (to the right
  of) anything enqueued since the upgrade, in their order;
* each in-progress list whose owner is gone into the head of the queue's pending list
  (after the pending jobs, so these, the oldest, run first);
* each quarantine list into the queue's quarantine list;
* each scheduled entry into the scheduled set of its payload's ``queue`` (``default``
  when absent), each retry into the retry set of its valid ``retry_queue``, else of its
  ``queue``; a member that is not a JSON object with a string ``name`` and a valid queue
  goes to the dead set of ``default`` as a ``PayloadError`` entry keeping its bytes
  (``raw``/``raw_hex``), as 0.1's poller would have buried it when due;
* each dead entry, bytes unchanged, into the dead set of its ``queue`` (else ``default``);
* the counters (totals and per-day history) added to the current ones;

registers every queue it moved anything to in ``keys.queues`` *before* moving (the
poller and the dashboard find per-queue sets through it), and deletes the 0.1
bookkeeping: the process registry and heartbeats, signals, reservations, recovery
counts, counter batch markers and the periodic ``last``/``schedules`` hashes.

Every move is a Lua script (``scripts/migrate_*.lua``) that moves one batch (or one
counter) atomically: a job is always in exactly one place, so a crash between two
batches loses nothing and running :func:`migrate` again finishes the work, and no
script holds Redis for longer than one batch. Single server (or Sentinel) only: the
0.1 layout never ran on Redis Cluster, and the scripts touch keys of several slots.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Optional

import redis
import ujson

from . import payload as _payload
from .connection import is_cluster
from .errors import JigglerError
from .keys import DEFAULT_QUEUE, Keys, valid_queue_name
from .scripts import Scripts

DEFAULT_BATCH = 1000  # jobs per script call, and SCAN COUNT
MAX_BATCH = 5000  # a Lua unpack() of more may overflow the C stack
WARN_SCAN_CALLS = 50  # SCAN calls the worker's start-up check may spend (~50,000 keys)
COMMAND = "jiggler-gevent migrate-keys"
_DAY_RE = re.compile(r"\A\d{4}-\d\d-\d\d\Z")
_ZERO_MOVE_ROUNDS = 3  # a sorted set batch that moved nothing this often in a row: stop

Progress = Callable[[str, int], None]


class MigrationError(JigglerError):
    """The migration cannot run here as asked (a live 0.1 worker, a cluster client)."""


class OldLayout:
    """The key names of 0.1.0 (``git show 25c1c29:jiggler_gevent/keys.py``)."""

    def __init__(self, namespace: str = "") -> None:
        namespace = (namespace or "").rstrip(":")
        Keys(namespace)  # the same namespace rules, the same ValueError
        self.namespace = namespace
        self.root = f"{namespace}:jiggler:" if namespace else "jiggler:"
        self.list_prefix = self.root + "list:"
        self.scheduled = self.root + "set:scheduled"
        self.retries = self.root + "set:retries"
        self.dead = self.root + "set:dead"
        self.processed = self.root + "stats:processed_counter"
        self.failures = self.root + "stats:failures_counter"
        self.processes = self.root + "processes"
        self.reservations = self.root + "reservations"
        self.periodic_last = self.root + "periodic:last"
        self.periodic_schedules = self.root + "periodic:schedules"
        self.bookkeeping = (self.processes, self.reservations, self.periodic_last,
                            self.periodic_schedules)

    def queue(self, name: str) -> str:
        return self.list_prefix + name

    def quarantine(self, name: str) -> str:
        return f"{self.list_prefix}{name}:quarantine"

    def in_progress(self, name: str, identity: str) -> str:
        return f"{self.list_prefix}{name}:in_progress:{identity}"

    def process(self, identity: str) -> str:
        return f"{self.root}process:{identity}"

    def list_pattern(self) -> str:
        return self.list_prefix + "*"  # the namespace rules leave no glob character in it

    def all_pattern(self) -> str:
        return self.root + "*"

    def parse_list(self, key: str) -> Optional[tuple[str, str, Optional[str]]]:
        """``(kind, queue, identity)`` of a list key of 0.1 (kind ``pending``,
        ``quarantine`` or ``in_progress``), or None for any other key."""
        if not key.startswith(self.list_prefix):
            return None
        queue, sep, rest = key[len(self.list_prefix):].partition(":")
        if not valid_queue_name(queue):
            return None
        if not sep:
            return "pending", queue, None
        if rest == "quarantine":
            return "quarantine", queue, None
        kind, _, identity = rest.partition(":")
        if kind == "in_progress" and identity:
            return "in_progress", queue, identity
        return None


# -- finding -------------------------------------------------------------------------------


@dataclasses.dataclass
class OldKeys:
    """What :func:`find_old_keys` found of the 0.1 layout (job counts per kind)."""

    namespace: str
    pending: int = 0
    pending_lists: int = 0
    quarantine: int = 0
    quarantine_lists: int = 0
    in_progress: int = 0
    in_progress_lists: int = 0
    scheduled: int = 0
    retries: int = 0
    dead: int = 0
    counters: int = 0  # total counter keys (processed, failures) present
    bookkeeping: int = 0  # process registry, reservations, periodic hashes present
    live_processes: list[str] = dataclasses.field(default_factory=list)
    unrecognised: list[str] = dataclasses.field(default_factory=list)  # left alone
    complete: bool = True  # False: the SCAN budget ran out before the end of the keyspace

    @property
    def jobs(self) -> int:
        return (self.pending + self.quarantine + self.in_progress + self.scheduled
                + self.retries + self.dead)

    @property
    def found(self) -> bool:
        """Whether anything of the 0.1 layout is left (jobs, counters or bookkeeping)."""
        return bool(self.jobs or self.counters or self.bookkeeping or self.live_processes)

    def describe(self) -> str:
        """The counts in one line: ``12 pending job(s) in 2 queue(s), 3 scheduled, ...``."""
        parts = []
        for count, lists, what in ((self.pending, self.pending_lists, "pending"),
                                   (self.in_progress, self.in_progress_lists, "in progress"),
                                   (self.quarantine, self.quarantine_lists, "quarantined")):
            if count:
                parts.append(f"{count} {what} job(s) in {lists} list(s)")
        for count, what in ((self.scheduled, "scheduled"), (self.retries, "retries"),
                            (self.dead, "dead")):
            if count:
                parts.append(f"{count} {what}")
        if self.counters:
            parts.append(f"{self.counters} counter(s)")
        if self.bookkeeping:
            parts.append(f"{self.bookkeeping} bookkeeping key(s)")
        if self.live_processes:
            parts.append(f"{len(self.live_processes)} live 0.1 worker process(es)")
        text = ", ".join(parts) or "nothing"
        return text if self.complete else f"at least {text} (looked at part of the keyspace)"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_old_keys(client: redis.Redis, namespace: str = "", *,
                  max_scan_calls: Optional[int] = None, count: int = DEFAULT_BATCH) -> OldKeys:
    """Count what is left in the keys of the 0.1 layout under ``namespace``.

    Cost: one pipeline over the fixed keys (ZCARD of the three sets, EXISTS of the
    counters and bookkeeping, the process registry's members and their heartbeats),
    then SCAN for ``<prefix>jiggler:list:*`` with LLEN of every list found. With
    ``max_scan_calls`` the SCAN stops after that many calls (``complete`` is then
    False). Raises :class:`MigrationError` on a cluster client."""
    _refuse_cluster(client)
    old = OldLayout(namespace)
    found = OldKeys(namespace=old.namespace)
    with client.pipeline(transaction=False) as pipe:
        for key in (old.scheduled, old.retries, old.dead):
            pipe.zcard(key)
        pipe.exists(old.processed, old.failures)
        pipe.exists(*old.bookkeeping)
        found.scheduled, found.retries, found.dead, found.counters, found.bookkeeping = (
            int(x) for x in pipe.execute())
    found.live_processes = _live_processes(client, old)
    cursor, calls = 0, 0
    while True:
        cursor, batch = client.scan(cursor, match=old.list_pattern(), count=count)
        calls += 1
        _count_lists(client, old, [_text(k) for k in batch], found)
        if int(cursor) == 0:
            break
        if max_scan_calls is not None and calls >= max_scan_calls:
            found.complete = False
            break
    return found


def _count_lists(client: redis.Redis, old: OldLayout, keys: list[Optional[str]],
                 found: OldKeys) -> None:
    parsed = []
    for key in keys:
        kind = old.parse_list(key) if key is not None else None
        if kind is None:
            found.unrecognised.append(key if key is not None else "(a key that is not UTF-8)")
        else:
            parsed.append((key, kind[0]))
    if not parsed:
        return
    with client.pipeline(transaction=False) as pipe:
        for key, _ in parsed:
            pipe.llen(key)
        lengths = pipe.execute(raise_on_error=False)
    for (key, kind), length in zip(parsed, lengths):
        if isinstance(length, Exception):  # not a list: not ours
            found.unrecognised.append(key)
            continue
        setattr(found, kind, getattr(found, kind) + int(length))
        setattr(found, kind + "_lists", getattr(found, kind + "_lists") + (1 if length else 0))


def _live_processes(client: redis.Redis, old: OldLayout,
                    extra: tuple[str, ...] = ()) -> list[str]:
    """Identities of 0.1 worker processes whose heartbeat hash still exists: the
    members of the old registry, plus ``extra`` (owners of in-progress lists)."""
    identities = {_text(m) for m in client.zrange(old.processes, 0, -1)} | set(extra)
    identities.discard(None)
    ordered = sorted(identities)
    if not ordered:
        return []
    with client.pipeline(transaction=False) as pipe:
        for identity in ordered:
            pipe.exists(old.process(identity))
        alive = pipe.execute()
    return [identity for identity, exists in zip(ordered, alive) if exists]


def warning_text(found: OldKeys) -> str:
    """The worker's start-up warning about ``found`` (one line)."""
    namespace = f" --namespace {found.namespace}" if found.namespace else ""
    if found.jobs:
        effect = "this version never looks at them, so their jobs will not run"
    else:
        effect = "no jobs among them, but this version never reads their counters"
    alive = " (a 0.1 worker is still running on it)" if found.live_processes else ""
    return (f"Redis holds keys of the 0.1 key layout ({found.describe()}){alive}: {effect}. "
            f"Stop every 0.1 worker, then run `{COMMAND}{namespace}` against this Redis (it "
            f"moves them; see README 'Upgrading from 0.1')")


# -- moving --------------------------------------------------------------------------------


@dataclasses.dataclass
class MigrationReport:
    """What :func:`migrate` moved, added, dropped and left."""

    namespace: str
    pending: int = 0  # jobs moved from 0.1 pending lists
    in_progress: int = 0  # jobs of gone processes moved to the head of their queue
    quarantine: int = 0
    scheduled: int = 0
    retries: int = 0
    dead: int = 0
    buried: int = 0  # scheduled/retry members that are not jobs, to the dead set of default
    processed: int = 0  # added to the processed total
    failures: int = 0  # added to the failures total
    days: int = 0  # per-day history keys merged
    queues: list[str] = dataclasses.field(default_factory=list)  # registered in keys.queues
    dropped: int = 0  # bookkeeping keys deleted
    forced_past: list[str] = dataclasses.field(default_factory=list)  # live 0.1 processes
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key left, why)
    unrecognised: list[str] = dataclasses.field(default_factory=list)  # keys left alone

    @property
    def moved(self) -> int:
        return (self.pending + self.in_progress + self.quarantine + self.scheduled
                + self.retries + self.dead + self.buried)

    def describe(self) -> list[str]:
        """The report as lines of text."""
        lines = [f"moved {self.pending} pending job(s), {self.in_progress} job(s) of gone "
                 f"processes (to the head of their queues), {self.quarantine} quarantined "
                 f"job(s), {self.scheduled} scheduled, {self.retries} retries, {self.dead} dead",
                 f"buried {self.buried} scheduled/retry entr(ies) that are not jobs (dead set "
                 f"of queue {DEFAULT_QUEUE}, bytes kept)" if self.buried else None,
                 f"added {self.processed} processed and {self.failures} failed to the totals, "
                 f"merged {self.days} day(s) of history",
                 "registered queue(s): " + (", ".join(self.queues) or "none"),
                 f"dropped {self.dropped} bookkeeping key(s) of 0.1 (process registry, "
                 "reservations, signals, recovery counts, periodic last ticks and schedules)"]
        if self.forced_past:
            lines.append("--force: left the jobs in progress and the bookkeeping of live 0.1 "
                         f"process(es) {', '.join(self.forced_past)}; run {COMMAND} again "
                         "once they have stopped")
        lines += [f"left {key}: {why}" for key, why in self.skipped]
        if self.unrecognised:
            shown = ", ".join(self.unrecognised[:10])
            more = len(self.unrecognised) - 10
            lines.append(f"left {len(self.unrecognised)} key(s) under the 0.1 prefix that are "
                         f"not of the 0.1 layout: {shown}" + (f" and {more} more" if more > 0 else ""))
        return [line for line in lines if line]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["skipped"] = [{"key": key, "reason": why} for key, why in self.skipped]
        return out


def migrate(client: redis.Redis, namespace: str = "", *, force: bool = False,
            batch_size: int = DEFAULT_BATCH, progress: Optional[Progress] = None,
            now: Optional[float] = None) -> MigrationReport:
    """Move every job of the 0.1 layout under ``namespace`` to the current layout (see
    the module's docstring); returns what it did. Running it again after a crash, or
    after it finished, is safe: it moves what is left.

    Refuses (:class:`MigrationError`) while a 0.1 worker process is alive (its heartbeat
    hash exists) unless ``force``; with ``force`` the in-progress lists and bookkeeping
    of live processes are left for a later run (they are running those jobs).
    ``progress(what, moved)`` is called after every batch."""
    _refuse_cluster(client)
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size {batch_size}: use 1 to {MAX_BATCH}")
    return _Migration(client, namespace, force=force, batch_size=batch_size,
                      progress=progress, now=time.time() if now is None else now).run()


class _Migration:
    def __init__(self, client: redis.Redis, namespace: str, *, force: bool, batch_size: int,
                 progress: Optional[Progress], now: float) -> None:
        self.client = client
        self.old = OldLayout(namespace)
        self.new = Keys(namespace)
        self.force = force
        self.batch = batch_size
        self.progress = progress or (lambda what, moved: None)
        self.now = now
        self.scripts = Scripts(client)
        self.report = MigrationReport(namespace=self.old.namespace)
        self._registered: set[str] = set()

    def run(self) -> MigrationReport:
        keys = self._scan()
        reservations = {_text(k): _text(v)
                        for k, v in self.client.hgetall(self.old.reservations).items()}
        owners = {key: {identity, reservations.get(key)} - {None}
                  for key, (_, _, identity) in keys["in_progress"]}
        live = _live_processes(self.client, self.old,
                               tuple(o for group in owners.values() for o in group))
        if live and not self.force:
            raise MigrationError(
                f"0.1 worker process(es) still alive (heartbeat hash present): {', '.join(live)}; "
                "stop every 0.1 worker first (a heartbeat hash expires within 3 heartbeat "
                "intervals of its process's exit), or pass --force to move everything but "
                "their jobs in progress")
        self.report.forced_past = live
        self._register(sorted({queue for kind in ("pending", "in_progress", "quarantine")
                               for _, (_, queue, _) in keys[kind]}))
        for key, (_, queue, _) in keys["pending"]:
            self.report.pending += self._move_list(key, self.new.queue(queue), "pending")
        for key, (_, queue, _) in keys["in_progress"]:
            if owners[key] & set(live):
                self.report.skipped.append(
                    (key, f"its owner {', '.join(sorted(owners[key]))} is alive (--force)"))
                continue
            self.report.in_progress += self._move_list(key, self.new.queue(queue), "in progress")
        for key, (_, queue, _) in keys["quarantine"]:
            self.report.quarantine += self._move_list(key, self.new.quarantine(queue),
                                                      "quarantined")
        self.report.scheduled += self._move_set(self.old.scheduled, "scheduled")
        self.report.retries += self._move_set(self.old.retries, "retries")
        self.report.dead += self._move_set(self.old.dead, "dead")
        self.report.processed += self._move_counter(self.old.processed, self.new.processed)
        self.report.failures += self._move_counter(self.old.failures, self.new.failures)
        for key, (kind, day) in keys["day"]:
            target = self.new.processed_on(day) if kind == "processed" else self.new.failures_on(day)
            if self._move_counter(key, target, count_day=True):
                self.report.days += 1
        self._drop(keys["drop"], set(live))
        self.report.queues = sorted(self._registered)
        return self.report

    # -- the keyspace ---------------------------------------------------------------------

    def _scan(self) -> dict[str, list]:
        """Every key under the 0.1 prefix, sorted by what to do with it."""
        old = self.old
        out: dict[str, list] = {"pending": [], "in_progress": [], "quarantine": [], "day": [],
                                "drop": []}
        found = []
        for raw in self.client.scan_iter(match=old.all_pattern(), count=self.batch):
            key = _text(raw)
            if key is None:
                self.report.unrecognised.append("(a key that is not UTF-8)")
            else:
                found.append(key)
        fixed = {old.scheduled, old.retries, old.dead, old.processed, old.failures}
        types = self._types(found)
        for key in sorted(found):
            if key in fixed:
                continue  # each handled by name
            rest = key[len(old.root):]
            parsed = old.parse_list(key)
            if parsed is not None and types.get(key) == "list":
                out[parsed[0]].append((key, parsed))
            elif key in old.bookkeeping or rest.startswith(("process:", "recovered:",
                                                            "stats:counted:")):
                out["drop"].append(key)
            elif rest.startswith(("stats:processed:", "stats:failures:")):
                kind, day = rest[len("stats:"):].split(":", 1)
                if _DAY_RE.match(day) and types.get(key) == "string":
                    out["day"].append((key, (kind, day)))
                else:
                    self.report.unrecognised.append(key)
            else:
                self.report.unrecognised.append(key)
        return out

    def _types(self, keys: list[str]) -> dict[str, str]:
        types: dict[str, str] = {}
        for start in range(0, len(keys), self.batch):
            chunk = keys[start:start + self.batch]
            with self.client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.type(key)
                types.update(zip(chunk, (_text(t) for t in pipe.execute())))
        return types

    def _register(self, queues) -> None:
        """Add queues to ``keys.queues`` before anything moves into their keys: the poller
        and the dashboard find a queue's sets only through it."""
        new = sorted(set(queues) - self._registered)
        if new:
            self.client.sadd(self.new.queues, *new)
            self._registered.update(new)

    # -- moves ------------------------------------------------------------------------------

    def _move_list(self, old_key: str, new_key: str, what: str) -> int:
        moved = 0
        while True:
            count, left = self.scripts.migrate_list(keys=[old_key, new_key], args=[self.batch])
            moved += int(count)
            if count:
                self.progress(f"{what} {old_key}", moved)
            if not int(left):
                return moved

    def _move_set(self, old_key: str, kind: str) -> int:
        """Move every member of one of 0.1's global sorted sets, a batch per script call."""
        moved, idle = 0, 0
        while idle < _ZERO_MOVE_ROUNDS:
            members = self.client.zrange(old_key, 0, self.batch - 1)
            if not members:
                break
            keys, args, garbage, targets = [old_key], [], [], set()
            for member in members:
                queue, replacement = self._target(kind, old_key, member)
                targets.add(queue)
                keys.append(self.new.dead(queue) if replacement else
                            getattr(self.new, kind)(queue))
                args += [member, replacement or b"", repr(self.now) if replacement else ""]
                garbage.append(replacement is not None)
            self._register(targets)
            flags = self.scripts.migrate_entries(keys=keys, args=args)
            count = buried = 0
            for flag, buried_one in zip(flags, garbage):
                if int(flag):
                    count += 1
                    buried += buried_one
            self.report.buried += buried
            moved += count - buried
            idle = 0 if count else idle + 1
            if count:
                self.progress(f"{kind} {old_key}", moved)
        return moved

    def _target(self, kind: str, old_key: str, member: bytes) -> tuple[str, Optional[bytes]]:
        """``(queue, replacement)``: the queue whose set gets the member, and for a member
        that is not a job, the dead-set entry to store instead (else None)."""
        job = _decode(member)
        if kind == "dead":
            queue = job.get("queue") if job is not None else None
            return (queue if valid_queue_name(queue) else DEFAULT_QUEUE), None
        queue = None
        if job is not None and isinstance(job.get("name"), str):
            if kind == "retries" and valid_queue_name(job.get("retry_queue")):
                queue = job["retry_queue"]
            elif job.get("queue") is None:
                queue = DEFAULT_QUEUE
            elif valid_queue_name(job["queue"]):
                queue = job["queue"]
        if queue is not None:
            return queue, None
        entry = _payload.dead_letter(
            member, f"entry of {old_key} (0.1 layout) is not a JSON job object with a string "
                    "name and a valid queue", queue=DEFAULT_QUEUE, now=self.now)
        return DEFAULT_QUEUE, _payload.dumps(entry, check_size=False)

    def _move_counter(self, old_key: str, new_key: str, *, count_day: bool = False) -> int:
        result = self.scripts.migrate_counter(keys=[old_key, new_key])
        if isinstance(result, list):
            self.report.skipped.append((old_key, f"its value {_text(result[1])!r} is not an integer"))
            return 0
        if not result:
            return 0
        return 1 if count_day else int(result)

    def _drop(self, keys: list[str], live: set[str]) -> None:
        """Delete 0.1's bookkeeping, except that of live processes (``--force``)."""
        if live:
            kept_prefixes = tuple(p for identity in live for p in (
                f"{self.old.root}process:{identity}", f"{self.old.root}stats:counted:{identity}"))
            keys = [k for k in keys
                    if k not in (self.old.processes, self.old.reservations)
                    and not any(k == p or k == p + ":signals" for p in kept_prefixes)]
        for start in range(0, len(keys), self.batch):
            self.report.dropped += int(self.client.unlink(*keys[start:start + self.batch]))


def _refuse_cluster(client: redis.Redis) -> None:
    if is_cluster(client):
        raise MigrationError(
            "this is a Redis Cluster client: the 0.1 key layout never ran on a cluster (its "
            "keys had no hash tags), so there is nothing to migrate there; point "
            f"{COMMAND} at the single server (or Sentinel master) 0.1 used")


def _decode(member: bytes) -> Optional[dict]:
    try:
        job = ujson.loads(member)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    return job if isinstance(job, dict) else None


def _text(value) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None

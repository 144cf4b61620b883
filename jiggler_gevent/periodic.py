"""Periodic jobs: schedules declared on a job or in config, and their time math.

Owns :class:`Schedule` (a cron expression or a fixed interval, in a time zone), the
process-wide list of schedules, and reading back what the workers published. Must
not import gevent: web processes import it (declarations sit next to the jobs). The
loop that enqueues the ticks is ``jiggler_gevent.server.periodic``.

Declaring::

    from jiggler_gevent import Job, job
    from jiggler_gevent.periodic import periodic

    @periodic(every=60)                                   # every minute, on the minute
    class Cleanup(Job):
        def perform(self): ...

    @periodic(cron="*/5 * * * *", tz="Europe/Paris")      # needs the `cron` extra (croniter)
    @job
    def send_digest(): ...

    jiggler_gevent.periodic.load_config([                 # or in config (Flask/Django settings)
        {"job": "myapp.jobs.Report", "cron": "0 7 * * 1-5", "tz": "Europe/Paris",
         "args": ["daily"], "name": "daily-report"},
    ])

Ticks: an interval schedule ticks at the multiples of ``every`` seconds counted from
midnight in its time zone (UTC by default), so every process computes the same ticks;
a cron schedule ticks where its expression matches, read in its time zone (DST as
croniter handles it; a 6th field gives seconds).

Exactly once, leader-free: for each tick every worker process runs one Lua script
that enqueues the job only if the tick is later than the last tick recorded for the
schedule in Redis, and records it, in one atomic step.

Missed ticks (every worker was down): when a worker comes back, the most recent
missed tick is enqueued once; older missed ticks are skipped, never run as a burst.
A schedule Redis has never seen (just deployed) starts with its next tick.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

import ujson

from .errors import ConfigError
from .keys import valid_queue_name
from .payload import check_json_args

try:  # the `cron` extra
    from croniter import croniter
except ImportError:  # pragma: no cover - exercised only without the extra
    croniter = None

try:
    import zoneinfo
except ImportError:  # pragma: no cover - Python 3.8 has no zoneinfo
    zoneinfo = None

__all__ = ["Schedule", "add", "clear", "list_schedules", "load_config", "periodic", "remove",
           "schedules"]

_schedules: dict[str, Schedule] = {}


def _zone(tz: Optional[str]) -> Optional[_dt.tzinfo]:
    if tz is None:
        return None
    if zoneinfo is None:
        raise ConfigError("time zones need Python 3.9+ (zoneinfo)")
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tz!r} (install tzdata if the system has none)")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """When one job is enqueued: ``every`` seconds or a ``cron`` expression, in ``tz``.

    ``job`` is the registered job name; ``name`` identifies the schedule (its tick
    record in Redis), by default the job name.
    """

    job: str
    every: Optional[float] = None
    cron: Optional[str] = None
    tz: Optional[str] = None
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    queue: Optional[str] = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.job)
        where = f"schedule {self.name!r}"
        if (self.every is None) == (self.cron is None):
            raise ConfigError(f"{where}: give exactly one of every= or cron=")
        if self.every is not None and (type(self.every) not in (int, float)
                                       or not 0 < self.every < math.inf):
            raise ConfigError(f"{where}: every must be a positive number of seconds")
        if self.cron is not None:
            if croniter is None:
                raise ConfigError(f"{where}: cron schedules need croniter "
                                  "(pip install 'jiggler-gevent[cron]')")
            if not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
                raise ConfigError(f"{where}: {self.cron!r} is not a valid cron expression")
        object.__setattr__(self, "_zone", _zone(self.tz))
        try:
            object.__setattr__(self, "args", tuple(check_json_args(list(self.args))))
            object.__setattr__(self, "kwargs", check_json_args(dict(self.kwargs), "kwargs"))
        except Exception as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def _offset(self, when: float) -> float:
        zone = self._zone
        if zone is None:
            return 0.0
        return _dt.datetime.fromtimestamp(when, zone).utcoffset().total_seconds()

    def _cron(self, when: float):
        return croniter(self.cron, _dt.datetime.fromtimestamp(when, self._zone or _dt.timezone.utc))

    def _from_wall(self, wall: float) -> float:
        """Epoch seconds of a wall-clock time of this schedule's zone (given as seconds
        since 1970-01-01 00:00 on that wall clock). A time the clock shows twice (when
        daylight saving ends) is its first occurrence; one it skips (when it starts)
        maps to just after the gap."""
        if self._zone is None:
            return float(wall)  # a float, as ticks always were (their repr names the tick)
        try:
            naive = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=wall)
            return naive.replace(tzinfo=self._zone).timestamp()
        except (OverflowError, ValueError, OSError):  # beyond datetime's years
            return wall - self._offset(time.time())

    def _wall_ticks(self, now: float) -> tuple[float, float]:
        """(latest, next) interval ticks around ``now``, on the zone's wall clock: a
        schedule of ``every=86400, tz=...`` ticks at local midnight whatever the UTC
        offset, so a change of offset neither repeats nor skips a tick."""
        every = self.every
        index = math.floor((now + self._offset(now)) / every)
        latest = self._from_wall(index * every)
        while latest > now:  # around an offset change the wall clock can run ahead
            index -= 1
            latest = self._from_wall(index * every)
        following = self._from_wall((index + 1) * every)
        while following <= latest or following <= now:  # a wall time the change skipped
            index += 1
            following = self._from_wall((index + 1) * every)
        return latest, following

    def latest(self, now: float) -> float:
        """The most recent tick at or before ``now`` (epoch seconds)."""
        if self.every is not None:
            return self._wall_ticks(now)[0]
        previous = self._cron(now).get_prev(float)  # strictly before now
        following = self._cron(previous).get_next(float)
        return following if following <= now else previous

    def next_after(self, now: float) -> float:
        """The first tick strictly after ``now``."""
        if self.every is not None:
            return self._wall_ticks(now)[1]
        return self._cron(now).get_next(float)

    def describe(self) -> dict:
        """A JSON-able summary (what the workers publish for dashboards)."""
        out = {"name": self.name, "job": self.job, "args": list(self.args)}
        for field in ("every", "cron", "tz", "queue"):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        if self.kwargs:
            out["kwargs"] = self.kwargs
        return out


def _job_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    job_class = getattr(target, "job_class", target)
    name = getattr(job_class, "name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{target!r} is not a job (a Job class, an @job function or a name)")
    return name


def add(target: Any, *, every: Optional[float] = None, cron: Optional[str] = None,
        tz: Optional[str] = None, args: Iterable[Any] = (), kwargs: Optional[dict] = None,
        queue: Optional[str] = None, name: Optional[str] = None) -> Schedule:
    """Declare a schedule for a job (class, ``@job`` function or registered name).
    Declaring the same name again replaces the schedule."""
    schedule = Schedule(job=_job_name(target), every=every, cron=cron, tz=tz, args=tuple(args),
                        kwargs=dict(kwargs or {}), queue=queue, name=name or "")
    _schedules[schedule.name] = schedule
    return schedule


def periodic(*, every: Optional[float] = None, cron: Optional[str] = None,
             tz: Optional[str] = None, args: Iterable[Any] = (), kwargs: Optional[dict] = None,
             queue: Optional[str] = None, name: Optional[str] = None) -> Callable[[Any], Any]:
    """Decorator form of :func:`add` for a Job class or an ``@job`` function."""

    def declare(target: Any) -> Any:
        add(target, every=every, cron=cron, tz=tz, args=args, kwargs=kwargs, queue=queue, name=name)
        return target

    return declare


_CONFIG_KEYS = frozenset({"job", "every", "cron", "tz", "args", "kwargs", "queue", "name"})


def load_config(entries: Iterable[dict]) -> list[Schedule]:
    """Declare schedules from config: dicts with ``job`` (a registered job name),
    ``every`` or ``cron``, and optional ``tz``, ``args``, ``kwargs``, ``queue``, ``name``."""
    loaded = []
    for entry in entries or ():
        if not isinstance(entry, dict) or "job" not in entry:
            raise ConfigError(f"periodic entry {entry!r:.80} must be a dict with a 'job' key")
        unknown = set(entry) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"periodic entry for {entry['job']!r}: unknown keys {sorted(unknown)}")
        options = dict(entry)
        loaded.append(add(options.pop("job"), **options))
    return loaded


def schedules() -> list[Schedule]:
    """Every declared schedule, in declaration order."""
    return list(_schedules.values())


def remove(name: str) -> None:
    _schedules.pop(name, None)


def clear() -> None:
    """Forget every schedule (tests use it)."""
    _schedules.clear()


def list_schedules(client: Any, keys: Any, now: float) -> list[dict]:
    """The schedules the workers published, each with ``next_run`` and ``last_tick``
    (epoch seconds or None), sorted by next run, then name (for a dashboard or an API).

    The descriptions are in the global hash ``keys.periodic_schedules``; each
    schedule's last tick is in the ``periodic_last`` hash of the queue its jobs go to
    (``keys.queue_keys(queue).periodic_last``, in that queue's cluster slot). A
    description without a valid ``queue`` (published by an older worker, or with the
    job class's default queue) is looked up in every known queue's hash.
    """
    published = client.hgetall(keys.periodic_schedules)
    infos = []
    for raw_name, raw in published.items():
        try:
            info = ujson.loads(raw)
        except (ValueError, OverflowError, RecursionError):
            continue  # not a description this version can read
        if not isinstance(info, dict):
            continue
        info["name"] = _text(raw_name)
        infos.append((raw_name, info))
    wanted = {i["queue"] for _, i in infos if valid_queue_name(i.get("queue"))}
    if any(not valid_queue_name(i.get("queue")) for _, i in infos):
        wanted.update(_text(q) for q in client.smembers(keys.queues))
    queues = sorted(q for q in wanted if valid_queue_name(q))
    last: dict[str, dict] = {}
    if queues:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.hgetall(keys.queue_keys(queue).periodic_last)
            last = dict(zip(queues, pipe.execute()))
    out = []
    for raw_name, info in infos:
        fields = {k: v for k, v in info.items() if k in _DESCRIPTION_FIELDS}
        try:
            schedule = Schedule(**fields)
            info["next_run"] = schedule.next_after(now)
        except (ConfigError, TypeError, ValueError, OverflowError):
            # published by a worker with options this one lacks (or an interval so small
            # its ticks overflow)
            info["next_run"] = None
        if valid_queue_name(info.get("queue")):
            ticks = [last.get(info["queue"], {}).get(raw_name)]
        else:
            ticks = [hashed.get(raw_name) for hashed in last.values()]
        ticks = [t for t in (_float(t) for t in ticks) if t is not None]
        info["last_tick"] = max(ticks) if ticks else None
        out.append(info)
    # ties (an hourly and a */10 schedule both due at the hour) go by name, so a page
    # lists them in the same order on every load
    out.sort(key=lambda i: (i["next_run"] is None, i["next_run"] or 0, i["name"]))
    return out


_DESCRIPTION_FIELDS = frozenset({"job", "every", "cron", "tz", "args", "kwargs", "queue", "name"})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _float(value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None

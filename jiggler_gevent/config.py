"""Worker settings: the one place defaults live, and their validation.

Owns :class:`Config` (a frozen dataclass) and :func:`parse_queues`. The CLI builds a
Config from flags, env and a config file; tests build one directly. Must not talk
to Redis or import gevent.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from typing import Optional

from .errors import ConfigError
from .keys import DEFAULT_QUEUE, valid_queue_name

AT_LEAST_ONCE = "at-least-once"
AT_MOST_ONCE = "at-most-once"
MODES = (AT_LEAST_ONCE, AT_MOST_ONCE)
MAX_QUEUE_WEIGHT = 1000
# every Redis url form we accept (jiggler_gevent.connection describes them)
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://",
                     "redis+cluster://", "rediss+cluster://")


def default_redis_url() -> str:
    """``JIGGLER_REDIS_URL``, else ``REDIS_URL``, else a local server on the default port."""
    return (
        os.environ.get("JIGGLER_REDIS_URL")
        or os.environ.get("REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )


def parse_queues(spec: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``"critical:3,default"`` -> ``(("critical", 3), ("default", 1))``.

    Raises :class:`ConfigError` for empty, duplicate or invalid names and bad weights.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parsed: list[tuple[str, int]] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, weight_text = item.partition(":")
        weight = 1
        if sep:
            if not re.fullmatch(r"[0-9]{1,4}", weight_text) or \
                    not 1 <= int(weight_text) <= MAX_QUEUE_WEIGHT:
                raise ConfigError(
                    f"queue {item!r}: weight must be an integer from 1 to {MAX_QUEUE_WEIGHT}"
                )
            weight = int(weight_text)
        if not valid_queue_name(name):
            raise ConfigError(
                f"queue name {name!r} is not valid: use letters, digits, '_', '.', '-' "
                "(no ':' except before a weight, no wildcards or spaces)"
            )
        if any(name == seen for seen, _ in parsed):
            raise ConfigError(f"queue {name!r} is listed twice")
        parsed.append((name, weight))
    if not parsed:
        raise ConfigError("no queue given")
    return tuple(parsed)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a worker process needs to run. Times are in seconds."""

    redis_url: str = dataclasses.field(default_factory=default_redis_url)
    namespace: str = ""
    queues: tuple = ((DEFAULT_QUEUE, 1),)
    strict: Optional[bool] = None  # None: strict when no queue has a weight
    concurrency: int = 10
    processes: int = 1  # -p N: a parent runs N worker processes
    mode: str = AT_LEAST_ONCE
    timeout: float = 25.0  # shutdown: how long running jobs may finish after TERM
    job_timeout: Optional[float] = None  # default hard timeout per job (None: no limit)
    watchdog_threshold: float = 0.5  # the hub blocked longer than this -> preempt (0: off)
    poll_interval: float = 5.0
    stats_interval: float = 3.0
    requeue_interval: float = 2.0  # how often orphaned reservations are looked for
    max_recoveries: int = 3  # a job recovered more often than this is a poison pill
    max_dead_jobs: int = 10_000
    dead_timeout: float = 180 * 24 * 3600.0
    fetch_timeout: float = 1.0  # longest blocking pop; bounds how fast a stop is noticed
    socket_timeout: float = 5.0
    require: Optional[str] = None
    environment: str = "development"
    verbose: bool = False
    green_psycopg2: bool = True  # psycopg2 queries wait with gevent (see green.py)
    hostname: str = dataclasses.field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        queues = self.queues
        if isinstance(queues, str) or (
                isinstance(queues, (list, tuple)) and all(isinstance(q, str) for q in queues)):
            object.__setattr__(self, "queues", parse_queues(queues))

    @property
    def queue_names(self) -> list[str]:
        return [name for name, _ in self.queues]

    @property
    def is_strict(self) -> bool:
        if self.strict is not None:
            return self.strict
        return all(weight == 1 for _, weight in self.queues)

    @property
    def heartbeat_ttl(self) -> float:
        """How long a heartbeat stays valid: three intervals, at least 2 s."""
        return max(3 * self.stats_interval, 2.0)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Config:
        """Raise :class:`ConfigError` naming the first bad value; return self."""
        _positive_int("concurrency", self.concurrency, upper=10_000)
        _positive_int("max-dead-jobs", self.max_dead_jobs, upper=10**9)
        _positive_int("processes", self.processes, upper=256)
        _positive_int("max-recoveries", self.max_recoveries, upper=1000)
        for name in ("timeout", "poll_interval", "stats_interval", "dead_timeout",
                     "fetch_timeout", "socket_timeout", "requeue_interval"):
            _positive_number(name.replace("_", "-"), getattr(self, name))
        if type(self.watchdog_threshold) not in (int, float) or \
                not 0 <= self.watchdog_threshold < float("inf"):
            raise ConfigError("watchdog-threshold must be 0 (off) or a positive number of seconds")
        if self.job_timeout is not None:
            _positive_number("job-timeout", self.job_timeout)
        if self.fetch_timeout >= self.socket_timeout:
            raise ConfigError("fetch-timeout must be below the socket timeout")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        parse_queues([f"{n}:{w}" for n, w in self.queues])
        if self.namespace and not valid_queue_name(self.namespace.rstrip(":")):
            raise ConfigError(f"namespace {self.namespace!r}: use letters, digits, '_', '.', '-'")
        if not self.redis_url.startswith(REDIS_URL_SCHEMES):
            scheme = self.redis_url.split("://")[0] if "://" in self.redis_url else "(no scheme)"
            raise ConfigError(f"redis url must start with {', '.join(REDIS_URL_SCHEMES[:-1])} or "
                              f"{REDIS_URL_SCHEMES[-1]}, not {scheme!r}")
        return self


def _positive_int(name: str, value: object, *, upper: int) -> None:
    if type(value) is not int or not 1 <= value <= upper:
        raise ConfigError(f"{name} must be an integer from 1 to {upper}, not {value!r}")


def _positive_number(name: str, value: object) -> None:
    if type(value) not in (int, float) or not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")

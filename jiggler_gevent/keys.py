"""Every Redis key name jiggler-gevent uses, in one place.

Owns the key layout (the wire format documented in README.rst). Nothing else
builds key strings by hand. Must not talk to Redis.

The layout is made for Redis Cluster: every key carries a hash tag (the part in
braces, which alone picks the cluster slot), and there are two kinds of slot.

- One **global** slot, tag ``{jiggler}`` (``{myapp:jiggler}`` under a namespace):
  the process registry and heartbeats, the reservations registry, the known queues,
  the counters and the periodic schedules.
- One slot **per queue**, tag ``{jiggler:q:<queue>}``: the queue's pending list, its
  in-progress lists, its quarantine, and the queue's own scheduled, retry and dead
  sets. Everything a Lua script or a MULTI moves a job between lives in one queue's
  slot, so every script touches one slot and the queues spread over the cluster.

On a single server the tags change nothing but the names.
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_QUEUE = "default"
QUEUE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.\-]{1,128}\Z")


def valid_queue_name(name: object) -> bool:
    """True for names made of letters, digits, ``_ . -`` (1 to 128 of them).

    This rules out ``:`` (it separates key parts), braces (hash tags), glob
    wildcards, whitespace and newlines, so a queue name can never alias another key.
    """
    return isinstance(name, str) and QUEUE_NAME_RE.match(name) is not None


class QueueKeys:
    """The keys of one queue, all in the queue's cluster slot."""

    __slots__ = ("name", "tag", "pending", "quarantine", "scheduled", "retries", "dead",
                 "recoveries", "periodic_last", "_in_progress_prefix", "_lease_prefix")

    def __init__(self, root: str, name: str) -> None:
        self.name = name
        self.tag = f"{{{root}:q:{name}}}"
        self.pending = self.tag + ":pending"  # LPUSH to enqueue, the worker takes from the right
        self.quarantine = self.tag + ":quarantine"  # jobs recovered from 2+ crashes: run alone
        self.scheduled = self.tag + ":scheduled"  # zset payload -> run at
        self.retries = self.tag + ":retries"  # zset failed job -> retry at
        self.dead = self.tag + ":dead"  # zset dead entry -> died at
        self.recoveries = self.tag + ":recovered:"  # + sha1 of a payload: times recovered (TTL)
        self.periodic_last = self.tag + ":periodic:last"  # schedule name -> last enqueued tick
        self._in_progress_prefix = self.tag + ":in_progress:"
        self._lease_prefix = self.tag + ":lease:"

    def in_progress(self, identity: str) -> str:
        """The at-least-once reservation list of process ``identity`` in this queue."""
        return self._in_progress_prefix + identity

    def lease(self, identity: str) -> str:
        """Process ``identity`` is alive (a TTL key its heartbeat refreshes), seen from
        this queue's slot, where the recovery script checks it atomically."""
        return self._lease_prefix + identity

    def owner_of(self, in_progress_key: str) -> Optional[str]:
        """The identity in one of this queue's in-progress keys, or None."""
        if in_progress_key.startswith(self._in_progress_prefix):
            return in_progress_key[len(self._in_progress_prefix):] or None
        return None

    def __repr__(self) -> str:
        return f"<QueueKeys {self.tag}>"


class Keys:
    """Key names under an optional namespace (``myapp`` -> ``{myapp:jiggler}:...``)."""

    def __init__(self, namespace: str = "") -> None:
        namespace = (namespace or "").rstrip(":")
        if namespace and not valid_queue_name(namespace):
            raise ValueError(
                f"namespace {namespace!r}: use letters, digits, '_', '.', '-' (no ':' or wildcards)"
            )
        self.namespace = namespace
        self.root = f"{namespace}:jiggler" if namespace else "jiggler"
        self.tag = f"{{{self.root}}}"
        g = self.tag + ":"
        self.queues = g + "queues"  # set of every queue name ever enqueued to or listened on
        self.processed = g + "stats:processed_counter"
        self.failures = g + "stats:failures_counter"
        self.processes = g + "processes"
        self.reservations = g + "reservations"  # in-progress list key -> owner identity
        self.periodic_schedules = g + "periodic:schedules"  # schedule name -> JSON info
        self._queue_cache: dict[str, QueueKeys] = {}

    # every key of one queue ----------------------------------------------------------

    def queue_keys(self, name: str) -> QueueKeys:
        """The keys of queue ``name`` (cached; the name is not checked here)."""
        keys = self._queue_cache.get(name)
        if keys is None:
            if len(self._queue_cache) > 10_000:
                self._queue_cache.clear()
            keys = self._queue_cache[name] = QueueKeys(self.root, name)
        return keys

    def queue(self, name: str) -> str:
        """The pending list of queue ``name``."""
        return self.queue_keys(name).pending

    def quarantine(self, queue: str) -> str:
        """Jobs of ``queue`` recovered from crashes more than once: each runs alone."""
        return self.queue_keys(queue).quarantine

    def in_progress(self, queue: str, identity: str) -> str:
        """The at-least-once reservation list of process ``identity`` for ``queue``."""
        return self.queue_keys(queue).in_progress(identity)

    def scheduled(self, queue: str) -> str:
        """Jobs of ``queue`` to run later (``enqueue_in`` / ``enqueue_at``)."""
        return self.queue_keys(queue).scheduled

    def retries(self, queue: str) -> str:
        """Failed jobs waiting to run again in ``queue``."""
        return self.queue_keys(queue).retries

    def dead(self, queue: str) -> str:
        """Jobs of ``queue`` that will not run again by themselves."""
        return self.queue_keys(queue).dead

    def queue_of_in_progress(self, key: str) -> Optional[tuple[str, str]]:
        """``(queue, identity)`` of an in-progress key built here, or None for any other key."""
        prefix = self.tag[:-1] + ":q:"  # "{jiggler:q:"
        if not key.startswith(prefix):
            return None
        close = key.find("}", len(prefix))
        if close < 0:
            return None
        name = key[len(prefix):close]
        if not valid_queue_name(name):
            return None
        owner = self.queue_keys(name).owner_of(key)
        return None if owner is None else (name, owner)

    # the global slot ------------------------------------------------------------------

    def process(self, identity: str) -> str:
        """The info hash (with a TTL) of one worker process."""
        return f"{self.tag}:process:{identity}"

    def signals(self, identity: str) -> str:
        """Commands for one worker process (``quiet``, ``stop``), LPUSHed by the admin API
        and taken by the process's next heartbeat."""
        return f"{self.tag}:process:{identity}:signals"

    def counted(self, identity: str) -> str:
        """The number of the last counter batch applied for one process (dedupes resends)."""
        return f"{self.tag}:stats:counted:{identity}"

    def processed_on(self, day: str) -> str:
        """Processed count of one UTC day (``YYYY-MM-DD``)."""
        return f"{self.tag}:stats:processed:{day}"

    def failures_on(self, day: str) -> str:
        """Failure count of one UTC day (``YYYY-MM-DD``)."""
        return f"{self.tag}:stats:failures:{day}"

    def all_key_patterns(self) -> tuple[str, str]:
        """SCAN patterns that together match every key of this namespace and no other:
        the global slot's keys, and every queue's keys."""
        root = _glob_escape(self.root)
        return "{" + root + "}*", "{" + root + ":q:*"


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?\\])", r"\\\1", text)

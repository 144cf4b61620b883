"""Every Redis key name jiggler-gevent uses, in one place.

Owns the key layout (the wire format documented in README.rst). Nothing else
builds key strings by hand. Must not talk to Redis.
"""

from __future__ import annotations

import re

DEFAULT_QUEUE = "default"
QUEUE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.\-]{1,128}\Z")


def valid_queue_name(name: object) -> bool:
    """True for names made of letters, digits, ``_ . -`` (1 to 128 of them).

    This rules out ``:`` (it separates key parts), glob wildcards, braces,
    whitespace and newlines, so a queue name can never alias another key.
    """
    return isinstance(name, str) and QUEUE_NAME_RE.match(name) is not None


class Keys:
    """Key names under an optional namespace (``myapp`` -> ``myapp:jiggler:...``)."""

    def __init__(self, namespace: str = "") -> None:
        namespace = (namespace or "").rstrip(":")
        if namespace and not valid_queue_name(namespace):
            raise ValueError(
                f"namespace {namespace!r}: use letters, digits, '_', '.', '-' (no ':' or wildcards)"
            )
        self.namespace = namespace
        root = f"{self.namespace}:jiggler:" if self.namespace else "jiggler:"
        self.root = root
        self.queue_prefix = root + "list:"
        self.scheduled = root + "set:scheduled"
        self.retries = root + "set:retries"
        self.dead = root + "set:dead"
        self.processed = root + "stats:processed_counter"
        self.failures = root + "stats:failures_counter"
        self.processes = root + "processes"
        self.reservations = root + "reservations"  # in-progress list key -> owner identity
        self.recoveries = root + "recovered:"  # + sha1 of a payload: times recovered (TTL)
        self.periodic_last = root + "periodic:last"  # schedule name -> last enqueued tick
        self.periodic_schedules = root + "periodic:schedules"  # schedule name -> JSON info

    def queue(self, name: str) -> str:
        """The pending list of queue ``name``."""
        return self.queue_prefix + name

    def quarantine(self, queue: str) -> str:
        """Jobs of ``queue`` recovered from crashes more than once: each runs alone."""
        return f"{self.queue_prefix}{queue}:quarantine"

    def in_progress(self, queue: str, identity: str) -> str:
        """The at-least-once reservation list of process ``identity`` for ``queue``."""
        return f"{self.queue_prefix}{queue}:in_progress:{identity}"

    def process(self, identity: str) -> str:
        """The info hash (with a TTL) of one worker process."""
        return f"{self.root}process:{identity}"

    def signals(self, identity: str) -> str:
        """Commands for one worker process (``quiet``, ``stop``), LPUSHed by the admin API
        and taken by the process's next heartbeat."""
        return f"{self.root}process:{identity}:signals"

    def counted(self, identity: str) -> str:
        """The number of the last counter batch applied for one process (dedupes resends)."""
        return f"{self.root}stats:counted:{identity}"

    def processed_on(self, day: str) -> str:
        """Processed count of one UTC day (``YYYY-MM-DD``)."""
        return f"{self.root}stats:processed:{day}"

    def failures_on(self, day: str) -> str:
        """Failure count of one UTC day (``YYYY-MM-DD``)."""
        return f"{self.root}stats:failures:{day}"

    def queue_name(self, key: str) -> str | None:
        """The queue name of a pending-list key, or None for any other key."""
        if not key.startswith(self.queue_prefix):
            return None
        name = key[len(self.queue_prefix):]
        return name if valid_queue_name(name) else None

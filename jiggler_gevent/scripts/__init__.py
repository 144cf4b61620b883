"""Lua scripts, one small file per atomic operation, and their loader.

Owns loading the ``*.lua`` files beside this module with ``register_script``
(which re-loads a script after NOSCRIPT, e.g. after a restart or SCRIPT FLUSH).
Must not decide policy: callers choose keys and arguments.

Every script touches keys of one Redis Cluster slot per call (each header says which),
so the scripts run on a ``RedisCluster`` client too: redis-py routes a call by its
keys, and after ``NOSCRIPT`` it loads the script on every primary. Never call a script
inside a transaction pipeline (a cluster MULTI cannot carry one). The exception is the
``migrate_*`` scripts of the upgrade from 0.1 (``jiggler_gevent/migrate.py``), which
run on a single server only.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis

SCRIPT_NAMES = ("fetch", "schedule", "requeue", "drain", "stats", "recover", "unregister",
                "move_entry", "migrate_list", "migrate_entries", "migrate_counter")


@functools.cache
def source(name: str) -> str:
    """The text of ``<name>.lua``."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client, as attributes (``scripts.fetch(...)``)."""

    def __init__(self, client: redis.Redis) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(source(name)))

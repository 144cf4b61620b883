"""Lua scripts, one small file per atomic operation, and their loader.

Owns loading the ``*.lua`` files beside this module with ``register_script``
(which re-loads a script after NOSCRIPT, e.g. after a restart or SCRIPT FLUSH).
Must not decide policy: callers choose keys and arguments.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis

SCRIPT_NAMES = ("fetch", "schedule", "requeue", "drain", "stats", "recover", "move_entry")


@functools.cache
def source(name: str) -> str:
    """The text of ``<name>.lua``."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one client, as attributes (``scripts.fetch(...)``)."""

    def __init__(self, client: redis.Redis) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(source(name)))

"""Small helpers shared by the in-process server tests."""

from __future__ import annotations

import json

import redis

from jiggler_gevent.server.launcher import Launcher
from jiggler_gevent.server.worker import Worker


def new_worker(launcher: Launcher, index: int = 0) -> Worker:
    """A Worker wired to the launcher's parts (not started as a greenlet)."""
    return Worker(index, launcher.fetcher, launcher.acker, launcher.retrier, launcher.stats,
                  default_timeout=launcher.config.job_timeout)


def zset_entries(client: redis.Redis, key: str) -> list[tuple[dict, float]]:
    """Members of a sorted set decoded from JSON, with their scores."""
    return [(json.loads(member), score) for member, score in client.zrange(key, 0, -1, withscores=True)]


def in_progress_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="*:in_progress:*"))


def raw_of(entry: dict) -> bytes:
    """The raw bytes a dead-set entry kept."""
    if "raw_hex" in entry:
        return bytes.fromhex(entry["raw_hex"])
    return entry["raw"].encode("utf-8")

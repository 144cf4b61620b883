"""The demo's jobs: plain, blocking "legacy" code, no gevent anywhere.

The worker loads this file with ``jiggler-gevent -r demo_jobs``. It monkey-patches
the standard library before importing it, so the blocking ``requests`` call and the
Redis write below let the other greenlets run while they wait on the network.

``run_demo.py`` sets ``DEMO_REDIS_URL`` in the worker's environment; each successful
fetch appends ``"<url> <bytes>"`` to the list :data:`RESULTS_KEY` in that Redis.
"""

from __future__ import annotations

import os

import redis
import requests

import jiggler_gevent

NAMESPACE = "jiggler-demo"
RESULTS_KEY = f"{NAMESPACE}:results"
RETRY_DELAY_S = 1.0

_results = None


def results_client() -> redis.Redis:
    """A plain redis-py client for the results list (made on first use)."""
    global _results
    if _results is None:
        url = (os.environ.get("DEMO_REDIS_URL") or os.environ.get("JIGGLER_REDIS_URL")
               or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
        _results = redis.Redis.from_url(url)
    return _results


class FetchPage(jiggler_gevent.Job):
    """Download one page and record its size. A 5xx answer raises, so the job is
    retried twice, one second apart, and then lands in the dead set."""

    retries = 2

    @classmethod
    def retry_in(cls, attempt: int, exc: BaseException) -> float:
        return RETRY_DELAY_S

    def perform(self, url: str) -> None:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
        results_client().rpush(RESULTS_KEY, f"{url} {len(response.content)}")

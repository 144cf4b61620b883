"""Fixtures of the in-process server tests: launchers wired to the session's Redis."""

from __future__ import annotations

import gevent
import pytest

from jiggler_gevent.config import Config
from jiggler_gevent.connection import is_cluster
from jiggler_gevent.server.launcher import Launcher

from . import jobs

DEFAULTS = {
    "concurrency": 5,
    "fetch_timeout": 0.2,
    "poll_interval": 0.2,
    "stats_interval": 5.0,
    "timeout": 2.0,
}


@pytest.fixture(autouse=True)
def _reset_jobs():
    jobs.reset()
    yield
    jobs.reset()


def _dispose(launcher: Launcher) -> None:
    launcher.fetcher.stopping = True
    launcher.poller.stopping = True
    launcher.monitor.stopping = True
    greenlets = [g for g in launcher.manager.greenlets.values() if not g.dead]
    greenlets += [g for g in launcher._services if not g.dead]
    gevent.killall(greenlets, timeout=5)
    if is_cluster(launcher.client):
        launcher.client.close()
    else:
        launcher.client.connection_pool.disconnect()


@pytest.fixture
def make_launcher(redis_client, redis_url):
    """``make_launcher(url=None, **config)``: a Launcher (not started) on a clean Redis.

    Every launcher made is disposed of at teardown: its greenlets killed, its
    connections closed.
    """
    made: list[Launcher] = []

    def make(url: str | None = None, **overrides) -> Launcher:
        options = dict(DEFAULTS, redis_url=url or redis_url)
        options.update(overrides)
        launcher = Launcher(Config(**options).validate())
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        _dispose(launcher)


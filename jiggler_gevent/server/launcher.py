"""The launcher: builds the parts of one worker process, runs them, stops them.

Owns the process identity, the server's Redis client, the start order (monitor ->
poller -> requeuer -> acker -> manager), the signal table (INT/TERM stop, a second one hurries;
TSTP quiet; TTIN dumps every greenlet's stack) and the shutdown order: stop intake,
wait for running jobs, hard-stop the rest, flush acks, push back anything still
reserved, flush counters, remove the heartbeat. Must not parse options (the CLI
does) or run jobs.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Optional

import gevent
import redis
from gevent.event import Event

from .. import connection, middleware
from .. import periodic as _periodic
from ..config import Config
from ..keys import Keys
from ..scripts import Scripts
from .acker import Acker
from .backoff import REDIS_ERRORS
from .fetcher import Fetcher
from .manager import Manager
from .monitor import Monitor
from .periodic import PeriodicScheduler
from .poller import Poller
from .requeuer import Requeuer
from .retrier import Retrier
from .stats import Stats
from .supervisor import Supervisor, supported
from .worker import Worker

log = logging.getLogger(__name__)

SPARE_CONNECTIONS = 8  # fetch leader, acker, poller, monitor, shutdown, margin


def new_identity() -> str:
    """An opaque id for this process (its fields live in the heartbeat hash)."""
    return os.urandom(8).hex()


class Launcher:
    """One worker process's parts; :meth:`run` blocks until stopped."""

    def __init__(self, config: Config, client: Optional[redis.Redis] = None,
                 identity: Optional[str] = None) -> None:
        self.config = config
        self.identity = identity or new_identity()
        self.keys = Keys(config.namespace)
        self.client = client or connection.make_client(
            config.redis_url,
            max_connections=config.concurrency + SPARE_CONNECTIONS,
            socket_timeout=config.socket_timeout,
            client_name=f"jiggler-{self.identity}",
        )
        self.scripts = Scripts(self.client)
        self.stats = Stats()
        self.fetcher = Fetcher(config, self.client, self.scripts, self.keys, self.identity)
        self.acker = Acker(self.client, self.fetcher)
        self._hard_stopped = False
        self.retrier = Retrier(config, self.client, self.keys, self.fetcher,
                               hard_stopped=lambda: self._hard_stopped)
        self.manager = Manager(config.concurrency, self._make_worker, self.fetcher)
        self.monitor = Monitor(config, self.client, self.scripts, self.keys, self.identity,
                               self.stats,
                               busy_jobs=self.manager.busy_jobs,
                               quiet=lambda: self.fetcher.stopping,
                               reservation_keys=self.fetcher.reservation_keys,
                               on_command=self._on_command)
        self.poller = Poller(config, self.client, self.scripts, self.keys)
        self.requeuer = Requeuer(config, self.client, self.scripts, self.keys, self.identity,
                                 on_quarantine=self.fetcher.quarantine_waiting)
        self.supervisor = Supervisor(config.watchdog_threshold) \
            if config.watchdog_threshold and supported() else None
        self.server_middleware = middleware.server_chain()  # fixed from here on
        self.periodic = PeriodicScheduler(self.client, self.keys, _periodic.schedules()) \
            if _periodic.schedules() else None
        self.stop_requested = Event()
        self.hurry = Event()
        self._signal_watchers: list = []  # installed once (a second set would fire twice)
        self._services: list[gevent.Greenlet] = []

    def _make_worker(self, index: int) -> Worker:
        return Worker(index, self.fetcher, self.acker, self.retrier, self.stats,
                      default_timeout=self.config.job_timeout, supervisor=self.supervisor,
                      middleware=self.server_middleware)

    # running ----------------------------------------------------------------------

    def start(self) -> None:
        """Start every part (first heartbeat before any job is fetched)."""
        try:
            self.monitor.beat_once()
        except REDIS_ERRORS as exc:
            log.warning("first heartbeat failed, will retry: %s", exc)
        services = [("monitor", self.monitor.run), ("poller", self.poller.run),
                    ("requeuer", self.requeuer.run), ("acker", self.acker.run)]
        if self.periodic is not None:
            services.append(("periodic", self.periodic.run))
        for name, target in services:
            greenlet = gevent.spawn(target)
            greenlet.name = f"jiggler.{name}"
            self._services.append(greenlet)
        if self.supervisor is not None:
            self.supervisor.start()
        if self.monitor.registered.is_set() or not self.fetcher.reliable:
            self.manager.start()
        else:
            # a job reserved into a list no heartbeat registered yet would be lost if we
            # died now: no requeuer could find that list
            log.warning("workers wait for the first heartbeat to register this process")
            self._services.append(gevent.spawn(self._start_when_registered))
        log.info("jiggler-gevent started identity=%s pid=%d queues=%s concurrency=%d mode=%s",
                 self.identity, os.getpid(), ",".join(self.config.queue_names),
                 self.config.concurrency, self.config.mode)

    def _start_when_registered(self) -> None:
        while not self.monitor.registered.wait(1.0):
            if self.manager.stopping:
                return
        if not self.manager.stopping:
            log.info("registered: workers start")
            self.manager.start()

    def run(self) -> int:
        """Start, wait for a stop request, stop; returns the exit code (0)."""
        self.install_signal_handlers()
        self.start()
        self.stop_requested.wait()
        self.stop()
        return 0

    def request_stop(self) -> None:
        """First call: graceful stop. Second call: hurry (hard-stop now)."""
        if self.stop_requested.is_set():
            log.warning("second stop signal: not waiting for running jobs any longer")
            self.hurry.set()
        self.stop_requested.set()

    def _on_command(self, command: str) -> None:
        """``quiet`` or ``stop`` sent through Redis (the dashboard's buttons)."""
        if command == "stop":
            gevent.spawn(self.request_stop)
        else:
            self.quiet()

    def quiet(self) -> None:
        log.info("quiet: no longer taking new jobs; running jobs continue")
        self.manager.quiet()

    def dump_stacks(self) -> None:
        from gevent.util import format_run_info

        log.warning("greenlet stacks:\n%s", "\n".join(format_run_info()))

    def install_signal_handlers(self) -> None:
        """INT/TERM stop, TSTP quiets, TTIN dumps stacks. Idempotent: the CLI installs
        them before its startup checks, :meth:`run` again for other callers; two sets
        would run each handler twice (one TERM would count as two)."""
        if self._signal_watchers:
            return
        for signum, handler in ((signal.SIGTERM, self.request_stop),
                                (signal.SIGINT, self.request_stop),
                                (signal.SIGTSTP, self.quiet),
                                (signal.SIGTTIN, self.dump_stacks)):
            self._signal_watchers.append(gevent.signal_handler(signum, handler))

    # stopping ---------------------------------------------------------------------

    def stop(self) -> None:
        """The shutdown order; leaves no in-progress list and no heartbeat behind."""
        log.info("stopping: waiting up to %gs for %d running job(s)", self.config.timeout,
                 len(self.manager.busy()))
        self.poller.stop()
        self.requeuer.stop()
        if self.periodic is not None:
            self.periodic.stop()
        in_time = self.manager.stop(self.config.timeout, self.hurry)
        if not in_time:
            self._hard_stopped = True
        leftovers = self.fetcher.take_buffered()
        self._safely("push back unstarted jobs", self.fetcher.requeue, leftovers)
        self.acker.stop()
        gevent.joinall([g for g in self._services if g.name == "jiggler.acker"], timeout=10)
        self._safely("push back reserved jobs", self.fetcher.reclaim_unowned, True)
        self.monitor.stop()
        self._safely("flush counters", self.monitor.beat_once)
        self._safely("remove the heartbeat", self.monitor.remove)
        gevent.killall([g for g in self._services if not g.dead], timeout=5)
        if self.supervisor is not None:
            self.supervisor.stop()
        log.info("stopped: processed=%d failed=%d", self.stats.processed_total,
                 self.stats.failed_total)

    def _safely(self, what: str, call, *args) -> None:
        for attempt in range(3):
            try:
                call(*args)
                return
            except REDIS_ERRORS as exc:
                log.warning("could not %s (attempt %d): %s", what, attempt + 1, exc)
                gevent.sleep(0.2 * (attempt + 1))
        log.error("gave up: could not %s", what)

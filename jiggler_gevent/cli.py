"""The ``jiggler-gevent`` command: options -> :class:`Config` -> a running worker.

Owns the option table (each option also settable as env ``JIGGLER_<NAME>`` and in a
``-C`` config file; command line > env > file > default), loading the ``-r`` module,
checking Redis before starting, and turning every startup problem into one clear
line on stderr and a non-zero exit. Must be imported only after gevent has
monkey-patched (``bin/jiggler-gevent`` does that first).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Optional

import configargparse

from . import connection, green, middleware
from .config import AT_LEAST_ONCE, MODES, Config, default_redis_url, parse_queues
from .errors import ConfigError, JigglerError, RedisUnavailable
from .version import __version__

log = logging.getLogger("jiggler_gevent")

EXIT_USAGE = 2
EXIT_STARTUP = 1
LOG_FORMAT = "%(asctime)s %(levelname)s pid=%(process)d %(name)s: %(message)s"


class _Parser(configargparse.ArgParser):
    def error(self, message: str) -> None:  # one line, no usage wall
        sys.stderr.write(f"jiggler-gevent: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise configargparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise configargparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = _positive_float(text) if text.strip() not in ("0", "0.0") else 0.0
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise configargparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise configargparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _queues(text: str) -> tuple:
    try:
        return parse_queues(text)
    except ConfigError as exc:
        raise configargparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> configargparse.ArgParser:
    defaults = Config.__dataclass_fields__
    p = _Parser(
        prog="jiggler-gevent",
        description="Run background jobs from Redis queues on a pool of gevent greenlets.",
        auto_env_var_prefix="JIGGLER_",
        args_for_setting_config_path=["-C", "--config"],
        config_arg_help_message="config file (lines of `option-name = value`; "
                                "env JIGGLER_CONFIG)",
        default_config_files=[os.environ["JIGGLER_CONFIG"]] if os.environ.get("JIGGLER_CONFIG")
        else [],
    )
    p.add_argument("-q", "--queues", type=_queues, default=parse_queues("default"),
                   help="comma-separated queues, `name` or `name:weight` (default: default). "
                        "Without weights queues are strict: a queue is served only when the "
                        "ones before it are empty; with weights the order is drawn at random "
                        "in proportion to the weights")
    p.add_argument("--strict", action="store_true", default=None,
                   help="strict order even when weights are given")
    p.add_argument("-c", "--concurrency", type=_positive_int,
                   default=defaults["concurrency"].default,
                   help="jobs run at once in this process (worker greenlets; default 10)")
    p.add_argument("-p", "--processes", type=_positive_int, default=1,
                   help="worker processes to run (a parent starts them, restarts one that dies, "
                        "and forwards signals); use about one per core for CPU-heavy jobs "
                        "(default 1)")
    p.add_argument("-r", "--require", default=None,
                   help="module (a.b), module:factory, or .py file path defining your jobs")
    p.add_argument("--middleware", default=None,
                   help="comma-separated dotted paths (pkg.mod:Name) of middleware classes or "
                        "objects with around_enqueue/around_perform; added after the -r module "
                        "is loaded, so they run inside middleware it adds in code")
    p.add_argument("-t", "--timeout", type=_positive_float, default=defaults["timeout"].default,
                   help="shutdown timeout: seconds running jobs get after TERM (default 25)")
    p.add_argument("--job-timeout", type=_positive_float, default=None,
                   help="default hard timeout per job in seconds (a job's own `timeout` wins)")
    p.add_argument("--watchdog-threshold", type=_non_negative_float,
                   default=defaults["watchdog_threshold"].default,
                   help="seconds the gevent hub may be blocked (a CPU-bound job) before the job "
                        "is preempted and its stack logged; 0 turns the watchdog off "
                        "(default 0.5)")
    p.add_argument("--no-green-psycopg2", action="store_true", default=False,
                   help="leave psycopg2 blocking: by default its queries wait cooperatively "
                        "(a wait callback), so other jobs run meanwhile; psycopg2 refuses COPY "
                        "and large objects in that mode (or wrap just those calls in "
                        "jiggler_gevent.green.blocking_psycopg2())")
    p.add_argument("-e", "--environment", default=os.environ.get("APP_ENV", "development"),
                   help="application environment, shown in the heartbeat (default $APP_ENV or "
                        "development)")
    p.add_argument("-v", "--verbose", action="store_true", default=False,
                   help="debug logging (one line per job)")
    p.add_argument("-V", "--version", action="version",
                   version=f"jiggler-gevent {__version__}")
    p.add_argument("--redis-url", default=None,
                   help="redis://[user:password@]host:port/db, rediss://...?ssl_ca_certs=/path/ca.pem "
                        "(TLS), unix:///path/redis.sock, redis+sentinel://[user:password@]"
                        "host:port[,host:port...]/service/db, redis+cluster://[user:password@]"
                        "host:port[,host:port...] (rediss+sentinel://, rediss+cluster:// for TLS) "
                        "(default $JIGGLER_REDIS_URL, $REDIS_URL, redis://127.0.0.1:6379/0)")
    p.add_argument("--namespace", default="",
                   help="key namespace so several apps can share one Redis (myapp -> {myapp:jiggler}...)")
    p.add_argument("--mode", choices=MODES, default=AT_LEAST_ONCE,
                   help="at-least-once (default: a crashed worker's jobs run again) or "
                        "at-most-once (a job never runs twice; a crash can lose jobs in flight)")
    p.add_argument("--poll-interval", type=_positive_float,
                   default=defaults["poll_interval"].default,
                   help="seconds between scheduled/retry polls, with jitter (default 5)")
    p.add_argument("--stats-interval", type=_positive_float,
                   default=defaults["stats_interval"].default,
                   help="seconds between heartbeats; the heartbeat lives 3 intervals, and a "
                        "process silent that long is taken for dead (default 3)")
    p.add_argument("--requeue-interval", type=_positive_float,
                   default=defaults["requeue_interval"].default,
                   help="seconds between looks for jobs of crashed processes, with jitter "
                        "(default 2)")
    p.add_argument("--max-recoveries", type=_positive_int,
                   default=defaults["max_recoveries"].default,
                   help="a job recovered from more crashed processes than this goes to the "
                        "dead set as a poison pill (default 3)")
    p.add_argument("--max-dead-jobs", type=_positive_int,
                   default=defaults["max_dead_jobs"].default,
                   help="dead set size cap; the oldest are trimmed (default 10000)")
    p.add_argument("--dead-timeout", type=_positive_float,
                   default=defaults["dead_timeout"].default,
                   help="seconds a dead job is kept (default 180 days)")
    p.add_argument("--fetch-timeout", type=_positive_float,
                   default=defaults["fetch_timeout"].default,
                   help="longest blocking pop in seconds; must be below --socket-timeout "
                        "(default 1)")
    p.add_argument("--socket-timeout", type=_positive_float,
                   default=defaults["socket_timeout"].default,
                   help="Redis socket timeout in seconds (default 5)")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None,
                     args: Optional[configargparse.Namespace] = None) -> Config:
    """Parse options (flags > env > config file > defaults) into a validated Config
    (or build it from ``args`` already parsed by :func:`build_parser`)."""
    if args is None:
        args = build_parser().parse_args(argv)
    try:
        return Config(
            redis_url=args.redis_url or default_redis_url(),
            namespace=args.namespace,
            queues=args.queues,
            strict=args.strict,
            concurrency=args.concurrency,
            processes=args.processes,
            mode=args.mode,
            timeout=args.timeout,
            job_timeout=args.job_timeout,
            watchdog_threshold=args.watchdog_threshold,
            poll_interval=args.poll_interval,
            stats_interval=args.stats_interval,
            requeue_interval=args.requeue_interval,
            max_recoveries=args.max_recoveries,
            max_dead_jobs=args.max_dead_jobs,
            dead_timeout=args.dead_timeout,
            fetch_timeout=args.fetch_timeout,
            socket_timeout=args.socket_timeout,
            require=args.require,
            environment=args.environment,
            verbose=args.verbose,
            green_psycopg2=not args.no_green_psycopg2,
        ).validate()
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


def load_app(target: Optional[str]) -> None:
    """Import the user's job definitions: ``pkg.module``, ``pkg.module:factory`` or a
    ``.py`` path. The current directory is importable, as with ``python -m``."""
    if not target:
        log.warning("no --require given: only jobs defined by installed packages are known")
        return
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, factory = target.partition(":")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ConfigError(f"--require {target}: no such file")
        sys.path.insert(0, os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if factory:
        func = getattr(module, factory, None)
        if not callable(func):
            raise ConfigError(f"--require {target}: {module_name} has no callable {factory!r}")
        func()


class _StoppedDuringStartup(BaseException):
    """TERM or INT arrived while the worker was still starting (loading the app, checking
    Redis): nothing was fetched yet, so it ends at once with exit code 0. A BaseException,
    so that the app's own ``except Exception`` does not swallow it mid-import."""


def _stop_during_startup(signum, frame) -> None:
    raise _StoppedDuringStartup(signal.Signals(signum).name)


def _fail(message: str, code: int = EXIT_STARTUP) -> None:
    sys.stderr.write(f"jiggler-gevent: error: {message}\n")
    sys.exit(code)


def _redis_url_given(args) -> bool:
    """Whether the worker was told its Redis (flag, config file or environment)."""
    return bool(args.redis_url or os.environ.get("JIGGLER_REDIS_URL")
                or os.environ.get("REDIS_URL"))


def follow_the_app(config: Config, *, url_given: bool, namespace_given: bool) -> Config:
    """The worker's config after the ``-r`` module has run, which may have configured the
    client API itself (Flask's ``JIGGLER_REDIS_URL`` in ``app.config``, Django's
    ``JIGGLER_GEVENT`` setting). Where the worker was not told its own Redis url or
    namespace, it follows the app's, so that it fetches from where the app enqueues; where
    both were given and differ, it keeps its own and warns (jobs enqueued by jobs would
    go to the app's Redis)."""
    app_url = connection.settings.redis_url or config.redis_url
    app_namespace = connection.settings.keys.namespace
    changes = {}
    for option, ours, theirs, given in (("redis url", config.redis_url, app_url, url_given),
                                        ("namespace", config.namespace, app_namespace,
                                         namespace_given)):
        if ours == theirs:
            continue
        shown = connection.describe_url(theirs) if option == "redis url" else theirs
        if given:
            log.warning("the app configures the %s %r but this worker was given %r: it "
                        "fetches with its own, and jobs enqueued by jobs use the app's",
                        option, shown,
                        connection.describe_url(ours) if option == "redis url" else ours)
        else:
            log.info("using the app's %s %r (no --%s given)", option, shown,
                     option.replace(" ", "-"))
            changes["redis_url" if option == "redis url" else "namespace"] = theirs
    return config.replace(**changes).validate() if changes else config


def _warn_about_eviction(client) -> None:
    """Warn about every server (every primary of a cluster) that may evict keys."""
    try:
        policies = connection.config_values(client, "maxmemory-policy")
    except Exception:  # CONFIG may be renamed or forbidden by ACL: nothing to check then
        return
    for node, policy in sorted(policies.items()):
        if policy and policy != "noeviction":
            log.warning("Redis %smaxmemory-policy is %r: under memory pressure Redis may evict "
                        "queued jobs; set it to noeviction", f"node {node} " if node else "", policy)


def _warn_about_old_keys(client, namespace: str) -> None:
    """One warning line when keys of the 0.1 layout are left (their jobs would never run
    here): the counts and the command that moves them. A bounded look (the fixed keys,
    then at most ``migrate.WARN_SCAN_CALLS`` SCAN calls), skipped on a cluster (0.1 never
    ran there), and never fatal."""
    from . import migrate

    try:
        if connection.is_cluster(client):
            return
        found = migrate.find_old_keys(client, namespace, max_scan_calls=migrate.WARN_SCAN_CALLS)
    except Exception as exc:  # a check must never stop the worker
        log.debug("could not look for keys of the 0.1 layout: %s: %s", type(exc).__name__, exc)
        return
    if found.found:
        log.warning("%s", migrate.warning_text(found))


def _run_parent(config: Config, argv: list[str]) -> int:
    """``-p N``: check what the children will need (one clear line if it is wrong),
    then run them under a :class:`~jiggler_gevent.server.parent.Parent`."""
    from .server.parent import Parent

    try:
        load_app(config.require)
        client = connection.make_client(config.redis_url, max_connections=2,
                                        socket_timeout=config.socket_timeout)
        connection.ping(client, config.redis_url)
        client.close()
    except (ConfigError, RedisUnavailable) as exc:
        _fail(str(exc))
    except Exception as exc:
        _fail(f"could not load {config.require!r}: {type(exc).__name__}: {exc}")
    return Parent(config.processes, argv).run()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``bin/jiggler-gevent`` (after monkey-patching). A first argument
    naming an admin subcommand (``stats``, ``web``, ``retry-dead``...) runs that instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import admin

    if argv and argv[0] in admin.SUBCOMMANDS:
        return admin.main(argv)
    args = build_parser().parse_args(argv)
    config = config_from_args(args=args)
    logging.basicConfig(level=logging.DEBUG if config.verbose else logging.INFO,
                        format=LOG_FORMAT, stream=sys.stdout)
    if config.processes > 1:
        return _run_parent(config, argv)
    for signum in (signal.SIGTERM, signal.SIGINT):  # until the launcher's own handlers
        signal.signal(signum, _stop_during_startup)
    try:
        return _start_worker(args, config)
    except _StoppedDuringStartup as stop:
        log.info("%s during startup: exiting before any job was fetched", stop)
        return 0


def _start_worker(args, config: Config) -> int:
    """Load the app, check Redis, then run a :class:`Launcher` until it is stopped."""
    from .server.launcher import Launcher  # gevent is patched by now

    if config.green_psycopg2 and green.patch_psycopg2() == green.PATCHED:
        log.info("psycopg2 queries wait cooperatively, so other jobs run meanwhile "
                 "(--no-green-psycopg2 turns this off)")
    try:
        connection.configure(redis_url=config.redis_url, namespace=config.namespace,
                             max_connections=config.concurrency + 10)
        load_app(config.require)
        config = follow_the_app(config, url_given=_redis_url_given(args),
                                namespace_given=bool(args.namespace))
        middleware.load(args.middleware)
        launcher = Launcher(config)
        launcher.install_signal_handlers()  # a stop from here on is a graceful one
        connection.ping(launcher.client, config.redis_url)
    except (ConfigError, RedisUnavailable) as exc:
        _fail(str(exc))
    except JigglerError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the user's module failed to import
        if config.verbose:
            log.exception("could not load %s", config.require)
        _fail(f"could not load {config.require!r}: {type(exc).__name__}: {exc}"
              + ("" if config.verbose else " (run with -v for the traceback)"))
    _warn_about_eviction(launcher.client)
    _warn_about_old_keys(launcher.client, config.namespace)
    return launcher.run()

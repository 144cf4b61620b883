"""Admin commands a person runs by hand: ``jiggler-gevent stats``, ``retry-dead``, ...

Owns the command line of the admin subcommands (:data:`SUBCOMMANDS`) and the
standalone dashboard server (``web``). Every command takes ``--redis-url`` (default:
env ``JIGGLER_REDIS_URL``, else ``REDIS_URL``, else ``redis://127.0.0.1:6379/0``) and
``--namespace`` (env ``JIGGLER_NAMESPACE``). Errors are one line on stderr and exit
status 1; usage errors exit 2.

``web`` is the only command that needs gevent: it monkey-patches first thing inside
its own function, before the server and the dashboard are imported, so the other
commands (and ``import jiggler_gevent.admin``) never patch anything. Run it as
``jiggler-gevent web --port 9292`` or ``python -m jiggler_gevent.admin web``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from collections.abc import Sequence
from typing import Callable, Optional

import redis
import ujson

from . import api as _api
from . import migrate as _migrate
from .config import default_redis_url
from .connection import describe_url, make_client, ping
from .errors import ConfigError, RedisUnavailable
from .keys import valid_queue_name

SUBCOMMANDS = ("stats", "periodic", "retry-dead", "delete-dead", "retry", "delete-retries", "kill",
               "clear-queue", "quiet", "stop", "clean", "migrate-keys", "web")
EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_WEB_PORT = 9292


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage wall
        self.exit(EXIT_USAGE, f"jiggler-gevent {self.prog.split()[-1]}: {message}\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None,
                        help="default: env JIGGLER_REDIS_URL, else REDIS_URL, else redis://127.0.0.1:6379/0")
    parser.add_argument("--namespace", default=os.environ.get("JIGGLER_NAMESPACE", ""),
                        help="key namespace of the workers (env JIGGLER_NAMESPACE)")


def _queue_name(text: str) -> str:
    """An argparse type: a valid queue name, else a usage error (an empty ``--queue "$Q"``
    must never widen a command to every queue)."""
    if not valid_queue_name(text):
        raise argparse.ArgumentTypeError(
            f"{text[:130]!r} is not a queue name (1 to 128 of letters, digits, '_', '.', '-')")
    return text


def _queue_filter(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--queue", metavar="NAME", default=None, type=_queue_name,
                        help=f"only the {what} of this queue (default: every queue's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jiggler-gevent", description="jiggler-gevent admin commands")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cmd = sub.add_parser("stats", help="totals, queues and processes")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of tables")
    cmd.add_argument("--days", type=int, default=0, help="also show the last N days of history")
    cmd = sub.add_parser("periodic", help="the periodic schedules the workers published")
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd = sub.add_parser("retry-dead", help="move dead jobs back to their queues")
    group = cmd.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every dead job")
    group.add_argument("jids", nargs="*", default=[], metavar="JID")
    _queue_filter(cmd, "dead set")
    cmd = sub.add_parser("retry", help="run jobs of the retry set now")
    group = cmd.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every job of the retry set")
    group.add_argument("jids", nargs="*", default=[], metavar="JID")
    _queue_filter(cmd, "retry set")
    for name, what in (("delete-dead", "the dead set"), ("delete-retries", "the retry set")):
        cmd = sub.add_parser(name, help=f"empty {what}")
        cmd.add_argument("--yes", action="store_true", help="do not ask")
        _queue_filter(cmd, what.split(" ", 1)[1])
    cmd = sub.add_parser("kill", help="move jobs of the retry or scheduled set to the dead set")
    cmd.add_argument("jids", nargs="+", metavar="JID")
    cmd = sub.add_parser("clear-queue", help="delete every pending job of a queue")
    cmd.add_argument("queue", metavar="NAME", type=_queue_name)
    cmd.add_argument("--yes", action="store_true", help="do not ask")
    for name, what in (("quiet", "stop taking new jobs"), ("stop", "shut down as on TERM")):
        cmd = sub.add_parser(name, help=f"ask a worker process to {what}")
        cmd.add_argument("identity", metavar="ID", help="process identity (see `stats`)")
    cmd = sub.add_parser("clean", help="delete jobs: one queue, all queues, or all our keys")
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--queue", metavar="NAME", type=_queue_name,
                      help="delete this queue's pending jobs")
    what.add_argument("--all-queues", action="store_true", help="every queue's pending jobs")
    what.add_argument("--everything", action="store_true",
                      help="every key under the namespace (stop the workers first)")
    cmd.add_argument("--yes", action="store_true", help="do not ask")
    cmd = sub.add_parser("migrate-keys",
                         help="move jobs left in the keys of 0.1 to the current key layout "
                              "(stop the 0.1 workers first)")
    cmd.add_argument("--dry-run", action="store_true", help="only show what is there")
    cmd.add_argument("--force", action="store_true",
                     help="even while a 0.1 worker's heartbeat is alive (its jobs in progress "
                          "and its bookkeeping are left for a later run)")
    cmd.add_argument("--yes", action="store_true", help="do not ask")
    cmd = sub.add_parser("web", help="serve the dashboard (gevent pywsgi)")
    cmd.add_argument("--port", type=int, default=DEFAULT_WEB_PORT)
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    cmd.add_argument("--basic-auth", metavar="USER:PASS",
                     default=os.environ.get("JIGGLER_WEB_BASIC_AUTH"),
                     help="require HTTP basic auth (env JIGGLER_WEB_BASIC_AUTH keeps it out of ps)")
    for parser_ in sub.choices.values():
        _common(parser_)
    return parser


# -- output ------------------------------------------------------------------------------


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _printable(text: str) -> str:
    """No terminal escapes from Redis data: control characters shown as ``\\xNN``."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _ago(epoch_text: str) -> str:
    number = _api._number(epoch_text)
    if number is None:
        return "?"
    return _dt.datetime.fromtimestamp(number, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_stats(api: _api.Api, as_json: bool, days: int) -> None:
    summary = api.summary()
    if days:
        summary["history"] = api.history(days)
    if as_json:
        print(ujson.dumps(summary, ensure_ascii=True, indent=2))
        return
    totals = summary["totals"]
    print(_table([[k, str(v)] for k, v in totals.items()], ["total", "count"]))
    print()
    queues = summary["queues"]
    rows = [[_printable(q["name"]), str(q["size"]), f"{q['latency']:.1f}s"] for q in queues]
    print(_table(rows, ["queue", "size", "latency"]) if rows else "no queues")
    print()
    rows = [[_printable(p["identity"]), _printable(p.get("hostname", "")), p.get("pid", ""),
             f"{p.get('busy', '')}/{p.get('concurrency', '')}", _printable(p.get("queues", "")),
             "quiet" if p.get("quiet") == "1" else "running", _ago(p.get("started_at", ""))]
            for p in summary["processes"]]
    print(_table(rows, ["process", "host", "pid", "busy", "queues", "state", "started"])
          if rows else "no worker processes")
    if days:
        print()
        rows = [[d["day"], str(d["processed"]), str(d["failed"])] for d in summary["history"]]
        print(_table(rows, ["day", "processed", "failed"]))


def _when(epoch: Optional[float], now: float, never: str) -> str:
    """An epoch as absolute UTC time and relative to ``now``: ``2025-01-15 10:05:00Z (in 4m)``."""
    if epoch is None:
        return never
    try:
        moment = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # a published value far out of range
        moment = "?"
    return f"{moment} ({_api.relative_time(epoch, now)})"


def _print_periodic(api: _api.Api, as_json: bool) -> None:
    now = time.time()
    schedules = api.periodic(now)
    if as_json:
        print(ujson.dumps([s.as_dict() for s in schedules], ensure_ascii=True, indent=2,
                          escape_forward_slashes=False))
        return
    if not schedules:
        print("no periodic schedules published: declare them with @periodic(every=...) or "
              "@periodic(cron=...) on a job, or periodic.load_config([...]), and start a worker")
        return
    rows = [[_printable(s.name), _printable(s.timing), _printable(s.job),
             _printable(s.queue or "(the job's own)"), _when(s.next_run, now, "unknown here"),
             _when(s.last_tick, now, "none yet")] for s in schedules]
    print(_table(rows, ["schedule", "when", "job", "queue", "next run", "last tick"]))


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        raise _api.AdminError(f"{question}: pass --yes to confirm (stdin is not a terminal)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# -- commands ------------------------------------------------------------------------------


def _where(name: str, queue: Optional[str]) -> str:
    return name if queue is None else f"{name} of queue {_printable(queue)}"


def _retry(api: _api.Api, args: argparse.Namespace, name: str) -> int:
    where = _where(name, args.queue)
    if args.all:
        moved, skipped = api.retry_all(name, queue=args.queue)
        print(f"moved {moved} job(s) from {where} to their queues"
              + (f"; {skipped} entr(ies) are not runnable jobs and stayed" if skipped else ""))
        return 0
    moved, missing = api.retry_jids(name, args.jids, queue=args.queue)
    print(f"moved {moved} job(s) from {where} to their queues")
    if missing:
        print(f"not found in {where}: {', '.join(_printable(j) for j in missing)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _kill(api: _api.Api, args: argparse.Namespace) -> int:
    missing = []
    for jid in args.jids:
        entry = api.find_job(jid)
        if entry is None or entry.where not in ("retries", "scheduled"):
            missing.append(jid)
            continue
        api.kill(entry.where, entry.ref)
        print(f"killed {_printable(jid)} (was in {_where(entry.where, entry.queue_name)})")
    if missing:
        print(f"not in the retry or scheduled set: {', '.join(_printable(j) for j in missing)}",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


def _delete_set(api: _api.Api, args: argparse.Namespace, name: str) -> int:
    where = f"the {name} set" + ("" if args.queue is None else f" of queue {_printable(args.queue)}")
    if not _confirm(args, f"delete every entry of {where}"):
        return EXIT_ERROR
    print(f"deleted {api.delete_all(name, queue=args.queue)} entr(ies) of {where}")
    return 0


def _clear_queue(api: _api.Api, args: argparse.Namespace) -> int:
    if not _confirm(args, f"delete every pending job of queue {args.queue!r}"):
        return EXIT_ERROR
    print(f"deleted {api.clear_queue(args.queue)} job(s) of queue {_printable(args.queue)}")
    return 0


def _signal(api: _api.Api, args: argparse.Namespace) -> int:
    api.signal_process(args.identity, args.command)
    print(f"asked process {_printable(args.identity)} to {args.command} "
          "(it acts on its next heartbeat)")
    return 0


def _clean(api: _api.Api, args: argparse.Namespace) -> int:
    cleaner = _api.Cleaner(api.client, api.keys.namespace)
    if args.queue is not None:
        if not _confirm(args, f"delete every pending job of queue {args.queue!r}"):
            return EXIT_ERROR
        print(f"deleted {cleaner.prune_queue(args.queue)} job(s)")
    elif args.all_queues:
        if not _confirm(args, "delete the pending jobs of every queue"):
            return EXIT_ERROR
        print(f"deleted {cleaner.prune_all_queues()} job(s)")
    elif args.everything:
        patterns = " and ".join(cleaner.patterns())
        if not _confirm(args, f"delete every key matching {patterns}"):
            return EXIT_ERROR
        print(f"deleted {cleaner.prune_all()} key(s) matching {patterns}")
    else:  # argparse requires one of the three: never reached
        raise AssertionError("clean: no target")
    return 0


def _migrate_keys(api: _api.Api, args: argparse.Namespace) -> int:
    namespace = api.keys.namespace
    where = _migrate.OldLayout(namespace).root + "*"
    found = _migrate.find_old_keys(api.client, namespace)
    print(f"0.1 key layout ({where}): {found.describe()}")
    if found.live_processes:
        print(f"live 0.1 worker process(es): {', '.join(_printable(p) for p in found.live_processes)}")
    if found.unrecognised:
        print(f"not of the 0.1 layout (left alone): "
              f"{', '.join(_printable(k) for k in found.unrecognised[:10])}"
              + (f" and {len(found.unrecognised) - 10} more" if len(found.unrecognised) > 10 else ""))
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    if found.live_processes and not args.force:
        raise _migrate.MigrationError(
            "0.1 worker process(es) still alive: stop every 0.1 worker first (or pass --force "
            "to move everything but their jobs in progress)")
    if found.found and not _confirm(args, f"move the jobs of {where} to the current key layout "
                                          "and delete the 0.1 bookkeeping"):
        return EXIT_ERROR
    shown = [time.monotonic()]

    def progress(what: str, moved: int) -> None:
        if time.monotonic() - shown[0] >= 2.0:
            shown[0] = time.monotonic()
            print(f"  ... {moved} moved so far from {_printable(what)}", flush=True)

    report = _migrate.migrate(api.client, namespace, force=args.force, progress=progress)
    for line in report.describe():
        print(_printable(line))
    left = _migrate.find_old_keys(api.client, namespace)
    if left.jobs:
        message = f"still in the 0.1 layout: {left.describe()}"
        if report.forced_past:
            print(f"{message} (jobs of live 0.1 processes, or pushed by them since)")
            return 0
        print(f"{message}: is a 0.1 worker or enqueuer still running? Run this again",
              file=sys.stderr)
        return EXIT_ERROR
    print("done: nothing left in the 0.1 layout; start the new workers")
    return 0


def _serve_web(args: argparse.Namespace, url: str) -> int:
    """Check the options, patch, then serve the dashboard until interrupted."""
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: use 1 to 65535")
    user = password = ""
    if args.basic_auth:
        user, sep, password = args.basic_auth.partition(":")
        if not sep or not user or not password:
            raise ConfigError("--basic-auth must be USER:PASSWORD")
    from gevent import monkey

    monkey.patch_all()  # before the server, the dashboard and its Redis client exist
    from gevent.pywsgi import WSGIServer

    from .web import BasicAuth, Dashboard

    app = Dashboard(redis_url=url, namespace=args.namespace)
    ping(app.api.client, url)
    if user:
        app = BasicAuth(app, user, password)
    server = WSGIServer((args.host, args.port), app, log=None)
    print(f"jiggler-gevent dashboard on http://{args.host}:{args.port}/ (Redis {describe_url(url)})",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop(timeout=1)
    return 0


_COMMANDS: dict[str, Callable[[_api.Api, argparse.Namespace], int]] = {
    "stats": lambda api, args: _print_stats(api, args.json, max(0, min(400, args.days))) or 0,
    "periodic": lambda api, args: _print_periodic(api, args.json) or 0,
    "retry-dead": lambda api, args: _retry(api, args, "dead"),
    "retry": lambda api, args: _retry(api, args, "retries"),
    "delete-dead": lambda api, args: _delete_set(api, args, "dead"),
    "delete-retries": lambda api, args: _delete_set(api, args, "retries"),
    "kill": _kill,
    "clear-queue": _clear_queue,
    "quiet": _signal,
    "stop": _signal,
    "clean": _clean,
    "migrate-keys": _migrate_keys,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one admin subcommand (``argv`` starts with its name); returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    url = args.redis_url or default_redis_url()
    try:
        if args.command == "web":
            return _serve_web(args, url)
        api = _api.Api(make_client(url, max_connections=4), args.namespace)
        ping(api.client, url)
        return _COMMANDS[args.command](api, args)
    except (ConfigError, RedisUnavailable, _api.AdminError, _migrate.MigrationError) as exc:
        print(f"jiggler-gevent {args.command}: {exc}", file=sys.stderr)
    except ValueError as exc:  # a bad namespace
        print(f"jiggler-gevent {args.command}: {exc}", file=sys.stderr)
    except (redis.RedisError, OSError) as exc:
        print(f"jiggler-gevent {args.command}: Redis error: {type(exc).__name__}: {exc}",
              file=sys.stderr)
    except (KeyboardInterrupt, EOFError):
        print(f"jiggler-gevent {args.command}: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""``manage.py jiggler_gevent [worker options]``: run a worker for this project.

Takes exactly the options of the ``jiggler-gevent`` command (``-q``, ``-c``,
``--redis-url`` ...; ``-h`` lists them). Values come from the command line, then
``JIGGLER_*`` environment variables, then the ``JIGGLER_GEVENT`` setting (a key per
option long name: ``redis_url``, ``queues``, ``concurrency`` ...), then defaults.

How it monkey-patches before anything else: by the time Django runs a management
command, ``manage.py`` has already imported Django, the settings, every installed app
and whatever they import (``threading``, ``ssl``, database drivers, ``requests``).
Patching then, in this module, is too late: objects made before the patch keep the
blocking versions, and gevent warns about (or breaks on) an already imported
``ssl``. So the command checks the options, then *replaces this process*
(``os.execve``, same PID, so signals such as TERM reach the worker directly and it
exits 0 as the CLI does) with a fresh interpreter that patches on its first line and
then runs the CLI with ``-r jiggler_gevent.contrib.django.boot``, which calls
``django.setup()`` and imports each app's ``jobs`` module. Jobs are found there, so
``-r`` is refused here.
"""

from __future__ import annotations

import os
import sys

from django.core.management.base import BaseCommand, CommandError

from jiggler_gevent.cli import build_parser, config_from_args
from jiggler_gevent.contrib.django import jiggler_settings

BOOT_MODULE = "jiggler_gevent.contrib.django.boot"
PATCH_FIRST = ("from gevent import monkey\n"
               "monkey.patch_all()\n"
               "import sys\n"
               "from jiggler_gevent.cli import main\n"
               "sys.exit(main())\n")
DJANGO_OPTIONS = ("--settings", "--pythonpath")  # already applied by manage.py
IN_PROCESS_KEYS = ("periodic",)  # read by the app config in the worker, not options


def _strip_django_options(args: list[str]) -> tuple[list[str], list[str]]:
    kept, paths = [], []
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name, eq, value = arg.partition("=")
        if name in DJANGO_OPTIONS:
            if not eq:
                skip = True
                value = args[index + 1] if index + 1 < len(args) else ""
            if name == "--pythonpath" and value:
                paths.append(os.path.abspath(value))
            continue
        kept.append(arg)
    return kept, paths


def _env_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def settings_env(conf: dict) -> dict:
    """``JIGGLER_*`` variables for the worker from the ``JIGGLER_GEVENT`` setting
    (never overriding one already in the environment)."""
    known = {action.dest for action in build_parser()._actions}
    env = {}
    for key, value in conf.items():
        if key in IN_PROCESS_KEYS or value is None:
            continue
        if key not in known or key in ("help", "version", "config", "require"):
            raise CommandError(f"JIGGLER_GEVENT: unknown option {key!r}")
        name = f"JIGGLER_{key.upper()}"
        if name not in os.environ:
            env[name] = _env_value(key, value)
    return env


def worker_command(args: list[str]) -> tuple[list[str], dict]:
    """The argv and environment of the worker process that replaces this one."""
    args, paths = _strip_django_options(args)
    if any(a in ("-r", "--require") or a.startswith("--require=") for a in args):
        raise CommandError("-r is not used here: jobs are found in each installed app's jobs "
                           "module")
    env = dict(os.environ, **settings_env(jiggler_settings()))
    project_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    # what manage.py made importable (its folder, --pythonpath, settings' tweaks), not the
    # interpreter's own folders, which the new interpreter has anyway
    own = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    added = [p for p in sys.path if p and not p.startswith(own) and p not in inherited]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, project_dir, *inherited, *added]))
    return [sys.executable, "-c", PATCH_FIRST, "-r", BOOT_MODULE, *args], env


class Command(BaseCommand):
    help = ("Run a jiggler-gevent worker for this project; takes the jiggler-gevent options "
            "(-h lists them).")

    def run_from_argv(self, argv: list[str]) -> None:
        try:
            command, env = worker_command(list(argv[2:]))
        except CommandError as exc:
            sys.stderr.write(f"jiggler_gevent: error: {exc}\n")
            sys.exit(2)
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            config_from_args(command[3:])  # bad options: one line and exit 2, before the exec
        finally:
            os.environ.clear()
            os.environ.update(saved)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, env)

    def handle(self, *args, **options):
        raise CommandError("run the worker with manage.py (it replaces the process), "
                           "not with call_command")

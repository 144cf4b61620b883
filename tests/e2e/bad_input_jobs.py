"""Jobs module of ``test_e2e_bad_input``: the e2e jobs, plus an audit hook.

The worker loads it with ``-r bad_input_jobs``. It registers the jobs of
``jobs_fixture`` (``e2e.record`` ...) and installs a :func:`sys.addaudithook` hook
that appends one line per watched event to the file named by ``$E2E_AUDIT``: every
module the worker imports from now on, and every attempt to run a program or
dynamic code (``os.system``, ``subprocess.Popen``, ``exec``/``eval`` ...). The test
reads it to prove that a hostile job name imported and ran nothing.
"""

from __future__ import annotations

import os
import sys

import jobs_fixture  # noqa: F401  (registers the e2e.* jobs)

AUDIT_ENV = "E2E_AUDIT"
WATCHED = frozenset({
    "import", "exec", "compile", "os.system", "subprocess.Popen", "os.posix_spawn", "os.exec",
    "os.spawn", "os.fork", "os.startfile", "ctypes.dlopen", "builtins.input",
})


def _install(path: str) -> None:
    def hook(event: str, args: tuple) -> None:
        if event not in WATCHED:
            return
        if event == "compile" and args and args[1] != "<string>":
            return  # only code compiled from a string (eval / exec of text)
        try:
            if event == "import":
                detail = str(args[0])
            elif event == "exec":
                code = args[0]
                detail = f"{getattr(code, 'co_filename', '?')}:{getattr(code, 'co_name', '?')}"
            else:
                detail = repr(args)[:300]
            line = f"{event} {detail}".replace("\n", "\\n") + "\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except Exception:  # an audit hook must never break the worker
            pass

    sys.addaudithook(hook)


if os.environ.get(AUDIT_ENV):
    _install(os.environ[AUDIT_ENV])

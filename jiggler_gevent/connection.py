"""Redis clients: how jiggler-gevent connects, and the client-side settings.

Owns the redis-py client construction (pool sizing, timeouts, an explicit
no-blind-retry policy), the Redis URL forms we accept, and the process-wide client
settings that :func:`configure` sets. Must not import gevent: request handlers use this.

redis-py re-sends a command after a connection error unless told otherwise; that
is wrong for BRPOP/LMOVE/RPUSH (a job could be popped twice or pushed twice), so
every client made here has ``Retry(NoBackoff(), 0)`` and callers handle errors.

URL forms (``--redis-url``, env ``JIGGLER_REDIS_URL`` or ``REDIS_URL``)::

    redis://[[user]:password@]host[:port][/db]          plain TCP
    rediss://[[user]:password@]host[:port][/db]?...     TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[[user]:password@]host1[:port1],host2[:port2]/service_name[/db]

Special characters in a user name or password must be percent-encoded (``@`` is
``%40``). With ACLs, give the user name too (``redis://worker:pw@host/0``); a
password alone authenticates as the ``default`` user.

Query options (``?name=value&...``) of every form: ``db``, ``client_name``,
``protocol`` (2 or 3), ``socket_timeout`` and ``socket_connect_timeout`` (seconds;
they override ``--socket-timeout``, which is better left in charge),
``socket_keepalive``, ``health_check_interval``. TLS options, ``rediss://`` only:
``ssl_ca_certs`` (PEM file of the CAs to trust; default: the system's),
``ssl_ca_path``, ``ssl_cert_reqs`` (``required``, the default, ``optional`` or
``none``), ``ssl_check_hostname`` (default true), ``ssl_certfile`` and ``ssl_keyfile``
(a client certificate, for ``tls-auth-clients yes``), ``ssl_password``,
``ssl_ciphers``, ``ssl_min_version``. Sentinel only: ``sentinel_username`` and
``sentinel_password`` (when the Sentinels themselves need AUTH; the credentials
before ``@`` are for the master), ``min_other_sentinels``. Unknown options are a
:class:`ConfigError`, not a surprise at the first connection.

Example: ``rediss://worker:s3cret@redis.internal:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Optional
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from .config import default_redis_url
from .errors import ConfigError, RedisUnavailable
from .keys import Keys

CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30
DEFAULT_CLIENT_CONNECTIONS = 50
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_POOL_SIZE = 4  # connections per Sentinel: master lookups wait for one
MASTER_CHECK_INTERVAL_S = 1.0  # how often a Sentinel client re-checks the master's address

SENTINEL_SCHEME = "redis+sentinel://"
URL_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)

_COMMON_OPTIONS = frozenset({
    "db", "client_name", "protocol", "socket_timeout", "socket_connect_timeout",
    "socket_keepalive", "health_check_interval",
})
# also accepted by redis-py in a redis://, rediss:// or unix:// url (not for Sentinel)
_DIRECT_OPTIONS = frozenset({"username", "password", "max_connections", "timeout",
                             "retry_on_timeout"})
_TLS_OPTIONS = frozenset({
    "ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_check_hostname", "ssl_certfile",
    "ssl_keyfile", "ssl_password", "ssl_ciphers", "ssl_min_version",
})
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "min_other_sentinels"})
_INT_OPTIONS = ("db", "protocol", "health_check_interval", "min_other_sentinels")
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
    ``redis+sentinel://``, a :class:`SentinelBlockingConnectionPool`).

    A greenlet or thread that finds every connection in use waits for one
    (up to ``pool_timeout`` seconds, None for ever) instead of failing with
    "Too many connections". Raises :class:`ConfigError` for a url we cannot use
    (see the module docstring for the forms and options); does not connect.
    """
    if not url.startswith(URL_SCHEMES):
        raise ConfigError(f"redis url {describe_url(url)!r} must start with redis://, rediss://, "
                          f"unix:// or {SENTINEL_SCHEME}")
    if url.startswith(SENTINEL_SCHEME):
        return _make_sentinel_client(parse_sentinel_url(url), max_connections=max_connections,
                                     socket_timeout=socket_timeout, pool_timeout=pool_timeout,
                                     client_name=client_name)
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
    """True for a Redis Cluster client: a script or MULTI may then touch one slot only."""
    cluster = getattr(redis, "cluster", None)
    return cluster is not None and isinstance(client, cluster.RedisCluster)


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


# -- Sentinel --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``redis+sentinel://`` url."""

    sentinels: tuple  # ((host, port), ...)
    service_name: str
    db: int = 0
    username: Optional[str] = None  # for the master (and its replicas)
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    sentinel_username: Optional[str] = None  # for the Sentinels themselves
    sentinel_password: Optional[str] = dataclasses.field(default=None, repr=False)
    options: tuple = ()  # other query options, ((name, value), ...) as given


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[user:pass@]host1:port1,host2:port2/<service_name>[/<db>][?...]``.

    The port defaults to 26379; IPv6 hosts go in brackets (``[::1]:26379``). Raises
    :class:`ConfigError` naming what is wrong (the password is never shown).
    """
    where = f"redis url {describe_url(url)!r}"
    if not url.startswith(SENTINEL_SCHEME):
        raise ConfigError(f"{where} must start with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME):].split("#", 1)[0].split("?", 1)[0]
    authority, _, path = rest.partition("/")
    creds, at, hosts_text = authority.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = creds.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon and password_text else None
    sentinels = tuple(_parse_host_port(item, where) for item in hosts_text.split(","))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ConfigError(f"{where}: no service name (redis+sentinel://host:port/<service>/<db>)")
    if len(parts) > 2:
        raise ConfigError(f"{where}: the path must be /<service>[/<db>]")
    db = _parse_db(parts[1], where) if len(parts) == 2 else 0
    options = []
    sentinel_username = sentinel_password = None
    allowed = _COMMON_OPTIONS | _SENTINEL_OPTIONS
    for name, value in _query_of(url):
        if name not in allowed:
            raise ConfigError(f"{where}: unknown option {name!r} (known: {', '.join(sorted(allowed))})")
        _check_option(url, name, value)
        if name == "db":
            db = _parse_db(value, where)
        elif name == "sentinel_username":
            sentinel_username = value or None
        elif name == "sentinel_password":
            sentinel_password = value or None
        else:
            options.append((name, value))
    return SentinelUrl(sentinels=sentinels, service_name=parts[0], db=db, username=username,
                       password=password, sentinel_username=sentinel_username,
                       sentinel_password=sentinel_password, options=tuple(options))


def _parse_host_port(item: str, where: str) -> tuple:
    item = item.strip()
    if item.startswith("["):  # [ipv6]:port
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"{where}: bad Sentinel address {item!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"{where}: a Sentinel address has no host ({item!r})")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where}: bad Sentinel port in {item!r}")
    return host, int(port_text)


def _parse_db(text: str, where: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{where}: the database must be a number, not {text!r}")
    return int(text)


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's :class:`~redis.sentinel.SentinelConnectionPool` (each new connection
    asks the Sentinels for the current master; connections to a demoted master are
    dropped) with :class:`~redis.BlockingConnectionPool`'s waiting: at most
    ``max_connections``, and a caller that finds them all in use waits up to
    ``timeout`` seconds (None: for ever) instead of failing with "Too many connections".

    By the method order, the Sentinel pool supplies ``__init__``/``reset``/
    ``owns_connection``/the master lookup and the blocking pool supplies
    ``get_connection``/``release``/``disconnect``/``make_connection``.

    One addition: redis-py asks the Sentinels only when it opens a connection, so
    after a ``SENTINEL FAILOVER`` (the old master alive, demoted only some ten
    seconds later) pooled connections would keep writing to the old master, and
    those writes are lost when it resyncs. So a checkout asks the Sentinels again
    when ``master_check_interval`` seconds have passed since the last lookup; on a
    new address the idle connections are closed, and busy ones when released. If
    the Sentinels cannot be asked, the pooled connections are kept.
    """

    def __init__(self, service_name, sentinel_manager, *,
                 master_check_interval: float = MASTER_CHECK_INTERVAL_S, **kwargs) -> None:
        self.master_check_interval = master_check_interval
        self._next_master_check = 0.0
        self._master_check_lock = threading.Lock()
        super().__init__(service_name, sentinel_manager, **kwargs)

    def get_connection(self, *args, **kwargs):
        self._recheck_master()
        return super().get_connection(*args, **kwargs)

    def _recheck_master(self) -> None:
        now = time.monotonic()
        if self.master_address is None or now < self._next_master_check:
            return  # no connection made yet (that looks the master up anyway), or too soon
        if not self._master_check_lock.acquire(blocking=False):
            return  # another caller is asking right now
        try:
            self._next_master_check = now + self.master_check_interval
            try:
                self.get_master_address()  # closes the idle connections on a change
            except (RedisConnectionError, RedisTimeoutError, ResponseError):
                pass  # keep what we have; the next connection made will fail clearly
        finally:
            self._master_check_lock.release()

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:  # the client is being closed: close the Sentinel clients too
            for sentinel in getattr(self.sentinel_manager, "sentinels", ()):
                sentinel.connection_pool.disconnect()


class JigglerSentinel(Sentinel):
    """A :class:`~redis.sentinel.Sentinel` whose clients of the Sentinels use small
    blocking pools (many greenlets reconnecting after a failover wait for a lookup
    instead of opening hundreds of connections), and whose "no master" error is one
    short line naming each Sentinel's answer."""

    def __init__(self, sentinels, *, sentinel_kwargs: dict, min_other_sentinels: int = 0,
                 pool_timeout: Optional[float] = None, **connection_kwargs) -> None:
        super().__init__(sentinels, min_other_sentinels=min_other_sentinels,
                         sentinel_kwargs=sentinel_kwargs, **connection_kwargs)
        for client in self.sentinels:
            client.close()  # not connected yet; replaced by ones over blocking pools
        self.sentinels = [
            redis.Redis(connection_pool=redis.BlockingConnectionPool(
                host=host, port=port, max_connections=SENTINEL_POOL_SIZE, timeout=pool_timeout,
                **self.sentinel_kwargs))
            for host, port in sentinels
        ]

    def discover_master(self, service_name: str):
        problems = []
        for index, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"{kwargs.get('host')}:{kwargs.get('port')}"
            try:
                masters = sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                forced = getattr(self, "_force_master_ip", None)
                return (forced if forced is not None else state["ip"]), state["port"]
            problems.append(f"{where}: " + ("does not monitor it" if not state
                                             else "reports it down or not a master"))
        raise MasterNotFoundError(f"no Sentinel knows a healthy master {service_name!r} "
                                  f"({'; '.join(problems)})")


def _make_sentinel_client(parsed: SentinelUrl, *, max_connections: int, socket_timeout: float,
                          pool_timeout: Optional[float], client_name: Optional[str]) -> redis.Redis:
    options = dict(parsed.options)
    socket_timeout = float(options.get("socket_timeout", socket_timeout))
    connect_timeout = float(options.get("socket_connect_timeout",
                                        min(CONNECT_TIMEOUT_S, socket_timeout)))
    keepalive = options.get("socket_keepalive", "true").lower() not in _FALSE
    sentinel_kwargs = dict(
        socket_timeout=min(socket_timeout, CONNECT_TIMEOUT_S),
        socket_connect_timeout=connect_timeout,
        socket_keepalive=keepalive,
        retry=Retry(NoBackoff(), 0),  # an unreachable Sentinel: discovery asks the next one
        username=parsed.sentinel_username,
        password=parsed.sentinel_password,
    )
    sentinel = JigglerSentinel(
        list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs,
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        pool_timeout=socket_timeout,
    )
    master_kwargs = dict(
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=keepalive,
        health_check_interval=int(options.get("health_check_interval", HEALTH_CHECK_INTERVAL_S)),
        retry=Retry(NoBackoff(), 0),
        client_name=options.get("client_name", client_name),
    )
    if "protocol" in options:
        master_kwargs["protocol"] = int(options["protocol"])
    return sentinel.master_for(parsed.service_name, redis_class=redis.Redis,
                               connection_pool_class=SentinelBlockingConnectionPool,
                               **master_kwargs)


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
    """Check that Redis answers; raise :class:`RedisUnavailable` with one clear line."""
    where = describe_url(url)
    try:
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
    prefixes every key (``myapp`` -> ``myapp:jiggler:...``); ``client`` hands in a
    redis-py client of your own; ``max_connections`` sizes the built-in pool.
    """
    settings.configure(redis_url, namespace, client, max_connections)

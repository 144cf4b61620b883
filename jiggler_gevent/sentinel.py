"""Redis Sentinel clients: ``redis+sentinel://`` and ``rediss+sentinel://`` urls.

Owns parsing a Sentinel url and building the client of the master it names: the
master's address comes from the Sentinels, over a blocking pool that re-checks the
master once a second (so writes follow a ``SENTINEL FAILOVER`` quickly). Built by
:func:`jiggler_gevent.connection.make_client`, which documents the url forms; the
names here stay importable from :mod:`jiggler_gevent.connection` too. Must not
import gevent.

TLS: ``rediss+sentinel://`` speaks TLS to the Sentinels and to the master (the
``ssl_*`` query options apply to both); ``sentinel_ssl=no`` keeps it for the master
only, for Sentinels that listen on a plain port while the data nodes need TLS.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Optional
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from .connection import (
    _FALSE,
    CONNECT_TIMEOUT_S,
    _connection_kwargs,
    _parse_db,
    _parse_host_list_url,
    tls_kwargs,
)
from .errors import ConfigError

DEFAULT_SENTINEL_PORT = 26379
SENTINEL_POOL_SIZE = 4  # connections per Sentinel: master lookups wait for one
MASTER_CHECK_INTERVAL_S = 1.0  # how often a Sentinel client re-checks the master's address

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_TLS_SCHEME = "rediss+sentinel://"
SENTINEL_SCHEMES = (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME)
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "min_other_sentinels"})
_SENTINEL_TLS_OPTIONS = frozenset({"sentinel_ssl"})  # rediss+sentinel:// only


@dataclasses.dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``redis+sentinel://`` or ``rediss+sentinel://`` url."""

    sentinels: tuple  # ((host, port), ...)
    service_name: str
    db: int = 0
    username: Optional[str] = None  # for the master (and its replicas)
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    sentinel_username: Optional[str] = None  # for the Sentinels themselves
    sentinel_password: Optional[str] = dataclasses.field(default=None, repr=False)
    options: tuple = ()  # other query options, ((name, value), ...) as given (TLS ones too)
    tls: bool = False  # TLS to the master (rediss+sentinel://)
    sentinel_tls: bool = False  # TLS to the Sentinels too (rediss+sentinel:// unless sentinel_ssl=no)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis[s]+sentinel://[user:pass@]host1:port1,host2:port2/<service_name>[/<db>][?...]``.

    The port defaults to 26379; IPv6 hosts go in brackets (``[::1]:26379``). Raises
    :class:`ConfigError` naming what is wrong (the password is never shown).
    """
    parsed = _parse_host_list_url(url, SENTINEL_SCHEMES, DEFAULT_SENTINEL_PORT, "Sentinel")
    where, path = parsed.where, parsed.path
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ConfigError(f"{where}: no service name ({parsed.scheme}host:port/<service>/<db>)")
    if len(parts) > 2:
        raise ConfigError(f"{where}: the path must be /<service>[/<db>]")
    db = _parse_db(parts[1], where) if len(parts) == 2 else 0
    options = []
    sentinel_username = sentinel_password = None
    sentinel_tls = parsed.tls
    for name, value in parsed.options(extra=_SENTINEL_OPTIONS, tls_extra=_SENTINEL_TLS_OPTIONS):
        if name == "db":
            db = _parse_db(value, where)
        elif name == "sentinel_username":
            sentinel_username = value or None
        elif name == "sentinel_password":
            sentinel_password = value or None
        elif name == "sentinel_ssl":
            sentinel_tls = value.lower() not in _FALSE
        else:
            options.append((name, value))
    return SentinelUrl(sentinels=parsed.hosts, service_name=parts[0], db=db,
                       username=parsed.username, password=parsed.password,
                       sentinel_username=sentinel_username, sentinel_password=sentinel_password,
                       options=tuple(options), tls=parsed.tls, sentinel_tls=sentinel_tls)


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
    short line naming each Sentinel's answer.

    ``sentinel_tls`` holds the connection class and ``ssl_*`` options for TLS to the
    Sentinels (empty: plain TCP).
    """

    def __init__(self, sentinels, *, sentinel_kwargs: dict, min_other_sentinels: int = 0,
                 pool_timeout: Optional[float] = None, sentinel_tls: Optional[dict] = None,
                 **connection_kwargs) -> None:
        super().__init__(sentinels, min_other_sentinels=min_other_sentinels,
                         sentinel_kwargs=sentinel_kwargs, **connection_kwargs)
        for client in self.sentinels:
            client.close()  # not connected yet; replaced by ones over blocking pools
        self.sentinels = [
            redis.Redis(connection_pool=redis.BlockingConnectionPool(
                host=host, port=port, max_connections=SENTINEL_POOL_SIZE, timeout=pool_timeout,
                **self.sentinel_kwargs, **(sentinel_tls or {})))
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


def make_sentinel_client(parsed: SentinelUrl, *, max_connections: int, socket_timeout: float,
                         pool_timeout: Optional[float], client_name: Optional[str]) -> redis.Redis:
    """The client of the master ``parsed`` names (see :func:`connection.make_client`)."""
    options = dict(parsed.options)
    common = _connection_kwargs(options, socket_timeout, client_name)
    tls = tls_kwargs(parsed.options) if parsed.tls else {}
    sentinel_kwargs = dict(
        socket_timeout=min(common["socket_timeout"], CONNECT_TIMEOUT_S),
        socket_connect_timeout=common["socket_connect_timeout"],
        socket_keepalive=common["socket_keepalive"],
        retry=Retry(NoBackoff(), 0),  # an unreachable Sentinel: discovery asks the next one
        username=parsed.sentinel_username,
        password=parsed.sentinel_password,
    )
    sentinel = JigglerSentinel(
        list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs,
        min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        pool_timeout=common["socket_timeout"],
        sentinel_tls=dict(tls, connection_class=redis.SSLConnection) if parsed.sentinel_tls else None,
    )
    master_kwargs = dict(
        common,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        max_connections=max_connections,
        timeout=pool_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    if parsed.tls:
        master_kwargs.update(tls, ssl=True)  # SentinelManagedSSLConnection
    return sentinel.master_for(parsed.service_name, redis_class=redis.Redis,
                               connection_pool_class=SentinelBlockingConnectionPool,
                               **master_kwargs)

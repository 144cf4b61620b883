"""Redis clients: how jiggler-gevent connects, and the client-side settings.

Owns the redis-py client construction (pool sizing, timeouts, an explicit
no-blind-retry policy) and the process-wide client settings that
:func:`configure` sets. Must not import gevent: request handlers use this.

redis-py re-sends a command after a connection error unless told otherwise; that
is wrong for BRPOP/LMOVE/RPUSH (a job could be popped twice or pushed twice), so
every client made here has ``Retry(NoBackoff(), 0)`` and callers handle errors.
"""

from __future__ import annotations

import threading
from typing import Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .config import default_redis_url
from .errors import ConfigError, RedisUnavailable
from .keys import Keys

CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30
DEFAULT_CLIENT_CONNECTIONS = 50


def make_client(
    url: str,
    *,
    max_connections: int = DEFAULT_CLIENT_CONNECTIONS,
    socket_timeout: float = 5.0,
    pool_timeout: Optional[float] = None,
    client_name: Optional[str] = None,
) -> redis.Redis:
    """A redis-py client over a :class:`~redis.BlockingConnectionPool`.

    A greenlet or thread that finds every connection in use waits for one
    (up to ``pool_timeout`` seconds, None for ever) instead of failing with
    "Too many connections".
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis url {url!r} must start with redis://, rediss:// or unix://")
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(CONNECT_TIMEOUT_S, socket_timeout),
            socket_keepalive=True,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(NoBackoff(), 0),
            client_name=client_name,
        )
    except ValueError as exc:
        raise ConfigError(f"redis url {url!r}: {exc}") from None
    return redis.Redis(connection_pool=pool)


def describe_url(url: str) -> str:
    """The url with any password replaced by ``***`` (safe to log)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = creds.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"


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

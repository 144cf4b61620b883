"""Redis Cluster clients: ``redis+cluster://`` and ``rediss+cluster://`` urls.

Owns parsing a cluster url and :class:`ClusterClient`, a redis-py
:class:`~redis.cluster.RedisCluster` with jiggler's policies. Built by
:func:`jiggler_gevent.connection.make_client`, which documents the url forms; the
names here stay importable from :mod:`jiggler_gevent.connection` too. Must not
import gevent.

What differs from a plain :class:`~redis.cluster.RedisCluster`:

- **No command is sent twice.** redis-py re-sends a command after a connection
  error or a timeout when its ``retry`` allows (the command may have run: a job
  popped or pushed twice), and a non-transactional cluster pipeline re-sends, one
  by one, every command of a node whose connection failed whatever the ``retry``
  says. Here ``get_retries()`` is 0, and the pipeline re-sends only commands that
  were redirected (``MOVED``/``ASK``/``TRYAGAIN``) when no reply of the batch was
  lost; otherwise they fail with the connection error, as on a single server. The
  redirects themselves still work: a command follows ``MOVED``/``ASK`` (redis-py
  does that without the retry), and a ``MULTI``/``EXEC`` that was refused with a
  redirect or ``CLUSTERDOWN`` (so nothing ran) is sent again after the slot map
  was refreshed, up to :data:`REDIRECT_RETRIES` times.
- **It connects at first use**, not when built (a ``RedisCluster`` reads the slot
  map in its constructor), so building a worker does not need the cluster up and
  the first command gets the connection error, as with the other clients.
- **Errors stay Redis errors**: "no node reachable" and "slot not covered" are
  raised as :class:`ClusterUnavailable`, both a :class:`redis.ConnectionError` and
  redis-py's :class:`~redis.exceptions.RedisClusterUnreachableError`.
- As with redis-py's cluster client (and unlike :class:`redis.Redis`),
  ``pipeline()`` is *not* transactional unless ``transaction=True`` is given: say
  which one you mean.
- Each node's pool is a :class:`~redis.BlockingConnectionPool` of
  ``max_connections`` connections.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Optional
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, PipelineStrategy, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from .connection import _connection_kwargs, _parse_db, _parse_host_list_url, tls_kwargs
from .errors import ConfigError

DEFAULT_CLUSTER_PORT = 6379
REDIRECT_RETRIES = 3  # a MULTI/EXEC refused with MOVED/ASK/TRYAGAIN/CLUSTERDOWN is sent again
CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_TLS_SCHEME = "rediss+cluster://"
CLUSTER_SCHEMES = (CLUSTER_SCHEME, CLUSTER_TLS_SCHEME)

# errors that prove the command did not run, so sending it again is safe
NOT_RUN_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, SlotNotCoveredError)
_LOST_REPLY_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class ClusterUnavailable(redis.ConnectionError, RedisClusterUnreachableError):
    """No node of the cluster could be reached, or a slot has no node right now."""


# -- urls --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterUrl:
    """The parts of a ``redis+cluster://`` or ``rediss+cluster://`` url."""

    nodes: tuple  # ((host, port), ...): where to read the slot map from
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    options: tuple = ()  # other query options, ((name, value), ...) as given


def parse_cluster_url(url: str) -> ClusterUrl:
    """``redis[s]+cluster://[[user]:password@]host1[:port1][,host2[:port2]...][/0][?...]``.

    The port defaults to 6379, IPv6 hosts go in brackets. A cluster has database 0
    only, so the path is empty, ``/`` or ``/0``. Raises :class:`ConfigError` naming
    what is wrong (the password is never shown).
    """
    parsed = _parse_host_list_url(url, CLUSTER_SCHEMES, DEFAULT_CLUSTER_PORT, "cluster node")
    where = parsed.where
    if unquote(parsed.path).strip("/") not in ("", "0"):
        raise ConfigError(f"{where}: a Redis Cluster has database 0 only (no path, or /0)")
    options = []
    for name, value in parsed.options():
        if name == "db":
            if _parse_db(value, where) != 0:
                raise ConfigError(f"{where}: a Redis Cluster has database 0 only")
            continue
        options.append((name, value))
    return ClusterUrl(nodes=parsed.hosts, tls=parsed.tls, username=parsed.username,
                      password=parsed.password, options=tuple(options))


# -- no blind re-sends -------------------------------------------------------------------


class RedirectRetry(Retry):
    """The retry policy of a :class:`ClusterClient`.

    ``get_retries()`` is 0: redis-py's cluster client and pipelines read it to decide
    whether to send a command again after a connection error, a timeout or
    ``CLUSTERDOWN``, and a command whose reply was lost may have run. MOVED and ASK
    of a single command are followed by redis-py without this policy.

    :meth:`call_with_retry` is what a transaction (``MULTI``/``EXEC``, ``WATCH``)
    uses: it sends again only after an error in :data:`NOT_RUN_ERRORS` (the
    transaction was refused as a whole), at most ``redirects`` times, and runs the
    failure handler (which refreshes the slot map) first, as redis-py does.
    """

    def __init__(self, redirects: int = REDIRECT_RETRIES) -> None:
        super().__init__(NoBackoff(), 0)
        self.redirects = redirects

    def get_retries(self) -> int:
        return 0

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count: bool = False):
        failures = 0
        while True:
            try:
                return do()
            except Exception as error:
                if not isinstance(error, self._supported_errors + NOT_RUN_ERRORS):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if not isinstance(error, NOT_RUN_ERRORS) or failures > self.redirects \
                        or (is_retryable is not None and not is_retryable(error)):
                    raise


class NoResendPipelineStrategy(PipelineStrategy):
    """redis-py's non-transactional cluster pipeline, except that the commands it
    would send again one by one are sent again only when every command that got no
    reply was redirected (MOVED/ASK/TRYAGAIN). If any command of the batch lost its
    reply (connection error or timeout: it may have run), those it would re-send
    fail with that error instead, and nothing is sent twice."""

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        self._lost_reply: Optional[Exception] = None

    def _send_cluster_commands(self, stack, raise_on_error=True, allow_redirections=True):
        pipe = self._pipe
        resend = pipe.parent_execute_command

        def resend_unless_a_reply_was_lost(*args, **kwargs):
            lost = self._lost_reply or next(
                (c.result for c in stack if isinstance(c.result, _LOST_REPLY_ERRORS)), None)
            if lost is not None:
                raise lost  # stored as this command's result by redis-py
            return resend(*args, **kwargs)

        self._lost_reply = None
        pipe.parent_execute_command = resend_unless_a_reply_was_lost
        try:
            return super()._send_cluster_commands(stack, raise_on_error=raise_on_error,
                                                  allow_redirections=allow_redirections)
        finally:
            pipe.parent_execute_command = resend
            self._lost_reply = None

    def _merge_node_results(self, command, copies, splits=None):
        # a command sent to several nodes or slots: its copies carry the replies
        for copy in copies.values():
            if isinstance(copy.result, _LOST_REPLY_ERRORS) and self._lost_reply is None:
                self._lost_reply = copy.result
        return super()._merge_node_results(command, copies, splits)


class ClusterClientPipeline(ClusterPipeline):
    """A pipeline of a :class:`ClusterClient`: :class:`NoResendPipelineStrategy`
    when not transactional, and :class:`ClusterUnavailable` for an unreachable cluster."""

    def execute(self, raise_on_error: bool = True):
        return _translated(super().execute, raise_on_error)


# -- the client --------------------------------------------------------------------------


class ClusterClient(RedisCluster):
    """A :class:`~redis.cluster.RedisCluster` that connects at first use, never sends
    a command twice, and raises :class:`ClusterUnavailable` (a
    :class:`redis.ConnectionError`) when no node answers. See the module docstring.

    ``make_kwargs`` returns the keyword arguments of ``RedisCluster`` (fresh startup
    nodes each time): it is called again after a failed first connection.
    ``description`` (the startup nodes) is for ``repr``.

    Until the first use, only the attributes set here exist; any other attribute
    read runs ``RedisCluster.__init__`` (under a lock) and is then looked up again.
    If that fails, the client goes back to this state and raises the error (see
    :func:`_first_connection_error`), and the next use tries again.
    """

    def __init__(self, make_kwargs, description: str = "") -> None:
        state = self.__dict__
        state["_jiggler_make_kwargs"] = make_kwargs
        state["_jiggler_description"] = description
        state["_jiggler_lock"] = threading.RLock()
        state["_jiggler_ready"] = False
        state["_jiggler_connecting"] = None
        kwargs = make_kwargs()
        # used before the first connection, e.g. by register_script (to hash the source)
        state["encoder"] = redis.connection.Encoder(
            kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict"),
            kwargs.get("decode_responses", False))
        self._lazy_state = dict(state)

    def __getattr__(self, name: str):
        # only called for attributes not set yet: the real client is built at first use
        state = self.__dict__
        if name.startswith("__") or state.get("_jiggler_ready", True) \
                or state.get("_jiggler_connecting") == threading.get_ident():
            raise AttributeError(name)
        self._jiggler_connect()
        return object.__getattribute__(self, name)

    def _jiggler_connect(self) -> None:
        state = self.__dict__
        with state["_jiggler_lock"]:
            if state["_jiggler_ready"]:
                return
            state["_jiggler_connecting"] = threading.get_ident()
            try:
                RedisCluster.__init__(self, **state["_jiggler_make_kwargs"]())
            except BaseException as exc:
                lazy = state.pop("_lazy_state")
                state.clear()
                state.update(lazy, _lazy_state=lazy)  # as built: the next use tries again
                raise _first_connection_error(exc) from exc
            finally:
                state["_jiggler_connecting"] = None
            state["_jiggler_ready"] = True

    @property
    def connected(self) -> bool:
        """Whether the slot map was read (the first command did that)."""
        return self.__dict__.get("_jiggler_ready", False)

    def execute_command(self, *args, **kwargs):
        return _translated(super().execute_command, *args, **kwargs)

    def pipeline(self, transaction=None, shard_hint=None) -> ClusterClientPipeline:
        """A pipeline: ``MULTI``/``EXEC`` (keys of one slot only) with
        ``transaction=True``, else a batch that may span nodes (redis-py's default)."""
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.__class__ = ClusterClientPipeline
        if not transaction:
            pipe._execution_strategy = NoResendPipelineStrategy(pipe)
        return pipe

    def close(self) -> None:
        if self.__dict__.get("_jiggler_ready"):
            super().close()

    def __repr__(self) -> str:
        nodes = self.__dict__.get("_jiggler_description", "")
        return f"<{type(self).__name__}{' ' + nodes if nodes else ''}>"


def _translated(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except ClusterUnavailable:
        raise
    except (RedisClusterUnreachableError, SlotNotCoveredError) as exc:
        raise ClusterUnavailable(str(exc)) from exc


def _first_connection_error(exc: BaseException) -> BaseException:
    """What a failed first connection raises: the credentials error itself, a
    :class:`ClusterUnavailable` when no node answered, else the error as it is."""
    if isinstance(exc, RedisClusterException):
        cause = exc.__cause__
        if isinstance(cause, AuthenticationError) or (
                isinstance(cause, redis.ResponseError)
                and any(word in str(cause) for word in ("NOAUTH", "WRONGPASS", "NOPERM"))):
            return cause
        if isinstance(exc, RedisClusterUnreachableError):
            return ClusterUnavailable(str(exc))
    return exc


def make_cluster_client(parsed: ClusterUrl, *, max_connections: int, socket_timeout: float,
                        pool_timeout: Optional[float], client_name: Optional[str]) -> ClusterClient:
    """The client of the cluster ``parsed`` names (see :func:`connection.make_client`);
    ``max_connections`` is per node."""
    kwargs = dict(
        _connection_kwargs(dict(parsed.options), socket_timeout, client_name),
        retry=RedirectRetry(),
        require_full_coverage=True,
        connection_pool_class=redis.BlockingConnectionPool,
        max_connections=max_connections,
        timeout=pool_timeout,
        username=parsed.username,
        password=parsed.password,
    )
    if parsed.tls:
        kwargs.update(tls_kwargs(parsed.options), ssl=True)

    def make_kwargs() -> dict:
        return dict(kwargs, startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes])

    return ClusterClient(make_kwargs, ",".join(f"{host}:{port}" for host, port in parsed.nodes))

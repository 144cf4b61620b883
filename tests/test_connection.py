"""How jiggler-gevent connects: url forms, TLS, ACL users, Sentinel (real servers).

Every server here is started by the test module on 127.0.0.1 (``devserver``) and
stopped by its PID; certificates are made with ``openssl`` in a temporary directory
that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from urllib.parse import quote

import gevent
import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from jiggler_gevent import connection, devserver
from jiggler_gevent.errors import ConfigError, RedisUnavailable

pytestmark = pytest.mark.timeout(60)

ADMIN_PASSWORD = "admin-pw-1"
WORKER_PASSWORD = "worker-pw-2"
WRONG_PASSWORD = "not-the-password-3"


def started(server):
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def assert_one_line_without(exc: BaseException, *secrets: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for secret in secrets:
        assert secret not in text, text
    return text


# -- urls -------------------------------------------------------------------------------


@pytest.mark.parametrize("url,shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://u:secret@h:1/0", "redis://u:***@h:1/0"),
    ("redis://:secret@h/0", "redis://:***@h/0"),
    ("redis://u@h/0", "redis://u@h/0"),
    ("redis://u:se?cr/et@h/0", "redis://u:***@h/0"),
    ("rediss://u:secret@h/0?ssl_ca_certs=/a@b/ca.pem&ssl_password=secret",
     "rediss://u:***@h/0?ssl_ca_certs=/a@b/ca.pem&ssl_password=***"),
    ("redis://h/0?password=secret", "redis://h/0?password=***"),
    ("unix://:secret@/tmp/redis.sock?db=2", "unix://:***@/tmp/redis.sock?db=2"),
    ("redis+sentinel://u:secret@h1:26379,h2:26380/mymaster/1?sentinel_password=secret",
     "redis+sentinel://u:***@h1:26379,h2:26380/mymaster/1?sentinel_password=***"),
    ("rediss+sentinel://:secret@h1/mymaster?ssl_ca_certs=/ca.pem&ssl_password=secret",
     "rediss+sentinel://:***@h1/mymaster?ssl_ca_certs=/ca.pem&ssl_password=***"),
    ("redis+cluster://u:secret@h1:7000,h2:7001,[::1]:7002",
     "redis+cluster://u:***@h1:7000,h2:7001,[::1]:7002"),
    ("rediss+cluster://u:s@cret@h1?ssl_ca_certs=/ca.pem", "rediss+cluster://u:***@h1?ssl_ca_certs=/ca.pem"),
])
def test_describe_url_hides_every_password(url, shown):
    assert connection.describe_url(url) == shown


def test_parse_sentinel_url():
    parsed = connection.parse_sentinel_url(
        "redis+sentinel://app:p%40ss@s1:26380,[::1]:26381,s3/mymaster/2"
        "?sentinel_password=spw&socket_timeout=2")
    assert parsed.sentinels == (("s1", 26380), ("::1", 26381), ("s3", 26379))
    assert (parsed.service_name, parsed.db) == ("mymaster", 2)
    assert (parsed.username, parsed.password) == ("app", "p@ss")
    assert (parsed.sentinel_username, parsed.sentinel_password) == (None, "spw")
    assert parsed.options == (("socket_timeout", "2"),)
    assert "p@ss" not in repr(parsed) and "spw" not in repr(parsed)
    plain = connection.parse_sentinel_url("redis+sentinel://s1/cache")
    assert (plain.sentinels, plain.service_name, plain.db, plain.password) == \
        ((("s1", 26379),), "cache", 0, None)


@pytest.mark.parametrize("url,mention", [
    ("redis+sentinel://u:secret@s1:26379", "service name"),
    ("redis+sentinel://u:secret@s1:port/mymaster", "port"),
    ("redis+sentinel://u:secret@s1/mymaster/zero", "database"),
    ("redis+sentinel://u:secret@s1/mymaster/0/extra", "path"),
    ("redis+sentinel://u:secret@/mymaster", "no host"),
    ("redis+sentinel://u:secret@s1/mymaster?ssl_ca_certs=/x", "needs a rediss+sentinel://"),
    ("redis+sentinel://u:secret@s1/mymaster?sentinel_ssl=no", "needs a rediss+sentinel://"),
    ("rediss+sentinel://u:secret@s1/mymaster?ssl_ca_certs=/no/such/ca.pem", "no such file"),
    ("rediss+sentinel://u:secret@s1/mymaster?decode_responses=1", "unknown option"),
    ("redis+cluster://u:secret@h1,h2/3", "database 0 only"),
    ("rediss+cluster://u:secret@h1?ssl_min_version=tls1.3", "ssl_min_version"),
    ("redis+cluster://u:secret@h1:7000,h2:7001/1", "database 0 only"),
    ("redis+cluster://u:secret@h1:7000?db=2", "database 0 only"),
    ("redis+cluster://u:secret@h1:port", "port"),
    ("redis+cluster://u:secret@", "no host"),
    ("redis+cluster://u:secret@h1?ssl_ca_certs=/etc/hosts", "needs a rediss+cluster://"),
    ("redis+cluster://u:secret@h1?read_from_replicas=yes", "unknown option 'read_from_replicas'"),
    ("redis+cluster://u:secret@h1?max_connections=3", "unknown option"),
    ("rediss+cluster://u:secret@h1?ssl_ca_certs=/no/such/ca.pem", "no such file"),
    ("redis+cluster://u:secret@h1?socket_timeout=soon", "socket_timeout"),
    ("redis://u:secret@h/0?decode_responses=true", "unknown option 'decode_responses'"),
    ("redis://u:secret@h/0?ssl_ca_certs=/etc/hosts", "needs a rediss://"),
    ("rediss://u:secret@h/0?ssl_ca_certs=/no/such/ca.pem", "no such file"),
    ("rediss://u:secret@h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ("redis://u:secret@h/0?socket_timeout=soon", "socket_timeout"),
    ("http://u:secret@h/0", "must start with"),
])
def test_a_bad_url_is_a_config_error_that_hides_the_password(url, mention):
    with pytest.raises(ConfigError) as info:
        connection.make_client(url)
    assert mention in assert_one_line_without(info.value, "secret")


# -- plain redis:// and unix:// keep their behaviour -----------------------------------


@pytest.mark.parametrize("server", ["redis_server", "redis_cluster"], ids=["plain", "cluster"])
def test_a_url_gives_blocking_pools_without_retries(request, server):
    """A plain url's pool, and each node's pool of a ``redis+cluster://`` url."""
    url = request.getfixturevalue(server).url
    client = connection.make_client(url, max_connections=7, socket_timeout=3,
                                    pool_timeout=0.5, client_name="jiggler-test")
    try:
        connection.ping(client, url)  # a cluster client connects (to every node) at first use
        pools = ([node.redis_connection.connection_pool for node in client.get_primaries()]
                 if connection.is_cluster(client) else [client.connection_pool])
        assert pools
        for pool in pools:
            assert type(pool) is redis.BlockingConnectionPool
            assert (pool.max_connections, pool.timeout) == (7, 0.5)
            kwargs = pool.connection_kwargs
            assert kwargs["socket_timeout"] == 3 and kwargs["socket_connect_timeout"] == 3
            assert kwargs["retry"].get_retries() == 0
            assert kwargs["client_name"] == "jiggler-test"
    finally:
        client.close()


def test_a_unix_socket_url():
    workdir = tempfile.mkdtemp(prefix="jiggler-unix-")
    path = os.path.join(workdir, "redis.sock")
    server = started(devserver.LocalServer(extra_args=("--unixsocket", path)))
    try:
        client = connection.make_client(f"unix://{path}?db=3", max_connections=3)
        try:
            assert type(client.connection_pool) is redis.BlockingConnectionPool
            assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0
            connection.ping(client, f"unix://{path}?db=3")
            client.set("k", "v")
            assert redis.Redis(port=server.port, db=3).get("k") == b"v"
        finally:
            client.close()
        with pytest.raises(ConfigError, match="socket_keepalive"):
            connection.make_client(f"unix://{path}?socket_keepalive=true")
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


# -- TLS --------------------------------------------------------------------------------


def test_tls_with_the_ca_in_the_url(tls_server):
    url = (f"rediss://127.0.0.1:{tls_server.port}/0"
           f"?ssl_cert_reqs=required&ssl_ca_certs={tls_server.tls.ca_cert}")
    client = connection.make_client(url)
    try:
        assert client.connection_pool.connection_class is redis.SSLConnection
        assert client.connection_pool.connection_kwargs["retry"].get_retries() == 0
        connection.ping(client, url)
        client.set("tls", "yes")
        assert client.get("tls") == b"yes"
    finally:
        client.close()


def test_tls_without_trusting_the_ca_fails_with_one_line(tls_server):
    url = f"rediss://127.0.0.1:{tls_server.port}/0"
    client = connection.make_client(url, socket_timeout=2)
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(client, url)
    text = assert_one_line_without(info.value)
    assert "certificate verify failed" in text.lower() and f":{tls_server.port}" in text


def test_plain_redis_to_a_tls_port_fails_with_one_line(tls_server):
    url = f"redis://127.0.0.1:{tls_server.port}/0"
    client = connection.make_client(url, socket_timeout=1)
    started_at = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(client, url)
    assert time.monotonic() - started_at < 5
    assert assert_one_line_without(info.value).startswith("cannot connect to Redis at")


# -- ACL users --------------------------------------------------------------------------


@pytest.fixture
def acl_admin(acl_server):
    client = redis.Redis(port=acl_server.port, password=acl_server.admin_password)
    try:
        yield client
    finally:
        client.close()


def test_acl_user_and_password(acl_server):
    url = f"redis://worker:{acl_server.worker_password}@127.0.0.1:{acl_server.port}/0"
    client = connection.make_client(url)
    try:
        connection.ping(client, url)
        assert client.acl_whoami() in ("worker", b"worker")
    finally:
        client.close()


@pytest.mark.parametrize("credentials", [f"worker:{WRONG_PASSWORD}",
                                         f"nobody:{WRONG_PASSWORD}",
                                         f":{WRONG_PASSWORD}",
                                         ""])
def test_wrong_credentials_are_one_clear_line_after_one_connection(acl_server, acl_admin,
                                                                   credentials):
    url = f"redis://{credentials}{'@' if credentials else ''}127.0.0.1:{acl_server.port}/0"
    client = connection.make_client(url)
    before = connections_received(acl_admin)
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(client, url)
    text = assert_one_line_without(info.value, WRONG_PASSWORD)
    assert "refused our credentials" in text and f"127.0.0.1:{acl_server.port}" in text
    assert connections_received(acl_admin) - before == 1  # no retry of any kind
    client.close()


# -- Sentinel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinels():
    """A master with one replica and one Sentinel, plus a second Sentinel that needs a
    password; the master has an ACL user ``worker``."""
    group = devserver.LocalSentinelGroup("mymaster", sentinels=1).start()
    locked = None
    try:
        master = redis.Redis(port=group.master.port)
        master.execute_command("ACL", "SETUSER", "worker", "on", f">{WORKER_PASSWORD}",
                               "~*", "&*", "+@all")
        master.close()
        locked = started(devserver.LocalServer(sentinel=True, config_lines=[
            f"sentinel monitor mymaster 127.0.0.1 {group.master.port} 1",
            f"requirepass {ADMIN_PASSWORD}"]))
        group.locked_sentinel = locked
        yield group
    finally:
        if locked is not None:
            locked.cleanup()
        group.cleanup()


def test_sentinel_url_reaches_the_master_over_a_blocking_pool(sentinels):
    url = sentinels.url
    client = connection.make_client(url, max_connections=2, pool_timeout=0.3,
                                    client_name="jiggler-sentinel-test")
    try:
        pool = client.connection_pool
        assert isinstance(pool, connection.SentinelBlockingConnectionPool)
        assert isinstance(pool, SentinelConnectionPool)
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.connection_kwargs["retry"].get_retries() == 0
        connection.ping(client, url)
        client.set("via-sentinel", "1")
        assert redis.Redis(port=sentinels.master.port).get("via-sentinel") == b"1"
        assert pool.master_address == ("127.0.0.1", sentinels.master.port)
        names = [c["name"] for c in redis.Redis(port=sentinels.master.port).client_list()]
        assert "jiggler-sentinel-test" in names

        # both connections busy: a third caller waits pool_timeout, then gets an error
        first, second = pool.get_connection(), pool.get_connection()
        started_at = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            pool.get_connection()
        assert 0.25 <= time.monotonic() - started_at < 2
        # ... and a waiting caller gets the connection another one releases
        waiter = gevent.spawn(pool.get_connection)
        gevent.sleep(0.05)
        assert not waiter.ready()
        pool.release(first)
        assert waiter.get(timeout=2) is first
        pool.release(waiter.value)
        pool.release(second)
    finally:
        client.close()


def test_sentinel_url_with_acl_user_db_and_a_dead_sentinel_first(sentinels):
    dead = devserver.free_port()
    url = (f"redis+sentinel://worker:{WORKER_PASSWORD}@127.0.0.1:{dead},"
           f"127.0.0.1:{sentinels.sentinels[0].port}/mymaster/4")
    client = connection.make_client(url)
    try:
        connection.ping(client, url)
        assert client.acl_whoami() in ("worker", b"worker")
        client.set("db4", "x")
        assert redis.Redis(port=sentinels.master.port, db=4).get("db4") == b"x"
    finally:
        client.close()


def test_sentinel_with_a_password(sentinels):
    port = sentinels.locked_sentinel.port
    url = f"redis+sentinel://127.0.0.1:{port}/mymaster/0?sentinel_password={ADMIN_PASSWORD}"
    client = connection.make_client(url)
    try:
        connection.ping(client, url)
    finally:
        client.close()
    url = f"redis+sentinel://127.0.0.1:{port}/mymaster/0?sentinel_password={WRONG_PASSWORD}"
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(connection.make_client(url), url)
    text = assert_one_line_without(info.value, WRONG_PASSWORD)
    assert f"127.0.0.1:{port}" in text and "mymaster" in text


def test_sentinel_wrong_master_password_is_one_line(sentinels):
    url = sentinels.url.replace("redis+sentinel://", f"redis+sentinel://worker:{WRONG_PASSWORD}@")
    admin = redis.Redis(port=sentinels.master.port)
    before = connections_received(admin)
    client = connection.make_client(url)
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(client, url)
    text = assert_one_line_without(info.value, WRONG_PASSWORD)
    assert "refused our credentials" in text and "worker:***@" in text
    assert connections_received(admin) - before == 1
    client.close()
    admin.close()


def test_sentinel_unknown_service_or_no_sentinel_is_one_line(sentinels):
    url = f"redis+sentinel://127.0.0.1:{sentinels.sentinels[0].port}/othermaster/0"
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(connection.make_client(url), url)
    assert "'othermaster'" in assert_one_line_without(info.value)
    assert "does not monitor it" in str(info.value)

    dead = devserver.free_port()
    url = f"redis+sentinel://127.0.0.1:{dead}/mymaster/0"
    started_at = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(connection.make_client(url), url)
    assert time.monotonic() - started_at < 5
    assert f"127.0.0.1:{dead}" in assert_one_line_without(info.value)


def test_parse_a_tls_sentinel_url():
    parsed = connection.parse_sentinel_url(
        "rediss+sentinel://s1,s2:26380/mymaster?ssl_cert_reqs=none&sentinel_ssl=no")
    assert (parsed.tls, parsed.sentinel_tls) == (True, False)
    assert parsed.options == (("ssl_cert_reqs", "none"),)
    both = connection.parse_sentinel_url("rediss+sentinel://s1/mymaster/2")
    assert (both.tls, both.sentinel_tls, both.db) == (True, True, 2)
    plain = connection.parse_sentinel_url("redis+sentinel://s1/mymaster")
    assert (plain.tls, plain.sentinel_tls) == (False, False)


@pytest.mark.parametrize("sentinel_tls", [True, False], ids=["tls-sentinels", "plain-sentinels"])
def test_tls_to_the_master_and_to_the_sentinels_or_to_the_master_only(tls_files, sentinel_tls):
    """Master, replica and Sentinels serve TLS only (``rediss+sentinel://``), or the
    Sentinels listen on a plain port and only the data nodes need TLS
    (``sentinel_ssl=no``)."""
    with devserver.LocalSentinelGroup("tlsmaster", tls=tls_files,
                                      sentinel_tls=sentinel_tls) as group:
        url = group.url
        assert url.startswith("rediss+sentinel://")
        client = connection.make_client(url, client_name="jiggler-tls-sentinel")
        try:
            connection.ping(client, url)
            client.set("over-tls", "1")
            master = devserver.admin_client(group.master)
            assert master.get("over-tls") == b"1"
            assert "jiggler-tls-sentinel" in [c["name"] for c in master.client_list()]
            master.close()
            pool = client.connection_pool
            assert issubclass(pool.connection_class, redis.SSLConnection)
            sentinel_class = pool.sentinel_manager.sentinels[0].connection_pool.connection_class
            assert issubclass(sentinel_class, redis.SSLConnection) is sentinel_tls
            assert pool.connection_kwargs["retry"].get_retries() == 0
        finally:
            client.close()
        # the same Sentinels without trusting the CA: one clear line
        untrusted = url.replace(f"ssl_ca_certs={quote(tls_files.ca_cert)}", "ssl_cert_reqs=required")
        with pytest.raises(RedisUnavailable) as info:
            connection.ping(connection.make_client(untrusted, socket_timeout=2), untrusted)
        text = assert_one_line_without(info.value)
        assert "certificate verify failed" in text.lower(), text
        # plain redis+sentinel:// to TLS Sentinels fails fast with one line too
        if sentinel_tls:
            plain = url.split("?", 1)[0].replace("rediss+", "redis+")
            started_at = time.monotonic()
            with pytest.raises(RedisUnavailable):
                connection.ping(connection.make_client(plain, socket_timeout=1), plain)
            assert time.monotonic() - started_at < 10


def test_sentinel_client_follows_a_failover():
    """After SENTINEL FAILOVER the pool notices the new master within about a second
    (the old one keeps accepting writes for ~10 s until Sentinel demotes it)."""
    with devserver.LocalSentinelGroup("failme", sentinels=1) as group:
        client = connection.make_client(group.url)
        try:
            client.set("before", "1")
            old, new = group.master.port, group.replicas[0].port
            redis.Redis(port=group.sentinels[0].port).execute_command(
                "SENTINEL", "FAILOVER", "failme")
            deadline = time.monotonic() + 15
            while client.connection_pool.master_address != ("127.0.0.1", new):
                assert time.monotonic() < deadline, "the client never moved to the new master"
                client.incr("writes")
                time.sleep(0.05)
            client.set("after", "1")
            assert redis.Redis(port=new).get("after") == b"1"
            assert redis.Redis(port=new).get("before") == b"1"
            assert group.master_port() == new and old != new
        finally:
            client.close()

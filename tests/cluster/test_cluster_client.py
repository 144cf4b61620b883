"""The ``redis+cluster://`` client against a real local Redis Cluster (issue #6).

Routing (MOVED and ASK redirects across nodes), the key layout (one slot per queue,
the queues spread over the nodes), scripts and MULTI in one slot, cross-slot calls
refused, and the no-blind-retry policy: a command whose reply was lost (a timeout
while the node is busy) is never sent a second time, alone or in a pipeline.
"""

from __future__ import annotations

import logging
import time

import gevent
import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import CrossSlotTransactionError, RedisClusterException
from redis.retry import Retry

from jiggler_gevent import cli, connection, devserver
from jiggler_gevent.cluster import ClusterClient, ClusterUnavailable, NoResendPipelineStrategy
from jiggler_gevent.errors import ConfigError, RedisUnavailable
from jiggler_gevent.keys import Keys

from .conftest import flush_cluster, start_cluster

pytestmark = pytest.mark.timeout(90)

KEYS = Keys()
WORKER_PASSWORD = "cl-worker-pw-1"
WRONG_PASSWORD = "cl-wrong-pw-2"


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def key_on(cluster: devserver.LocalCluster, node: devserver.LocalServer, prefix: str) -> str:
    """A key (``<prefix><n>``, no hash tag) whose slot ``node`` serves now."""
    for n in range(100_000):
        key = f"{prefix}{n}"
        first_last = [r for r, m in zip(cluster.slot_ranges(), cluster.masters) if m is node]
        if first_last and first_last[0][0] <= slot_of(key) <= first_last[0][1] \
                and cluster.slot_owner(slot_of(key)) is node:
            return key
    raise AssertionError(f"no key found on port {node.port}")


def node_client(node: devserver.LocalServer) -> redis.Redis:
    return devserver.admin_client(node)


def stored_on(cluster: devserver.LocalCluster, key: str) -> list[int]:
    """The ports of the primaries that hold ``key`` (asked directly, no redirects; with
    ASKING first, so a node importing the slot answers too)."""
    ports = []
    for node in cluster.masters:
        client = node_client(node)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.exists(key)
            _, found = pipe.execute(raise_on_error=False)
            if found is True or (isinstance(found, int) and found > 0):  # else MOVED/ASK
                ports.append(node.port)
        finally:
            client.close()
    return ports


# -- the client and its policies ------------------------------------------------------------


def test_a_cluster_url_gives_a_lazy_cluster_client_with_our_policies(local_cluster):
    client = connection.make_client(local_cluster.url, max_connections=7, socket_timeout=3,
                                    pool_timeout=0.5, client_name="jiggler-cluster-test")
    try:
        assert isinstance(client, ClusterClient) and isinstance(client, RedisCluster)
        assert connection.is_cluster(client)
        assert not client.connected  # built without a round trip
        connection.ping(client, local_cluster.url)
        assert client.connected and connection.is_cluster(client.pipeline())
        assert client.retry.get_retries() == 0  # no command is sent twice
        assert {n.name for n in client.get_primaries()} == \
            {f"127.0.0.1:{m.port}" for m in local_cluster.masters}
        # each node's pool: test_connection.py::test_a_url_gives_blocking_pools_without_retries
        for master in local_cluster.masters:  # a key on each node: every node was used
            client.set(key_on(local_cluster, master, "policy-"), "1")
        for master in local_cluster.masters:
            admin = node_client(master)
            assert "jiggler-cluster-test" in [c["name"] for c in admin.client_list()]
            admin.close()
    finally:
        client.close()


def test_parse_cluster_url():
    parsed = connection.parse_cluster_url(
        "rediss+cluster://app:p%40ss@n1:7000,[::1]:7001,n3/0?socket_timeout=2&ssl_cert_reqs=none")
    assert parsed.nodes == (("n1", 7000), ("::1", 7001), ("n3", 6379))
    assert (parsed.tls, parsed.username, parsed.password) == (True, "app", "p@ss")
    assert parsed.options == (("socket_timeout", "2"), ("ssl_cert_reqs", "none"))
    assert "p@ss" not in repr(parsed)
    plain = connection.parse_cluster_url("redis+cluster://:pw@n1")
    assert (plain.nodes, plain.tls, plain.username, plain.password) == \
        ((("n1", 6379),), False, None, "pw")
    assert connection.describe_url("redis+cluster://u:pw@n1:1,n2:2?client_name=x") == \
        "redis+cluster://u:***@n1:1,n2:2?client_name=x"


def test_an_unreachable_cluster_fails_at_first_use_with_a_connection_error():
    url = f"redis+cluster://127.0.0.1:{devserver.free_port()},127.0.0.1:{devserver.free_port()}"
    client = connection.make_client(url, socket_timeout=1)  # no round trip: no error yet
    script = client.register_script("return 1")  # hashing a script needs no connection
    assert script.sha and not client.connected
    with pytest.raises(ClusterUnavailable) as info:
        client.get("x")
    assert isinstance(info.value, redis.ConnectionError)  # what the worker's loops catch
    with pytest.raises(redis.ConnectionError):  # tried again, not stuck half built
        client.get("x")
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(client, url)
    assert str(info.value).startswith("cannot connect to Redis at redis+cluster://")
    client.close()


def test_a_cluster_url_to_a_plain_server_and_a_plain_url_to_a_cluster_node(redis_url,
                                                                           local_cluster):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    url = f"redis+cluster://127.0.0.1:{port}"
    with pytest.raises(ConfigError, match="not in cluster mode"):
        connection.ping(connection.make_client(url), url)
    url = f"redis://127.0.0.1:{local_cluster.masters[0].port}/0"
    client = connection.make_client(url)
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        connection.ping(client, url)
    client.close()


def test_acl_user_on_every_node_and_a_wrong_password_is_one_clear_line(local_cluster):
    for node in local_cluster.masters:
        admin = node_client(node)
        admin.execute_command("ACL", "SETUSER", "worker", "on", f">{WORKER_PASSWORD}",
                              "~*", "&*", "+@all")
        admin.close()
    hosts = ",".join(f"127.0.0.1:{m.port}" for m in local_cluster.masters)
    url = f"redis+cluster://worker:{WORKER_PASSWORD}@{hosts}"
    client = connection.make_client(url)
    try:
        connection.ping(client, url)
        whoami = client.acl_whoami(target_nodes=RedisCluster.PRIMARIES)
        assert set(dict(whoami).values() if isinstance(whoami, dict) else [whoami]) <= \
            {"worker", b"worker"}
    finally:
        client.close()
    url = f"redis+cluster://worker:{WRONG_PASSWORD}@{hosts}"
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(connection.make_client(url), url)
    text = str(info.value)
    assert "\n" not in text and WRONG_PASSWORD not in text and "worker:***@" in text
    assert "refused our credentials" in text, text


def test_eviction_policy_is_checked_on_every_primary(cluster_client, local_cluster, caplog):
    odd = local_cluster.masters[1]
    admin = node_client(odd)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        policies = connection.config_values(cluster_client, "maxmemory-policy")
        assert policies == {f"127.0.0.1:{m.port}": ("allkeys-lru" if m is odd else "noeviction")
                            for m in local_cluster.masters}
        with caplog.at_level(logging.WARNING, logger=cli.log.name):
            cli._warn_about_eviction(cluster_client)
        warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(warnings) == 1 and f"127.0.0.1:{odd.port}" in warnings[0], warnings
        assert "allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


# -- routing ---------------------------------------------------------------------------------


def test_commands_reach_the_node_of_their_slot(cluster_client, local_cluster):
    for master in local_cluster.masters:
        key = key_on(local_cluster, master, "route-")
        cluster_client.set(key, master.port)
        assert cluster_client.get(key) == str(master.port).encode()
        assert stored_on(local_cluster, key) == [master.port]


def test_a_moved_slot_is_followed_by_commands_and_by_a_multi(cluster_client, local_cluster):
    source = local_cluster.masters[0]
    target = local_cluster.masters[1]
    key = key_on(local_cluster, source, "moving-")
    slot = slot_of(key)
    cluster_client.rpush(key, "before")  # the client's slot map now says: source
    assert cluster_client.get_node_from_key(key).port == source.port
    local_cluster.move_slot(slot, target)
    try:
        # the client still sends to the source, which answers MOVED; the client follows
        assert cluster_client.rpush(key, "after") == 2
        assert stored_on(local_cluster, key) == [target.port]
        assert cluster_client.get_node_from_key(key).port == target.port

        local_cluster.move_slot(slot, source)  # and back: now a MULTI meets the MOVED
        with cluster_client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, "in-multi")
            pipe.llen(key)
            assert pipe.execute() == [3, 3]  # refused as a whole, sent again after the map refresh
        assert stored_on(local_cluster, key) == [source.port]
        assert cluster_client.lrange(key, 0, -1) == [b"before", b"after", b"in-multi"]
    finally:
        local_cluster.move_slot(slot, source)


def test_an_ask_redirect_during_a_migration_is_followed(cluster_client, local_cluster):
    source = local_cluster.masters[2]
    target = local_cluster.masters[0]
    old = key_on(local_cluster, source, "ask-old-")
    slot = slot_of(old)
    new = next(f"ask-new-{n}" for n in range(1_000_000) if slot_of(f"ask-new-{n}") == slot)
    cluster_client.set(old, "stays-on-source")
    local_cluster.move_slot(slot, target, finish=False)  # migrating, keys still on the source
    try:
        assert cluster_client.get(old) == b"stays-on-source"  # the source still has it
        cluster_client.set(new, "created-on-target")  # the source answers ASK: the target gets it
        assert stored_on(local_cluster, new) == [target.port]
        assert stored_on(local_cluster, old) == [source.port]
    finally:
        local_cluster.move_slot(slot, target)  # finish: the keys move too
        local_cluster.move_slot(slot, source)
    assert cluster_client.get(new) == b"created-on-target"
    assert cluster_client.get(old) == b"stays-on-source"


# -- the key layout on a cluster ---------------------------------------------------------------


def test_every_key_of_a_queue_is_in_one_slot_and_the_global_keys_in_another(cluster_client):
    queue = KEYS.queue_keys("mail")
    queue_keys = [queue.pending, queue.quarantine, queue.scheduled, queue.retries, queue.dead,
                  queue.periodic_last, queue.recoveries + "abc", queue.in_progress("p1"),
                  queue.lease("p1")]
    slots = {cluster_client.cluster_keyslot(k) for k in queue_keys}  # the server's own answer
    assert slots == {slot_of(queue.pending)}
    global_keys = [KEYS.queues, KEYS.processes, KEYS.reservations, KEYS.processed,
                   KEYS.failures, KEYS.periodic_schedules]
    assert {cluster_client.cluster_keyslot(k) for k in global_keys} == {slot_of(KEYS.queues)}
    assert slot_of(KEYS.queues) not in slots


def test_queues_spread_over_the_nodes(cluster_client, local_cluster):
    names = ["default", "mail", "critical", "low", "reports", "billing", "images", "search"]
    slots = {name: slot_of(KEYS.queue(name)) for name in names}
    assert len(set(slots.values())) == len(names)  # a slot of its own for each queue
    nodes = {name: local_cluster.slot_owner(slot).port for name, slot in slots.items()}
    assert nodes["default"] != nodes["mail"]  # the two queues of the end-to-end test
    assert set(nodes.values()) == {m.port for m in local_cluster.masters}, nodes
    for name in names:  # and the data really lands there
        cluster_client.lpush(KEYS.queue(name), "job")
        assert stored_on(local_cluster, KEYS.queue(name)) == [nodes[name]]


def test_a_script_on_the_keys_of_one_queue_runs_on_that_queue_node(cluster_client, local_cluster):
    move = cluster_client.register_script(
        "local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')\n"
        "redis.call('SET', KEYS[3], ARGV[1], 'EX', 10)\n"
        "return job")
    for name in ("default", "mail", "critical"):
        queue = KEYS.queue_keys(name)
        cluster_client.lpush(queue.pending, f"job-of-{name}")
        assert move(keys=[queue.pending, queue.in_progress("p1"), queue.lease("p1")],
                    args=["1"]) == f"job-of-{name}".encode()
        assert cluster_client.lrange(queue.in_progress("p1"), 0, -1) == [f"job-of-{name}".encode()]
        node = local_cluster.slot_owner(slot_of(queue.pending)).port
        assert stored_on(local_cluster, queue.in_progress("p1")) == [node]
    # after SCRIPT FLUSH on every node the next call loads the script again (NOSCRIPT)
    cluster_client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
    queue = KEYS.queue_keys("mail")
    cluster_client.lpush(queue.pending, "again")
    assert move(keys=[queue.pending, queue.in_progress("p1"), queue.lease("p1")],
                args=["1"]) == b"again"


def test_a_cross_slot_script_call_or_multi_is_refused(cluster_client):
    script = cluster_client.register_script("return #KEYS")
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=[KEYS.queue("default"), KEYS.queue("mail")])
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=[KEYS.queue("mail"), KEYS.queues])
    with pytest.raises((CrossSlotTransactionError, RedisClusterException)), \
            cluster_client.pipeline(transaction=True) as pipe:
        pipe.lpush(KEYS.queue("default"), "a")
        pipe.lpush(KEYS.queue("mail"), "b")
        pipe.execute()
    assert cluster_client.llen(KEYS.queue("default")) == 0  # nothing ran
    assert cluster_client.llen(KEYS.queue("mail")) == 0


def test_a_multi_in_one_queue_slot_and_a_batch_across_slots(cluster_client):
    mail = KEYS.queue_keys("mail")
    with cluster_client.pipeline(transaction=True) as pipe:
        pipe.lpush(mail.pending, "a", "b")
        pipe.zadd(mail.retries, {"c": 1})
        pipe.lmove(mail.pending, mail.in_progress("p1"), "RIGHT", "LEFT")
        pipe.llen(mail.pending)
        assert pipe.execute() == [2, 1, b"a", 1]
    with cluster_client.pipeline(transaction=False) as pipe:  # several nodes, one batch
        for name in ("default", "mail", "critical", "low"):
            pipe.llen(KEYS.queue(name))
        pipe.sadd(KEYS.queues, "default", "mail")
        assert pipe.execute() == [0, 1, 0, 0, 2]
    assert type(cluster_client.pipeline(transaction=False)._execution_strategy) \
        is NoResendPipelineStrategy


# -- no command is sent twice ------------------------------------------------------------------


# A node is kept busy (DEBUG SLEEP) for BUSY_S; a client with a socket timeout of
# TIMEOUT_S sends a command 0.1 s into that sleep: its reply is lost at 1.1 s, and a
# command sent again then (on a new connection) runs when the node wakes at 1.5 s,
# 0.4 s before that second attempt would time out too.
BUSY_S = 1.5
TIMEOUT_S = 1.0


def busy(node: devserver.LocalServer, seconds: float = BUSY_S) -> gevent.Greenlet:
    """Block ``node`` for ``seconds`` (DEBUG SLEEP from a connection of its own)."""
    admin = devserver.admin_client(node, timeout=seconds + 5)

    def sleep():
        try:
            admin.execute_command("DEBUG", "SLEEP", seconds)
        finally:
            admin.close()

    greenlet = gevent.spawn(sleep)
    gevent.sleep(0.1)  # the server is asleep now
    return greenlet


def plain_redis_py_cluster(local_cluster, socket_timeout: float) -> RedisCluster:
    """redis-py's own cluster client, told not to retry: the control group."""
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", m.port)
                                       for m in local_cluster.masters],
                        retry=Retry(NoBackoff(), 0), socket_timeout=socket_timeout)


def test_a_command_whose_reply_is_lost_is_not_sent_again(cluster_client, local_cluster):
    node = local_cluster.masters[0]
    key = key_on(local_cluster, node, "once-")
    client = connection.make_client(local_cluster.url, socket_timeout=TIMEOUT_S)
    try:
        client.ping()
        sleeper = busy(node)
        with pytest.raises(redis.TimeoutError):
            client.rpush(key, "job")
        sleeper.join()
        assert cluster_client.llen(key) == 1  # ran once, when the node woke up
        client.rpush(key, "next")  # and the client works again
        assert cluster_client.llen(key) == 2
    finally:
        client.close()


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "redis-py-control"])
def test_a_pipeline_whose_reply_is_lost_sends_nothing_twice(cluster_client, local_cluster, ours):
    """redis-py's cluster pipeline re-sends, one by one, the commands of a node whose
    reply was lost, whatever its retry says (the control shows it); ours does not."""
    node, other = local_cluster.masters[0], local_cluster.masters[1]
    key, other_key = key_on(local_cluster, node, "pipe-"), key_on(local_cluster, other, "pipe-")
    client = (connection.make_client(local_cluster.url, socket_timeout=TIMEOUT_S) if ours
              else plain_redis_py_cluster(local_cluster, TIMEOUT_S))
    try:
        client.ping()
        sleeper = busy(node)
        with client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, "job")
            pipe.rpush(other_key, "job")
            if ours:
                with pytest.raises(redis.TimeoutError):
                    pipe.execute()
            else:
                assert pipe.execute() == [2, 1]  # the second RPUSH answered: no error at all
        sleeper.join()
        time.sleep(0.1)
        sent = cluster_client.llen(key)
        assert cluster_client.llen(other_key) == 1
        if ours:
            assert sent == 1
        else:
            assert sent == 2, "redis-py no longer re-sends: NoResendPipelineStrategy may go"
    finally:
        client.close()


def test_a_redirected_command_in_a_pipeline_is_still_sent_again(cluster_client, local_cluster):
    source, target = local_cluster.masters[1], local_cluster.masters[2]
    key = key_on(local_cluster, source, "pipe-moved-")
    cluster_client.rpush(key, "a")  # the map says: source
    local_cluster.move_slot(slot_of(key), target)
    try:
        with cluster_client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, "b")
            pipe.llen(KEYS.queue("mail"))
            assert pipe.execute() == [2, 0]  # MOVED: nothing ran, so it was sent to the target
        assert cluster_client.lrange(key, 0, -1) == [b"a", b"b"]
    finally:
        local_cluster.move_slot(slot_of(key), source)


def test_a_multi_whose_reply_is_lost_is_not_sent_again(cluster_client, local_cluster):
    node = local_cluster.masters[2]
    key = key_on(local_cluster, node, "multi-")
    client = connection.make_client(local_cluster.url, socket_timeout=TIMEOUT_S)
    try:
        with client.pipeline(transaction=True) as pipe:  # a connection to the node, pooled
            pipe.rpush(key, "warm-up")
            pipe.execute()
        sleeper = busy(node)
        with pytest.raises(redis.TimeoutError), client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, "job")
            pipe.execute()
        sleeper.join()
        assert cluster_client.lrange(key, 0, -1) == [b"warm-up", b"job"]
    finally:
        client.close()


# -- a cluster losing a node ---------------------------------------------------------------------


def test_ping_checks_every_primary_and_the_client_follows_a_failover(tmp_path):
    """One primary killed: ping names it; after its replica took over, commands work
    again through the same client (none of them sent twice)."""
    cluster = start_cluster(masters=3, replicas=1, node_timeout_ms=1000)
    try:
        client = connection.make_client(cluster.url, socket_timeout=1)
        connection.ping(client, cluster.url)
        victim = cluster.masters[1]
        key = key_on(cluster, victim, "failover-")
        client.rpush(key, "before")
        admin = devserver.admin_client(victim)
        assert admin.wait(1, 2000) == 1  # the replica has it
        admin.close()
        victim.stop()  # SIGTERM to that process (ours)
        with pytest.raises(RedisUnavailable) as info:
            connection.ping(connection.make_client(cluster.url, socket_timeout=1), cluster.url)
        assert f"127.0.0.1:{victim.port}" in str(info.value)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.rpush(key, "after")
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                assert time.monotonic() < deadline, f"the replica never took over: {exc}"
                time.sleep(0.2)
        assert client.lrange(key, 0, -1) == [b"before", b"after"]
        assert client.get_node_from_key(key).port != victim.port
        client.close()
    finally:
        cluster.cleanup()


# -- TLS -----------------------------------------------------------------------------------------


def test_a_tls_cluster(tls_cluster):
    url = tls_cluster.url
    assert url.startswith("rediss+cluster://") and "ssl_ca_certs=" in url
    client = connection.make_client(url)
    try:
        connection.ping(client, url)
        for node in client.get_primaries():
            assert node.redis_connection.connection_pool.connection_class is redis.SSLConnection
        for name in ("default", "mail", "critical"):
            client.lpush(KEYS.queue(name), "job")
            assert client.llen(KEYS.queue(name)) == 1
        flush_cluster(client)
    finally:
        client.close()


def test_a_tls_cluster_without_trusting_its_ca_is_one_line(tls_cluster):
    url = tls_cluster.url.split("?", 1)[0]
    with pytest.raises(RedisUnavailable) as info:
        connection.ping(connection.make_client(url, socket_timeout=2), url)
    text = str(info.value)
    assert "\n" not in text and "certificate verify failed" in text.lower(), text

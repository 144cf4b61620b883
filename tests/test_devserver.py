"""The throwaway server used by tests, the demo and benchmarks."""

from __future__ import annotations

import os

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from jiggler_gevent import devserver


def client_of(server) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5,
                       retry=Retry(NoBackoff(), 0))


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_server_binary_honours_the_override(monkeypatch):
    monkeypatch.setenv("JIGGLER_REDIS_SERVER", "/opt/custom/redis-server")
    assert devserver.find_server_binary() == "/opt/custom/redis-server"


def test_find_server_binary_finds_an_executable(monkeypatch):
    monkeypatch.delenv("JIGGLER_REDIS_SERVER", raising=False)
    path = devserver.find_server_binary()
    assert os.path.isabs(path) and os.access(path, os.X_OK)
    assert os.path.basename(path) in ("redis-server", "valkey-server")


def test_free_port_is_a_loopback_port():
    assert 0 < devserver.free_port() < 65536


def test_a_server_starts_answers_and_stop_ends_exactly_that_process():
    first = devserver.LocalServer().start()
    second = devserver.LocalServer().start()
    try:
        assert first.port != second.port
        assert first.url == f"redis://127.0.0.1:{first.port}/0"
        assert client_of(first).ping() and client_of(second).ping()
        assert client_of(first).execute_command("DEBUG", "SLEEP", "0")  # debug is enabled
        pid = first.process.pid
        first.stop()
        assert first.process is None and not is_running(pid)
        with pytest.raises(redis.ConnectionError):
            client_of(first).ping()
        assert client_of(second).ping()  # untouched
        first.stop()  # a second stop is harmless
    finally:
        first.cleanup()
        second.cleanup()
    assert not os.path.exists(first.dir)


def test_context_manager_cleans_up():
    with devserver.LocalServer() as server:
        pid = server.process.pid
        assert client_of(server).ping()
    assert not is_running(pid) and not os.path.exists(server.dir)


def test_session_server_is_separate_from_fresh_server(redis_server, fresh_server):
    assert redis_server.url != fresh_server.url
    fresh_server.stop()
    assert redis.Redis.from_url(redis_server.url).ping()


def test_non_persistent_restart_loses_data(fresh_server):
    client_of(fresh_server).set("key", "value")
    fresh_server.restart()
    assert client_of(fresh_server).get("key") is None


@pytest.mark.fresh_server(persistent=True)
def test_persistent_restart_keeps_data(fresh_server):
    client = client_of(fresh_server)
    client.set("key", "value")
    client.lpush("jiggler:list:default", "a", "b")
    pid, port = fresh_server.process.pid, fresh_server.port
    fresh_server.restart()
    assert fresh_server.process.pid != pid and not is_running(pid)
    assert fresh_server.port == port
    client = client_of(fresh_server)
    assert client.get("key") == b"value"
    assert client.lrange("jiggler:list:default", 0, -1) == [b"b", b"a"]


@pytest.mark.fresh_server(extra_args=("--maxmemory", "7mb", "--maxmemory-policy", "noeviction"))
def test_extra_args_reach_the_server(fresh_server):
    config = client_of(fresh_server).config_get("maxmemory*")
    assert config["maxmemory"] == str(7 * 1024 * 1024)
    assert config["maxmemory-policy"] == "noeviction"


def test_a_server_that_cannot_start_raises_with_the_reason(fresh_server):
    busy = devserver.LocalServer(port=fresh_server.port)
    try:
        with pytest.raises(RuntimeError, match="exited at start|did not answer"):
            busy.start()
    finally:
        busy.cleanup()
    assert client_of(fresh_server).ping()  # the server on that port was not touched


def test_a_binary_that_exits_at_once_raises(monkeypatch, tmp_path):
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'bad config' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JIGGLER_REDIS_SERVER", str(fake))
    server = devserver.LocalServer()
    try:
        assert server.binary == str(fake)
        with pytest.raises(RuntimeError, match="bad config"):
            server.start()
    finally:
        server.cleanup()


# -- a local Redis Cluster ------------------------------------------------------------------


def test_a_local_cluster_serves_every_slot_and_cleanup_stops_exactly_its_processes():
    other = devserver.LocalServer().start()  # a server that is not part of the cluster
    try:
        with devserver.LocalCluster(masters=3) as cluster:
            pids = [node.process.pid for node in cluster.nodes]
            assert len(set(node.port for node in cluster.nodes)) == 3
            assert cluster.url == "redis+cluster://" + ",".join(
                f"127.0.0.1:{node.port}" for node in cluster.masters)
            assert cluster.slot_ranges() == [(0, 5460), (5461, 10921), (10922, 16383)]
            for node in cluster.nodes:
                client = client_of(node)
                assert "cluster_state:ok" in client.execute_command("CLUSTER", "INFO").decode()
                assert devserver._slot_map(client) == [
                    (first, last, master.port)
                    for (first, last), master in zip(cluster.slot_ranges(), cluster.masters)]
                client.close()
            assert cluster.slot_owner(0) is cluster.masters[0]
            assert cluster.slot_owner(16383) is cluster.masters[2]
            # move a slot with a key in it, and back
            client = client_of(cluster.masters[0])
            key = next(f"k{n}" for n in range(1000) if key_slot(f"k{n}".encode()) <= 5460)
            client.set(key, "v")
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            assert cluster.slot_owner(slot) is cluster.masters[0]
            assert cluster.move_slot(slot, cluster.masters[1]) is cluster.masters[0]
            assert cluster.slot_owner(slot) is cluster.masters[1]
            assert client_of(cluster.masters[1]).get(key) == b"v"
            cluster.move_slot(slot, cluster.masters[0])
            assert client.get(key) == b"v"
            client.close()
        assert not any(is_running(pid) for pid in pids)
        assert not any(os.path.exists(node.dir) for node in cluster.nodes)
        assert client_of(other).ping()  # untouched
    finally:
        other.cleanup()


def test_a_local_cluster_with_replicas():
    with devserver.LocalCluster(masters=2, replicas=1) as cluster:
        assert len(cluster.nodes) == 4 and len(cluster.replicas) == 2
        for index, replica in enumerate(cluster.replicas):
            info = client_of(replica).info("replication")
            assert info["role"] == "slave" and info["master_link_status"] == "up"
            assert info["master_port"] == cluster.masters[index].port
        assert cluster.url.count(",") == 1  # the url lists the primaries


def test_a_local_cluster_refuses_a_silly_size():
    with pytest.raises(ValueError):
        devserver.LocalCluster(masters=0)

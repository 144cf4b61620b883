"""Worker settings: parse_queues, Config defaults and validate(), the default Redis url."""

from __future__ import annotations

import dataclasses

import pytest

from jiggler_gevent.config import (
    AT_LEAST_ONCE,
    AT_MOST_ONCE,
    MAX_QUEUE_WEIGHT,
    Config,
    default_redis_url,
    parse_queues,
)
from jiggler_gevent.errors import ConfigError

# -- parse_queues ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("default", (("default", 1),)),
        ("critical:3,default", (("critical", 3), ("default", 1))),
        (" a , b:2 ,, c ", (("a", 1), ("b", 2), ("c", 1))),
        (["mail:5", "default"], (("mail", 5), ("default", 1))),
        (("x.y-z_1",), (("x.y-z_1", 1),)),
        (f"big:{MAX_QUEUE_WEIGHT}", (("big", MAX_QUEUE_WEIGHT),)),
        ("a:1", (("a", 1),)),
    ],
)
def test_parse_queues(spec, expected):
    assert parse_queues(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "", " , ,", [], "a,a", "a:2,b,a:3",  # empty, duplicates
        "a*", "a b", "a\nb", "{a}", "q" * 129, "a/b:x",  # names
        "a:0", "a:-1", "a:1.5", "a:x", "a:", "a: 2", f"a:{MAX_QUEUE_WEIGHT + 1}",  # weights
        "a:1:2", ":3",
    ],
    ids=repr,
)
def test_parse_queues_refuses(spec):
    with pytest.raises(ConfigError):
        parse_queues(spec)


@pytest.mark.parametrize("spec", ["a:²", "a:٣"])
def test_parse_queues_refuses_non_ascii_weights(spec):
    with pytest.raises(ConfigError):
        parse_queues(spec)


def test_parse_queues_error_names_the_bad_item():
    with pytest.raises(ConfigError, match="'mail'.*twice"):
        parse_queues("mail,default,mail")
    with pytest.raises(ConfigError, match="weight"):
        parse_queues("mail:lots")


def test_strictness_follows_the_weights_unless_set():
    assert Config(queues="a,b").is_strict
    assert not Config(queues="a:2,b").is_strict
    assert not Config(queues="a,b", strict=False).is_strict
    assert Config(queues="a:2,b", strict=True).is_strict


def test_config_parses_a_queue_string_and_lists_the_names():
    config = Config(queues="critical:3,default")
    assert config.queues == (("critical", 3), ("default", 1))
    assert config.queue_names == ["critical", "default"]


def test_config_parses_a_list_of_queue_specs():
    assert Config(queues=["ab", "cd"]).queue_names == ["ab", "cd"]
    assert Config(queues=["critical:2", "default"]).queues == (("critical", 2), ("default", 1))


# -- Config defaults and validate -----------------------------------------------------------


def test_defaults_are_valid():
    config = Config(redis_url="redis://127.0.0.1:1/0")
    assert config.validate() is config
    assert config.mode == AT_LEAST_ONCE
    assert config.queues == (("default", 1),)
    assert config.fetch_timeout < config.socket_timeout
    assert config.hostname


def test_config_is_frozen_and_replace_makes_a_new_one():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.concurrency = 5
    other = config.replace(concurrency=5, mode=AT_MOST_ONCE)
    assert other.concurrency == 5 and config.concurrency == 10
    assert other.validate().mode == AT_MOST_ONCE


def test_heartbeat_ttl_is_three_intervals_and_at_least_two_seconds():
    assert Config(stats_interval=5).heartbeat_ttl == 15
    assert Config(stats_interval=1).heartbeat_ttl == 3
    assert Config(stats_interval=0.2).heartbeat_ttl == 2
    assert Config(stats_interval=60).heartbeat_ttl == 180


BAD_VALUES = [
    ("concurrency", 0), ("concurrency", -1), ("concurrency", 1.5), ("concurrency", "10"),
    ("concurrency", True), ("concurrency", 10_001), ("concurrency", None),
    ("max_dead_jobs", 0), ("max_dead_jobs", -5), ("max_dead_jobs", 10**10),
    ("mode", "exactly-once"), ("mode", ""), ("mode", None), ("mode", "AT-LEAST-ONCE"),
    ("job_timeout", 0), ("job_timeout", -1), ("job_timeout", float("nan")),
    ("job_timeout", "5"),
    ("queues", (("a", 0),)), ("queues", (("a:b", 1),)), ("queues", (("a", 1), ("a", 2))),
    ("queues", ()),
]
for _field in ("timeout", "poll_interval", "stats_interval", "dead_timeout", "fetch_timeout",
               "socket_timeout"):
    BAD_VALUES += [(_field, 0), (_field, -1), (_field, -0.5), (_field, float("nan")),
                   (_field, float("inf")), (_field, "5"), (_field, None), (_field, True)]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=repr)
def test_validate_refuses(field, value):
    config = Config(redis_url="redis://127.0.0.1:1/0")
    changes = {field: value}
    if field == "fetch_timeout" and value == float("inf"):
        changes["socket_timeout"] = float("inf")
    with pytest.raises(ConfigError):
        config.replace(**changes).validate()


@pytest.mark.parametrize("field", ["concurrency", "mode", "timeout", "poll_interval",
                                   "fetch_timeout", "job_timeout"])
def test_validate_names_the_bad_option(field):
    value = {"mode": "sometimes"}.get(field, 0)
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        Config().replace(**{field: value}).validate()


@pytest.mark.parametrize("fetch, socket", [(5.0, 5.0), (6, 5), (1.0, 0.5)])
def test_fetch_timeout_must_be_below_socket_timeout(fetch, socket):
    with pytest.raises(ConfigError, match="fetch-timeout"):
        Config(fetch_timeout=fetch, socket_timeout=socket).validate()


def test_small_positive_values_are_accepted():
    Config(concurrency=1, timeout=0.1, poll_interval=0.05, stats_interval=0.5,
           fetch_timeout=0.1, socket_timeout=0.2, job_timeout=0.01, max_dead_jobs=1,
           dead_timeout=1).validate()


# -- the default Redis url ------------------------------------------------------------------


def test_default_redis_url_prefers_jiggler_redis_url(monkeypatch):
    monkeypatch.setenv("JIGGLER_REDIS_URL", "redis://jiggler:1/1")
    monkeypatch.setenv("REDIS_URL", "redis://generic:2/2")
    assert default_redis_url() == "redis://jiggler:1/1"
    assert Config().redis_url == "redis://jiggler:1/1"


def test_default_redis_url_falls_back_to_redis_url_then_localhost(monkeypatch):
    monkeypatch.delenv("JIGGLER_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://generic:2/2")
    assert default_redis_url() == "redis://generic:2/2"
    monkeypatch.delenv("REDIS_URL")
    assert default_redis_url() == "redis://127.0.0.1:6379/0"


def test_empty_jiggler_redis_url_counts_as_unset(monkeypatch):
    monkeypatch.setenv("JIGGLER_REDIS_URL", "")
    monkeypatch.setenv("REDIS_URL", "redis://generic:2/2")
    assert default_redis_url() == "redis://generic:2/2"


def test_env_is_read_when_the_config_is_made(monkeypatch):
    monkeypatch.setenv("JIGGLER_REDIS_URL", "redis://first:1/0")
    first = Config()
    monkeypatch.setenv("JIGGLER_REDIS_URL", "redis://second:1/0")
    assert first.redis_url == "redis://first:1/0"
    assert Config().redis_url == "redis://second:1/0"


@pytest.mark.parametrize("url", [
    "redis://h:1/0", "rediss://h/0", "unix:///tmp/r.sock", "redis+sentinel://s1/mymaster",
    "rediss+sentinel://s1/mymaster", "redis+cluster://n1:7000,n2:7001",
    "rediss+cluster://n1:7000",
])
def test_every_redis_url_form_is_accepted(url):
    assert Config(redis_url=url).validate().redis_url == url


@pytest.mark.parametrize("url", ["http://h/0", "redis+cluster:/n1", "cluster://n1", "n1:6379"])
def test_other_redis_url_schemes_are_refused(url):
    with pytest.raises(ConfigError, match="redis url must start with redis://"):
        Config(redis_url=url).validate()

"""Key names: the wire layout with and without a namespace, and queue name checks."""

from __future__ import annotations

import pytest

from jiggler_gevent.keys import DEFAULT_QUEUE, Keys, valid_queue_name


def test_key_names_without_namespace():
    keys = Keys()
    assert keys.namespace == "" and keys.root == "jiggler:"
    assert keys.queue("default") == "jiggler:list:default"
    assert keys.queue_prefix == "jiggler:list:"
    assert keys.in_progress("mail", "host-1-abc") == "jiggler:list:mail:in_progress:host-1-abc"
    assert keys.scheduled == "jiggler:set:scheduled"
    assert keys.retries == "jiggler:set:retries"
    assert keys.dead == "jiggler:set:dead"
    assert keys.processed == "jiggler:stats:processed_counter"
    assert keys.failures == "jiggler:stats:failures_counter"
    assert keys.processes == "jiggler:processes"
    assert keys.process("abc") == "jiggler:process:abc"
    assert keys.processed_on("2024-01-31") == "jiggler:stats:processed:2024-01-31"
    assert keys.failures_on("2024-01-31") == "jiggler:stats:failures:2024-01-31"


@pytest.mark.parametrize("namespace", ["myapp", "myapp:", "my.app-2_x"])
def test_key_names_with_namespace(namespace):
    keys = Keys(namespace)
    ns = namespace.rstrip(":")
    assert keys.namespace == ns
    assert keys.queue("default") == f"{ns}:jiggler:list:default"
    assert keys.in_progress("q", "id") == f"{ns}:jiggler:list:q:in_progress:id"
    for name in ("scheduled", "retries", "dead", "processed", "failures", "processes"):
        assert getattr(keys, name) == getattr(Keys(), name).replace("jiggler:", f"{ns}:jiggler:",
                                                                      1)
    assert keys.process("p") == f"{ns}:jiggler:process:p"


@pytest.mark.parametrize("namespace", [None, "", ":"])
def test_empty_namespace_means_none(namespace):
    assert Keys(namespace).queue("q") == "jiggler:list:q"


@pytest.mark.parametrize("namespace", ["a:b", "app*", "a b", "a\nb", "{app}", "x" * 129, "ü"])
def test_bad_namespace_is_refused(namespace):
    with pytest.raises(ValueError, match="namespace"):
        Keys(namespace)


@pytest.mark.parametrize(
    "name", ["default", DEFAULT_QUEUE, "a", "A-Z_0.9", "mail.high", "x" * 128, "-", "..."]
)
def test_valid_queue_names(name):
    assert valid_queue_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "a:b", "a*", "a?", "[a]", "{a}", "a b", "a\nb", "a\tb", "a\n", "x" * 129, "x" * 200,
     "é", "a/b", "a\\b", "a\x00", None, 5, b"default", ["default"]],
    ids=repr,
)
def test_invalid_queue_names(name):
    assert not valid_queue_name(name)


@pytest.mark.parametrize("namespace", ["", "myapp"])
@pytest.mark.parametrize("queue", ["default", "a.b-c_d", "x" * 128])
def test_queue_name_round_trip(namespace, queue):
    keys = Keys(namespace)
    assert keys.queue_name(keys.queue(queue)) == queue


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_queue_name_of_other_keys_is_none(namespace):
    keys = Keys(namespace)
    others = [
        keys.in_progress("default", "host-1"), keys.scheduled, keys.retries, keys.dead,
        keys.processed, keys.process("p"), keys.queue_prefix, keys.queue_prefix + "a*b",
        "other:list:default", Keys("elsewhere").queue("default"),
    ]
    if namespace:
        others.append(Keys().queue("default"))
    for key in others:
        assert keys.queue_name(key) is None, key

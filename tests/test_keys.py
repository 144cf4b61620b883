"""Key names: the wire layout (hash tags per queue) with and without a namespace,
queue name checks, and parsing an in-progress key back."""

from __future__ import annotations

import fnmatch

import pytest

from jiggler_gevent.keys import DEFAULT_QUEUE, Keys, QueueKeys, valid_queue_name


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (the first non-empty {...}), as Redis does."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def test_key_names_without_namespace():
    keys = Keys()
    assert keys.namespace == "" and keys.root == "jiggler" and keys.tag == "{jiggler}"
    assert keys.queue("default") == "{jiggler:q:default}:pending"
    assert keys.in_progress("mail", "host-1-abc") == "{jiggler:q:mail}:in_progress:host-1-abc"
    assert keys.queues == "{jiggler}:queues"
    assert keys.processed == "{jiggler}:stats:processed_counter"
    assert keys.failures == "{jiggler}:stats:failures_counter"
    assert keys.processes == "{jiggler}:processes"
    assert keys.reservations == "{jiggler}:reservations"
    assert keys.periodic_schedules == "{jiggler}:periodic:schedules"
    assert keys.process("abc") == "{jiggler}:process:abc"
    assert keys.signals("abc") == "{jiggler}:process:abc:signals"
    assert keys.counted("abc") == "{jiggler}:stats:counted:abc"
    assert keys.processed_on("2024-01-31") == "{jiggler}:stats:processed:2024-01-31"
    assert keys.failures_on("2024-01-31") == "{jiggler}:stats:failures:2024-01-31"


@pytest.mark.parametrize("name,method", [
    ("pending", "queue"),
    ("quarantine", "quarantine"),
    ("scheduled", "scheduled"),
    ("retries", "retries"),
    ("dead", "dead"),
])
def test_the_lists_and_sets_of_a_queue(name, method):
    """The same key as an attribute of ``QueueKeys`` and from the method of ``Keys``."""
    keys = Keys()
    assert getattr(keys.queue_keys("mail"), name) == f"{{jiggler:q:mail}}:{name}"
    assert getattr(keys, method)("mail") == f"{{jiggler:q:mail}}:{name}"


def test_queue_keys_of_one_queue():
    queue = Keys().queue_keys("mail")
    assert isinstance(queue, QueueKeys) and queue.name == "mail" and queue.tag == "{jiggler:q:mail}"
    assert queue.recoveries == "{jiggler:q:mail}:recovered:"
    assert queue.periodic_last == "{jiggler:q:mail}:periodic:last"
    assert queue.in_progress("id1") == "{jiggler:q:mail}:in_progress:id1"
    assert queue.lease("id1") == "{jiggler:q:mail}:lease:id1"
    assert queue.owner_of(queue.in_progress("id1")) == "id1"
    assert queue.owner_of(queue.lease("id1")) is None
    assert queue.owner_of(queue.in_progress("")) is None
    keys = Keys()
    assert keys.queue_keys("mail") is keys.queue_keys("mail")  # cached


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_every_key_of_a_queue_is_in_the_queue_slot(namespace):
    keys = Keys(namespace)
    queue = keys.queue_keys("mail")
    root = f"{namespace}:jiggler" if namespace else "jiggler"
    per_queue = [queue.pending, queue.quarantine, queue.scheduled, queue.retries, queue.dead,
                 queue.recoveries + "0" * 40, queue.periodic_last, queue.in_progress("p"),
                 queue.lease("p"), keys.queue("mail"), keys.in_progress("mail", "p"),
                 keys.scheduled("mail"), keys.retries("mail"), keys.dead("mail"),
                 keys.quarantine("mail")]
    assert {hash_tag(k) for k in per_queue} == {f"{root}:q:mail"}
    global_keys = [keys.queues, keys.processed, keys.failures, keys.processes,
                   keys.reservations, keys.periodic_schedules, keys.process("p"),
                   keys.signals("p"), keys.counted("p"), keys.processed_on("2024-01-31"),
                   keys.failures_on("2024-01-31")]
    assert {hash_tag(k) for k in global_keys} == {root}
    # two queues, two tags (so they can live on different cluster nodes)
    assert hash_tag(keys.queue("a")) != hash_tag(keys.queue("b"))


@pytest.mark.parametrize("namespace", ["myapp", "myapp:", "my.app-2_x"])
def test_key_names_with_namespace(namespace):
    keys = Keys(namespace)
    ns = namespace.rstrip(":")
    assert keys.namespace == ns and keys.root == f"{ns}:jiggler" and keys.tag == f"{{{ns}:jiggler}}"
    assert keys.queue("default") == f"{{{ns}:jiggler:q:default}}:pending"
    assert keys.in_progress("q", "id") == f"{{{ns}:jiggler:q:q}}:in_progress:id"
    for name in ("scheduled", "retries", "dead", "quarantine"):
        assert getattr(keys, name)("q") == getattr(Keys(), name)("q").replace(
            "{jiggler:", f"{{{ns}:jiggler:", 1)
    for name in ("queues", "processed", "failures", "processes", "reservations",
                 "periodic_schedules"):
        assert getattr(keys, name) == getattr(Keys(), name).replace("{jiggler}", f"{{{ns}:jiggler}}")
    assert keys.process("p") == f"{{{ns}:jiggler}}:process:p"


@pytest.mark.parametrize("namespace", [None, "", ":"])
def test_empty_namespace_means_none(namespace):
    assert Keys(namespace).queue("q") == "{jiggler:q:q}:pending"


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
    ["", "a:b", "a*", "a?", "[a]", "{a}", "a}", "a{", "a b", "a\nb", "a\tb", "a\n", "x" * 129,
     "x" * 200, "é", "a/b", "a\\b", "a\x00", None, 5, b"default", ["default"]],
    ids=repr,
)
def test_invalid_queue_names(name):
    assert not valid_queue_name(name)


@pytest.mark.parametrize("namespace", ["", "myapp"])
@pytest.mark.parametrize("queue", ["default", "a.b-c_d", "x" * 128, "q"])
@pytest.mark.parametrize("identity", ["0123456789abcdef", "host-1-abc", "a:b"])
def test_queue_of_in_progress_round_trip(namespace, queue, identity):
    keys = Keys(namespace)
    assert keys.queue_of_in_progress(keys.in_progress(queue, identity)) == (queue, identity)


@pytest.mark.parametrize("namespace", ["", "myapp"])
def test_queue_of_other_keys_is_none(namespace):
    keys = Keys(namespace)
    q = keys.queue_keys("default")
    others = [
        q.pending, q.quarantine, q.scheduled, q.retries, q.dead, q.lease("host-1"),
        q.periodic_last, q.recoveries + "ab", q.tag + ":in_progress:",
        keys.processed, keys.process("p"), keys.reservations, keys.queues,
        "{jiggler:q:a*b}:in_progress:x", "{jiggler:q:}:in_progress:x", "{jiggler:q:a:in_progress:x",
        "jiggler:list:default:in_progress:x", "other:in_progress:x", "",
        Keys("elsewhere").in_progress("default", "x"),
    ]
    if namespace:
        others.append(Keys().in_progress("default", "x"))
    else:
        others.append(Keys("myapp").in_progress("default", "x"))
    for key in others:
        assert keys.queue_of_in_progress(key) is None, key


@pytest.mark.parametrize("namespace", ["", "myapp", "my.app-2_x"])
def test_all_key_patterns_cover_the_namespace_and_nothing_else(namespace):
    keys = Keys(namespace)
    patterns = keys.all_key_patterns()
    assert len(patterns) == 2
    q = keys.queue_keys("mail")
    ours = [keys.queues, keys.processes, keys.process("p"), keys.signals("p"), keys.reservations,
            keys.processed, keys.counted("p"), keys.processed_on("2024-01-31"),
            keys.periodic_schedules, q.pending, q.in_progress("p"), q.lease("p"), q.quarantine,
            q.scheduled, q.retries, q.dead, q.recoveries + "ab", q.periodic_last]
    for key in ours:
        assert any(_glob_match(key, p) for p in patterns), (key, patterns)
    foreign = [Keys("other").queue("mail"), Keys("other").processes, "jiggler:list:default",
               "unrelated", "{jigglerx}:processes"]
    foreign += [Keys("myapp").queue("mail"), Keys("myapp").processes] if not namespace else \
        [Keys().queue("mail"), Keys().processes, Keys(namespace + "x").processes]
    for key in foreign:
        assert not any(_glob_match(key, p) for p in patterns), (key, patterns)


def _glob_match(key: str, pattern: str) -> bool:
    """Redis glob semantics for the patterns used here: ``*``, ``?``, ``[...]`` and
    backslash escapes (fnmatch does not know escapes: translate them to [x])."""
    translated, i = "", 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            translated += f"[{pattern[i + 1]}]"
            i += 2
        else:
            translated += pattern[i]
            i += 1
    return fnmatch.fnmatchcase(key, translated)


def test_all_key_patterns_match_real_scan(redis_client):
    keys, other = Keys("myapp"), Keys("myapp2")
    ours = [keys.queue("a"), keys.processes, keys.in_progress("b", "p")]
    theirs = [other.queue("a"), other.processes, Keys().queue("a")]
    for key in ours + theirs:
        redis_client.set(key, 1)
    found = set()
    for pattern in keys.all_key_patterns():
        found.update(k.decode() for k in redis_client.scan_iter(match=pattern))
    assert found == set(ours)

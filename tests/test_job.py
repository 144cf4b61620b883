"""Job declaration, the registry, and enqueueing against a real server."""

from __future__ import annotations

import datetime
import importlib
import json
import time

import pytest
import redis

import jiggler_gevent
from jiggler_gevent import payload
from jiggler_gevent.errors import EnqueueError, JobDefinitionError, UnknownJobError
from jiggler_gevent.job import (
    RETRY_BASE_S,
    RETRY_MAX_S,
    Enqueuer,
    FunctionJob,
    Job,
    job,
    lookup,
    registered_names,
)
from jiggler_gevent.keys import Keys

job_module = importlib.import_module("jiggler_gevent.job")  # the package's `job` is @job
KEYS = Keys()
QUEUES = b"{jiggler}:queues"


class SendMail(Job):
    queue = "mail"
    retries = 5

    def perform(self, user_id, subject="hi"):
        return (user_id, subject)


class Plain(Job):
    def perform(self, *args, **kwargs):
        return args, kwargs


class Retrying(Job):
    queue = "work"
    retry_queue = "slow"
    timeout = 2.5

    def perform(self):
        pass


class Named(Job):
    name = "billing.charge"

    def perform(self, amount):
        pass


@job
def add(a, b):
    return a + b


@job(queue="reports", retries=1, retry_queue="slow", timeout=60, name="reports.build")
def build_report(report_id, *, fmt="pdf"):
    return report_id, fmt


def pushed(client, queue: str) -> list[dict]:
    """The jobs in a queue, oldest (next to run) first."""
    return [json.loads(raw) for raw in reversed(client.lrange(KEYS.queue(queue), 0, -1))]


def scheduled(client) -> list[tuple[dict, float]]:
    """Every queue's scheduled jobs, soonest first."""
    rows = []
    for key in client.scan_iter(match="{jiggler:q:*}:scheduled"):
        rows += client.zrange(key, 0, -1, withscores=True)
    return [(json.loads(m), s) for m, s in sorted(rows, key=lambda row: row[1])]


def scheduled_count(client) -> int:
    return len(scheduled(client))


def all_keys(client) -> list[bytes]:
    return sorted(client.keys("*"))


# -- declaring jobs -----------------------------------------------------------------------------


def test_job_class_options_and_defaults():
    assert Plain.queue == "default" and Plain.retries == 3
    assert Plain.retry_queue is None and Plain.timeout is None
    assert Plain.name == f"{__name__}.Plain"
    assert SendMail.queue == "mail" and SendMail.retries == 5
    assert Retrying.retry_queue == "slow" and Retrying.timeout == 2.5


def test_registry_finds_jobs_by_name_only():
    assert lookup(SendMail.name) is SendMail
    assert lookup("billing.charge") is Named
    assert Named.name == "billing.charge"
    names = registered_names()
    assert names == sorted(names)
    assert {SendMail.name, "billing.charge", "reports.build", add.job_class.name} <= set(names)
    assert FunctionJob.name not in names
    for name in ("os.system", "subprocess.call", f"{__name__}.pushed", "", "Job"):
        with pytest.raises(UnknownJobError):
            lookup(name)


@pytest.mark.parametrize(
    "options",
    [
        {"queue": "a:b"}, {"queue": ""}, {"queue": "q*"}, {"queue": "x" * 200}, {"queue": None},
        {"retry_queue": "a b"}, {"retry_queue": ""},
        {"retries": -1}, {"retries": "3"}, {"retries": 1.5}, {"retries": True},
        {"retries": payload.MAX_RETRIES + 1},
        {"timeout": 0}, {"timeout": -1}, {"timeout": "5"}, {"timeout": True},
        {"name": ""}, {"name": 5}, {"name": "x" * (payload.NAME_MAX_CHARS + 1)},
    ],
    ids=repr,
)
def test_bad_job_options_raise(options):
    before = registered_names()
    with pytest.raises(JobDefinitionError):
        type("BadJob", (Job,), {"perform": lambda self: None, **options})
    assert registered_names() == before


@pytest.mark.parametrize(
    "options",
    [{"queue": "a:b"}, {"retries": -1}, {"timeout": 0}, {"retry_queue": "*"}, {"name": 5}],
    ids=repr,
)
def test_bad_decorator_options_raise(options):
    with pytest.raises(JobDefinitionError):
        job(**options)(lambda: None)


def test_missing_perform_raises():
    with pytest.raises(JobDefinitionError, match="perform"):

        class NoPerform(Job):
            queue = "default"


def test_name_clash_between_two_classes_raises():
    with pytest.raises(JobDefinitionError, match="billing.charge"):

        class Other(Job):
            name = "billing.charge"

            def perform(self):
                pass

    assert lookup("billing.charge") is Named


def test_decorated_function_clashing_with_a_class_raises():
    with pytest.raises(JobDefinitionError):

        @job(name="billing.charge")
        def charge(amount):
            pass


def test_redefining_the_same_class_replaces_it():
    def define():
        class Reloaded(Job):
            def perform(self):
                pass

        return Reloaded

    first, second = define(), define()
    assert first is not second and first.name == second.name
    assert lookup(second.name) is second


def test_subclass_inherits_options_and_gets_its_own_name():
    class Urgent(SendMail):
        retries = 9

    assert Urgent.queue == "mail" and Urgent.retries == 9
    assert Urgent.name.endswith("Urgent") and Urgent.name != SendMail.name
    assert lookup(Urgent.name) is Urgent


def test_check_arguments_uses_the_perform_signature():
    SendMail.check_arguments([1], {"subject": "s"})
    with pytest.raises(TypeError):
        SendMail.check_arguments([], {})
    with pytest.raises(TypeError):
        SendMail.check_arguments([1], {"nope": 2})
    add.job_class.check_arguments([1, 2], {})
    with pytest.raises(TypeError):
        add.job_class.check_arguments([1], {})


def test_job_decorator_keeps_a_plain_call_and_makes_a_job_class():
    assert add(2, 3) == 5
    assert add.__name__ == "add"
    cls = add.job_class
    assert issubclass(cls, Job) and cls.name == f"{__name__}.add"
    assert cls.queue == "default" and cls.retries == Job.retries
    assert cls().perform(4, 5) == 9
    assert lookup(cls.name) is cls


def test_job_decorator_options_and_name_override():
    assert build_report(7) == (7, "pdf")
    cls = build_report.job_class
    assert cls.name == "reports.build" and lookup("reports.build") is cls
    assert (cls.queue, cls.retries, cls.retry_queue, cls.timeout) == ("reports", 1, "slow", 60)
    assert cls().perform(3, fmt="csv") == (3, "csv")


# -- enqueue -------------------------------------------------------------------------------------


def test_enqueue_pushes_the_documented_payload(redis_client):
    before = time.time()
    jid = SendMail.enqueue(42)
    after = time.time()
    raw = redis_client.rpop(KEYS.queue("mail"))
    job_ = json.loads(raw)
    assert set(job_) == {"name", "args", "jid", "queue", "retries", "enqueued_at"}
    assert job_["name"] == SendMail.name
    assert job_["args"] == [42]
    assert job_["jid"] == jid and len(jid) == 24
    assert job_["queue"] == "mail" and job_["retries"] == 5
    assert before <= job_["enqueued_at"] <= after
    assert payload.loads(raw)["name"] == SendMail.name


def test_enqueue_adds_kwargs_only_when_given_and_retry_queue_only_when_different(redis_client):
    Plain.enqueue(1, (2, 3), key={"nested": (4,)})
    Retrying.enqueue()
    build_report.enqueue(5, fmt="csv")
    Retrying.with_options(retry_queue="work").enqueue()
    (plain,) = pushed(redis_client, "default")
    assert plain["args"] == [1, [2, 3]] and plain["kwargs"] == {"key": {"nested": [4]}}
    first, second = pushed(redis_client, "work")
    assert "kwargs" not in first and first["retry_queue"] == "slow"
    assert "retry_queue" not in second
    (report,) = pushed(redis_client, "reports")
    assert report["kwargs"] == {"fmt": "csv"} and report["retry_queue"] == "slow"
    assert report["name"] == "reports.build" and report["retries"] == 1


def test_jobs_run_in_enqueue_order(redis_client):
    jids = [Plain.enqueue(i) for i in range(5)]
    assert [j["jid"] for j in pushed(redis_client, "default")] == jids
    assert json.loads(redis_client.rpop(KEYS.queue("default")))["jid"] == jids[0]


def test_function_job_enqueue(redis_client):
    jid = add.enqueue(1, 2)
    (job_,) = pushed(redis_client, "default")
    assert job_["jid"] == jid and job_["name"] == add.job_class.name and job_["args"] == [1, 2]


def test_with_options_returns_a_new_enqueuer_and_leaves_the_original_alone(redis_client):
    base = SendMail.with_options(queue="a")
    derived = base.with_options(queue="b", retries=0)
    assert isinstance(base, Enqueuer) and derived is not base
    assert base.options == {"queue": "a"} and base.queue == "a"
    assert derived.options == {"queue": "b", "retries": 0}
    base.enqueue(1)
    derived.enqueue(2)
    SendMail.enqueue(3)
    assert [(j["args"], j["retries"]) for j in pushed(redis_client, "a")] == [([1], 5)]
    assert [(j["args"], j["retries"]) for j in pushed(redis_client, "b")] == [([2], 0)]
    assert [j["args"] for j in pushed(redis_client, "mail")] == [[3]]


def test_enqueuer_copies_the_options_it_is_given(redis_client):
    options = {"queue": "a"}
    enqueuer = Enqueuer(SendMail, options)
    options["queue"] = "b"
    assert enqueuer.queue == "a"


def test_with_options_fixed_jid_and_unknown_option(redis_client):
    assert SendMail.with_options(jid="my-jid").enqueue(1) == "my-jid"
    assert pushed(redis_client, "mail")[0]["jid"] == "my-jid"
    with pytest.raises(EnqueueError, match="unknown option"):
        SendMail.with_options(priority=3)
    with pytest.raises(EnqueueError):
        add.with_options(when="later")


@pytest.mark.parametrize("jid", [42, "x" * 65, ["a"]])
def test_a_fixed_jid_the_worker_would_refuse_is_refused_at_enqueue(redis_client, jid):
    with pytest.raises(EnqueueError, match="jid must be a string of 1 to 64"):
        SendMail.with_options(jid=jid).enqueue(1)
    assert pushed(redis_client, "mail") == []


@pytest.mark.parametrize("name", ["self", "cls", "seconds", "when"])
def test_keyword_arguments_may_have_any_name(redis_client, name):
    Plain.enqueue(**{name: 1})
    Plain.with_options(queue="other").enqueue(**{name: 1})
    Plain.enqueue_in(60, **{name: 1})
    Plain.enqueue_at(time.time() + 60, **{name: 1})
    add.enqueue(1, **{name: 1})


def test_function_job_with_options(redis_client):
    add.with_options(queue="math").enqueue(1, 1)
    assert [j["args"] for j in pushed(redis_client, "math")] == [[1, 1]]
    assert all_keys(redis_client) == [b"{jiggler:q:math}:pending", QUEUES]
    assert redis_client.smembers(QUEUES) == {b"math"}


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((b"bytes",), {}), (({1, 2},), {}), ((float("nan"),), {}), ((2**70,), {}),
        ((datetime.datetime.now(),), {}), (({1: "a"},), {}), ((), {"obj": object()}),
        (([1, [float("inf")]],), {}),
    ],
    ids=repr,
)
def test_arguments_json_cannot_carry_fail_at_enqueue_and_push_nothing(redis_client, args, kwargs):
    for enqueue in (Plain.enqueue, lambda *a, **k: Plain.enqueue_in(60, *a, **k),
                    lambda *a, **k: Plain.enqueue_at(time.time() - 1, *a, **k),
                    lambda *a, **k: Plain.with_options(queue="x").enqueue(*a, **k)):
        with pytest.raises(EnqueueError):
            enqueue(*args, **kwargs)
    assert all_keys(redis_client) == []


def test_bad_queue_from_with_options_fails_at_enqueue(redis_client):
    for queue in ("a:b", "*", "x" * 200):
        with pytest.raises(EnqueueError):
            Plain.with_options(queue=queue).enqueue(1)
        with pytest.raises(EnqueueError):
            Plain.with_options(retry_queue=queue).enqueue(1)
    with pytest.raises(EnqueueError):
        Plain.with_options(retries=-1).enqueue(1)
    assert all_keys(redis_client) == []


def test_oversized_payload_fails_at_enqueue(redis_client):
    with pytest.raises(EnqueueError, match="over"):
        Plain.enqueue("x" * (payload.MAX_PAYLOAD_BYTES + 1))
    assert all_keys(redis_client) == []


def test_namespace_prefix_is_applied(redis_client):
    jiggler_gevent.configure(namespace="myapp")
    Plain.enqueue(1)
    Plain.enqueue_in(300, 2)
    Plain.enqueue_bulk([[3]])
    assert all_keys(redis_client) == [b"{myapp:jiggler:q:default}:pending",
                                      b"{myapp:jiggler:q:default}:scheduled", b"{myapp:jiggler}:queues"]
    assert redis_client.llen(Keys("myapp").queue("default")) == 2
    assert redis_client.smembers(Keys("myapp").queues) == {b"default"}


def test_configure_with_a_client_of_your_own(redis_client, redis_url):
    jiggler_gevent.configure(client=redis_client)
    Plain.enqueue(1)
    assert redis_client.llen(KEYS.queue("default")) == 1


def test_concurrent_enqueues_from_many_greenlets(redis_client):
    import gevent.pool

    pool = gevent.pool.Pool(200)
    jids = pool.map(lambda i: Plain.enqueue(i), range(400))
    assert len(set(jids)) == 400
    assert redis_client.llen(KEYS.queue("default")) == 400
    assert redis_client.smembers(QUEUES) == {b"default"}


# -- scheduling ------------------------------------------------------------------------------------


def test_enqueue_in_adds_to_the_scheduled_set_with_its_queue(redis_client):
    before = time.time()
    jid = SendMail.enqueue_in(120, 7)
    after = time.time()
    assert redis_client.llen(KEYS.queue("mail")) == 0
    ((job_, score),) = scheduled(redis_client)
    assert job_["jid"] == jid and job_["args"] == [7]
    assert job_["queue"] == "mail"  # seed defect 2: delayed jobs landed on default
    assert redis_client.zcard(KEYS.scheduled("mail")) == 1  # the queue's own scheduled set
    assert before + 120 <= score <= after + 120


def test_enqueue_in_carries_the_with_options_queue(redis_client):
    SendMail.with_options(queue="later").enqueue_in(60, 1)
    add.enqueue_in(60, 1, 2)
    queues = sorted(job_["queue"] for job_, _ in scheduled(redis_client))
    assert queues == ["default", "later"]


def test_enqueue_at_an_epoch_time_uses_it_as_the_score(redis_client):
    at = time.time() + 3600.25
    jid = Retrying.enqueue_at(at)
    ((job_, score),) = scheduled(redis_client)
    assert job_["jid"] == jid and job_["queue"] == "work" and job_["retry_queue"] == "slow"
    assert score == pytest.approx(at, abs=1e-3)


def test_enqueue_at_a_datetime(redis_client):
    aware = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    naive = datetime.datetime.now() + datetime.timedelta(hours=3)  # local time
    a = Plain.enqueue_at(aware, "aware")
    n = Plain.enqueue_at(naive, "naive")
    scores = {job_["jid"]: score for job_, score in scheduled(redis_client)}
    assert scores[a] == pytest.approx(aware.timestamp(), abs=1e-3)
    assert scores[n] == pytest.approx(naive.timestamp(), abs=1e-3)


@pytest.mark.parametrize("when", [lambda: time.time() - 10, lambda: 0,
                                  lambda: datetime.datetime(2000, 1, 1)])
def test_enqueue_at_a_past_time_pushes_to_the_queue(redis_client, when):
    jid = SendMail.enqueue_at(when(), 1)
    assert scheduled_count(redis_client) == 0
    assert [j["jid"] for j in pushed(redis_client, "mail")] == [jid]


def test_enqueue_in_zero_or_negative_pushes_to_the_queue(redis_client):
    Plain.enqueue_in(0, 1)
    Plain.enqueue_in(-5, 2)
    assert scheduled_count(redis_client) == 0
    assert [j["args"] for j in pushed(redis_client, "default")] == [[1], [2]]


@pytest.mark.parametrize("seconds", ["5", None, float("nan"), float("inf"), [1], True],
                         ids=repr)
def test_enqueue_in_refuses_bad_delays(redis_client, seconds):
    with pytest.raises(EnqueueError):
        Plain.enqueue_in(seconds, 1)
    assert all_keys(redis_client) == []


@pytest.mark.parametrize(
    "when", ["tomorrow", None, float("nan"), float("inf"), float("-inf"), datetime.date(2030, 1, 1),
             datetime.timedelta(seconds=5), True],
    ids=repr,
)
def test_enqueue_at_refuses_bad_times(redis_client, when):
    with pytest.raises(EnqueueError):
        Plain.enqueue_at(when, 1)
    assert all_keys(redis_client) == []


# -- the queue registry ------------------------------------------------------------------------------


class Recording(redis.Redis):
    """A client that notes each round trip: a command's name, or "pipeline" and the
    commands it carried."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trips: list = []

    def execute_command(self, *args, **options):
        self.trips.append(args[0])
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        real_execute = pipe.execute

        def execute(raise_on_error=True):
            self.trips.append(("pipeline", tuple(c[0][0] for c in pipe.command_stack)))
            return real_execute(raise_on_error)

        pipe.execute = execute
        return pipe


@pytest.fixture
def recording(redis_client, redis_url):
    client = Recording.from_url(redis_url)
    jiggler_gevent.configure(client=client)
    yield client
    client.close()


def test_first_enqueue_to_a_queue_registers_it_in_the_same_round_trip(redis_client, recording):
    SendMail.enqueue(1)
    assert recording.trips == [("pipeline", ("SADD", "LPUSH"))]
    recording.trips.clear()
    SendMail.enqueue(2)
    Plain.enqueue(3)
    SendMail.enqueue(4)
    Plain.enqueue(5)
    assert recording.trips == ["LPUSH", ("pipeline", ("SADD", "LPUSH")), "LPUSH", "LPUSH"]
    assert redis_client.smembers(QUEUES) == {b"mail", b"default"}
    assert len(pushed(redis_client, "mail")) == 3


def test_registry_cache_is_per_client_and_namespace_and_expires(redis_client, recording,
                                                               monkeypatch):
    SendMail.enqueue(1)
    jiggler_gevent.configure(namespace="other")
    SendMail.enqueue(2)  # another namespace: its own registry
    assert redis_client.smembers(Keys("other").queues) == {b"mail"}
    jiggler_gevent.configure(namespace="")
    recording.trips.clear()
    monkeypatch.setattr(job_module, "REGISTRY_REFRESH_S", 0.0)
    SendMail.enqueue(3)
    assert recording.trips == [("pipeline", ("SADD", "LPUSH"))]  # one client+namespace at a time
    redis_client.delete(KEYS.queues)  # FLUSHDB, clean --everything...
    SendMail.enqueue(4)
    assert redis_client.smembers(QUEUES) == {b"mail"}  # sent again once the time is up
    monkeypatch.undo()
    SendMail.enqueue(5)
    recording.trips.clear()
    SendMail.enqueue(6)
    assert recording.trips == ["LPUSH"]
    job_module.forget_registered_queues()
    SendMail.enqueue(7)
    assert recording.trips == ["LPUSH", ("pipeline", ("SADD", "LPUSH"))]


def test_scheduling_always_registers_the_queue(redis_client, recording):
    SendMail.enqueue(1)
    recording.trips.clear()
    SendMail.enqueue_in(60, 2)
    SendMail.with_options(queue="later").enqueue_at(time.time() + 60, 3)
    assert recording.trips == [("pipeline", ("SADD", "ZADD"))] * 2
    assert redis_client.smembers(QUEUES) == {b"mail", b"later"}
    assert redis_client.zcard(KEYS.scheduled("mail")) == 1
    assert redis_client.zcard(KEYS.scheduled("later")) == 1
    recording.trips.clear()
    SendMail.with_options(queue="past").enqueue_at(1.0, 4)  # due: pushed, registered
    assert recording.trips == [("pipeline", ("SADD", "LPUSH"))]
    assert redis_client.sismember(QUEUES, "past")


def test_bulk_enqueue_registers_its_queues_with_one_sadd(redis_client, recording):
    SendMail.enqueue(0)
    recording.trips.clear()
    items = [[i] for i in range(5)]
    SendMail.enqueue_bulk(items)
    assert recording.trips == [("pipeline", ("LPUSH",))]  # mail is registered already
    recording.trips.clear()
    jids = Enqueuer(Plain).with_options(queue="b1").enqueue_bulk(items, chunk_size=2)
    assert recording.trips == [("pipeline", ("SADD", "LPUSH", "LPUSH", "LPUSH"))]
    assert len(jids) == 5 and redis_client.smembers(QUEUES) == {b"mail", b"b1"}
    recording.trips.clear()
    assert Plain.enqueue_bulk([]) == []
    assert recording.trips == []


def test_a_vetoed_job_registers_nothing(redis_client, recording):
    from jiggler_gevent import middleware

    def veto(job_class, job_, call_next):
        return None

    middleware.add_client(veto)
    try:
        assert SendMail.enqueue(1) is None
        assert SendMail.enqueue_in(60, 1) is None
        assert SendMail.enqueue_bulk([[1], [2]]) == [None, None]
    finally:
        middleware.remove(veto)
    assert recording.trips == [] and all_keys(redis_client) == []


# -- bulk ---------------------------------------------------------------------------------------------


def test_enqueue_bulk_list_and_dict_items(redis_client):
    jids = SendMail.enqueue_bulk([
        [1], (2, "subject"), {"args": [3], "kwargs": {"subject": "x"}}, {"args": (4,)},
        {"kwargs": {"user_id": 5}},
    ])
    jobs = pushed(redis_client, "mail")
    assert [j["jid"] for j in jobs] == jids and len(set(jids)) == 5
    assert [j["args"] for j in jobs] == [[1], [2, "subject"], [3], [4], []]
    assert [j.get("kwargs") for j in jobs] == [None, None, {"subject": "x"}, None,
                                               {"user_id": 5}]
    assert all(j["queue"] == "mail" and j["retries"] == 5 for j in jobs)


def test_enqueue_bulk_in_chunks(redis_client, fresh_server):
    client = redis.Redis.from_url(fresh_server.url)  # a server no one else writes to
    jiggler_gevent.configure(redis_url=fresh_server.url)
    try:
        client.config_resetstat()
        jids = Enqueuer(Plain).enqueue_bulk([[i] for i in range(10)], chunk_size=3)
        stats = client.info("commandstats")
        assert stats["cmdstat_lpush"]["calls"] == 4  # 3 + 3 + 3 + 1
        assert stats["cmdstat_sadd"]["calls"] == 1  # the registry, once
        jobs = pushed(client, "default")
        assert [j["jid"] for j in jobs] == jids
        assert [j["args"] for j in jobs] == [[i] for i in range(10)]
    finally:
        client.close()


def test_enqueue_bulk_of_nothing(redis_client):
    assert Plain.enqueue_bulk([]) == []
    assert all_keys(redis_client) == []


def test_enqueue_bulk_accepts_a_generator(redis_client):
    assert len(add.enqueue_bulk([i, i] for i in range(3))) == 3
    assert redis_client.llen(KEYS.queue("default")) == 3


@pytest.mark.parametrize(
    "items",
    [
        [[1], [2], [b"bad"]],
        [[1], "not a list"],
        [[1], 5],
        [[1], None],
        [[1], {"args": [1], "queue": "other"}],
        [[1], {"args": [1], "kwargs": {"x": {1, 2}}}],
        [[i] for i in range(2500)] + [[float("nan")]],
    ],
    ids=["bad arg", "str item", "int item", "None item", "extra key", "bad kwarg", "last of 2501"],
)
def test_enqueue_bulk_with_a_bad_item_enqueues_nothing(redis_client, items):
    with pytest.raises(EnqueueError):
        Plain.enqueue_bulk(items)
    assert all_keys(redis_client) == []


def test_enqueue_bulk_refuses_a_fixed_jid(redis_client):
    with pytest.raises(EnqueueError, match="jid"):
        Plain.with_options(jid="same").enqueue_bulk([[1], [2]])
    assert all_keys(redis_client) == []


@pytest.mark.parametrize("bad_args", ["abc", 5, {"a": 1}])
def test_enqueue_bulk_refuses_dict_items_whose_args_is_not_a_list(redis_client, bad_args):
    try:
        with pytest.raises(EnqueueError):
            Plain.enqueue_bulk([{"args": bad_args}])
    finally:
        assert all_keys(redis_client) == []


# -- retries ------------------------------------------------------------------------------------------


def test_default_retry_in_is_jittered_exponential_backoff():
    for attempt in range(1, 40):
        base = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1))
        delays = [Plain.retry_in(attempt, ValueError()) for _ in range(50)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays), attempt
        assert len(set(delays)) > 1  # jitter: no two workers retry in lockstep
    first = [Plain.retry_in(1, ValueError()) for _ in range(200)]
    assert min(first) >= 7.5 and max(first) <= 22.5
    assert max(Plain.retry_in(10_000, ValueError()) for _ in range(50)) <= 1.5 * 24 * 3600


def test_retry_in_can_be_overridden():
    class Fixed(Job):
        def perform(self):
            pass

        @classmethod
        def retry_in(cls, attempt, exc):
            return 42.0 * attempt

    assert Fixed.retry_in(2, RuntimeError()) == 84.0


# -- importing the client API -----------------------------------------------------------------------


def test_import_does_not_import_gevent_or_patch(run_python):
    code = """
import socket, sys, threading, time
originals = (socket.socket, threading.Lock, time.sleep)
import jiggler_gevent
from jiggler_gevent import config, connection, job, keys, payload, scripts
jiggler_gevent.configure(redis_url="redis://127.0.0.1:1/0", namespace="x")
loaded = sorted(m for m in sys.modules if m == "gevent" or m.startswith(("gevent.", "greenlet")))
assert not loaded, loaded
assert (socket.socket, threading.Lock, time.sleep) == originals
assert socket.socket.__module__ == "socket"
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

"""Periodic jobs: schedule math (intervals, cron, time zones), declarations, and the
scheduler's single step (``tick_once``) racing from several "processes" at once."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import gevent
import pytest
import redis

from jiggler_gevent import Job, job, periodic
from jiggler_gevent.errors import ConfigError
from jiggler_gevent.keys import Keys
from jiggler_gevent.server.periodic import PeriodicScheduler, tick_jid

try:
    import croniter  # noqa: F401
    HAVE_CRON = True
except ImportError:
    HAVE_CRON = False
needs_cron = pytest.mark.skipif(not HAVE_CRON, reason="croniter (the cron extra) not installed")

KEYS = Keys()
PARIS = "Europe/Paris"


def ts(*fields, tz="UTC") -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(*fields, tzinfo=ZoneInfo(tz)).timestamp()


class Beat(Job):
    name = "per.beat"

    def perform(self, *args):
        pass


@pytest.fixture(autouse=True)
def _clean():
    periodic.clear()
    yield
    periodic.clear()


# -- schedule math ---------------------------------------------------------------------


def test_interval_ticks_are_aligned_multiples():
    s = periodic.Schedule(job="x", every=60)
    now = ts(2025, 3, 1, 12, 0, 30)
    assert s.latest(now) == ts(2025, 3, 1, 12, 0)
    assert s.next_after(now) == ts(2025, 3, 1, 12, 1)
    assert s.latest(ts(2025, 3, 1, 12, 1)) == ts(2025, 3, 1, 12, 1)  # on a tick: that tick
    assert s.next_after(ts(2025, 3, 1, 12, 1)) == ts(2025, 3, 1, 12, 2)


def test_interval_is_aligned_to_midnight_in_its_time_zone():
    s = periodic.Schedule(job="x", every=3600, tz="Asia/Kolkata")  # UTC+5:30
    assert s.latest(ts(2025, 3, 1, 12, 45)) == ts(2025, 3, 1, 12, 30)


def test_interval_in_a_time_zone_ticks_on_the_wall_clock_across_daylight_saving():
    daily = periodic.Schedule(job="x", every=86400, tz=PARIS)
    # local midnight, whatever the offset: 22:00Z in summer time, 23:00Z in winter time
    assert daily.latest(ts(2024, 10, 27, 1, 30)) == ts(2024, 10, 26, 22, 0)  # after the change
    assert daily.next_after(ts(2024, 10, 27, 1, 30)) == ts(2024, 10, 27, 23, 0)
    assert daily.next_after(ts(2024, 3, 31, 2, 30)) == ts(2024, 3, 31, 22, 0)
    hourly = periodic.Schedule(job="x", every=3600, tz=PARIS)
    assert hourly.next_after(ts(2024, 3, 31, 0, 30)) == ts(2024, 3, 31, 1, 0)  # 02:00 skipped
    # ticks are floats with or without a zone: their repr names the tick (and its jid)
    utc = periodic.Schedule(job="x", every=60)
    assert [repr(t) for t in (utc.latest(6060.5), utc.next_after(6060.5))] == ["6060.0", "6120.0"]


def test_a_daily_schedule_runs_once_a_day_when_daylight_saving_ends(redis_client, redis_url):
    """The offset changes from +2 to +1 at 01:00Z on 27 October 2024: midnight in Paris
    must not come twice (with the offset taken at ``now``, 23:00Z looked like a new
    midnight after 22:00Z)."""
    schedule = periodic.Schedule(job="per.beat", every=86400, tz=PARIS, name="nightly")
    [scheduler] = make_schedulers(redis_url, 1, [schedule])
    start = ts(2024, 10, 26, 12, 0)
    pushed = []
    for step in range(4 * 48):  # every 15 minutes for two days
        pushed += scheduler.tick_once(start + step * 900)
    ticks = [json.loads(raw)["periodic_at"] for raw in redis_client.lrange(KEYS.queue("default"), 0, -1)]
    assert sorted(ticks) == [ts(2024, 10, 26, 22, 0), ts(2024, 10, 27, 23, 0)]  # two midnights
    assert len(pushed) == 2


@needs_cron
def test_cron_in_a_time_zone_follows_daylight_saving():
    s = periodic.Schedule(job="x", cron="0 7 * * *", tz=PARIS)
    winter, summer = ts(2025, 1, 15, 12, 0), ts(2025, 7, 15, 12, 0)
    assert s.latest(winter) == ts(2025, 1, 15, 6, 0)  # 07:00 CET
    assert s.latest(summer) == ts(2025, 7, 15, 5, 0)  # 07:00 CEST
    assert s.next_after(winter) == ts(2025, 1, 16, 7, 0, tz=PARIS)


@needs_cron
def test_cron_latest_includes_an_exact_tick_and_seconds_field():
    s = periodic.Schedule(job="x", cron="*/5 * * * *")
    assert s.latest(ts(2025, 1, 1, 12, 5)) == ts(2025, 1, 1, 12, 5)
    assert s.latest(ts(2025, 1, 1, 12, 9, 59)) == ts(2025, 1, 1, 12, 5)
    every_second = periodic.Schedule(job="x", cron="* * * * * *")
    assert every_second.next_after(ts(2025, 1, 1, 12, 0, 0)) == ts(2025, 1, 1, 12, 0, 1)


@pytest.mark.parametrize("options, message", [
    ({}, "exactly one"),
    ({"every": 1, "cron": "* * * * *"}, "exactly one"),
    ({"every": 0}, "positive"),
    ({"every": 1, "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"every": 1, "args": [object()]}, "cannot be sent as JSON"),
    pytest.param({"cron": "not a cron"}, "not a valid cron", marks=needs_cron),
])
def test_bad_schedules_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        periodic.Schedule(job="x", **options)


def test_declared_on_a_class_a_function_and_in_config():
    @periodic.periodic(every=30, args=[1])
    class Report(Job):
        name = "per.report"

        def perform(self, n):
            pass

    @periodic.periodic(every=10, name="fn-every-10")
    @job(name="per.fn")
    def fn():
        pass

    periodic.load_config([{"job": "per.beat", "every": 5, "kwargs": {}, "queue": "low"}])
    assert [(s.name, s.job, s.every) for s in periodic.schedules()] == [
        ("per.report", "per.report", 30), ("fn-every-10", "per.fn", 10), ("per.beat", "per.beat", 5)]
    assert fn.job_class.name == "per.fn"  # the decorator hands the function back
    with pytest.raises(ConfigError, match="unknown keys"):
        periodic.load_config([{"job": "per.beat", "every": 5, "at": 3}])


# -- the scheduler step ----------------------------------------------------------------


def pushed(client) -> list[dict]:
    out = []
    for key in client.keys("{jiggler:q:*}:pending"):
        out += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    return out


def make_schedulers(redis_url: str, n: int, schedules) -> list[PeriodicScheduler]:
    # one client each, like separate processes
    return [PeriodicScheduler(redis.Redis.from_url(redis_url), KEYS, schedules) for _ in range(n)]


def test_each_tick_is_enqueued_exactly_once_by_racing_processes(redis_client, redis_url):
    schedules = [periodic.Schedule(job="per.beat", every=1, args=("fast",)),
                 periodic.Schedule(job="per.beat", every=3, name="slow", queue="low")]
    racers = make_schedulers(redis_url, 6, schedules)
    start = 1_700_000_000.0
    for step in range(40):  # 10 s in quarter seconds; each racer's clock a bit off
        now = start + step * 0.25
        gevent.joinall([gevent.spawn(r.tick_once, now + i * 0.01) for i, r in enumerate(racers)],
                       raise_error=True)
    jobs = pushed(redis_client)
    per_tick = Counter((j["periodic"], j["periodic_at"]) for j in jobs)
    assert set(per_tick.values()) == {1}
    fast = sorted(t for name, t in per_tick if name == "per.beat")
    assert fast == [start + s for s in range(1, 10)]  # the first tick seen is only recorded
    slow = sorted(t for name, t in per_tick if name == "slow")
    assert slow == [1_700_000_001.0 + 3 * k for k in range(3)]  # multiples of 3 s; 1_699_999_998 seen first
    assert {j["queue"] for j in jobs if j["periodic"] == "slow"} == {"low"}
    assert all(j["jid"] == tick_jid(j["periodic"], j["periodic_at"]) for j in jobs)
    assert all(j["args"] == ["fast"] for j in jobs if j["periodic"] == "per.beat")


def test_missed_ticks_after_downtime_run_once_for_the_latest(redis_client, redis_url):
    schedule = periodic.Schedule(job="per.beat", every=60)
    [before] = make_schedulers(redis_url, 1, [schedule])
    assert before.tick_once(ts(2025, 1, 1, 10, 0, 5)) == []  # first sight: recorded only
    assert len(before.tick_once(ts(2025, 1, 1, 10, 1, 5))) == 1
    # every worker down for an hour; a new process comes back
    [after] = make_schedulers(redis_url, 1, [schedule])
    assert len(after.tick_once(ts(2025, 1, 1, 11, 2, 30))) == 1
    assert after.tick_once(ts(2025, 1, 1, 11, 2, 40)) == []
    assert [j["periodic_at"] for j in pushed(redis_client)] == [
        ts(2025, 1, 1, 11, 2), ts(2025, 1, 1, 10, 1)]
    # a process whose clock is behind cannot enqueue an older tick
    [late] = make_schedulers(redis_url, 1, [schedule])
    assert late.tick_once(ts(2025, 1, 1, 10, 30, 0)) == []


def test_a_raising_client_middleware_costs_one_schedule_one_tick(redis_client, redis_url, caplog):
    """A client middleware that raises for one schedule's jobs: that tick is logged and
    skipped, the other schedule is enqueued, and the scheduler goes on ticking (before,
    the error escaped the loop and the scheduler greenlet died in every process)."""
    from jiggler_gevent import middleware

    def picky(job_class, job, call_next):
        if job["args"] == ["bad"]:
            raise RuntimeError("needs a request context")
        return call_next(job)

    middleware.add_client(picky)
    try:
        schedules = [periodic.Schedule(job="per.beat", every=1, args=("bad",), name="bad"),
                     periodic.Schedule(job="per.beat", every=1, args=("good",), name="good")]
        [scheduler] = make_schedulers(redis_url, 1, schedules)
        assert scheduler.tick_once(100.5) == []  # first sight: ticks recorded only
        assert len(scheduler.tick_once(101.5)) == 1 and len(scheduler.tick_once(102.5)) == 1
    finally:
        middleware.remove(picky)
    queued = [json.loads(raw)["args"] for raw in redis_client.lrange(KEYS.queue("default"), 0, -1)]
    assert queued == [["good"], ["good"]]
    assert caplog.text.count("periodic schedule=bad tick=") == 3  # the payload is built each time
    assert caplog.text.count("Traceback") == 1  # the traceback once, then one line per tick
    assert "RuntimeError: needs a request context" in caplog.text


def test_unknown_job_is_skipped_without_claiming(redis_client, redis_url, caplog):
    [scheduler] = make_schedulers(redis_url, 1, [periodic.Schedule(job="per.nobody", every=1)])
    assert scheduler.tick_once(100.5) == [] and scheduler.tick_once(101.5) == []
    assert redis_client.keys("*periodic:last*") == []  # no queue's tick hash
    assert caplog.text.count("skipped here") == 1  # said once, not every tick


def test_published_schedules_list_their_next_run(redis_client, redis_url):
    schedules = [periodic.Schedule(job="per.beat", every=60, tz=PARIS, args=(1,))]
    [scheduler] = make_schedulers(redis_url, 1, schedules)
    scheduler.publish()
    scheduler.tick_once(ts(2025, 1, 1, 10, 0, 5))
    [info] = periodic.list_schedules(redis_client, KEYS, ts(2025, 1, 1, 10, 0, 5))
    assert info["name"] == "per.beat" and info["every"] == 60 and info["tz"] == PARIS
    assert info["next_run"] == ts(2025, 1, 1, 10, 1) and info["last_tick"] == ts(2025, 1, 1, 10, 0)
    assert redis_client.hget(KEYS.queue_keys("default").periodic_last, "per.beat") is not None


def test_list_schedules_reads_each_schedules_tick_in_its_queue(redis_client):
    """The read side alone: descriptions in the global hash, ticks in the hash of the
    schedule's queue; a description without a queue takes the latest tick found in any
    known queue's hash; unreadable descriptions are skipped."""
    redis_client.hset(KEYS.periodic_schedules, mapping={
        "in-low": json.dumps({"name": "in-low", "job": "per.beat", "every": 60, "queue": "low"}),
        "no-queue": json.dumps({"name": "no-queue", "job": "per.beat", "every": 30}),
        "future": json.dumps({"name": "future", "job": "x", "every": 10, "new_option": 1}),
        "never": json.dumps({"name": "never", "job": "x", "every": 10, "queue": "quiet"}),
        "junk": "{not json", "list": "[1]",
    })
    redis_client.sadd(KEYS.queues, "low", "default", "other")
    redis_client.hset(KEYS.queue_keys("low").periodic_last, mapping={"in-low": 120, "no-queue": 60})
    redis_client.hset(KEYS.queue_keys("default").periodic_last, "no-queue", 90)
    redis_client.hset(KEYS.queue_keys("other").periodic_last, "in-low", 999)  # not its queue
    infos = {i["name"]: i for i in periodic.list_schedules(redis_client, KEYS, 100.0)}
    assert sorted(infos) == ["future", "in-low", "never", "no-queue"]
    assert infos["in-low"]["last_tick"] == 120.0 and infos["in-low"]["next_run"] == 120.0
    assert infos["no-queue"]["last_tick"] == 90.0
    assert infos["never"]["last_tick"] is None
    assert infos["future"]["next_run"] == 110.0  # unknown fields do not hide the schedule
    assert periodic.list_schedules(redis_client, Keys("empty"), 100.0) == []


def test_list_schedules_orders_by_next_run_then_name(redis_client):
    """An hourly and a */10 schedule are both due at the hour: the tie goes by name, the
    same on every read (the hash's own order is not stable)."""
    redis_client.hset(KEYS.periodic_schedules, mapping={
        name: json.dumps({"name": name, "job": "per.beat", "every": every, "queue": "low"})
        for name, every in (("zz-hourly", 3600), ("aa-hourly", 3600), ("mm-ten", 600),
                            ("later", 7200))})
    redis_client.hset(KEYS.periodic_schedules, "odd", json.dumps({"name": "odd", "job": "x", "every": -1}))
    for now in (3000.0, 3599.0):  # the ten-minute one ties with the hourly ones at 3600
        names = [i["name"] for i in periodic.list_schedules(redis_client, KEYS, now)]
        assert names == ["aa-hourly", "mm-ten", "zz-hourly", "later", "odd"]  # no next run: last


def test_launcher_runs_the_scheduler_only_when_there_are_schedules(redis_client, redis_url):
    from jiggler_gevent.config import Config
    from jiggler_gevent.server.launcher import Launcher

    config = Config(redis_url=redis_url).validate()
    assert Launcher(config).periodic is None
    periodic.add(Beat, every=1)
    launcher = Launcher(config)
    assert launcher.periodic is not None and launcher.periodic.schedules[0].job == "per.beat"
    assert 0 < launcher.periodic.seconds_to_next(0.0) <= 1.0

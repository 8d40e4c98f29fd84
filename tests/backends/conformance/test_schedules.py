"""Schedules and wait_for_result on every backend: one job per tick, catch-up, pause, DST, results.

Time is driven, never waited for: the in-memory backend runs on a FakeClock; on Redis (whose
scripts read ``TIME``) a test moves a schedule's stored due time and anchor back instead, which is
what an outage of that length leaves behind.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis

from asyncmq_otel import task
from asyncmq_otel._repeatables import upsert_declared
from asyncmq_otel.backends.base import Backend
from asyncmq_otel.backends.capabilities import ScheduleStore
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.errors import InvalidSchedule, JobCancelled, JobExpired, JobFailed, ScheduleNotFound
from asyncmq_otel.queues import Queue
from asyncmq_otel.schedules import schedule_job_id
from asyncmq_otel.tasks import TASK_REGISTRY
from asyncmq_otel.worker.scheduler import Fired, Scheduler
from tests.backends.conformance import BACKEND_KINDS
from tests.support.poll import eventually
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    RedisServer,
    delete_prefix,
    redis_cluster_server,
    redis_url,
    unique_prefix,
)
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

START = datetime(2027, 1, 4, 12, 0, 0, 250_000, tzinfo=UTC).timestamp()


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on asyncio only."""
    return "asyncio"


@dataclass
class Harness:
    """A backend and the way to make time pass for its schedules."""

    kind: str
    backends: list[Backend]
    clock: FakeClock | None
    url: str = ""
    prefix: str = ""

    @property
    def backend(self) -> Backend:
        return self.backends[0]

    def elapse(self, queue: str, key: str, seconds: float) -> None:
        """Let ``seconds`` pass for ``key``'s schedule (Redis: move its due time and anchor back)."""
        if self.clock is not None:
            self.clock.advance(seconds)
            return
        shift = math.ceil(seconds * 1000)
        client = redis.Redis.from_url(self.url)
        try:
            base = f"{self.prefix}:{{{queue}}}:"
            schedule = f"{base}schedule:{key}"
            client.hincrby(schedule, "anchor", -shift)
            due = client.hincrby(schedule, "next_due", -shift)
            if client.hget(schedule, "paused") != b"1":
                client.zadd(f"{base}schedules", {key: due})
        finally:
            client.close()


@pytest.fixture(params=BACKEND_KINDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Four handles on one store: a single in-memory backend, or four Redis clients on one prefix."""
    if request.param == "memory":
        clock = FakeClock(start=START)
        yield Harness("memory", [InMemoryBackend(clock=clock.time)], clock)
        return
    from asyncmq_otel.backends.redis import RedisBackend

    cluster = request.param == "cluster"
    if cluster:
        server: RedisServer = request.getfixturevalue("redis_cluster_server")
        url = server.url
    else:
        url = request.getfixturevalue("redis_url")
    prefix = unique_prefix()
    backends: list[Backend] = [
        RedisBackend(url, prefix=prefix, retry_timeout=5.0, cluster=cluster) for _ in range(4)
    ]
    try:
        yield Harness("redis", backends, None, url, prefix)
    finally:
        for backend in backends:
            await backend.close()
        delete_prefix(url, prefix)


@pytest.fixture
def queue() -> str:
    """A fresh queue name."""
    return unique_prefix()


async def _fire_all(harness: Harness, queue: str) -> list[Fired]:
    """One scheduler round on every handle at once (four workers racing for the same ticks)."""
    fired: list[Fired] = []
    schedulers = [Scheduler(b, [queue], on_fired=fired.append) for b in harness.backends]
    async with anyio.create_task_group() as group:
        for scheduler in schedulers:
            group.start_soon(scheduler.run_once)
    return fired


async def _job_ids(backend: Backend, queue: str) -> list[str]:
    return sorted(str(job.id) for job in await backend.list_jobs(queue, "waiting", 0, 1000))


async def test_upsert_is_idempotent_and_listed(harness: Harness, queue: str) -> None:
    q = Queue(queue, backend=harness.backend)
    key = await q.upsert_repeatable("app.report", every=60, args=[1], retries=2)
    assert key == "app.report"
    first = await q.list_repeatables()
    assert len(first) == 1
    assert first[0]["key"] == key
    assert first[0]["every"] == 60.0
    assert first[0]["paused"] is False
    assert first[0]["last_run"] is None
    assert first[0]["options"] == {"retries": 2}
    harness.elapse(queue, key, 10)
    # the same definition again (a second deploy) changes nothing, not even the next run
    await q.upsert_repeatable("app.report", every=60, args=[1], retries=2)
    again = await q.list_repeatables()
    assert again[0]["next_run"] == first[0]["next_run"] - (0 if harness.clock else 10)
    # a new definition replaces it and restarts its ticks
    await q.upsert_repeatable("app.report", every=30, args=[1], retries=2)
    changed = await q.list_repeatables()
    assert len(changed) == 1
    assert changed[0]["every"] == 30.0
    assert changed[0]["rev"] != first[0]["rev"]


async def test_exactly_one_job_per_tick_across_racing_schedulers(harness: Harness, queue: str) -> None:
    q = Queue(queue, backend=harness.backend)
    key = await q.upsert_repeatable("app.tick", every=5)
    assert await _fire_all(harness, queue) == []  # not due yet
    [listed] = await q.list_repeatables()
    due_ms = round(listed["next_run"] * 1000)
    harness.elapse(queue, key, 5)
    fired = await _fire_all(harness, queue)
    assert len(fired) == 1
    due_ms = due_ms if harness.clock else due_ms - 5000
    assert fired[0].dues == [due_ms]
    assert await _job_ids(harness.backend, queue) == [schedule_job_id(key, due_ms)]
    [after] = await q.list_repeatables()
    assert after["last_job_id"] == schedule_job_id(key, due_ms)
    assert after["next_run"] * 1000 > due_ms
    # the next round finds nothing due: no second job for the same tick
    assert await _fire_all(harness, queue) == []
    assert len(await _job_ids(harness.backend, queue)) == 1


@pytest.mark.parametrize(("policy", "expected"), [("latest", 1), ("all", 5), ("none", 0)])
async def test_catch_up_policies(harness: Harness, queue: str, policy: str, expected: int) -> None:
    q = Queue(queue, backend=harness.backend)
    key = await q.upsert_repeatable("app.catch", every=2, catch_up=policy)
    harness.elapse(queue, key, 2 * 5 + 1)  # five ticks passed while no scheduler ran
    fired = await _fire_all(harness, queue)
    jobs = await _job_ids(harness.backend, queue)
    assert len(jobs) == expected
    assert sum(len(f.dues) for f in fired) == expected
    [listed] = await q.list_repeatables()
    now = await harness.backend.now()
    assert now < listed["next_run"] <= now + 2  # the next tick is the first one after now
    if policy == "latest":
        assert fired[0].skipped == 4
        assert listed["last_run"] * 1000 == fired[0].dues[0] == max(fired[0].dues)


async def test_catch_up_all_is_bounded(harness: Harness, queue: str) -> None:
    q = Queue(queue, backend=harness.backend)
    # a minute apart: on Redis real time runs on while the test fires, and must not make a new tick due
    key = await q.upsert_repeatable("app.bounded", every=60, catch_up="all", max_catch_up=3)
    harness.elapse(queue, key, 10 * 60 + 30)
    fired = await _fire_all(harness, queue)
    assert len(await _job_ids(harness.backend, queue)) == 3
    assert fired[0].skipped == 7
    assert fired[0].dues == sorted(fired[0].dues)
    assert fired[0].dues[1] - fired[0].dues[0] == 60_000  # the latest three, consecutive


async def test_pause_resume_remove(harness: Harness, queue: str) -> None:
    q = Queue(queue, backend=harness.backend)
    key = await q.upsert_repeatable("app.paused", every=1, key="nightly")
    assert key == "nightly"
    await q.pause_repeatable(key)
    harness.elapse(queue, key, 3.5)
    assert await _fire_all(harness, queue) == []
    [listed] = await q.list_repeatables()
    assert listed["paused"] is True
    await q.resume_repeatable(key)
    [resumed] = await q.list_repeatables()
    assert resumed["paused"] is False
    assert resumed["next_run"] > await harness.backend.now()  # ticks while paused are skipped
    await q.remove_repeatable(key)
    assert await q.list_repeatables() == []
    with pytest.raises(ScheduleNotFound):
        await q.remove_repeatable(key)
    with pytest.raises(ScheduleNotFound):
        await q.pause_repeatable(key)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": 1, "cron": "* * * * *"}, "exactly one"),
        ({}, "exactly one"),
        ({"cron": "61 * * * *"}, "invalid cron"),
        ({"every": 0}, "every must be"),
        ({"every": float("nan")}, "every must be"),
        ({"every": 1, "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"every": 1, "catch_up": "some"}, "catch_up"),
        ({"every": 1, "key": "bad key!"}, "schedule key"),
        ({"every": 1, "max_catch_up": 0}, "max_catch_up"),
        ({"every": 1, "retries": -1}, "retries"),
        ({"every": 1, "bogus": 1}, "unknown job options"),
    ],
)
async def test_bad_definitions_store_nothing(
    harness: Harness, queue: str, options: dict[str, Any], message: str
) -> None:
    q = Queue(queue, backend=harness.backend)
    with pytest.raises(InvalidSchedule, match=message):
        await q.upsert_repeatable("app.bad", **options)
    assert await q.list_repeatables() == []


async def test_declared_schedules_are_upserted_with_the_task_name(harness: Harness, queue: str) -> None:
    @task(queue=queue, every=300, name=f"{queue}.declared")
    def declared() -> None:
        """A periodic task."""

    try:
        assert await upsert_declared(harness.backend, [queue]) == [f"{queue}.declared"]
        assert await upsert_declared(harness.backend, [queue]) == [f"{queue}.declared"]
        listed = await Queue(queue, backend=harness.backend).list_repeatables()
        assert [(s["key"], s["task"], s["every"]) for s in listed] == [
            (f"{queue}.declared", f"{queue}.declared", 300.0)
        ]
    finally:
        TASK_REGISTRY.pop(f"{queue}.declared", None)


def test_a_bad_declared_schedule_fails_at_import() -> None:
    with pytest.raises(InvalidSchedule):

        @task(queue="q", cron="not cron", name="bad.declared")
        def bad() -> None:
            """Never registered."""

    assert "bad.declared" not in TASK_REGISTRY


# -- the service: sleeps until the earliest due time (memory: FakeClock) ---------------------------------
async def test_scheduler_sleeps_until_due_and_does_not_poll() -> None:
    clock = FakeClock(start=START)
    backend = InMemoryBackend(clock=clock.time)
    queue = unique_prefix()
    fired: list[Fired] = []
    scheduler = Scheduler(backend, [queue], clock=clock, on_fired=fired.append, max_sleep=3600)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run)
        await eventually(lambda: clock.sleepers == 1, what="scheduler asleep")
        # an upsert wakes it (memory backend) and it goes back to sleep until the tick
        await Queue(queue, backend=backend).upsert_repeatable("app.svc", every=10)
        await eventually(lambda: scheduler.rounds == 2 and clock.sleepers == 1, what="re-read")
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert scheduler.rounds == 2  # asleep: no polling while time does not pass
        clock.advance(9.9)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert fired == []
        clock.advance(0.2)
        await eventually(lambda: len(fired) == 1, what="tick fired")
        assert fired[0].fired_ms - fired[0].dues[0] <= 200
        group.cancel_scope.cancel()


def _local(ms: int, zone: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo(zone)).strftime("%m-%d %H:%M %Z")


async def _daily_fires(cron: str, zone: str, start: datetime, days: int) -> list[str]:
    clock = FakeClock(start=start.timestamp())
    backend = InMemoryBackend(clock=clock.time)
    queue = unique_prefix()
    await Queue(queue, backend=backend).upsert_repeatable("app.dst", cron=cron, timezone=zone)
    fired: list[Fired] = []
    scheduler = Scheduler(backend, [queue], clock=clock, on_fired=fired.append)
    for _ in range(days * 24):
        clock.advance(3600)
        await scheduler.run_once()
    return [_local(due, zone) for f in fired for due in f.dues]


async def test_cron_across_spring_forward_runs_the_skipped_time_after_the_change() -> None:
    # Berlin, 2027-03-28: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day
    start = datetime(2027, 3, 26, 12, tzinfo=UTC)
    fires = await _daily_fires("30 2 * * *", "Europe/Berlin", start, 3)
    assert fires == ["03-27 02:30 CET", "03-28 03:00 CEST", "03-29 02:30 CEST"]


async def test_cron_across_fall_back_runs_the_repeated_time_once() -> None:
    # Berlin, 2027-10-31: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice
    start = datetime(2027, 10, 29, 12, tzinfo=UTC)
    fires = await _daily_fires("30 2 * * *", "Europe/Berlin", start, 3)
    assert fires == ["10-30 02:30 CEST", "10-31 02:30 CEST", "11-01 02:30 CET"]


async def test_cron_catch_up_all_after_an_outage_in_its_timezone() -> None:
    clock = FakeClock(start=datetime(2027, 1, 4, 6, 30, tzinfo=UTC).timestamp())
    backend = InMemoryBackend(clock=clock.time)
    queue = unique_prefix()
    q = Queue(queue, backend=backend)
    await q.upsert_repeatable("app.hourly", cron="0 * * * *", timezone="Asia/Kolkata", catch_up="all")
    clock.advance(3 * 3600 + 60)  # three hourly ticks (at :00 in +05:30, i.e. :30 UTC) pass unseen
    fired: list[Fired] = []
    await Scheduler(backend, [queue], clock=clock, on_fired=fired.append).run_once()
    assert [_local(d, "Asia/Kolkata") for d in fired[0].dues] == [
        "01-04 13:00 IST",
        "01-04 14:00 IST",
        "01-04 15:00 IST",
    ]


# -- wait_for_result ----------------------------------------------------------------------------------------
@task(queue="results", name="tests.schedules.double")
async def double(x: int) -> int:
    """Return twice ``x``."""
    return 2 * x


@task(queue="results", name="tests.schedules.boom")
async def boom() -> None:
    """Fail for good."""
    raise ValueError("no good")


@pytest.fixture
async def results_backend(harness: Harness) -> Backend:
    """A backend whose worker may use real time (the memory harness's FakeClock would stop TTLs)."""
    if harness.kind == "memory":
        return InMemoryBackend()
    return harness.backend


async def test_wait_for_result_outcomes(results_backend: Backend) -> None:
    backend = results_backend
    q = Queue(f"results-{unique_prefix()}", backend=backend)
    ok = await q.add("tests.schedules.double", args=[21])
    bad = await q.add("tests.schedules.boom")
    waiting = await q.add("tests.schedules.double", args=[1])
    with pytest.raises(TimeoutError):
        await q.wait_for_result(waiting, timeout=0.05)
    assert await q.cancel_job(waiting)
    with pytest.raises(JobCancelled):
        await q.wait_for_result(waiting, timeout=10)
    expired = await q.add("tests.schedules.double", args=[1], ttl=0.001)
    async with anyio.create_task_group() as group:
        results: dict[str, Any] = {}

        async def wait(job_id: str) -> None:
            try:
                results[job_id] = await q.wait_for_result(job_id, timeout=30)
            except (JobFailed, JobExpired) as exc:
                results[job_id] = exc

        group.start_soon(wait, ok)
        group.start_soon(wait, bad)
        async with running_worker(q.name, backend):
            await eventually(lambda: len(results) == 2, timeout=30, what="both settled")
            with pytest.raises(JobExpired):
                await q.wait_for_result(expired, timeout=30)
    assert results[ok] == 42
    failure = results[bad]
    assert isinstance(failure, JobFailed)
    assert failure.error_type == "ValueError"
    assert failure.error_message == "no good"
    # a job that finished long ago: answered at once from the retained result
    with anyio.fail_after(5):
        assert await q.wait_for_result(ok, timeout=None) == 42


def test_both_backends_store_schedules() -> None:
    assert isinstance(InMemoryBackend(), ScheduleStore)
    from asyncmq_otel.backends.redis import RedisBackend

    assert isinstance(RedisBackend(), ScheduleStore)


async def test_a_worker_upserts_its_declared_schedules_and_fires_them(harness: Harness) -> None:
    queue = unique_prefix()
    name = f"{queue}.every"
    runs: list[int] = []

    @task(queue=queue, every=0.2, name=name)
    def every() -> None:
        """Counts its runs."""
        runs.append(1)

    backend = InMemoryBackend() if harness.kind == "memory" else harness.backend
    try:
        async with running_worker(queue, backend):
            await eventually(lambda: len(runs) >= 2, timeout=30, what="two ticks ran")
        [listed] = await Queue(queue, backend=backend).list_repeatables()
        assert listed["key"] == name
        assert listed["last_job_id"].startswith(f"sch.{name}.")
    finally:
        TASK_REGISTRY.pop(name, None)


async def test_a_fired_job_carries_its_schedule_key_and_due_time(harness: Harness, queue: str) -> None:
    from asyncmq_otel.events import LifecycleEvent, bus

    seen: list[LifecycleEvent] = []
    bus.on("job:enqueued", seen.append, inline=True)
    try:
        q = Queue(queue, backend=harness.backend)
        key = await q.upsert_repeatable("app.seen", every=1)
        harness.elapse(queue, key, 1)
        [fired] = await _fire_all(harness, queue)
    finally:
        bus.off("job:enqueued", seen.append)
    [due] = fired.dues
    job = await harness.backend.get_job(queue, schedule_job_id(key, due))
    assert job is not None and job.job is not None
    assert (job.job.schedule, job.job.schedule_due) == (key, due / 1000)
    [event] = [e for e in seen if e.queue == queue]
    assert (event.schedule_key, event.schedule_due, event.job_id) == (
        key,
        due / 1000,
        schedule_job_id(key, due),
    )


@pytest.mark.parametrize("skew", [-300.0, 300.0])
async def test_host_clock_skew_neither_fires_early_nor_moves_ticks(
    harness: Harness, queue: str, skew: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    if harness.kind == "memory":
        pytest.skip("the in-memory backend's clock is the host's: skew is a shared-backend concern")
    import time as time_module

    q = Queue(queue, backend=harness.backend)
    key = await q.upsert_repeatable("app.skewed", every=60)
    [before] = await q.list_repeatables()
    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + skew)  # every host clock reads off by 5 min
    assert await _fire_all(harness, queue) == []  # Redis TIME says not due, whatever the hosts think
    harness.elapse(queue, key, 60)
    [fired] = await _fire_all(harness, queue)
    assert fired.dues == [round(before["next_run"] * 1000) - 60_000]  # the stored tick, not a host's guess


async def test_a_schedule_that_breaks_is_held_back_and_never_stops_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncmq_otel.worker.scheduler as scheduler_module

    clock = FakeClock(start=START)
    backend = InMemoryBackend(clock=clock.time)
    queue = unique_prefix()
    q = Queue(queue, backend=backend)
    await q.upsert_repeatable("app.good", every=10, key="good")
    await q.upsert_repeatable("app.bad", every=10, key="broken")
    real_plan = scheduler_module.plan_fire

    def plan(record: Any, now_ms: int) -> Any:
        if record.spec.key == "broken":
            raise OverflowError("a definition the cron library cannot evaluate")
        return real_plan(record, now_ms)

    monkeypatch.setattr(scheduler_module, "plan_fire", plan)
    fired: list[Fired] = []
    scheduler = Scheduler(backend, [queue], clock=clock, on_fired=fired.append)
    clock.advance(10)
    delay = await scheduler.run_once()
    assert [f.key for f in fired] == ["good"]
    assert "schedule.fire_failed: broken" in caplog.text
    assert delay is not None
    assert delay >= 9  # the next good tick, not a spin on the broken one
    monkeypatch.setattr(scheduler_module, "plan_fire", real_plan)
    clock.advance(60)  # the hold is over: the repaired schedule fires (its latest tick)
    await scheduler.run_once()
    assert sorted(f.key for f in fired) == ["broken", "good", "good"]


async def test_wait_for_result_on_redis_says_so_when_events_are_not_published(harness: Harness) -> None:
    from asyncmq_otel.errors import ConfigError
    from asyncmq_otel.settings import override_settings

    q = Queue(unique_prefix(), backend=harness.backend)
    job_id = await q.add("tests.schedules.double", args=[1])
    with override_settings(publish_events=False):
        if harness.kind == "memory":  # the in-process bus needs no publisher: it just times out
            with pytest.raises(TimeoutError):
                await q.wait_for_result(job_id, timeout=0.01)
        else:
            with pytest.raises(ConfigError, match="publish_events"):
                await q.wait_for_result(job_id, timeout=5)

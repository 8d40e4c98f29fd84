"""Time under control: a worker on ``InMemoryBackend(clock=FakeClock())`` waits on that clock.

Leases, TTLs, delays, retry backoff, handler timeouts and idle waits move when the test advances
the clock, not when real time passes: an hour-long delay takes no real time, and nothing happens
between two advances that the test did not cause.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
import anyio.lowlevel
import pytest

from asyncmq_otel import Queue, Worker, task
from asyncmq_otel.backends.base import RenewStatus
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock, system_clock
from asyncmq_otel.events import LifecycleEvent
from asyncmq_otel.settings import override_settings
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

runs: dict[str, int] = {}
release: dict[str, anyio.Event] = {}


@task("clockq", name="clock.record")
async def record(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    return key


@task("clockq", name="clock.flaky", retries=1, backoff=600)
async def flaky(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    if runs[key] == 1:
        raise ValueError("first attempt fails")
    return "ok"


@task("clockq", name="clock.hang", retries=1, timeout=60)
async def hang(key: str) -> None:
    runs[key] = runs.get(key, 0) + 1
    await anyio.sleep_forever()


@task("clockq", name="clock.held")
async def held(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    await release[key].wait()
    return key


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    release.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> InMemoryBackend:
    return InMemoryBackend(clock=clock)


async def state(queue: Queue, job_id: str) -> str | None:
    return await queue.get_job_state(job_id)


async def wait_state(queue: Queue, job_id: str, wanted: str) -> None:
    async def reached() -> bool:
        return await state(queue, job_id) == wanted

    await eventually(reached, what=f"job {job_id} {wanted}")


async def claim_loop_waiting(clock: FakeClock) -> None:
    """Wait until the claim loop sleeps on the clock (its idle wait is a deadline scope)."""
    await eventually(lambda: clock.timers >= 1, what="the claim loop waits on the clock")


def named(events: list[LifecycleEvent], job_id: str) -> list[str]:
    return [e.name for e in events if e.job_id == job_id]


async def test_the_worker_takes_the_backends_clock_and_the_real_one_otherwise(clock, backend, unique_name):
    assert Worker(unique_name, backend=backend).clock is clock
    assert Worker(unique_name, backend=InMemoryBackend()).clock is system_clock
    other = FakeClock()
    assert Worker(unique_name, backend=backend, clock=other).clock is other
    # a bare wall-time callable offsets the backend's time only (skew tests): the worker stays real
    assert Worker(unique_name, backend=InMemoryBackend(clock=lambda: 5.0)).clock is system_clock


async def test_a_job_delayed_an_hour_runs_once_the_clock_has_moved_an_hour(
    clock, backend, unique_name, events
):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.record", ["later"], delay=3600)
    began = time.monotonic()
    async with running_worker(unique_name, backend):
        await claim_loop_waiting(clock)
        clock.advance(3599)
        await claim_loop_waiting(clock)  # woke, claimed nothing due, and sleeps again
        assert await state(q, job_id) == "delayed"
        clock.advance(1)
        await wait_state(q, job_id, "completed")
    assert time.monotonic() - began < 5  # an hour of the clock, no real waiting
    assert runs == {"later": 1}
    started = next(e for e in events if e.name == "job:started")
    assert started.started_at == clock.time()  # the worker reads wall time from the same clock
    assert started.eligible_at == started.started_at  # promoted at its due time, started at once


async def test_a_job_past_its_ttl_on_the_clock_is_expired_without_running(
    clock, backend, unique_name, events
):
    q = Queue(unique_name, backend=backend)
    fresh = await q.add("clock.record", ["fresh"], ttl=60)
    stale = await q.add("clock.record", ["stale"], ttl=30)
    clock.advance(45)
    async with running_worker(unique_name, backend):
        await wait_state(q, fresh, "completed")
        await wait_state(q, stale, "expired")
    assert runs == {"fresh": 1}
    assert named(events, stale) == ["job:enqueued", "job:expired"]
    assert [(d["id"], d["dlq_reason"]) for d in await q.dlq()] == [(stale, "expired")]


async def test_a_ten_minute_retry_backoff_waits_ten_minutes_of_the_clock(clock, backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.flaky", ["k"])
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "delayed")
        await claim_loop_waiting(clock)
        clock.advance(599)
        await claim_loop_waiting(clock)
        assert (await state(q, job_id), runs) == ("delayed", {"k": 1})
        clock.advance(1)
        await wait_state(q, job_id, "completed")
    retried = next(e for e in events if e.name == "job:retried")
    assert retried.backoff_s == 600
    second = [e for e in events if e.name == "job:started"][1]
    assert second.started_at - retried.finished_at == 600  # exactly: nothing moves the clock but the test
    assert second.wait_s == 0  # eligible after the backoff, started at once


async def test_the_workers_events_are_stamped_with_its_clock(clock, backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.flaky", ["stamped"])
    began = clock.time()  # the FakeClock's wall time is far from the host's: time.time() would show
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "delayed")
        await claim_loop_waiting(clock)
        clock.advance(600)
        await wait_state(q, job_id, "completed")
    stamped = [(e.name, e.ts - began) for e in events if e.worker_id is not None]
    assert {"worker:started", "job:started", "job:retried", "job:completed", "worker:stopped"} <= {
        name for name, _ in stamped
    }
    assert {offset for _, offset in stamped} <= {0.0, 600.0}  # only the times the test moved the clock to
    assert [offset for name, offset in stamped if name.startswith("job:")] == [0.0, 0.0, 600.0, 600.0]


async def test_an_expired_lease_is_reaped_once_the_clock_passes_it(clock, backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.record", ["ghosted"])
    ghost = await backend.claim(unique_name, "ghost-worker", 1, 30.0)  # claimed, never renewed: a crash
    assert [j.id for j in ghost.jobs] == [job_id]
    async with running_worker(unique_name, backend):
        await claim_loop_waiting(clock)
        clock.advance(29)
        await claim_loop_waiting(clock)
        assert await state(q, job_id) == "active"  # the reaper woke (reaper_interval) but the lease holds
        clock.advance(1)
        await wait_state(q, job_id, "completed")
    stored = await q.get_job(job_id)
    assert (stored["attempts"], stored["stalls"]) == (2, 1)
    assert named(events, job_id) == ["job:enqueued", "job:stalled", "job:started", "job:completed"]
    assert next(e for e in events if e.name == "job:stalled").ts == clock.time()  # the reaper's clock


async def test_a_lease_lost_past_max_stalls_is_dead_lettered_as_worker_lost(
    clock, backend, unique_name, events
):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.record", ["poison"])
    await backend.claim(unique_name, "ghost-1", 1, 1.0)
    clock.advance(1)
    assert [j.id for j in (await backend.reap(unique_name, "reaper", 1, 1.0)).stalled] == [job_id]
    await backend.claim(unique_name, "ghost-2", 1, 1.0)
    async with running_worker(unique_name, backend):
        await claim_loop_waiting(clock)
        clock.advance(1)
        await wait_state(q, job_id, "failed")
        await eventually(lambda: any(e.name == "job:failed" for e in events), what="job:failed emitted")
    assert runs == {}
    assert (await q.get_job(job_id))["dlq_reason"] == "worker_lost"
    failed = next(e for e in events if e.name == "job:failed")
    assert (failed.reason, failed.error_type) == ("worker_lost", "worker_lost")


async def test_a_long_job_keeps_its_lease_through_renewals_on_the_clock(clock, unique_name):
    renewals: list[float] = []

    class Counting(InMemoryBackend):
        def renew_sync(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
            renewals.append(clock.monotonic())  # the renewer thread's rounds, at clock time
            return super().renew_sync(queue, leases, lease)

    backend = Counting(clock=clock)
    q = Queue(unique_name, backend=backend)
    release["long"] = anyio.Event()
    job_id = await q.add("clock.held", ["long"])
    async with running_worker(unique_name, backend):
        await eventually(lambda: runs.get("long") == 1, what="the handler started")
        for step in range(10):  # 3 s of the clock: three 1 s leases, each renewed in time
            clock.advance(0.3)  # the renew interval
            await eventually(lambda step=step: len(renewals) > step, what=f"renewal {step + 1}")
        release["long"].set()
        await wait_state(q, job_id, "completed")
    stored = await q.get_job(job_id)
    assert (stored["attempts"], stored["stalls"]) == (1, 0)
    assert len(renewals) >= 10


async def test_a_handler_timeout_is_counted_on_the_clock(clock, backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("clock.hang", ["h"])
    # leases longer than the timeout: this test is about the handler's deadline, not the reaper's
    with override_settings(
        lease=3600.0, renew_interval=600.0, reaper_interval=600.0, loop_block_limit=3600.0
    ):
        async with running_worker(unique_name, backend):
            for attempt in (1, 2):
                await eventually(
                    lambda attempt=attempt: runs.get("h") == attempt and clock.timers >= 2,
                    what=f"attempt {attempt} under its timeout",
                )
                clock.advance(59)
                await claim_loop_waiting(clock)
                assert await state(q, job_id) == "active"
                clock.advance(1)
            await wait_state(q, job_id, "failed")
    assert named(events, job_id) == [
        "job:enqueued",
        "job:started",
        "job:retried",
        "job:started",
        "job:failed",
    ]
    ended = [e for e in events if e.name in {"job:retried", "job:failed"}]
    assert {e.error_type for e in ended} == {"asyncmq_otel.errors.JobTimeout"}
    assert all(e.duration_s is not None and e.duration_s < 60 for e in ended)  # real time: no minute slept


async def test_an_idle_worker_claims_again_only_after_block_timeout_of_the_clock(clock, unique_name):
    claims = {"n": 0}

    class Counting(InMemoryBackend):
        async def claim(self, queue, worker_id, count, lease):
            claims["n"] += 1
            return await super().claim(queue, worker_id, count, lease)

    backend = Counting(clock=clock)
    with override_settings(
        block_timeout=5.0, lease=30.0, renew_interval=10.0, reaper_interval=5.0, loop_block_limit=60
    ):
        async with running_worker(unique_name, backend):
            await claim_loop_waiting(clock)
            assert claims["n"] == 1
            clock.advance(4.9)
            for _ in range(20):  # let anything that could run, run: nothing is due
                await anyio.lowlevel.checkpoint()
            assert claims["n"] == 1
            clock.advance(0.1)  # the block timeout has passed: one more claim, then back to waiting
            await eventually(lambda: claims["n"] == 2, what="a claim after block_timeout")
            await claim_loop_waiting(clock)
            job_id = await Queue(unique_name, backend=backend).add("clock.record", ["wake"])
            await wait_state(Queue(unique_name, backend=backend), job_id, "completed")  # woken, not timed out


async def test_running_cancellation_reaches_the_worker_at_the_next_renewal(clock, unique_name, events):
    class NoHints(InMemoryBackend):
        def add_cancel_listener(self, listener):
            """Drop hints so only the renewer's CANCEL answer can stop the handler."""

    backend = NoHints(clock=clock)
    q = Queue(unique_name, backend=backend)
    release["c"] = anyio.Event()
    job_id = await q.add("clock.held", ["c"])
    async with running_worker(unique_name, backend):
        await eventually(lambda: runs.get("c") == 1, what="the handler started")
        await q.cancel_job(job_id)
        clock.advance(0.3)  # one renew interval: the renewal answers CANCEL
        await wait_state(q, job_id, "cancelled")
    assert next(e for e in events if e.name == "job:cancelled").reason == "running"


async def test_wait_for_work_times_out_on_the_clock_and_wakes_on_a_token(clock, backend, unique_name):
    results: list[bool] = []

    async def wait() -> None:
        results.append(await backend.wait_for_work(unique_name, 10.0))

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await eventually(lambda: clock.timers == 1, what="waiting")
        clock.advance(9.9)
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert results == []
        clock.advance(0.1)
    assert results == [False]
    assert clock.timers == 0
    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await eventually(lambda: clock.timers == 1, what="waiting")
        await Queue(unique_name, backend=backend).add("clock.record", ["token"])
    assert results == [False, True]
    assert clock.timers == 0  # the woken wait forgot its deadline


async def test_rate_limited_starts_wait_for_tokens_on_the_clock(clock, backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    for index in range(5):
        await q.add("clock.record", [f"r{index}"])
    async with running_worker(unique_name, backend, concurrency=10, rate_limit=2, rate_interval=10):
        await eventually(lambda: len(runs) == 2, what="a full bucket's two starts")
        for expected in (3, 4, 5):  # then one start per 5 s of the clock
            for _ in range(20):  # let anything that could start, start: no token is due
                await anyio.lowlevel.checkpoint()
            assert len(runs) == expected - 1
            clock.advance(5)
            await eventually(lambda expected=expected: len(runs) == expected, what=f"start {expected}")
    throttled = [e for e in events if e.name == "job:throttled"]
    assert [e.ratelimit_wait_s for e in throttled] == [5.0, 5.0, 5.0]
    assert [e.ts - e.started_at for e in throttled] == [5.0, 5.0, 5.0]  # both read from the worker's clock
    started = {e.job_id: e for e in events if e.name == "job:started"}
    for e in throttled:
        assert started[e.job_id].ratelimit_wait_s == e.ratelimit_wait_s
        assert named(events, e.job_id)[1:3] == ["job:throttled", "job:started"]

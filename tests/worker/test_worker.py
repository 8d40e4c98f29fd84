"""The worker model on both backends, one test per behaviour of the seed and the core issue.

The in-memory variant runs on a FakeClock: nothing in it waits for real time to pass (backoffs pass as a
test moves the clock with ``eventually_on``); the Redis variant keeps the fast real timings of
``fast_settings``, as Redis's TIME decides there.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import anyio
import pytest

from asyncmq_otel import Queue, Worker, task
from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.errors import DuplicateJob, JobArgumentError, PayloadTooLarge
from asyncmq_otel.events import LifecycleEvent
from asyncmq_otel.settings import override_settings
from asyncmq_otel.workers import WorkerContext, handle_job, process_job
from tests.support.poll import clock_of, eventually, eventually_on
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

# Behaviours that take real time on Redis (its TIME decides) run here on Redis only; on the in-memory
# backend, tests/worker/test_worker_clock.py drives the same behaviours with a FakeClock.
redis_only = pytest.mark.parametrize(
    "backend", [pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)

gauge = {"now": 0, "max": 0}
log: list[tuple[str, float]] = []
attempts: dict[str, int] = {}
threads: list[int] = []


@task("tq", name="t.gauge")
async def gauged(delay: float) -> None:
    gauge["now"] += 1
    gauge["max"] = max(gauge["max"], gauge["now"])
    try:
        await anyio.sleep(delay)
    finally:
        gauge["now"] -= 1


@task("tq", name="t.record")
async def record(label: str) -> str:
    log.append((label, time.monotonic()))
    return label


@task("tq", name="t.add")
def add(a: int, b: int) -> int:
    threads.append(threading.get_ident())
    return a + b


@task("tq", name="t.flaky", retries=2, backoff=0.05)
async def flaky(key: str, failures: int) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] <= failures:
        raise ValueError(f"attempt {attempts[key]} failed")
    return "ok"


@task("tq", name="t.exp", retries=2, backoff={"type": "exponential", "delay": 0.05})
async def always_fails() -> None:
    raise KeyError("nope")


@task("tq", name="t.hang", retries=1, timeout=0.1)
async def hang() -> None:
    await anyio.sleep_forever()


@task("tq", name="t.block")
async def block_until_cancelled(key: str) -> None:
    attempts[key] = attempts.get(key, 0) + 1
    await anyio.sleep_forever()


@task("tq", name="t.unserialisable")
async def returns_object() -> object:
    return object()


@task("tq", name="t.big")
async def returns_big(size: int) -> str:
    return "x" * size


@task("tq", name="t.progress", progress=True)
async def with_progress(report_progress) -> str:
    report_progress(50.0, {"step": "half"})
    report_progress(100.0)
    return "done"


@task("tq", name="t.sync_progress", progress=True)
def sync_with_progress(report_progress) -> str:
    report_progress(10.0)
    return "done"


@pytest.fixture
def memory_clock() -> FakeClock:
    """The in-memory backend's clock (tests/support/fixtures.py): fake, moved only by the tests."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset() -> None:
    gauge.update(now=0, max=0)
    log.clear()
    attempts.clear()


def named(events: list[LifecycleEvent], job_id: str) -> list[str]:
    return [e.name for e in events if e.job_id == job_id]


async def in_state(queue: Queue, job_id: str, state: str) -> bool:
    return await queue.get_job_state(job_id) == state


async def wait_state(queue: Queue, job_id: str, state: str, timeout: float = 5.0) -> None:
    await eventually(lambda: in_state(queue, job_id, state), timeout=timeout, what=f"job {job_id} {state}")


# -- process_job / _run_with_limits ------------------------------------------------------------------
async def test_limiter_caps_parallelism_at_concurrency(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("t.gauge", [0.05]) for _ in range(12)]
    async with running_worker(unique_name, backend, concurrency=3):
        for job_id in ids:
            await wait_state(q, job_id, "completed")
    assert gauge["max"] == 3


@redis_only
async def test_rate_limiter_caps_throughput_and_reports_throttling(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    for i in range(12):
        await q.add("t.record", [str(i)])
    async with running_worker(unique_name, backend, concurrency=10, rate_limit=4, rate_interval=0.4):
        await eventually(lambda: len(log) == 12)
    starts = sorted(t for _, t in log)
    # A full bucket of 4, then 10 a second: the last 8 starts need at least 0.8 s.
    assert starts[-1] - starts[0] >= 0.7
    throttled = [e for e in events if e.name == "job:throttled"]
    assert throttled
    assert all(e.ratelimit_wait_s and e.ratelimit_wait_s > 0.001 for e in throttled)
    started = {e.job_id: e for e in events if e.name == "job:started"}
    for e in throttled:
        assert started[e.job_id].ratelimit_wait_s == pytest.approx(e.ratelimit_wait_s)
        assert named(events, e.job_id)[1:3] == ["job:throttled", "job:started"]


async def test_pause_holds_jobs_and_resume_releases_them_promptly(unique_name, events):
    paused_claims = {"n": 0}

    class CountingBackend(InMemoryBackend):
        async def claim(self, queue, worker_id, count, lease):
            reply = await super().claim(queue, worker_id, count, lease)
            paused_claims["n"] += reply.paused
            return reply

    backend = CountingBackend(clock=FakeClock())  # never moved: a wait for block_timeout would never end
    q = Queue(unique_name, backend=backend)
    await q.pause()
    assert await q.is_paused()
    ids = [await q.add("t.record", [str(i)]) for i in range(3)]
    async with running_worker(unique_name, backend):
        await eventually(lambda: paused_claims["n"] >= 1, what="a claim answered PAUSED")
        assert (await q.counts())["waiting"] == 3
        assert log == []
        await q.resume()  # pushes wake tokens: the worker claims without waiting out block_timeout
        for job_id in ids:
            await wait_state(q, job_id, "completed")
    assert [e.name for e in events if e.name.startswith("queue:")] == ["queue:paused", "queue:resumed"]


async def test_priorities_lower_first_and_fifo_within_a_priority(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    for label, priority in [("low1", 9), ("norm1", 5), ("high1", 1), ("norm2", 5), ("high2", 1)]:
        await q.add("t.record", [label], priority=priority)
    async with running_worker(unique_name, backend, concurrency=1):
        await eventually(lambda: len(log) == 5)
    assert [label for label, _ in log] == ["high1", "high2", "norm1", "norm2", "low1"]


# -- handle_job lifecycle ----------------------------------------------------------------------------
async def test_success_events_carry_full_payloads_in_order(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.add", [2, 3])
    async with running_worker(unique_name, backend) as worker:
        await wait_state(q, job_id, "completed")
    assert await q.get_job_result(job_id) == 5
    assert threads[-1] != threading.get_ident()  # sync handlers run in a worker thread
    assert named(events, job_id) == ["job:enqueued", "job:started", "job:completed"]
    started, completed = (e for e in events if e.job_id == job_id and e.name != "job:enqueued")
    for e in (started, completed):
        assert (e.queue, e.task, e.attempt, e.max_attempts, e.priority) == (unique_name, "t.add", 1, 1, 5)
        assert (e.worker_id, e.group) == (worker.worker_id, "default")
        assert e.enqueued_at and e.eligible_at and e.started_at and e.wait_s is not None
    assert completed.result == 5
    assert completed.finished_at >= completed.started_at
    assert completed.duration_s is not None and completed.duration_s >= 0
    worker_events = [e.name for e in events if e.name.startswith("worker:")]
    assert worker_events[0] == "worker:started"
    assert worker_events[-1] == "worker:stopped"


async def test_retries_with_backoff_then_success(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.flaky", ["k1", 1], retries=2, backoff=0.05)
    async with running_worker(unique_name, backend):
        await eventually_on(
            clock_of(backend), lambda: in_state(q, job_id, "completed"), what="completed after a retry"
        )
    assert named(events, job_id) == [
        "job:enqueued",
        "job:started",
        "job:retried",
        "job:started",
        "job:completed",
    ]
    retried = next(e for e in events if e.name == "job:retried")
    assert retried.backoff_s == 0.05
    assert retried.error_type == "ValueError"
    assert retried.error_message == "attempt 1 failed"
    assert isinstance(retried.exception, ValueError)
    starts = [e for e in events if e.name == "job:started"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[1].started_at - retried.finished_at >= 0.045
    assert starts[1].eligible_at >= retried.finished_at  # the wait excludes the backoff


async def test_retries_exhausted_go_to_the_dlq_with_exponential_backoff(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await always_fails.using(backend=backend, queue=unique_name).enqueue()
    async with running_worker(unique_name, backend):
        await eventually_on(
            clock_of(backend), lambda: in_state(q, job_id, "failed"), what="failed after two retries"
        )
    assert [e.backoff_s for e in events if e.name == "job:retried"] == [0.05, 0.1]
    failed = next(e for e in events if e.name == "job:failed")
    assert (failed.reason, failed.error_type, failed.attempt, failed.max_attempts) == (
        "failed",
        "KeyError",
        3,
        3,
    )
    dead = await q.dlq()
    assert [(d["id"], d["dlq_reason"], d["error"]["type"]) for d in dead] == [(job_id, "failed", "KeyError")]
    assert "Traceback" in dead[0]["error"]["traceback"]


@redis_only
async def test_task_timeout_cancels_the_attempt_and_counts_as_a_failure(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await hang.using(backend=backend, queue=unique_name).enqueue()
    started = time.monotonic()
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "failed")
    assert time.monotonic() - started < 2.0
    assert named(events, job_id) == [
        "job:enqueued",
        "job:started",
        "job:retried",
        "job:started",
        "job:failed",
    ]
    assert {e.error_type for e in events if e.name in {"job:retried", "job:failed"}} == {
        "asyncmq_otel.errors.JobTimeout"
    }


@redis_only
async def test_delayed_job_runs_after_its_delay_on_a_plain_worker(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    enqueued = time.monotonic()
    job_id = await q.add("t.record", ["later"], delay=0.3)
    assert await q.get_job_state(job_id) == "delayed"
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "completed")
    assert log[0][1] - enqueued >= 0.29
    delayed = next(e for e in events if e.name == "job:delayed")
    assert delayed.delay_s == 0.3


async def test_job_picked_before_delay_until_goes_back_to_delayed_without_firing(
    backend, unique_name, events
):
    # A stored job whose delay_until lies ahead of the claim time (e.g. written by another producer).
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.record", ["early"])
    claimed = (await backend.claim(unique_name, "w", 1, 30)).jobs[0]
    assert claimed.job is not None
    now = time.time()
    claimed.job.delay_until = now + 60
    await handle_job(unique_name, dataclasses.replace(claimed, claimed_at=now), backend)
    assert log == []
    assert await q.get_job_state(job_id) == "waiting"  # the backend's own delay_until had passed
    assert [e.name for e in events if e.job_id == job_id][-1] == "job:delayed"
    assert (await q.get_job(job_id))["attempts"] == 0  # the pickup gave its attempt back


async def test_cancelled_while_queued_never_runs(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.record", ["cancelled"], delay=0.2)
    assert await q.cancel_job(job_id)
    async with running_worker(unique_name, backend):
        other = await q.add("t.record", ["other"])
        await wait_state(q, other, "completed")
    assert await q.get_job_state(job_id) == "cancelled"
    assert [label for label, _ in log] == ["other"]
    cancelled = next(e for e in events if e.name == "job:cancelled")
    assert (cancelled.job_id, cancelled.reason) == (job_id, "queued")
    assert not await q.cancel_job(job_id)  # already finished


async def test_cancelled_while_running_stops_at_the_next_await(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.block", ["c1"])
    async with running_worker(unique_name, backend):
        await eventually(lambda: attempts.get("c1") == 1)
        assert await q.cancel_job(job_id)
        await wait_state(q, job_id, "cancelled", timeout=1.0)
    assert named(events, job_id) == ["job:enqueued", "job:started", "job:cancelled"]
    assert next(e for e in events if e.name == "job:cancelled").reason == "running"


async def test_unknown_task_is_dead_lettered_without_retries(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("nope.task", retries=3)
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "failed")
    assert named(events, job_id) == ["job:enqueued", "job:failed"]
    failed = next(e for e in events if e.name == "job:failed")
    assert (failed.reason, failed.error_type) == ("unknown_task", "unknown_task")
    assert (await q.get_job(job_id))["dlq_reason"] == "unknown_task"


async def test_malformed_stored_job_is_dead_lettered_without_running(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    # Written straight into the backend, as a producer in another language (or an attacker) might.
    await backend.enqueue(unique_name, EnqueueItem("bad1", "\x80 not json"))
    await backend.enqueue(unique_name, EnqueueItem("bad2", '{"id": "bad2", "task": 3, "queue": "x"}'))
    async with running_worker(unique_name, backend):
        await wait_state(q, "bad1", "failed")
        await wait_state(q, "bad2", "failed")
    assert {d["dlq_reason"] for d in await q.dlq()} == {"malformed_payload"}
    assert {e.reason for e in events if e.name == "job:failed"} == {"malformed_payload"}


async def test_unserialisable_and_oversized_results_fail_without_retry(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    bad = await q.add("t.unserialisable", retries=2)
    with override_settings(max_result_bytes=1000):
        big = await q.add("t.big", [5000], retries=2)
        async with running_worker(unique_name, backend):
            await wait_state(q, bad, "failed")
            await wait_state(q, big, "failed")
    errors = {d["id"]: d["error"]["type"] for d in await q.dlq()}
    assert errors == {
        bad: "asyncmq_otel.errors.ResultSerializationError",
        big: "asyncmq_otel.errors.ResultTooLarge",
    }
    assert not [e for e in events if e.name == "job:retried"]
    assert "the handler ran" in (await q.get_job(big))["error"]["message"]


async def test_progress_events_carry_the_job_id_for_async_and_sync_tasks(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    a = await q.add("t.progress")
    s = await q.add("t.sync_progress")
    async with running_worker(unique_name, backend):
        await wait_state(q, a, "completed")
        await wait_state(q, s, "completed")
    progress = [(e.job_id, e.progress, e.progress_data) for e in events if e.name == "job:progress"]
    assert (a, 50.0, {"step": "half"}) in progress
    assert (a, 100.0, None) in progress
    assert (s, 10.0, None) in progress
    assert named(events, a) == [
        "job:enqueued",
        "job:started",
        "job:progress",
        "job:progress",
        "job:completed",
    ]


async def test_calling_a_task_runs_the_function_directly():
    assert add(2, 2) == 4
    assert await with_progress() == "done"  # a stand-in report_progress is passed


# -- producer validation and the queue API -----------------------------------------------------------
async def test_bad_arguments_and_oversized_payloads_store_nothing(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    with pytest.raises(JobArgumentError, match=r"args\[1\]"):
        await q.add("t.record", [1, {1, 2}])
    with pytest.raises(TypeError, match=r'kwargs\["when"\]'):
        await q.add("t.record", kwargs={"when": object()})
    with pytest.raises(PayloadTooLarge) as info:
        await q.add("t.record", ["x" * (2 * 1024 * 1024)])
    assert info.value.limit == 1024 * 1024
    assert info.value.size > info.value.limit
    assert sum((await q.counts()).values()) == 0


async def test_enqueue_returns_the_id_for_delayed_jobs_and_duplicates(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    assert (
        await record.using(backend=backend, queue=unique_name, delay=5, job_id="fixed-1").enqueue("x")
        == "fixed-1"
    )
    assert await q.add("t.record", ["x"], job_id="fixed-1") == "fixed-1"
    assert [e.name for e in events if e.job_id == "fixed-1"] == ["job:delayed", "job:duplicated"]
    assert (await q.counts())["delayed"] == 1
    with override_settings(on_duplicate="raise"), pytest.raises(DuplicateJob):
        await q.add("t.record", ["x"], job_id="fixed-1")


async def test_add_bulk_validates_everything_first(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    ids = await q.add_bulk([{"task_id": "t.record", "args": [str(i)]} for i in range(5)])
    assert len(set(ids)) == 5
    with pytest.raises(JobArgumentError):
        await q.add_bulk(
            [{"task_id": "t.record", "args": ["ok"]}, {"task_id": "t.record", "args": [object()]}]
        )
    assert (await q.counts())["waiting"] == 5
    async with running_worker(unique_name, backend):
        for job_id in ids:
            await wait_state(q, job_id, "completed")
    assert sorted(label for label, _ in log) == [str(i) for i in range(5)]


async def test_admin_listing_retry_from_dlq_and_clean(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    failing = await q.add("t.flaky", ["k9", 1], retries=0)  # an explicit 0 wins over the task's 2
    ok = await q.add("t.record", ["fine"])
    async with running_worker(unique_name, backend):
        await wait_state(q, failing, "failed")
        await wait_state(q, ok, "completed")
        assert [j["id"] for j in await q.list_jobs("completed")] == [ok]
        assert await q.retry_job(failing)
        await wait_state(q, failing, "completed")  # the second attempt succeeds
    assert await q.get_job_result(failing) == "ok"
    assert await q.dlq() == []
    assert await q.clean("completed") == 2
    assert (await q.counts())["completed"] == 0
    assert await q.get_job(ok) is None


# -- shutdown, stalls and fencing --------------------------------------------------------------------
async def test_graceful_stop_finishes_short_jobs_and_requeues_long_ones(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    short = await q.add("t.gauge", [0.05])
    long = await q.add("t.block", ["long"])
    worker = Worker(unique_name, backend=backend, shutdown_timeout=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await eventually(lambda: attempts.get("long") == 1 and gauge["max"] == 1)
        worker.stop()
    assert worker.state == "stopped"
    assert await q.get_job_state(short) == "completed"
    stored = await q.get_job(long)
    assert (stored["state"], stored["interrupts"]) == ("waiting", 1)
    assert named(events, long)[-1] == "job:interrupted"


async def test_second_stop_skips_the_drain_wait(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.block", ["s2"])
    worker = Worker(unique_name, backend=backend, shutdown_timeout=30)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await eventually(lambda: attempts.get("s2") == 1)
        worker.stop()
        worker.stop()
    assert time.monotonic() - started < 5
    assert await q.get_job_state(job_id) == "waiting"


@redis_only
async def test_a_dead_workers_job_is_redelivered_once_then_dead_lettered(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.record", ["redelivered"])
    ghost = await backend.claim(unique_name, "ghost-worker", 1, 0.2)  # claimed, never renewed: a crash
    assert ghost.jobs[0].id == job_id
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "completed")
    stored = await q.get_job(job_id)
    assert (stored["attempts"], stored["stalls"]) == (2, 1)
    assert named(events, job_id) == ["job:enqueued", "job:stalled", "job:started", "job:completed"]
    assert next(e for e in events if e.name == "job:stalled").reason == "lease_lost"
    # The ghost's late write is fenced.
    late = await backend.complete(unique_name, job_id, ghost.jobs[0].token, '"late"')
    assert late.status.value == "STALE"
    assert await q.get_job_result(job_id) == "redelivered"


@redis_only
async def test_lease_lost_more_than_max_stalls_goes_to_the_dlq_as_worker_lost(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.record", ["poison"])
    await backend.claim(unique_name, "ghost-1", 1, 0.0)

    async def first_loss_reaped() -> bool:  # a lease ending "now" is reapable from the next clock tick
        return bool((await backend.reap(unique_name, "reaper", 1, 1.0)).stalled)

    await eventually(first_loss_reaped)  # back to waiting, stalls = 1
    assert [j.id for j in (await backend.claim(unique_name, "ghost-2", 1, 0.0)).jobs] == [job_id]
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "failed")
        # the state is visible when the reap script has run; its event follows the reply to the worker
        await eventually(lambda: any(e.name == "job:failed" for e in events), what="job:failed emitted")
    assert (await q.get_job(job_id))["dlq_reason"] == "worker_lost"
    failed = next(e for e in events if e.name == "job:failed")
    assert (failed.reason, failed.error_type) == ("worker_lost", "worker_lost")


@redis_only
async def test_a_long_job_keeps_its_lease_through_renewal(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.gauge", [2.5])  # longer than two 1 s leases
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "completed", timeout=6)
    stored = await q.get_job(job_id)
    assert (stored["attempts"], stored["stalls"]) == (1, 0)


# -- entry points ------------------------------------------------------------------------------------
async def test_process_job_and_handle_job_work_standalone(backend, unique_name):
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("t.record", [str(i)]) for i in range(3)]
    await process_job(
        unique_name, anyio.CapacityLimiter(2), backend=backend, context=WorkerContext(burst=True)
    )
    for job_id in ids:
        assert await q.get_job_state(job_id) == "completed"
    manual = await q.add("t.add", [1, 1])
    claimed = (await backend.claim(unique_name, "manual", 1, 30)).jobs[0]
    await handle_job(unique_name, claimed, backend)
    assert await q.get_job_result(manual) == 2
    # AsyncMQ passes the stored job as a dict (with its claim token): decoded on the way in
    by_hand = await q.add("t.add", [2, 3])
    await backend.claim(unique_name, "manual", 1, 30)
    raw = await q.get_job(by_hand)
    assert raw is not None and raw["token"]
    await handle_job(unique_name, raw, backend)
    assert await q.get_job_result(by_hand) == 5


def test_asyncmq_names_stay_importable_as_the_engine_s_functions():
    import asyncmq_otel
    from asyncmq_otel import workers
    from asyncmq_otel.worker import claim_loop

    assert workers.process_job is claim_loop.claim_jobs is asyncmq_otel.process_job
    assert workers._run_with_limits is claim_loop.handle_within_limits is asyncmq_otel._run_with_limits
    assert "_run_with_limits" not in asyncmq_otel.__all__
    assert workers.handle_job is claim_loop.handle_job


def test_start_blocks_and_stop_works_from_another_thread(unique_name):
    backend = InMemoryBackend()  # a sync test: its backend must not belong to the test runner's loop
    q = Queue(unique_name, backend=backend)
    worker = Worker(unique_name, backend=backend)
    thread = threading.Thread(target=worker.start, kwargs={"handle_signals": False})
    thread.start()
    assert worker.wait_started(5)
    done = anyio.run(lambda: q.add("t.record", ["threaded"]))
    deadline = time.monotonic() + 5
    while anyio.run(q.get_job_state, done) != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert worker.state == "stopped"


async def test_a_rate_limited_worker_claims_nothing_it_has_no_token_for(backend, unique_name):
    """With its one token spent, the worker leaves the other jobs waiting (not held ``active``)."""
    q = Queue(unique_name, backend=backend)
    first = await q.add("t.block", ["r1"])
    others = [await q.add("t.record", [str(i)]) for i in range(2)]
    worker = Worker(
        unique_name, backend=backend, concurrency=3, rate_limit=1, rate_interval=30, shutdown_timeout=0.2
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await eventually(lambda: attempts.get("r1") == 1)
        # the claim loop now waits for a token, holding nothing: no wake-up can make it claim more
        await q.add("t.record", ["wake"])
        counts = await q.counts()
        assert (counts["active"], counts["waiting"]) == (1, 3)
        worker.stop()
    for job_id in others:
        stored = await q.get_job(job_id)
        assert (stored["state"], stored["attempts"], stored["stalls"]) == ("waiting", 0, 0)
    assert (await q.get_job(first))["interrupts"] == 1
    assert log == []


async def test_jobs_a_rate_limited_worker_has_no_token_for_go_to_another_worker(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("t.record", [str(i)]) for i in range(3)]

    def started_by() -> dict[str, str | None]:
        return {e.job_id: e.worker_id for e in events if e.name == "job:started" and e.job_id}

    async with running_worker(unique_name, backend, concurrency=3, rate_limit=1, rate_interval=60) as limited:
        await eventually(lambda: ids[0] in started_by(), what="the first job started")
        async with running_worker(unique_name, backend) as unlimited:
            for job_id in ids:
                await wait_state(q, job_id, "completed", timeout=10)
    assert started_by() == {
        ids[0]: limited.worker_id,
        ids[1]: unlimited.worker_id,
        ids[2]: unlimited.worker_id,
    }


async def test_a_burst_worker_on_several_queues_ends_with_its_last_job(unique_name):
    """Each queue's claim loop waits on the same idle signal, so none sleeps through the end."""
    backend = InMemoryBackend(clock=FakeClock())  # never moved: a wait for block_timeout would never end
    cpu, web = f"{unique_name}-cpu", f"{unique_name}-web"
    job_id = await Queue(cpu, backend=backend).add("t.gauge", [0.2])
    with override_settings(block_timeout=30.0):
        worker = Worker([cpu, web], backend=backend, burst=True)
        with anyio.fail_after(20):
            await worker.run()
    assert await Queue(cpu, backend=backend).get_job_state(job_id) == "completed"
    assert worker.state == "stopped"

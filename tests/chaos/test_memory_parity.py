"""Chaos row 35: InMemoryBackend parity, in-process workers on a backend fixture parametrised over
``InMemoryBackend`` and ``RedisBackend`` (the shared server), for the rows the matrix lists that no
backend-parametrised test covered yet:

19. 50 concurrent enqueues of one job id: one job, every caller gets the id, 49 ``job:duplicated``;
    the same while the finished job is retained (nothing runs again); after retention trimmed it, the
    id is a new job.
32. Cancel while waiting, delayed and running; without the cancel hint, a running job stops within
    about one renew interval (the renewer's ``CANCEL``).
33. A TTL that passes while the job waits: ``expired``, DLQ ``expired``, ``job:expired``, never run.

The other listed rows already run on both backends: 1, 3 and 4 (the in-process crash of a worker is
tests/worker/test_worker.py::test_a_dead_workers_job_is_redelivered_once_then_dead_lettered and
::test_lease_lost_more_than_max_stalls_goes_to_the_dlq_as_worker_lost), 6 (::test_task_timeout_...),
9 (::test_graceful_stop_finishes_short_jobs_and_requeues_long_ones), 14-16 replayed calls
(tests/backends/conformance/test_backend_conformance.py::test_enqueue_is_idempotent_by_id_and_nonce,
::test_complete_is_fenced_and_replays), 20-24 (tests/worker/test_worker.py::test_bad_arguments_...,
::test_unknown_task_..., ::test_malformed_stored_job_..., ::test_unserialisable_and_oversized_results_...).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.base import Backend
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.settings import Settings, override_settings
from tests.support.poll import eventually
from tests.support.redis_server import delete_prefix, unique_prefix
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

QUEUE = "parity"
RENEW_INTERVAL = 0.3
runs: dict[str, int] = {}


@task(QUEUE, name="parity.record")
async def record(key: str) -> str:
    runs[key] = runs.get(key, 0) + 1
    return key


@task(QUEUE, name="parity.block")
async def block(key: str) -> None:
    runs[key] = runs.get(key, 0) + 1
    await anyio.sleep_forever()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's async client


@pytest.fixture(autouse=True)
def fast() -> Iterator[Settings]:
    runs.clear()
    with override_settings(
        lease=1.0,
        renew_interval=RENEW_INTERVAL,
        reaper_interval=0.2,
        loop_block_limit=2.0,
        block_timeout=0.5,
        heartbeat_interval=0.2,
        shutdown_timeout=2.0,
    ) as config:
        yield config


Factory = Callable[..., Backend]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``make(hints=True, **options)``: a backend of the parametrised kind (closed afterwards)."""
    made: list[Backend] = []
    prefix = unique_prefix()
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make(*, hints: bool = True, **options: Any) -> Backend:
        backend: Backend
        if request.param == "memory":
            backend = (InMemoryBackend if hints else _without_hints(InMemoryBackend))(**options)
        else:
            from asyncmq_otel.backends.redis import RedisBackend

            kind = RedisBackend if hints else _without_hints(RedisBackend)
            backend = kind(url, prefix=prefix, retry_timeout=10.0, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()
    if url:
        delete_prefix(url, prefix)


def _without_hints(base: type[Any]) -> type[Any]:
    class NoHints(base):  # type: ignore[misc, valid-type]
        def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
            """Drop hints: only the renewer's CANCEL answer can stop a running handler."""

    return NoHints


@pytest.fixture
def events() -> Iterator[list[LifecycleEvent]]:
    captured: list[LifecycleEvent] = []
    bus.on("job:*", captured.append, inline=True)
    yield captured
    bus.off("job:*", captured.append)


async def _state(queue: Queue, job_id: str, state: str, timeout: float = 5.0) -> None:
    async def reached() -> bool:
        return await queue.get_job_state(job_id) == state

    await eventually(reached, timeout=timeout, what=f"{job_id} {state}")


def _named(events: list[LifecycleEvent], name: str, job_id: str) -> list[LifecycleEvent]:
    return [event for event in events if event.name == name and event.job_id == job_id]


@pytest.mark.timeout(60)
async def test_row19_fifty_concurrent_enqueues_of_one_id_then_retained_then_trimmed(
    make_backend: Factory, events: list[LifecycleEvent]
) -> None:
    backend = make_backend(keep_completed=1)
    queue = Queue(QUEUE, backend=backend)

    async def fifty() -> list[str]:
        replies: list[str] = []

        async def one() -> None:
            replies.append(await queue.add("parity.record", ["same"], job_id="same"))

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(one)
        return replies

    assert await fifty() == ["same"] * 50
    assert (len(_named(events, "job:enqueued", "same")), len(_named(events, "job:duplicated", "same"))) == (
        1,
        49,
    )
    assert (await queue.counts())["waiting"] == 1
    async with running_worker(QUEUE, backend):
        await _state(queue, "same", "completed")
        assert await fifty() == ["same"] * 50  # retained: every caller gets the id, nothing runs again
        assert len(_named(events, "job:duplicated", "same")) == 99
        assert await queue.get_job_state("same") == "completed"
        await queue.add("parity.record", ["other"], job_id="other")  # keep_completed=1 trims "same"
        await _state(queue, "other", "completed")
        assert await queue.get_job("same") is None
        assert await fifty() == ["same"] * 50  # after retention: one new job
        await _state(queue, "same", "completed")
    assert len(_named(events, "job:enqueued", "same")) == 2
    assert len(_named(events, "job:duplicated", "same")) == 99 + 49
    assert runs == {"same": 2, "other": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hints", [True, False], ids=["hint", "no-hint"])
async def test_row32_cancel_while_waiting_delayed_and_running(
    hints: bool, make_backend: Factory, events: list[LifecycleEvent]
) -> None:
    backend = make_backend(hints=hints)
    queue = Queue(QUEUE, backend=backend)
    waiting = await queue.add("parity.record", ["waiting"], job_id="waiting")
    delayed = await queue.add("parity.record", ["delayed"], delay=0.3, job_id="delayed")
    assert await queue.cancel_job(waiting)
    assert await queue.cancel_job(delayed)
    async with running_worker(QUEUE, backend):
        running = await queue.add("parity.block", ["running"], job_id="running")
        await eventually(lambda: runs.get("running") == 1, what="the job runs")
        cancelled_at = time.monotonic()
        assert await queue.cancel_job(running)
        await _state(queue, running, "cancelled", timeout=3)
        stopped_after = time.monotonic() - cancelled_at
        late = await queue.add("parity.record", ["after"], job_id="after")  # the delay has passed by now
        await _state(queue, late, "completed")
    assert stopped_after <= RENEW_INTERVAL + 0.3, stopped_after
    assert runs == {"running": 1, "after": 1}  # the cancelled queued jobs never ran, nothing re-ran
    assert {job_id: await queue.get_job_state(job_id) for job_id in (waiting, delayed, running)} == {
        waiting: "cancelled",
        delayed: "cancelled",
        running: "cancelled",
    }
    assert (await queue.get_job(running) or {})["attempts"] == 1  # not retried
    reasons = {
        job_id: [e.reason for e in _named(events, "job:cancelled", job_id)]
        for job_id in (waiting, delayed, running)
    }
    assert reasons == {waiting: ["queued"], delayed: ["queued"], running: ["running"]}


@pytest.mark.timeout(60)
async def test_row33_ttl_passed_while_waiting_expires_without_running(
    make_backend: Factory, events: list[LifecycleEvent]
) -> None:
    backend = make_backend()
    queue = Queue(QUEUE, backend=backend)
    job_id = await queue.add("parity.record", ["never"], ttl=0.05, job_id="ttl")
    enqueued_at = await backend.now()

    async def past() -> bool:  # the worker starts 200 ms after enqueue, by the backend's clock
        return await backend.now() >= enqueued_at + 0.2

    await eventually(past, timeout=5, what="200 ms passed")
    async with running_worker(QUEUE, backend):
        await _state(queue, job_id, "expired")
    assert runs == {}
    assert [(job["id"], job["dlq_reason"]) for job in await queue.dlq()] == [(job_id, "expired")]
    assert [e.name for e in events if e.job_id == job_id] == ["job:enqueued", "job:expired"]

"""One misbehaving handler fails its own job only: the worker and its other jobs carry on.

A handler may raise any ``BaseException`` (a library leaking ``asyncio.CancelledError``,
``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``); only the worker's own cancellation
stops the worker. And a job's stored envelope cannot choose the queue its telemetry names.
"""

from __future__ import annotations

import asyncio
import uuid

import anyio
import pytest

from asyncmq_otel import Queue, Worker, task
from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import LifecycleEvent
from asyncmq_otel.jobs import Job, dumps, error_type_name
from asyncmq_otel.testing import capture_telemetry
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]


class HandlerBaseError(BaseException):
    """A user-defined BaseException subclass (not an Exception)."""


RAISED: dict[str, type[BaseException]] = {
    "leaked-cancelled-error": asyncio.CancelledError,
    "system-exit": SystemExit,
    "keyboard-interrupt": KeyboardInterrupt,
    "generator-exit": GeneratorExit,
    "base-exception": HandlerBaseError,
}
gates: dict[str, anyio.Event] = {}
ran: dict[str, int] = {}


def _raise(kind: str) -> None:
    cls = RAISED[kind]
    raise cls(3) if cls is SystemExit else cls(f"raised by the handler ({kind})")


@task("he", name="he.raise_async")
async def raise_async(kind: str) -> None:
    ran[kind] = ran.get(kind, 0) + 1
    await anyio.lowlevel.checkpoint()
    _raise(kind)


@task("he", name="he.raise_sync")
def raise_sync(kind: str) -> None:
    ran[kind] = ran.get(kind, 0) + 1
    _raise(kind)


@task("he", name="he.neighbour")
async def neighbour(key: str) -> str:
    ran[key] = ran.get(key, 0) + 1
    await gates[key].wait()
    return key


@task("he", name="he.plain")
async def plain(value: str) -> str:
    return value


@task("he", name="he.fail")
async def fail(value: str) -> str:
    raise ValueError(value)


async def state_of(queue: Queue, job_id: str) -> str | None:
    return await queue.get_job_state(job_id)


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("kind", list(RAISED))
async def test_a_handler_raising_any_base_exception_fails_only_its_job(unique_name, events, kind, mode):
    backend = InMemoryBackend()
    q = Queue(unique_name, backend=backend)
    key = f"neighbour-{uuid.uuid4().hex[:8]}"
    gates[key] = anyio.Event()
    running_neighbour = await q.add("he.neighbour", [key])
    async with running_worker(unique_name, backend, concurrency=4) as worker:
        await eventually(lambda: ran.get(key) == 1, what="the neighbour job started")
        ran.pop(kind, None)
        bad = await q.add(f"he.raise_{mode}", [kind], retries=1)

        async def bad_failed() -> bool:
            return await state_of(q, bad) == "failed"

        await eventually(bad_failed, timeout=10, what="the bad job dead-lettered after its retry")
        assert ran[kind] == 2  # retry rules apply: retries=1 means a second attempt
        gates[key].set()

        async def neighbour_done() -> bool:
            return await state_of(q, running_neighbour) == "completed"

        await eventually(neighbour_done, what="the neighbour completed")
        assert worker.state == "running"
        after = await q.add("he.plain", ["after"])

        async def after_done() -> bool:
            return await state_of(q, after) == "completed"

        await eventually(after_done, what="a job enqueued afterwards completed")
    expected_type = error_type_name(RAISED[kind])
    stored = await q.get_job(bad)
    assert stored is not None
    assert (stored["dlq_reason"], stored["error"]["type"]) == ("failed", expected_type)
    bad_events = [e for e in events if e.job_id == bad]
    assert [e.name for e in bad_events] == [
        "job:enqueued", "job:started", "job:retried", "job:started", "job:failed"
    ]  # fmt: skip
    assert {e.error_type for e in bad_events if e.name in {"job:retried", "job:failed"}} == {expected_type}
    kept = await q.get_job(running_neighbour)
    assert kept is not None
    assert (kept["attempts"], kept["interrupts"], kept["stalls"]) == (1, 0, 0)
    assert ran[key] == 1


async def test_the_workers_own_cancellation_still_stops_it_and_requeues_the_job(unique_name):
    """An outer cancel scope is a real cancellation: the job goes back, the worker stops."""
    backend = InMemoryBackend()
    q = Queue(unique_name, backend=backend)
    key = f"held-{uuid.uuid4().hex[:8]}"
    gates[key] = anyio.Event()  # never set: the job runs until the worker is cancelled
    job_id = await q.add("he.neighbour", [key])
    worker = Worker(unique_name, backend=backend)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            await eventually(lambda: ran.get(key) == 1)
            group.cancel_scope.cancel()
    assert worker.state == "stopped"
    stored = await q.get_job(job_id)
    assert stored is not None
    assert (stored["state"], stored["interrupts"]) == ("waiting", 1)


async def test_a_stored_envelope_cannot_choose_the_queue_its_telemetry_names(unique_name):
    """Labels and attributes name the queue the worker claimed from, never the envelope's ``queue``."""
    backend = InMemoryBackend()
    q = Queue(unique_name, backend=backend)
    evil = f"evil-{uuid.uuid4().hex}"
    job = Job(id=uuid.uuid4().hex, task="he.plain", queue=evil, args=["minted?"])
    failing = Job(id=uuid.uuid4().hex, task="he.fail", queue=evil, args=["boom"])
    seen: list[LifecycleEvent] = []
    with capture_telemetry() as captured:
        for item in (job, failing):
            await backend.enqueue(unique_name, EnqueueItem(item.id, dumps(item.envelope())))
        async with running_worker(unique_name, backend):

            async def settled() -> bool:
                return await state_of(q, job.id) == "completed" and await state_of(q, failing.id) == "failed"

            await eventually(settled, timeout=10)
        seen = list(captured.events)
        samples = captured.metrics
        spans = captured.spans
        logs = captured.logs
    assert {e.queue for e in seen if e.job_id in {job.id, failing.id}} == {unique_name}
    assert not [s for s in samples if any(evil in str(v) for v in s.labels.values())]
    assert not [s for s in spans if evil in (s.name or "")]
    assert not [s for s in spans if any(evil in str(v) for v in (s.attributes or {}).values())]
    assert not [line for line in logs if any(evil in str(v) for v in line.values())]


async def test_cancelling_a_queued_job_names_the_queue_not_the_envelopes_field(unique_name, events):
    backend = InMemoryBackend()
    q = Queue(unique_name, backend=backend)
    evil = f"evil-{uuid.uuid4().hex}"
    job = Job(id=uuid.uuid4().hex, task="he.plain", queue=evil, args=["never"])
    await backend.enqueue(unique_name, EnqueueItem(job.id, dumps(job.envelope())))
    assert await q.cancel_job(job.id)
    assert [(e.name, e.queue) for e in events if e.job_id == job.id] == [("job:cancelled", unique_name)]

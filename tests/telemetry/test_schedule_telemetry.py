"""A fired job is observed like every other job, plus its schedule: spans, log lines, events."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from asyncmq_otel._scheduler import Fired, Scheduler
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.queues import Queue
from asyncmq_otel.schedules import schedule_job_id
from asyncmq_otel.tasks import TASK_REGISTRY, task
from asyncmq_otel.testing import Captured
from tests.support.poll import eventually
from tests.support.running import running_worker

from .spans import attrs, for_job, parent_id

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]


async def test_a_fired_job_has_a_root_send_span_and_its_schedule_everywhere(
    captured: Captured, unique_name: str
) -> None:
    name = f"{unique_name}.tick"

    @task(queue=unique_name, name=name)
    async def tick() -> str:
        return "ok"

    clock = FakeClock()
    backend = InMemoryBackend(clock=clock.time)
    fired: list[Fired] = []
    try:
        key = await Queue(unique_name, backend=backend).upsert_repeatable(name, every=60, key="hourly")
        clock.advance(60)
        # fired from inside someone else's span: the tick's job must not join that trace
        with trace.get_tracer("test").start_as_current_span("unrelated caller"):
            await Scheduler(backend, [unique_name], clock=clock, on_fired=fired.append).run_once()
        [due] = fired[0].dues
        job_id = schedule_job_id(key, due)
        async with running_worker(unique_name, backend):
            await eventually(lambda: bool(captured.events_named("job:completed")), what="tick ran")
    finally:
        TASK_REGISTRY.pop(name, None)

    (send,) = for_job(captured.spans, job_id, "send")
    assert parent_id(send) is None
    assert not send.links
    assert attrs(send)["asyncmq.schedule.key"] == "hourly"
    assert attrs(send)["asyncmq.schedule.due"] == due / 1000
    (process,) = for_job(captured.spans, job_id, "process")
    assert attrs(process)["asyncmq.schedule.key"] == "hourly"
    assert attrs(process)["asyncmq.schedule.due"] == due / 1000
    assert process.context.trace_id == send.context.trace_id  # the job's own trace, from its root
    [line] = [
        entry for entry in captured.logs_named("job.completed") if entry.get("messaging.message.id") == job_id
    ]
    assert line["asyncmq.schedule.key"] == "hourly"
    assert line["asyncmq.schedule.due"] == due / 1000
    [enqueued] = [e for e in captured.events_named("job:enqueued") if e.job_id == job_id]
    assert (enqueued.schedule_key, enqueued.schedule_due) == ("hourly", due / 1000)

"""A fired job is observed like every other job, plus its schedule: spans, log lines, events."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.queues import Queue
from asyncmq_otel.schedules import ScheduleRecord, ScheduleSpec, schedule_job_id
from asyncmq_otel.tasks import TASK_REGISTRY, task
from asyncmq_otel.telemetry import _schedule_metrics
from asyncmq_otel.telemetry._sampler import QueueGauges, QueueSampler
from asyncmq_otel.telemetry._schedule_metrics import ScheduleGauges, ScheduleLabels
from asyncmq_otel.testing import Captured
from asyncmq_otel.worker.scheduler import Fired, Scheduler
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


async def test_fired_ticks_are_counted_with_their_lag(captured: Captured, unique_name: str) -> None:
    clock = FakeClock()
    backend = InMemoryBackend(clock=clock.time)
    q = Queue(unique_name, backend=backend)
    await q.upsert_repeatable("app.metered", every=60, key="hourly")
    await q.upsert_repeatable("app.metered", every=10, key="often", catch_up="all")
    clock.advance(61.5)  # hourly: one tick 1.5 s late; often: six ticks, the oldest 51.5 s late
    await Scheduler(backend, [unique_name], clock=clock).run_once()
    fired = captured.metric_value
    assert (
        fired("asyncmq_schedule_fired_total", messaging_destination_name=unique_name, schedule="hourly") == 1
    )
    assert (
        fired("asyncmq_schedule_fired_total", messaging_destination_name=unique_name, schedule="often") == 6
    )
    labels = {"messaging_destination_name": unique_name, "schedule": "hourly"}
    assert captured.metric_value("asyncmq_schedule_lag_seconds_count", **labels) == 1
    assert captured.metric_value("asyncmq_schedule_lag_seconds_sum", **labels) == pytest.approx(1.5, abs=0.01)
    often = {"messaging_destination_name": unique_name, "schedule": "often"}
    assert captured.metric_value("asyncmq_schedule_lag_seconds_sum", **often) == pytest.approx(
        1.5 + 11.5 + 21.5 + 31.5 + 41.5 + 51.5, abs=0.1
    )


def test_schedule_label_is_capped_beyond_the_declared_keys() -> None:
    labels = ScheduleLabels(limit=2)
    name = "tests.telemetry.declared_schedule"

    @task(queue="q", every=60, name=name)
    def declared() -> None:
        """A declared schedule: always its own label."""

    try:
        assert [labels(k) for k in ("a", "b", "c", "a")] == ["a", "b", "_OTHER", "a"]
        assert labels(name) == name  # declared in code: kept beyond the cap
        assert labels(None) == "_OTHER"
    finally:
        TASK_REGISTRY.pop(name, None)


async def test_the_queue_sampler_exports_next_run_and_interval(unique_name: str) -> None:
    clock = FakeClock()
    backend = InMemoryBackend(clock=clock.time)
    q = Queue(unique_name, backend=backend)
    await q.upsert_repeatable("app.sampled", every=300, key="five-min")
    await q.upsert_repeatable("app.sampled", cron="0 7 * * 1", key="weekly")
    await q.upsert_repeatable("app.sampled", every=1, key="paused")
    await q.pause_repeatable("paused")
    gauges = QueueGauges(interval=10.0)
    assert await QueueSampler(backend, gauges, queues=[unique_name]).sample_once()
    listed = {s["key"]: s for s in await q.list_repeatables()}
    assert dict(gauges.schedules.next_run()) == {
        (unique_name, "five-min"): listed["five-min"]["next_run"],
        (unique_name, "weekly"): listed["weekly"]["next_run"],
    }
    assert dict(gauges.schedules.intervals()) == {
        (unique_name, "five-min"): 300.0,
        (unique_name, "weekly"): 604800.0,
    }


def test_schedules_sharing_the_other_label_export_the_earliest_next_run_and_the_longest_interval(
    unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_schedule_metrics, "schedule_labels", ScheduleLabels(limit=0))
    now_ms = 1_000_000
    records = [
        ScheduleRecord.new(ScheduleSpec.build(unique_name, "app.sampled", every=every, key=key), now_ms)
        for key, every in (("slow", 60), ("fast", 5), ("middle", 30))
    ]
    gauges = ScheduleGauges(interval=10.0)
    gauges.update(unique_name, records)
    assert dict(gauges.next_run()) == {(unique_name, "_OTHER"): min(r.next_due_ms for r in records) / 1000}
    assert dict(gauges.intervals()) == {(unique_name, "_OTHER"): 60.0}

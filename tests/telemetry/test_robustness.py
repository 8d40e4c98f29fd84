"""An adapter that raises never changes a job's outcome; drops are counted."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry.providers import flush_and_shutdown
from asyncmq_otel.testing import Captured
from asyncmq_otel.workers import Worker
from tests.support.poll import eventually

pytestmark = pytest.mark.usefixtures("fast_settings")


@task("robust", name="robust.ok")
async def ok(n: int) -> int:
    return n


def adapter_errors(captured: Captured) -> list[dict[str, Any]]:
    return [
        line for line in captured.logs if str(line.get("event", "")).startswith("telemetry.adapter_error")
    ]


@pytest.mark.anyio
async def test_a_raising_listener_changes_no_outcome_and_is_counted(
    captured: Captured, backend, unique_name
) -> None:
    calls: list[str] = []

    def broken(event: LifecycleEvent) -> None:
        calls.append(event.name)
        raise RuntimeError("adapter bug")

    bus.on("job:*", broken, inline=True, signal="span")
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("robust.ok", args=[n]) for n in range(2)]
    with anyio.fail_after(10):
        await Worker(unique_name, backend=backend, burst=True).run()

    assert [await q.get_job_state(job_id) for job_id in ids] == ["completed", "completed"]
    assert [await q.get_job_result(job_id) for job_id in ids] == [0, 1]
    assert len(calls) == 6  # enqueued, started, completed for each job
    assert (
        captured.metric_value("asyncmq_telemetry_dropped_total", signal="span", reason="adapter_error") == 6
    )
    lines = adapter_errors(captured)
    assert len(lines) == 3  # once per (listener, event name)
    assert {line["level"] for line in lines} == {"error"}
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="completed") == 2
    assert len(captured.spans_named(f"process {unique_name}")) == 2


@pytest.mark.anyio
async def test_a_failing_telemetry_adapter_is_isolated_too(
    captured: Captured, backend, unique_name, monkeypatch
) -> None:
    from asyncmq_otel.telemetry import instrumentation

    state = instrumentation._state
    assert state is not None
    assert state.metrics is not None

    def explode(_event: LifecycleEvent) -> None:
        raise ValueError("metrics bug")

    # Replace the subscribed handler itself, so the bus calls the broken one.
    for sub in bus._subscriptions:
        if sub.pattern == "job:started" and sub.signal == "metric":
            monkeypatch.setattr(sub, "listener", explode)
    bus._routes.clear()
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("robust.ok", args=[7])
    with anyio.fail_after(10):
        await Worker(unique_name, backend=backend, burst=True).run()
    assert await q.get_job_state(job_id) == "completed"
    assert (
        captured.metric_value("asyncmq_telemetry_dropped_total", signal="metric", reason="adapter_error") == 1
    )
    assert len(adapter_errors(captured)) == 1
    (process,) = captured.spans_named(f"process {unique_name}")
    assert dict(process.attributes or {})["asyncmq.job.outcome"] == "completed"


@pytest.mark.anyio
async def test_a_blocking_queued_listener_does_not_delay_job_events(
    captured: Captured, backend, unique_name
) -> None:
    release = threading.Event()
    seen: list[str] = []

    def slow(event: LifecycleEvent) -> None:
        seen.append(event.name)
        release.wait(timeout=10)

    bus.on("job:*", slow)  # a queued (default) listener: called by the dispatcher in a thread
    q = Queue(unique_name, backend=backend)
    first = await q.add("robust.ok", args=[1])
    second = await q.add("robust.ok", args=[2])
    worker = Worker(unique_name, backend=backend)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)

        async def both_done() -> bool:
            return [await q.get_job_state(j) for j in (first, second)] == ["completed", "completed"]

        await eventually(both_done, what="both jobs completed while the listener is blocked")
        # Every inline consumer already saw the whole lifecycle; the blocked listener is still on its first event.
        assert len(captured.events_named("job:completed")) == 2
        assert len(seen) <= 1
        release.set()
        await eventually(lambda: len(seen) == 6, what="the queued listener caught up")
        worker.stop()
    assert seen == [e.name for e in captured.events if e.name.startswith("job:")]


def test_a_full_event_queue_is_counted_for_queued_listeners_only(captured: Captured) -> None:
    bus.on("queue:*", lambda _event: None)  # queued, with no dispatcher running
    saved = bus.queue_size
    bus.queue_size = 2
    try:
        for _ in range(5):
            bus.emit(LifecycleEvent("queue:paused", time.time(), queue="full"))
    finally:
        bus.queue_size = saved
    assert captured.metric_value("asyncmq_telemetry_dropped_total", signal="event", reason="queue_full") == 3
    assert len(captured.logs_named("queue.paused")) == 5  # inline adapters saw every event


class _StuckExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.entered.set()
        self.release.wait(timeout=10)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_flush_honours_its_timeout_and_says_so(caplog) -> None:
    exporter = _StuckExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1))
    provider.get_tracer("t").start_span("stuck").end()
    assert exporter.entered.wait(timeout=5)
    provider.get_tracer("t").start_span("queued behind it").end()
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="asyncmq_otel.telemetry"):
        assert flush_and_shutdown([provider], 0.3, shutdown=False) is False
    assert time.monotonic() - started < 2.0
    assert "telemetry.flush_timeout" in caplog.text
    exporter.release.set()
    provider.shutdown()

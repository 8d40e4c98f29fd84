"""Paths that are awkward to provoke with a real worker, fed to the adapters as synthetic events and writes."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from asyncmq_otel import telemetry
from asyncmq_otel.events import LifecycleEvent, Operation, bus
from asyncmq_otel.jobs import Job
from asyncmq_otel.tasks import task
from asyncmq_otel.testing import Captured, capture_telemetry

from .spans import assert_settle, attrs, event, event_names

QUEUE = "synthetic"


@task(QUEUE, name="synthetic.task")
async def handler() -> None:
    """Registered so that metric labels keep the task name."""


def job_event(name: str, **fields: object) -> LifecycleEvent:
    now = time.time()
    base: dict[str, object] = {
        "queue": QUEUE,
        "job_id": "j1",
        "task": "synthetic.task",
        "attempt": 2,
        "max_attempts": 3,
        "priority": 1,
        "enqueued_at": now - 10,
        "eligible_at": now - 1,
        "worker_id": "w1",
        "group": "g1",
    }
    base.update(fields)
    return LifecycleEvent(name, now, **base)  # type: ignore[arg-type]


def test_worker_lost_is_a_settle_by_the_reaper(captured: Captured) -> None:
    bus.emit(job_event("job:failed", reason="worker_lost", error_type="worker_lost", finished_at=time.time()))
    (settle,) = captured.spans
    assert_settle(settle, queue=QUEUE, job_id="j1", op_name="dead_letter", outcome="failed")
    assert settle.status.status_code is StatusCode.ERROR
    assert settle.status.description == "worker_lost"
    assert attrs(settle)["error.type"] == "worker_lost"
    assert attrs(settle)["messaging.client.id"] == "w1"
    assert event(settle, "asyncmq.job.dead_lettered") == {"asyncmq.dlq.reason": "worker_lost"}
    assert settle.parent is None
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="worker_lost") == 1
    assert (
        captured.metric_value("messaging_client_consumed_messages_total", asyncmq_task_name="synthetic.task")
        == 0
    )
    assert captured.metric_value("asyncmq_job_attempts_sum", outcome="failed") == 2
    assert captured.logs_named("job.failed")[0]["asyncmq.dlq.reason"] == "worker_lost"


def test_stalled_jobs_are_counted_without_a_span(captured: Captured) -> None:
    bus.emit(job_event("job:stalled", reason="lease_lost"))
    assert captured.spans == []
    assert captured.metric_value("asyncmq_job_stalled_total", asyncmq_task_name="synthetic.task") == 1
    (line,) = captured.logs_named("job.stalled")
    assert (line["level"], line["reason"]) == ("warning", "lease_lost")


def test_a_stale_settle_ends_the_attempt_span_and_counts_the_rejected_write(captured: Captured) -> None:
    bus.emit(job_event("job:started", started_at=time.time(), wait_s=0.5, ratelimit_wait_s=0.0))
    current = trace.get_current_span()
    assert current.is_recording()
    job = Job(id="j1", task="synthetic.task", queue=QUEUE, attempts=2)
    with bus.operation(Operation("ack", QUEUE, [job])) as op:
        op.outcome = "STALE"
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached in the same task
    (process,) = captured.spans
    assert "asyncmq.job.outcome" not in attrs(process)
    assert captured.metric_value("asyncmq_stale_writes_rejected_total", messaging_operation_name="ack") == 1
    bus.emit(job_event("job:completed", finished_at=time.time()))  # a late outcome is ignored by tracing
    assert len(captured.spans) == 1


def test_progress_and_outcomes_without_an_open_span_are_ignored(captured: Captured) -> None:
    bus.emit(job_event("job:progress", progress=50.0))
    bus.emit(job_event("job:completed", finished_at=time.time(), duration_s=0.1))
    bus.emit(job_event("job:interrupted", finished_at=time.time(), duration_s=0.1))
    assert captured.spans == []
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="completed") == 1
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="interrupted") == 1
    assert captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name=QUEUE) == 0


def test_failed_after_interrupts_is_an_error_without_exception_event(captured: Captured) -> None:
    bus.emit(job_event("job:started", started_at=time.time(), wait_s=0.1))
    bus.emit(
        job_event(
            "job:failed",
            reason="interrupted",
            error_type="interrupted",
            finished_at=time.time(),
            duration_s=0.2,
        )
    )
    (process,) = captured.spans
    assert process.kind is SpanKind.CONSUMER
    assert process.status.status_code is StatusCode.ERROR
    assert attrs(process)["error.type"] == "interrupted"
    assert attrs(process)["asyncmq.job.outcome"] == "failed"
    assert "exception" not in event_names(process)
    assert event(process, "asyncmq.job.dead_lettered") == {"asyncmq.dlq.reason": "interrupted"}
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="interrupted") == 1
    assert captured.metric_value("asyncmq_job_errors_total", outcome="failed", error_type="interrupted") == 1
    assert captured.metric_value("messaging_process_duration_seconds_count", outcome="failed") == 1


def test_invalid_stored_context_gives_a_root_span_without_creation_link(captured: Captured) -> None:
    bus.emit(job_event("job:started", trace_context={"traceparent": "not-a-traceparent"}, wait_s=0.0))
    bus.emit(job_event("job:completed", finished_at=time.time()))
    (process,) = captured.spans
    assert process.parent is None
    assert process.links == ()


def test_throttle_wait_reaches_the_settle_span(captured: Captured) -> None:
    start = time.time() - 0.5
    bus.emit(job_event("job:throttled", ratelimit_wait_s=0.25, started_at=start))
    bus.emit(job_event("job:expired", reason="expired", ratelimit_wait_s=0.25, finished_at=time.time()))
    (settle,) = captured.spans
    assert attrs(settle)["asyncmq.ratelimit.wait_s"] == 0.25
    throttled = next(e for e in settle.events if e.name == "asyncmq.job.throttled")
    assert throttled.timestamp == int(start * 1e9)
    assert captured.metric_value("asyncmq_ratelimit_throttled_total", messaging_destination_name=QUEUE) == 1


def test_uninstrument_ends_spans_still_open() -> None:
    with capture_telemetry() as captured:
        bus.emit(job_event("job:started", wait_s=0.0))
        telemetry.uninstrument()
        (process,) = captured.spans
        assert "asyncmq.job.outcome" not in attrs(process)
        assert trace.get_current_span() is trace.INVALID_SPAN


def test_server_address_and_port_are_set_when_the_backend_reports_them(captured: Captured) -> None:
    from dataclasses import dataclass

    @dataclass(slots=True)
    class RemoteWrite(Operation):
        server_address: str = "redis.internal"
        server_port: int = 6380

    @dataclass(frozen=True, slots=True)
    class RemoteEvent(LifecycleEvent):
        server_address: str = "redis.internal"
        server_port: int = 6380

    with bus.operation(RemoteWrite("pause", QUEUE)):
        pass
    base = job_event("job:started", wait_s=0.0).as_dict()
    bus.emit(RemoteEvent(**base))
    bus.emit(job_event("job:completed", finished_at=time.time()))
    pause, process = sorted(captured.spans, key=lambda s: s.start_time or 0)
    for span in (pause, process):
        assert (attrs(span)["server.address"], attrs(span)["server.port"]) == ("redis.internal", 6380)


def test_stored_contexts_are_read_as_the_w3c_propagator_reads_them(captured: Captured) -> None:
    # Plain traceparents are read by a short path; every carrier must give the parent and creation
    # link the propagator gives (tracestate kept, whitespace accepted, invalid headers make a root).
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    carriers = [
        {"traceparent": f"00-{trace_id}-{span_id}-01"},
        {"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "vendor=opaque"},
        {"traceparent": f" 00-{trace_id}-{span_id}-01\t"},
        {"traceparent": f"00-{trace_id.upper()}-{span_id}-01"},
        {"traceparent": f"00-{'0' * 32}-{span_id}-01"},
        {"traceparent": f"00-{trace_id}-{'0' * 16}-01"},
        {"traceparent": f"ff-{trace_id}-{span_id}-01"},
        {"traceparent": f"00-{trace_id}-{span_id}-01-extra"},
        {"traceparent": f"01-{trace_id}-{span_id}-01-extra"},
    ]
    for number, carrier in enumerate(carriers):
        job = {"job_id": f"w3c-{number}", "trace_context": carrier}
        bus.emit(job_event("job:started", wait_s=0.0, **job))
        bus.emit(job_event("job:completed", finished_at=time.time(), **job))
    assert len(captured.spans) == len(carriers)
    for carrier, span in zip(
        carriers, sorted(captured.spans, key=lambda s: attrs(s)["messaging.message.id"]), strict=True
    ):
        expected = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()
        if expected.is_valid:
            assert span.parent == expected, carrier
            assert span.context.trace_id == expected.trace_id
            assert [link.context for link in span.links] == [expected]
            assert span.links[0].context.trace_state == expected.trace_state
        else:
            assert span.parent is None, carrier
            assert span.links == ()

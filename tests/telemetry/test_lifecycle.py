"""Span trees, metric deltas and log lines for every lifecycle path, driving a real Worker."""

from __future__ import annotations

import re
import time

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.settings import override_settings
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry import tracing
from asyncmq_otel.testing import Captured
from asyncmq_otel.workers import Worker
from tests.support.poll import eventually
from tests.support.running import running_worker

from .spans import (
    assert_process,
    assert_settle,
    attrs,
    ctx,
    event,
    event_names,
    for_job,
    ids,
    links,
    parent_id,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

tracer = trace.get_tracer("tests.telemetry")
runs: dict[str, int] = {}
running: set[str] = set()


@task("tel", name="tel.ok")
async def ok(value: int) -> int:
    with tracer.start_as_current_span("handler work"):
        return value * 2


@task("tel", name="tel.sync_ok")
def sync_ok(value: int) -> int:
    with tracer.start_as_current_span("sync handler work"):
        return value + 1


class FlakyError(Exception):
    """A non-builtin error type: its name carries the module."""


@task("tel", name="tel.flaky", retries=2, backoff=0.01)
async def flaky(key: str, failures: int) -> str:
    runs[key] = runs.get(key, 0) + 1
    if runs[key] <= failures:
        raise FlakyError(f"attempt {runs[key]} failed")
    return "ok"


@task("tel", name="tel.block")
async def block(key: str) -> None:
    running.add(key)
    await anyio.sleep_forever()


@task("tel", name="tel.hang", timeout=0.05)
async def hang() -> None:
    await anyio.sleep_forever()


@task("tel", name="tel.progress", progress=True)
async def with_progress(report_progress, steps: int) -> None:
    for step in range(steps):
        report_progress(100.0 * (step + 1) / steps)


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    running.clear()


async def wait_state(queue: Queue, job_id: str, state: str, timeout: float = 5.0) -> None:
    async def reached() -> bool:
        return await queue.get_job_state(job_id) == state

    await eventually(reached, timeout=timeout, what=f"{job_id} {state}")


async def drain(name: str, backend: InMemoryBackend, **options: object) -> None:
    with anyio.fail_after(10):
        await Worker(name, backend=backend, burst=True, **options).run()  # type: ignore[arg-type]


def by_name(captured: Captured, name: str) -> list[str]:
    return [line["event"] for line in captured.logs if line.get("event", "").startswith(name)]


async def test_success_continues_the_producer_trace(captured: Captured, backend, unique_name) -> None:
    q = Queue(unique_name, backend=backend)
    with tracer.start_as_current_span("POST /orders") as request:
        job_id = await q.add("tel.ok", args=[21])
    await drain(unique_name, backend)

    spans = captured.spans
    (send,) = captured.spans_named(f"send {unique_name}")
    assert send.kind is SpanKind.PRODUCER
    assert parent_id(send) == request.get_span_context().span_id
    a = attrs(send)
    assert a["messaging.operation.type"] == "send"
    assert a["messaging.operation.name"] == "send"
    assert a["messaging.message.id"] == job_id
    assert a["asyncmq.task.name"] == "tel.ok"
    assert a["asyncmq.job.max_attempts"] == 1
    assert "asyncmq.job.eligible_at" not in a

    (process,) = for_job(spans, job_id, "process")
    assert_process(process, queue=unique_name, job_id=job_id, task="tel.ok", attempt=1, outcome="completed")
    assert parent_id(process) == ctx(send).span_id
    assert ctx(process).trace_id == ctx(send).trace_id
    assert links(process) == {"creation": ids(send)}
    assert "asyncmq.ratelimit.wait_s" not in attrs(process)
    (handler,) = captured.spans_named("handler work")
    assert parent_id(handler) == ctx(process).span_id

    assert captured.metric_value("messaging_client_sent_messages_total", messaging_operation_name="send") == 1
    assert captured.metric_value("messaging_client_consumed_messages_total", asyncmq_task_name="tel.ok") == 1
    assert (
        captured.metric_value("asyncmq_job_outcomes_total", outcome="completed", asyncmq_task_name="tel.ok")
        == 1
    )
    assert captured.metric_value("messaging_process_duration_seconds_count", asyncmq_task_name="tel.ok") == 1
    assert captured.metric_value("asyncmq_job_wait_duration_seconds_count", priority_class="normal") == 1
    assert captured.metric_value("asyncmq_job_e2e_duration_seconds_count", outcome="completed") == 1
    assert captured.metric_value("asyncmq_job_attempts_sum", outcome="completed") == 1
    for op in ("send", "ack"):
        assert captured.metric_value(
            "messaging_client_operation_duration_seconds_count", messaging_operation_name=op
        )
    assert captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name=unique_name) == 0
    assert captured.metric_value("asyncmq_job_outcomes_total", sink="otlp", outcome="completed") == 1

    started, completed = captured.logs_named("job.started"), captured.logs_named("job.completed")
    assert [line["level"] for line in (*started, *completed)] == ["debug", "info"]  # INFO: the outcome only
    for line in (*started, *completed):
        assert line["trace_id"] == format(ctx(process).trace_id, "032x")
        assert line["span_id"] == format(ctx(process).span_id, "016x")
        assert line["trace_flags"] == "01"
        assert line["messaging.message.id"] == job_id
        assert line["asyncmq.task.name"] == "tel.ok"
    assert completed[0]["asyncmq.job.outcome"] == "completed"
    assert isinstance(completed[0]["asyncmq.job.duration_s"], float)
    for line in captured.logs_named("worker.started") + captured.logs_named("worker.stopped"):
        assert "trace_id" not in line


async def test_sync_handler_spans_nest_under_the_process_span(
    captured: Captured, backend, unique_name
) -> None:
    job_id = await Queue(unique_name, backend=backend).add("tel.sync_ok", args=[1])
    await drain(unique_name, backend)
    (process,) = for_job(captured.spans, job_id, "process")
    (handler,) = captured.spans_named("sync handler work")
    assert parent_id(handler) == ctx(process).span_id


async def test_retry_then_success_gives_linked_sibling_attempts(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await flaky.using(backend=backend, queue=unique_name).enqueue("r1", 1)
    await drain(unique_name, backend)
    assert await q.get_job_state(job_id) == "completed"

    (send,) = captured.spans_named(f"send {unique_name}")
    first, second = for_job(captured.spans, job_id, "process")
    assert_process(first, queue=unique_name, job_id=job_id, task="tel.flaky", attempt=1, outcome="retried")
    assert_process(second, queue=unique_name, job_id=job_id, task="tel.flaky", attempt=2, outcome="completed")
    assert parent_id(first) == parent_id(second) == ctx(send).span_id
    assert links(first) == {"creation": ids(send)}
    assert links(second) == {"creation": ids(send), "previous_attempt": ids(first)}

    error_type = f"{__name__}.FlakyError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "attempt 1 failed"
    assert attrs(first)["error.type"] == error_type
    assert event_names(first)[-2:] == ["exception", "asyncmq.job.retry_scheduled"]
    exception = event(first, "exception")
    assert exception["exception.type"] == error_type
    assert exception["exception.message"] == "attempt 1 failed"
    assert "FlakyError" in exception["exception.stacktrace"]
    scheduled = event(first, "asyncmq.job.retry_scheduled")
    assert scheduled["asyncmq.job.backoff_s"] == 0.01
    assert scheduled["error.type"] == error_type
    assert scheduled["asyncmq.job.eligible_at"] == attrs(second)["asyncmq.job.eligible_at"]

    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="retried", reason="") == 1
    assert captured.metric_value("asyncmq_job_errors_total", outcome="retried", error_type=error_type) == 1
    assert (
        captured.metric_value(
            "asyncmq_job_outcomes_total", outcome="completed", asyncmq_task_name="tel.flaky"
        )
        == 1
    )
    assert captured.metric_value("messaging_process_duration_seconds_count", outcome="retried") == 1
    assert captured.metric_value("asyncmq_job_attempts_sum", outcome="completed") == 2
    assert captured.metric_value(
        "messaging_client_operation_duration_seconds_count", messaging_operation_name="retry"
    )
    (retried_line,) = captured.logs_named("job.retried")
    assert retried_line["level"] == "warning"
    assert retried_line["error.type"] == error_type
    assert retried_line["asyncmq.job.backoff_s"] == 0.01
    assert retried_line["span_id"] == format(ctx(first).span_id, "016x")


async def test_retries_exhausted_dead_letter_with_one_exception_event(
    captured: Captured, backend, unique_name
) -> None:
    job_id = await flaky.using(backend=backend, queue=unique_name).enqueue("r2", 5)
    await drain(unique_name, backend)
    attempts = for_job(captured.spans, job_id, "process")
    assert [attrs(s)["asyncmq.job.outcome"] for s in attempts] == ["retried", "retried", "failed"]
    last = attempts[-1]
    assert_process(last, queue=unique_name, job_id=job_id, task="tel.flaky", attempt=3, outcome="failed")
    assert last.status.status_code is StatusCode.ERROR
    assert event_names(last).count("exception") == 1
    assert event(last, "asyncmq.job.dead_lettered") == {"asyncmq.dlq.reason": "failed"}
    assert links(last)["previous_attempt"] == ids(attempts[1])

    error_type = f"{__name__}.FlakyError"
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="failed") == 1
    assert captured.metric_value("asyncmq_job_errors_total", outcome="failed", error_type=error_type) == 1
    assert captured.metric_value("asyncmq_job_e2e_duration_seconds_count", outcome="failed") == 1
    assert captured.metric_value("asyncmq_job_attempts_sum", outcome="failed") == 3
    assert captured.metric_value(
        "messaging_client_operation_duration_seconds_count", messaging_operation_name="dead_letter"
    )
    (line,) = captured.logs_named("job.failed")
    assert line["level"] == "error"
    assert line["asyncmq.dlq.reason"] == "failed"
    assert line["exception"][0]["exc_type"] == "FlakyError"
    assert "locals" not in line["exception"][0]["frames"][0]


async def test_expired_job_gets_a_settle_span(captured: Captured, unique_name) -> None:
    now = [time.time()]
    backend = InMemoryBackend(clock=lambda: now[0])
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.ok", args=[1], ttl=0.05)
    now[0] += 1.0
    async with running_worker(unique_name, backend):
        await wait_state(q, job_id, "expired")
    (settle,) = for_job(captured.spans, job_id, "settle")
    (send,) = captured.spans_named(f"send {unique_name}")
    assert_settle(settle, queue=unique_name, job_id=job_id, op_name="expire", outcome="expired")
    # An expiry is an error a Jaeger error=true search must find.
    assert settle.status.status_code is StatusCode.ERROR
    assert settle.status.description == "expired"
    assert attrs(settle)["error.type"] == "expired"
    assert event(settle, "asyncmq.job.dead_lettered") == {"asyncmq.dlq.reason": "expired"}
    assert parent_id(settle) == ctx(send).span_id
    assert links(settle) == {"creation": ids(send)}
    assert attrs(settle)["messaging.consumer.group.name"] == "default"
    assert not for_job(captured.spans, job_id, "process")

    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="expired", reason="expired") == 1
    assert captured.metric_value("messaging_client_consumed_messages_total", asyncmq_task_name="tel.ok") == 1
    assert captured.metric_value("asyncmq_job_attempts_sum", outcome="expired") == 0
    assert captured.metric_value("asyncmq_job_attempts_count", outcome="expired") == 1
    assert captured.metric_value(
        "messaging_client_operation_duration_seconds_count", messaging_operation_name="expire"
    )
    (line,) = captured.logs_named("job.expired")
    assert line["level"] == "warning"
    assert line["span_id"] == format(ctx(settle).span_id, "016x")


async def test_cancelled_while_queued_gets_a_settle_span(captured: Captured, backend, unique_name) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.ok", args=[1], delay=5)
    assert await q.cancel_job(job_id)
    (settle,) = for_job(captured.spans, job_id, "settle")
    assert_settle(settle, queue=unique_name, job_id=job_id, op_name="cancel", outcome="cancelled")
    assert settle.status.status_code is StatusCode.UNSET
    assert event(settle, "asyncmq.job.cancelled") == {"asyncmq.cancel.stage": "queued"}
    assert "messaging.client.id" not in attrs(settle)  # settled by the queue API, not a worker
    (send,) = captured.spans_named(f"send {unique_name}")
    assert attrs(send)["messaging.operation.name"] == "schedule"
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="cancelled") == 1
    assert (
        captured.metric_value("messaging_client_sent_messages_total", messaging_operation_name="schedule")
        == 1
    )
    assert [line["level"] for line in captured.logs_named("job.cancelled")] == ["info"]


async def test_cancelled_while_running_closes_the_process_span(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.block", args=["c1"])
    async with running_worker(unique_name, backend):
        await eventually(lambda: "c1" in running)
        assert (
            captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name=unique_name) == 1
        )
        assert await q.cancel_job(job_id)
        await wait_state(q, job_id, "cancelled")
    (process,) = for_job(captured.spans, job_id, "process")
    assert_process(
        process, queue=unique_name, job_id=job_id, task="tel.block", attempt=1, outcome="cancelled"
    )
    assert event(process, "asyncmq.job.cancelled") == {"asyncmq.cancel.stage": "running"}
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="cancelled") == 1
    assert captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name=unique_name) == 0
    assert captured.metric_value(
        "messaging_client_operation_duration_seconds_count", messaging_operation_name="cancel"
    )


async def test_interrupted_by_shutdown_closes_the_process_span(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.block", args=["i1"])
    worker = Worker(unique_name, backend=backend, shutdown_timeout=0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await eventually(lambda: "i1" in running)
        worker.stop(now=True)
    assert await q.get_job_state(job_id) == "waiting"
    (process,) = for_job(captured.spans, job_id, "process")
    assert_process(
        process, queue=unique_name, job_id=job_id, task="tel.block", attempt=1, outcome="interrupted"
    )
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="interrupted") == 1
    assert captured.metric_value(
        "messaging_client_operation_duration_seconds_count", messaging_operation_name="requeue"
    )
    assert captured.metric_value("asyncmq_worker_up", messaging_destination_name=unique_name) == 0
    assert [line["level"] for line in captured.logs_named("job.interrupted")] == ["warning"]


async def test_delayed_job_is_scheduled_and_its_wait_excludes_the_delay(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.ok", args=[3], delay=0.3)
    await drain(unique_name, backend)
    (send,) = captured.spans_named(f"send {unique_name}")
    assert attrs(send)["messaging.operation.name"] == "schedule"
    (process,) = for_job(captured.spans, job_id, "process")
    assert_process(process, queue=unique_name, job_id=job_id, task="tel.ok", attempt=1, outcome="completed")
    a = attrs(process)
    assert a["asyncmq.job.eligible_at"] - a["asyncmq.job.enqueued_at"] >= 0.29
    assert a["asyncmq.job.wait_s"] < 0.29
    assert [line["level"] for line in captured.logs_named("job.delayed")] == ["debug"]


async def test_throttled_jobs_carry_the_wait_on_their_process_span(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("tel.ok", args=[n]) for n in range(3)]
    await drain(unique_name, backend, rate_limit=1, rate_interval=0.1, concurrency=3)
    processes = [for_job(captured.spans, job_id, "process")[0] for job_id in ids]
    throttled = [s for s in processes if "asyncmq.ratelimit.wait_s" in attrs(s)]
    assert throttled
    for span in throttled:
        wait = attrs(span)["asyncmq.ratelimit.wait_s"]
        assert wait > 0.001
        assert event(span, "asyncmq.job.throttled") == {"asyncmq.ratelimit.wait_s": wait}
        assert span.status.status_code is StatusCode.UNSET
        throttle_event = next(e for e in span.events if e.name == "asyncmq.job.throttled")
        assert throttle_event.timestamp <= (span.start_time or 0)
    count = len(throttled)
    assert (
        captured.metric_value("asyncmq_ratelimit_throttled_total", messaging_destination_name=unique_name)
        == count
    )
    assert (
        captured.metric_value("asyncmq_ratelimit_wait_seconds_count", messaging_destination_name=unique_name)
        == count
    )
    assert len(captured.logs_named("job.throttled")) == count


async def test_pause_and_resume_are_internal_spans(captured: Captured, backend, unique_name) -> None:
    q = Queue(unique_name, backend=backend)
    await q.pause()
    job_id = await q.add("tel.ok", args=[5])
    await q.resume()
    await drain(unique_name, backend)
    assert await q.get_job_state(job_id) == "completed"
    for name in ("pause", "resume"):
        (span,) = captured.spans_named(f"{name} {unique_name}")
        assert span.kind is SpanKind.INTERNAL
        assert attrs(span) == {
            "messaging.system": "asyncmq",
            "messaging.operation.name": name,
            "messaging.destination.name": unique_name,
        }
        assert (
            captured.metric_value(
                "messaging_client_operation_duration_seconds_count", messaging_operation_name=name
            )
            == 1
        )
        assert [line["level"] for line in captured.logs_named(f"queue.{name}d")] == ["info"]


async def test_unknown_task_is_settled_as_a_dead_letter(captured: Captured, backend, unique_name) -> None:
    job_id = await Queue(unique_name, backend=backend).add("tel.no_such_task")
    await drain(unique_name, backend)
    (settle,) = for_job(captured.spans, job_id, "settle")
    assert_settle(settle, queue=unique_name, job_id=job_id, op_name="dead_letter", outcome="failed")
    assert settle.status.status_code is StatusCode.ERROR
    assert attrs(settle)["error.type"] == "unknown_task"
    assert event(settle, "asyncmq.job.dead_lettered") == {"asyncmq.dlq.reason": "unknown_task"}
    assert "exception" not in event_names(settle)
    failed = {"outcome": "failed", "reason": "unknown_task", "asyncmq_task_name": "_OTHER"}
    assert captured.metric_value("asyncmq_job_outcomes_total", **failed) == 1
    assert captured.metric_value("asyncmq_job_errors_total", outcome="failed", error_type="unknown_task") == 1
    assert captured.metric_value("messaging_client_consumed_messages_total", asyncmq_task_name="_OTHER") == 1


async def test_malformed_payload_is_settled_as_a_dead_letter(
    captured: Captured, backend, unique_name
) -> None:
    backend.inject_raw_job(unique_name, "bad1", "\x80 not json")
    await drain(unique_name, backend)
    (settle,) = for_job(captured.spans, "bad1", "settle")
    assert settle.name == f"settle {unique_name}"
    assert attrs(settle)["messaging.operation.name"] == "dead_letter"
    assert attrs(settle)["error.type"] == "malformed_payload"
    assert links(settle) == {}
    assert settle.parent is None
    assert captured.metric_value("asyncmq_job_outcomes_total", reason="malformed_payload") == 1


async def test_timeout_is_a_failed_attempt_with_the_timeout_type(
    captured: Captured, backend, unique_name
) -> None:
    job_id = await Queue(unique_name, backend=backend).add("tel.hang")
    await drain(unique_name, backend)
    (process,) = for_job(captured.spans, job_id, "process")
    assert_process(process, queue=unique_name, job_id=job_id, task="tel.hang", attempt=1, outcome="failed")
    assert attrs(process)["error.type"] == "asyncmq_otel.errors.JobTimeout"
    assert process.status.status_code is StatusCode.ERROR
    assert event(process, "exception")["exception.type"] == "asyncmq_otel.errors.JobTimeout"
    assert captured.metric_value("asyncmq_job_errors_total", error_type="asyncmq_otel.errors.JobTimeout") == 1


async def test_progress_events_are_capped_per_span(backend, unique_name) -> None:
    from asyncmq_otel.testing import capture_telemetry

    with capture_telemetry(progress_events_per_span=3) as captured:
        job_id = await Queue(unique_name, backend=backend).add("tel.progress", kwargs={"steps": 5})
        await drain(unique_name, backend)
        (process,) = for_job(captured.spans, job_id, "process")
        progress = [dict(e.attributes or {}) for e in process.events if e.name == "asyncmq.job.progress"]
        assert progress == [{"asyncmq.job.progress": p} for p in (20.0, 40.0, 60.0)]
        assert len(captured.logs_named("job.progress")) == 5
        assert len(captured.events_named("job:progress")) == 5


async def test_sandboxed_task_runs_under_its_process_span(captured: Captured, backend, unique_name) -> None:
    from asyncmq_otel.sandbox import shutdown_sandbox
    from tests import sandbox_tasks

    q = Queue(unique_name, backend=backend)
    good = await q.add("sandbox.add", args=[2, 3])
    bad = await q.add("sandbox.fail", args=[7])
    try:
        with override_settings(sandbox_enabled=True, sandbox_processes=1):
            await drain(unique_name, backend)
    finally:
        await shutdown_sandbox()
    assert await q.get_job_result(good) == 5
    (ok_span,) = for_job(captured.spans, good, "process")
    assert_process(
        ok_span, queue=unique_name, job_id=good, task="sandbox.add", attempt=1, outcome="completed"
    )
    (bad_span,) = for_job(captured.spans, bad, "process")
    error_type = f"{sandbox_tasks.__name__}.SandboxTestError"
    assert_process(bad_span, queue=unique_name, job_id=bad, task="sandbox.fail", attempt=1, outcome="failed")
    assert attrs(bad_span)["error.type"] == error_type
    assert event(bad_span, "exception")["exception.type"] == error_type
    assert captured.metric_value("asyncmq_job_errors_total", outcome="failed", error_type=error_type) == 1


async def test_bulk_enqueue_with_and_without_create_spans(backend, unique_name) -> None:
    from asyncmq_otel.testing import capture_telemetry

    for create in (True, False):
        with capture_telemetry(bulk_create_spans=create) as captured:
            q = Queue(unique_name, backend=backend)
            ids = await q.add_bulk([{"task_id": "tel.ok", "args": [n]} for n in range(3)])
            await drain(unique_name, backend)
            (send,) = captured.spans_named(f"send {unique_name}")
            assert attrs(send)["messaging.batch.message_count"] == 3
            assert attrs(send)["asyncmq.task.name"] == "tel.ok"
            assert "messaging.message.id" not in attrs(send)
            creates = captured.spans_named(f"create {unique_name}")
            processes = [for_job(captured.spans, job_id, "process")[0] for job_id in ids]
            if create:
                assert send.kind is SpanKind.CLIENT
                assert [attrs(c)["messaging.message.id"] for c in creates] == ids
                assert {c.kind for c in creates} == {SpanKind.PRODUCER}
                assert {parent_id(c) for c in creates} == {ctx(send).span_id}
                assert [parent_id(p) for p in processes] == [ctx(c).span_id for c in creates]
            else:
                assert send.kind is SpanKind.PRODUCER
                assert creates == []
                assert {parent_id(p) for p in processes} == {ctx(send).span_id}
            assert (
                captured.metric_value("messaging_client_sent_messages_total", asyncmq_task_name="tel.ok") == 3
            )
            assert (
                captured.metric_value(
                    "messaging_client_operation_duration_seconds_count", messaging_operation_name="send"
                )
                == 1
            )


@pytest.mark.parametrize("mode", ["link", "none"])
async def test_link_and_none_propagation_start_new_traces(backend, unique_name, mode: str) -> None:
    from asyncmq_otel.testing import capture_telemetry

    with capture_telemetry(propagation=mode) as captured:
        q = Queue(unique_name, backend=backend)
        job_id = await flaky.using(backend=backend, queue=unique_name).enqueue(f"p-{mode}", 1)
        stored = await q.get_job(job_id)
        assert stored is not None
        await drain(unique_name, backend)
        (send,) = captured.spans_named(f"send {unique_name}")
        first, second = for_job(captured.spans, job_id, "process")
        for span in (first, second):
            assert span.parent is None
            assert ctx(span).trace_id != ctx(send).trace_id
        if mode == "link":
            assert re.fullmatch(
                r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", stored["trace_context"]["traceparent"]
            )
            assert links(first) == {"creation": ids(send)}
            assert links(second) == {"creation": ids(send), "previous_attempt": ids(first)}
        else:
            assert stored.get("trace_context") is None
            assert links(first) == links(second) == {}
        assert ctx(first).trace_id != ctx(second).trace_id


async def test_per_task_span_names(backend, unique_name) -> None:
    from asyncmq_otel.testing import capture_telemetry

    with capture_telemetry(span_name_style="{op} {queue} {task}") as captured:
        q = Queue(unique_name, backend=backend)
        job_id = await q.add("tel.ok", args=[1])
        await q.add_bulk([{"task_id": "tel.ok", "args": [2]}])
        await q.pause()
        await q.resume()
        await drain(unique_name, backend)
        names = {s.name for s in captured.spans}
        assert f"process {unique_name} tel.ok" in names
        assert f"create {unique_name} tel.ok" in names
        assert f"send {unique_name}" in names  # the bulk send
        assert f"pause {unique_name}" in names
        assert f"resume {unique_name}" in names
        sends = [
            s
            for s in captured.spans
            if attrs(s).get("messaging.message.id") == job_id and s.name.startswith("send")
        ]
        assert [s.name for s in sends] == [f"send {unique_name} tel.ok"]


async def test_concurrent_jobs_never_share_a_trace(captured: Captured, backend, unique_name) -> None:
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("tel.ok", args=[n]) for n in range(4)]
    await drain(unique_name, backend, concurrency=4)
    processes = [for_job(captured.spans, job_id, "process")[0] for job_id in ids]
    assert len({ctx(p).trace_id for p in processes}) == 4
    for process in processes:
        (send,) = [
            s for s in captured.spans if s.context is not None and s.context.span_id == parent_id(process)
        ]
        assert attrs(send)["messaging.message.id"] == attrs(process)["messaging.message.id"]


async def test_store_failure_marks_the_send_span_and_counts_the_job(captured: Captured, unique_name) -> None:
    class Down(InMemoryBackend):
        async def enqueue(self, queue, item):
            raise ConnectionError("backend unreachable")

    q = Queue(unique_name, backend=Down())
    with pytest.raises(ConnectionError):
        await q.add("tel.ok", args=[1])
    (send,) = captured.spans_named(f"send {unique_name}")
    assert send.status.status_code is StatusCode.ERROR
    assert attrs(send)["error.type"] == "ConnectionError"
    assert captured.metric_value("messaging_client_sent_messages_total", error_type="ConnectionError") == 1
    assert (
        captured.metric_value(
            "messaging_client_operation_duration_seconds_count", error_type="ConnectionError"
        )
        == 1
    )


class InstrumentedBackend(InMemoryBackend):
    """What a Redis instrumentor does: one client span per command, unless instrumentation is suppressed.

    ``register_worker`` (before ``worker:started``) and the renewer thread's sync channel are not
    wrapped: the worker does not yet run them under suppression (reported to the core).
    """

    def command(self, name: str) -> None:
        from opentelemetry import context

        if not context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY):
            tracer.start_span(f"redis {name}").end()

    async def enqueue(self, queue, item):
        self.command("enqueue")
        return await super().enqueue(queue, item)

    async def claim(self, queue, worker_id, count, lease):
        self.command("claim")
        return await super().claim(queue, worker_id, count, lease)

    async def wait_for_work(self, queue, timeout):
        self.command("wait_for_work")
        return await super().wait_for_work(queue, timeout)

    async def complete(self, queue, job_id, token, result, *, want_job=True):
        self.command("complete")
        return await super().complete(queue, job_id, token, result, want_job=want_job)

    async def retry(self, queue, job_id, token, backoff, error, prev_attempt=None):
        self.command("retry")
        return await super().retry(queue, job_id, token, backoff, error, prev_attempt)

    async def heartbeat(self, info, ttl):
        self.command("heartbeat")
        return await super().heartbeat(info, ttl)

    async def register_worker(self, info, ttl):
        return await InMemoryBackend.heartbeat(self, info, ttl)  # not wrapped: see the class docstring

    async def reap(self, queue, worker_id, max_stalls, hold, max_delay=None):
        self.command("reap")
        return await super().reap(queue, worker_id, max_stalls, hold, max_delay)

    async def deregister_worker(self, worker_id):
        self.command("deregister_worker")
        return await super().deregister_worker(worker_id)


@task("tel", name="tel.user_command")
async def user_command() -> None:
    the_backend = instrumented_backends[-1]
    the_backend.command("user")


instrumented_backends: list[InstrumentedBackend] = []


async def test_worker_bookkeeping_runs_under_suppressed_instrumentation(
    captured: Captured, unique_name, monkeypatch
) -> None:
    # The adapter looks for OTel's Redis instrumentor before it spends a context on a write (the overhead rule);
    # InstrumentedBackend plays that instrumentor here.
    monkeypatch.setattr(tracing, "redis_instrumented", lambda: True)
    backend = InstrumentedBackend()
    instrumented_backends.append(backend)
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("tel.user_command")
    await flaky.using(backend=backend, queue=unique_name).enqueue("s1", 1)
    async with running_worker(unique_name, backend):
        await eventually(
            lambda: len(captured.spans_named(f"process {unique_name}")) == 3, what="three attempts"
        )
        await eventually(lambda: captured.events_named("worker:heartbeat"), what="a heartbeat")
    redis = [s for s in captured.spans if s.name.startswith("redis ")]
    assert sorted(s.name for s in redis) == ["redis enqueue", "redis enqueue", "redis user"]
    (user,) = [s for s in redis if s.name == "redis user"]
    (process,) = for_job(captured.spans, job_id, "process")
    assert parent_id(user) == ctx(process).span_id
    for send in captured.spans_named(f"send {unique_name}"):
        assert [s.name for s in redis if parent_id(s) == ctx(send).span_id] == ["redis enqueue"]


async def test_picked_before_due_goes_back_without_a_span(captured: Captured, backend, unique_name) -> None:
    from asyncmq_otel.workers import handle_job

    job_id = await Queue(unique_name, backend=backend).add("tel.ok", args=[1])
    raw = (await backend.claim(unique_name, "w", 1, 30)).jobs[0]
    raw["delay_until"] = raw["claimed_at"] = time.time()
    raw["delay_until"] += 60
    await handle_job(unique_name, raw, backend)
    assert [s.name for s in for_job(captured.spans, job_id)] == [f"send {unique_name}"]
    (worker_line,) = [line for line in captured.logs_named("job.delayed") if "messaging.client.id" in line]
    assert worker_line["level"] == "debug"
    assert worker_line["asyncmq.job.delay_s"] > 50
    assert captured.metric_value("messaging_client_consumed_messages_total", asyncmq_task_name="tel.ok") == 0
    assert captured.metric_value("messaging_client_sent_messages_total", asyncmq_task_name="tel.ok") == 1

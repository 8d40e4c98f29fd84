"""The metrics hot path: the bus's job fast path (no event built, same records), lock-free accumulators."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from asyncmq_otel._lifecycle import emit_job_fields
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import EventBus, LifecycleEvent, Operation, bus, make_job_event
from asyncmq_otel.jobs import Job
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry._accumulators import CounterValue, GaugeValue, HistogramValue
from asyncmq_otel.telemetry._metrics_adapter import MetricsAdapter
from asyncmq_otel.telemetry.metrics import MetricSinks
from asyncmq_otel.testing import capture_telemetry
from asyncmq_otel.workers import Worker


@task("fast-q", name="metrics.fast")
async def fast() -> None:
    """A task so the series carry its name rather than _OTHER."""


def _job(number: int) -> Job:
    return Job(
        id=f"job-{number}", task="metrics.fast", queue="fast-q", attempts=1, priority=5 + number % 2,
        enqueued_at=time.time() - 0.5, eligible_at=time.time() - 0.25,
    )  # fmt: skip


def _fields(**extra: object) -> dict[str, object]:
    return {"worker_id": "w-1", "group": "default", "started_at": time.time(), "wait_s": 0.002, **extra}


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_the_fast_path_records_what_the_events_record() -> None:
    """The same attempts through ``from_job`` and through built events give the same exposition."""
    registries = (CollectorRegistry(), CollectorRegistry())
    sinks = [MetricSinks(registry=registry) for registry in registries]
    by_event, by_job = (MetricsAdapter(s, bus=EventBus(), exemplars=False) for s in sinks)
    worker = LifecycleEvent("worker:started", time.time(), queue="fast-q", group="default", concurrency=4)
    for adapter in (by_event, by_job):
        adapter.handlers["worker:started"](worker)
    started = time.perf_counter() - 0.003
    for number in range(5):
        job = _job(number)
        start = _fields(started_monotonic=started)
        # durations chosen to land in different buckets; e2e from finished_at
        finish = _fields(started_monotonic=started, finished_at=time.time(), duration_s=0.0004 * 10**number)
        by_event.handlers["job:started"](make_job_event("job:started", time.time(), job, 1, start))
        by_job.job_handlers["job:started"]("job:started", job, 1, start)
        by_event.handlers["job:completed"](make_job_event("job:completed", time.time(), job, 1, finish))
        by_job.job_handlers["job:completed"]("job:completed", job, 1, finish)
    # a completion whose start was not seen here (another process started it) takes the event path
    job = _job(9)
    finish = _fields(finished_at=time.time(), duration_s=0.01)
    by_event.handlers["job:completed"](make_job_event("job:completed", time.time(), job, 2, finish))
    by_job.job_handlers["job:completed"]("job:completed", job, 2, finish)
    ours, reference = _exposition(registries[1]), _exposition(registries[0])
    assert ours == reference
    completed = [
        line for line in ours if line.startswith("asyncmq_job_outcomes_total") and "completed" in line
    ]
    assert any(line.endswith(" 6.0") for line in completed)
    for s in sinks:
        s.close()


@pytest.fixture
def fast_listener() -> list[tuple[str, str, int]]:
    """An inline listener with a ``from_job`` on the attempt's two events (the metrics adapter's shape)."""
    seen: list[tuple[str, str, int]] = []

    def listener(event: LifecycleEvent) -> None:
        seen.append(("event", event.name, event.attempt or 0))

    def from_job(name: str, job: Job, attempt: int, fields: dict[str, object]) -> None:
        assert fields["group"] == "default"
        seen.append(("job", name, attempt))

    for name in ("job:started", "job:completed"):
        bus.on(name, listener, inline=True, signal="metric", from_job=from_job)
    return seen


def test_the_bus_calls_from_job_when_every_listener_has_one(
    fast_listener: list[tuple[str, str, int]],
) -> None:
    emit_job_fields("job:started", _job(1), _fields(), 3)
    assert fast_listener == [("job", "job:started", 3)]


def test_another_listener_makes_the_bus_build_the_event(fast_listener: list[tuple[str, str, int]]) -> None:
    """A listener without ``from_job``, or a queued one, needs the event: every listener then gets it."""
    others: list[str] = []
    bus.on("job:*", lambda event: others.append(event.name), inline=True)
    emit_job_fields("job:completed", _job(1), _fields(), 2)
    assert fast_listener == [("event", "job:completed", 2)]
    assert others == ["job:completed"]
    bus.on("job:started", lambda event: None)  # queued
    emit_job_fields("job:started", _job(1), _fields(), 2)
    assert fast_listener[-1] == ("event", "job:started", 2)


def test_a_failing_from_job_is_isolated_and_counted() -> None:
    def broken(name: str, job: Job, attempt: int, fields: dict[str, object]) -> None:
        raise RuntimeError(name)

    before = bus.dropped["metric", "adapter_error"]
    bus.on("job:started", lambda event: None, inline=True, signal="metric", from_job=broken)
    emit_job_fields("job:started", _job(1), _fields(), 1)
    assert bus.dropped["metric", "adapter_error"] == before + 1


def test_accumulators_count_every_write_from_their_thread_and_from_others() -> None:
    """The owner thread writes without a lock; other threads write their own part: nothing is lost."""
    counter, gauge, histogram = CounterValue(), GaugeValue(), HistogramValue((0.001, 0.01))
    per_thread = 20_000

    def write() -> None:
        for _ in range(per_thread):
            counter.inc()
            gauge.add(-1)
            histogram.observe(0.005)

    others = [threading.Thread(target=write) for _ in range(3)]
    for thread in others:
        thread.start()
    write()  # the owner, at the same time
    for thread in others:
        thread.join(timeout=30)
    total = 4 * per_thread
    assert counter.value == total
    assert gauge.value == -total
    buckets, histogram_sum = histogram.snapshot()
    assert [count for _, count, _ in buckets] == [0.0, total, total]
    assert histogram_sum == pytest.approx(0.005 * total)
    gauge.set(3)  # a set replaces both parts
    assert gauge.value == 3


class _Timing:
    """An observer that needs only the write's timing (the metrics adapter's shape)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, bool, str | None]] = []

    def operation_started(self, operation: Operation) -> None:
        raise AssertionError("not called on the timed path")

    def operation_finished(self, operation: Operation) -> None:
        self.write_finished(
            operation.name,
            operation.queue,
            operation.jobs,
            operation.duration_s,
            operation.error,
            operation.outcome,
        )

    def write_finished(
        self,
        name: str,
        queue: str,
        jobs: list[Job],
        duration: float | None,
        error: object,
        outcome: str | None,
    ) -> None:
        assert duration is not None
        assert duration >= 0
        self.seen.append((name, queue, len(jobs), error is not None, outcome))


class _Full:
    """An observer that needs the Operation (the trace adapter's shape)."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def operation_started(self, operation: Operation) -> None:
        self.operations.append(operation)

    def operation_finished(self, operation: Operation) -> None:
        assert operation is self.operations[-1]


def test_a_write_observed_for_its_timing_only_builds_no_operation() -> None:
    timing = _Timing()
    bus.add_observer(timing)
    with bus.write("ack", "fast-q", [_job(1)], {"server_address": "h"}) as observed:
        assert not isinstance(observed, Operation)
        observed.outcome = "STALE"
    with pytest.raises(RuntimeError), bus.write("retry", "fast-q", [_job(1)], {}):
        raise RuntimeError("backend")
    assert timing.seen == [("ack", "fast-q", 1, False, "STALE"), ("retry", "fast-q", 1, True, None)]
    full = _Full()
    bus.add_observer(full)
    with bus.write("ack", "fast-q", [_job(1)], {"server_address": "h"}) as observed:
        assert isinstance(observed, Operation)
        observed.outcome = "OK"
    assert full.operations[0].server_address == "h"
    assert timing.seen[-1] == ("ack", "fast-q", 1, False, "OK")


@task("fast-q", name="metrics.fast.boom")
async def boom() -> None:
    """Fails, and is not retried: its outcome event takes the event path after a fast-path start."""
    raise ValueError("boom")


@pytest.mark.anyio
@pytest.mark.usefixtures("fast_settings")
async def test_a_worker_with_metrics_alone_counts_every_attempt_through_the_fast_path(
    unique_name: str,
) -> None:
    backend = InMemoryBackend()
    with capture_telemetry(traces=False, logs=False) as cap:
        # the capture's event recorder and its log adapter listen on "*": without them, metrics alone listen
        for listener in bus.listeners("*"):
            bus.off("*", listener)
        route = bus.route("job:started")
        assert route is not None
        assert route[2]
        queue = Queue(unique_name, backend=backend)
        for n in range(5):
            await queue.add("metrics.fast", priority=5 + n % 2)
        await queue.add("metrics.fast.boom", retries=0)
        with anyio.fail_after(10):
            await Worker(unique_name, backend=backend, burst=True).run()  # type: ignore[arg-type]
        labels = {"messaging_destination_name": unique_name}
        fast_labels = {**labels, "asyncmq_task_name": "metrics.fast"}
        assert cap.metric_value("asyncmq_job_outcomes_total", outcome="completed", **fast_labels) == 5
        assert cap.metric_value("messaging_client_consumed_messages_total", **fast_labels) == 5
        assert (
            cap.metric_value("messaging_process_duration_seconds_count", outcome="completed", **fast_labels)
            == 5
        )
        assert cap.metric_value("asyncmq_job_wait_duration_seconds_count", **fast_labels) == 5
        assert (
            cap.metric_value("asyncmq_job_e2e_duration_seconds_count", outcome="completed", **fast_labels)
            == 5
        )
        assert cap.metric_value("asyncmq_job_attempts_count", outcome="completed", **fast_labels) == 5
        boom_labels = {**labels, "asyncmq_task_name": "metrics.fast.boom"}
        assert (
            cap.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="failed", **boom_labels)
            == 1
        )
        assert cap.metric_value("asyncmq_worker_jobs_active", **labels) == 0
        assert (
            cap.metric_value(
                "messaging_client_operation_duration_seconds_count", messaging_operation_name="ack", **labels
            )
            == 5
        )
        assert not cap.events  # no event was recorded, and none was built for the completions

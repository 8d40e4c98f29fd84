"""The trace adapter's cost rules: sampling decided before the SDK, one span per attempt, no
context around bookkeeping writes, and what an unsampled attempt still carries (ids for logs and
for the handler's own spans)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind

from asyncmq_otel import events, telemetry
from asyncmq_otel.events import Operation
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry.tracing import LinkAwareSampler, TracingAdapter
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY
handler_tracer: list[trace.Tracer] = []
seen: dict[str, dict[str, SpanContext]] = {}


@task("sampling", name="sampling.traced")
async def traced(key: str) -> None:
    """Records the context the handler runs in and the context of a span it makes itself."""
    current = trace.get_current_span().get_span_context()
    with handler_tracer[0].start_as_current_span("handler work") as own:
        seen[key] = {"current": current, "own": own.get_span_context()}


class CountingIds(RandomIdGenerator):
    """The SDK generates a span id for every span it creates, sampled or not: counting them counts spans."""

    def __init__(self) -> None:
        self.span_ids = 0

    def generate_span_id(self) -> int:
        self.span_ids += 1
        return super().generate_span_id()


class StartAttributes(SpanProcessor):
    """Keeps each span's attributes as the SDK saw them at start (what a sampler or processor sees)."""

    def __init__(self) -> None:
        self.at_start: dict[str, dict[str, Any]] = {}

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.at_start[span.name + ":" + str(span.attributes.get("messaging.message.id"))] = dict(
            span.attributes or {}
        )


class WriteContext:
    """A write observer registered after the adapter: records whether the ack ran suppressed."""

    def __init__(self) -> None:
        self.suppressed: list[bool] = []

    def operation_started(self, operation: Operation) -> None:
        if operation.name == "ack":
            self.suppressed.append(bool(otel_context.get_value(_SUPPRESS)))

    def operation_finished(self, operation: Operation) -> None:
        return None


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, CountingIds, StartAttributes]]:
    ids = CountingIds()
    exporter = InMemorySpanExporter()
    starts = StartAttributes()
    tp = TracerProvider(sampler=ParentBased(LinkAwareSampler(TraceIdRatioBased(1.0))), id_generator=ids)
    tp.add_span_processor(starts)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    handler_tracer[:] = [tp.get_tracer("tests.handler")]
    yield tp, exporter, ids, starts
    tp.shutdown()


def _log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def _run_one(queue: Queue, backend: Any, key: str) -> None:
    async with running_worker(queue.name, backend):
        await eventually(lambda: key in seen, what=f"{key} ran")
        await eventually(
            lambda: trace.get_current_span() is trace.INVALID_SPAN, what="test task context untouched"
        )


async def test_parent_unsampled_attempt_makes_no_sdk_span(provider, backend, unique_name, capsys) -> None:
    tp, exporter, ids, _starts = provider
    telemetry.instrument(tracer_provider=tp, metrics=False, metrics_addr="", log_format="json")
    queue = Queue(unique_name, backend=backend)
    producer_parent = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False))  # sampled flag off
    with trace.use_span(producer_parent):
        job_id = await queue.add("sampling.traced", args=["parent-unsampled"])
    stored = (await queue.get_job(job_id) or {}).get("trace_context") or {}
    _version, trace_hex, span_hex, flags = stored["traceparent"].split("-")
    assert (int(trace_hex, 16), flags) == (0x1234, "00")
    before = ids.span_ids
    await _run_one(queue, backend, "parent-unsampled")
    telemetry.uninstrument()

    assert ids.span_ids - before == 1  # the handler's own span only: the attempt made none
    current, own = seen["parent-unsampled"]["current"], seen["parent-unsampled"]["own"]
    assert (current.trace_id, current.span_id) == (0x1234, int(span_hex, 16))  # the stored context
    assert not current.trace_flags.sampled
    assert own.trace_id == 0x1234  # the handler's span inherits the trace and the decision
    assert not own.trace_flags.sampled
    assert exporter.get_finished_spans() == ()
    (completed,) = [line for line in _log_lines(capsys.readouterr().err) if line["event"] == "job.completed"]
    assert (completed["trace_id"], completed["span_id"], completed["trace_flags"]) == (
        trace_hex,
        span_hex,
        "00",
    )


async def test_ratio_zero_root_attempt_gets_ids_for_the_handler_and_the_log(
    backend, unique_name, capsys
) -> None:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=ParentBased(LinkAwareSampler(TraceIdRatioBased(0.0))))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    handler_tracer[:] = [tp.get_tracer("tests.handler")]
    telemetry.instrument(
        tracer_provider=tp, metrics=False, metrics_addr="", log_format="json", propagation="none"
    )
    queue = Queue(unique_name, backend=backend)
    await queue.add("sampling.traced", args=["ratio-zero"])
    await _run_one(queue, backend, "ratio-zero")
    telemetry.uninstrument()
    tp.shutdown()

    current, own = seen["ratio-zero"]["current"], seen["ratio-zero"]["own"]
    assert current.is_valid
    assert not current.trace_flags.sampled
    assert own.trace_id == current.trace_id
    assert not own.trace_flags.sampled
    assert exporter.get_finished_spans() == ()
    (completed,) = [line for line in _log_lines(capsys.readouterr().err) if line["event"] == "job.completed"]
    assert completed["trace_id"] == format(current.trace_id, "032x")
    assert completed["span_id"] == format(current.span_id, "016x")
    assert completed["trace_flags"] == "00"


async def test_sampled_attempt_is_one_span_with_its_attributes_at_start_and_no_queue_events(
    provider, backend, unique_name
) -> None:
    tp, exporter, _ids, starts = provider
    telemetry.instrument(tracer_provider=tp, metrics=False, logs=False, metrics_addr="")
    queue = Queue(unique_name, backend=backend)
    job_id = await queue.add("sampling.traced", args=["sampled"])
    await _run_one(queue, backend, "sampled")
    telemetry.uninstrument()

    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    worker_spans = [s for s in spans if s.kind is SpanKind.CONSUMER or s.name.startswith("settle")]
    (process,) = worker_spans  # one SDK span per attempt, no settle span after a run
    assert process.events == ()  # enqueued/eligible would repeat the *_at attributes
    at_start = starts.at_start[f"process {unique_name}:{job_id}"]
    final = dict(process.attributes or {})
    assert {key: final[key] for key in at_start} == at_start
    assert set(final) - set(at_start) == {"asyncmq.job.outcome"}  # the one E attribute
    assert seen["sampled"]["current"] == process.context
    assert seen["sampled"]["own"].trace_id == process.context.trace_id


async def test_settle_spans_option_adds_a_settle_span_per_write(provider, backend, unique_name) -> None:
    tp, exporter, _ids, _starts = provider
    tracer = tp.get_tracer("asyncmq_otel")
    adapter = TracingAdapter(tracer, settle_spans=True)
    bus = events.bus
    bus.on("job:started", adapter.before, inline=True, signal="span")
    bus.on("job:completed", adapter.after, inline=True, signal="span")
    bus.add_observer(adapter)
    try:
        queue = Queue(unique_name, backend=backend)
        job_id = await queue.add("sampling.traced", args=["settle-spans"])
        await _run_one(queue, backend, "settle-spans")
    finally:
        bus.off("job:started", adapter.before)
        bus.off("job:completed", adapter.after)
        bus.remove_observer(adapter)
    spans = exporter.get_finished_spans()
    (process,) = [s for s in spans if s.name == f"process {unique_name}"]
    (settle,) = [s for s in spans if s.name == f"settle {unique_name}"]
    assert settle.kind is SpanKind.CLIENT
    assert settle.parent is not None
    assert settle.parent.span_id == process.context.span_id
    assert settle.attributes is not None
    assert settle.attributes["messaging.operation.name"] == "ack"
    assert settle.attributes["messaging.message.id"] == job_id
    assert settle.start_time is not None
    assert process.start_time is not None
    assert settle.start_time >= process.start_time


async def test_bookkeeping_writes_get_no_context_without_a_redis_instrumentor(
    provider, backend, unique_name
) -> None:
    tp, _exporter, _ids, _starts = provider
    telemetry.instrument(tracer_provider=tp, metrics=False, logs=False, metrics_addr="")
    probe = WriteContext()
    events.bus.add_observer(probe)  # after the adapter: sees what the adapter attached
    try:
        queue = Queue(unique_name, backend=backend)
        await queue.add("sampling.traced", args=["bookkeeping"])
        await _run_one(queue, backend, "bookkeeping")
    finally:
        events.bus.remove_observer(probe)
        telemetry.uninstrument()
    assert probe.suppressed == [False]


async def test_a_caller_sampler_the_adapter_cannot_reproduce_is_asked() -> None:
    """A custom sampler decides through the SDK: the adapter never pre-empts it."""

    class EveryOther(TraceIdRatioBased):
        calls = 0

        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            type(self).calls += 1
            return super().should_sample(*args, **kwargs)

    tp = TracerProvider(sampler=EveryOther(0.0))
    adapter = TracingAdapter(tp.get_tracer("t"))
    event = events.LifecycleEvent(
        name="job:started", ts=1.0, queue="q", job_id="j", task="t", attempt=1, max_attempts=1
    )
    adapter.before(event)
    adapter.after(events.LifecycleEvent(name="job:completed", ts=2.0, queue="q", job_id="j", attempt=1))
    assert EveryOther.calls == 1
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_flow_childs_sampled_parent_links_sample_it_and_invalid_contexts_are_not_linked() -> None:
    """A child of a flow links to each parent's stored span whose context is valid; under
    ``ParentBased(LinkAware(ratio 0))`` a sampled parent samples the child, an unsampled one does not."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=ParentBased(LinkAwareSampler(TraceIdRatioBased(0.0))))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    adapter = TracingAdapter(tp.get_tracer("t"))
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    invalid = ("00-" + "0" * 32 + "-b7ad6b7169203331-01", "not a traceparent")

    def attempt(job_id: str, parents: tuple[str, ...]) -> None:
        started = events.LifecycleEvent(
            name="job:started", ts=1.0, queue="q", job_id=job_id, task="t", attempt=1, max_attempts=1,
            flow_id="f", parent_spans=parents,
        )  # fmt: skip
        adapter.before(started)
        adapter.after(
            events.LifecycleEvent(name="job:completed", ts=2.0, queue="q", job_id=job_id, attempt=1)
        )

    attempt("child", (sampled, unsampled, *invalid))
    attempt("unsampled-only", (unsampled, *invalid))
    (span,) = exporter.get_finished_spans()  # the second child's only link is unsampled: ratio 0 drops it
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == "child"
    assert span.attributes["asyncmq.flow.id"] == "f"
    assert [
        (link.context.trace_id, link.context.span_id, link.context.trace_flags.sampled) for link in span.links
    ] == [
        (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True),
        (0x1AF7651916CD43DD8448EB211C80319C, 0xC7AD6B7169203331, False),
    ]
    assert {(link.attributes or {}).get("asyncmq.link.type") for link in span.links} == {"parent"}
    tp.shutdown()

"""The caching OTLP span encoder against the SDK's: the same ExportTraceServiceRequest, field by field."""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from asyncmq_otel.telemetry._otlp_spans import _Encoder, encode_request


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "enc-test", "k": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(
        "asyncmq_otel", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.26.0"
    )
    other = provider.get_tracer("other")
    now = time.time()
    remote = SpanContext(
        0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("a", "b")])
    )
    local = SpanContext(0xABCDEF, 0x42, is_remote=False, trace_flags=TraceFlags(0))
    for i in range(3):
        span = tracer.start_span(
            "process orders",
            context=set_span_in_context(NonRecordingSpan(remote)),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "asyncmq",
                "messaging.message.id": f"job-{i}",
                "asyncmq.job.attempt": i + 1,
                "asyncmq.job.enqueued_at": now - 1.5,
                "neg": -7,
                "big": 2**62,
                "flag": i % 2 == 0,
                "ints": [1, 2, 3],
                "strs": ("x", "é"),
                "floats": [0.5, -1.25],
                "empty": "",
            },
            links=[Link(remote, {"asyncmq.link.type": "creation"}), Link(local)],
        )
        span.add_event("asyncmq.job.enqueued", timestamp=int((now - 1.5) * 1e9))
        span.add_event("asyncmq.job.eligible", {"asyncmq.job.attempt": i + 1}, timestamp=int(now * 1e9))
        if i == 1:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.set_attribute("asyncmq.job.outcome", "completed")
        span.end()
    root = other.start_span("settle orders", kind=SpanKind.CLIENT, attributes={"error.type": "worker_lost"})
    root.set_status(Status(StatusCode.ERROR))
    root.end()
    plain = tracer.start_span("pause orders")
    plain.end()
    return list(exporter.get_finished_spans())


def _parse(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_encoded_request_equals_the_sdk_encoding() -> None:
    spans = _spans()
    expected = encode_spans(spans)
    encoder = _Encoder()
    assert _parse(encoder.request(spans)) == expected
    # the second batch is built from cached pairs, resources and scopes: still the same message
    assert _parse(encoder.request(spans)) == expected
    assert _parse(encode_request(spans[:1])) == encode_spans(spans[:1])


def test_an_attribute_outside_the_otel_types_falls_back_to_the_sdk_encoder() -> None:
    (span, *_rest) = _spans()
    odd = ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={"huge": 2**70, "ok": "yes"},
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
    assert _parse(encode_request([odd, span])) == encode_spans([odd, span])


def test_values_that_do_not_repeat_are_not_cached() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "enc-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("asyncmq_otel")
    long_text = "x" * 129
    for i in range(50):
        span = tracer.start_span(
            "process orders",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "asyncmq",
                "messaging.message.id": f"job-{i}",
                "asyncmq.note": f"{long_text}{i}",
            },
        )
        span.add_event(
            "exception",
            {
                "exception.type": "ValueError",
                "exception.message": f"bad job {i}",
                "exception.stacktrace": f"Traceback ...\n  line {i}\nValueError: bad job {i}",
            },
        )
        span.end()
    spans = list(exporter.get_finished_spans())
    encoder = _Encoder()
    assert _parse(encoder.request(spans)) == encode_spans(spans)
    cached = encoder._pairs  # the cache is what this test checks
    assert {key for _tag, key, _kind, _value in cached} == {"messaging.system", "exception.type"}
    assert len(cached) == 2

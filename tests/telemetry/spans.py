"""Small readers for finished spans, shared by the span-tree tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

MESSAGE_ID = "messaging.message.id"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def event(span: ReadableSpan, name: str) -> Mapping[str, Any]:
    found = [e for e in span.events if e.name == name]
    assert len(found) == 1, (name, event_names(span))
    return dict(found[0].attributes or {})


def links(span: ReadableSpan) -> dict[str, tuple[int, int]]:
    """Links by ``asyncmq.link.type``, as (trace id, span id)."""
    out = {
        str((link.attributes or {}).get("asyncmq.link.type")): (link.context.trace_id, link.context.span_id)
        for link in span.links
    }
    assert len(out) == len(span.links)
    return out


def ids(span: ReadableSpan) -> tuple[int, int]:
    return ctx(span).trace_id, ctx(span).span_id


def for_job(spans: Sequence[ReadableSpan], job_id: str, name_prefix: str = "") -> list[ReadableSpan]:
    found = [s for s in spans if attrs(s).get(MESSAGE_ID) == job_id and s.name.startswith(name_prefix)]
    return sorted(found, key=lambda s: s.start_time or 0)


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def ctx(span: ReadableSpan) -> SpanContext:
    assert span.context is not None
    return span.context


def assert_process(
    span: ReadableSpan, *, queue: str, job_id: str, task: str, attempt: int, outcome: str
) -> None:
    """The §2.4 process row: S attributes, outcome at end, CONSUMER kind."""
    a = attrs(span)
    assert span.name == f"process {queue}"
    assert span.kind is SpanKind.CONSUMER
    assert a["messaging.system"] == "asyncmq"
    assert a["messaging.operation.type"] == "process"
    assert a["messaging.operation.name"] == "process"
    assert a["messaging.destination.name"] == queue
    assert a[MESSAGE_ID] == job_id
    assert a["messaging.consumer.group.name"] == "default"
    assert isinstance(a["messaging.client.id"], str)
    assert a["asyncmq.task.name"] == task
    assert a["asyncmq.job.attempt"] == attempt
    for key in ("asyncmq.job.max_attempts", "asyncmq.job.priority"):
        assert isinstance(a[key], int)
    for key in ("asyncmq.job.enqueued_at", "asyncmq.job.eligible_at", "asyncmq.job.wait_s"):
        assert isinstance(a[key], float)
    assert a["asyncmq.job.outcome"] == outcome
    names = event_names(span)
    assert names[:2] == ["asyncmq.job.enqueued", "asyncmq.job.eligible"]
    assert event(span, "asyncmq.job.eligible") == {"asyncmq.job.attempt": attempt}
    if outcome in {"completed", "cancelled", "interrupted"}:
        assert span.status.status_code is StatusCode.UNSET
        assert "error.type" not in a


def assert_settle(span: ReadableSpan, *, queue: str, job_id: str, op_name: str, outcome: str) -> None:
    a = attrs(span)
    assert span.name == f"settle {queue}"
    assert span.kind is SpanKind.CLIENT
    assert a["messaging.system"] == "asyncmq"
    assert a["messaging.operation.type"] == "settle"
    assert a["messaging.operation.name"] == op_name
    assert a["messaging.destination.name"] == queue
    assert a[MESSAGE_ID] == job_id
    assert a["asyncmq.job.outcome"] == outcome
    for key in ("asyncmq.job.attempt", "asyncmq.job.max_attempts", "asyncmq.job.priority"):
        assert isinstance(a[key], int)
    for key in ("asyncmq.job.enqueued_at", "asyncmq.job.eligible_at"):
        assert isinstance(a[key], float)
    assert "asyncmq.job.wait_s" not in a
    assert event_names(span)[:2] == ["asyncmq.job.enqueued", "asyncmq.job.eligible"]

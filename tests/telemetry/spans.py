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
    """The process span's attributes: S attributes, outcome at end, CONSUMER kind."""
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
    # Overhead rule: no enqueued/eligible span events, which repeated the *_at attributes and were
    # stamped before the span started.
    assert not {"asyncmq.job.enqueued", "asyncmq.job.eligible"} & set(event_names(span))
    assert_events_inside(span)
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
    if op_name == "cancel":  # a job cancelled while queued has no attempt: absent, never 0
        assert "asyncmq.job.attempt" not in a
    else:
        assert isinstance(a["asyncmq.job.attempt"], int)
        assert a["asyncmq.job.attempt"] >= 1
    for key in ("asyncmq.job.max_attempts", "asyncmq.job.priority"):
        assert isinstance(a[key], int)
    for key in ("asyncmq.job.enqueued_at", "asyncmq.job.eligible_at"):
        assert isinstance(a[key], float)
    assert "asyncmq.job.wait_s" not in a
    assert not {"asyncmq.job.enqueued", "asyncmq.job.eligible"} & set(event_names(span))
    assert_events_inside(span)


def assert_events_inside(span: ReadableSpan) -> None:
    """Every span event is stamped within its span (a viewer would otherwise draw it outside).

    ``asyncmq.job.throttled`` is the one exception among span events: it is stamped when the rate-limit wait
    began, which precedes the span.
    """
    assert span.start_time is not None
    assert span.end_time is not None
    outside = [
        e.name
        for e in span.events
        if e.name != "asyncmq.job.throttled" and not span.start_time <= e.timestamp <= span.end_time
    ]
    assert not outside, f"{span.name}: events outside the span: {outside}"

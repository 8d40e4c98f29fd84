"""What the demo prints at the end: the summary table and one retried job's trace tree.

The trace tree comes from the spans the demo recorded in memory (next to the OTLP exporter when
``--otlp-endpoint`` is given); without telemetry, the job's lifecycle events are shown instead.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from .._terminal import format_table, paint
from ..errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ..events import LifecycleEvent

__all__ = ["OUTCOMES", "SpanCapture", "percentile", "render_lifecycle", "render_trace", "summary_lines"]

OUTCOMES = ("completed", "failed", "expired", "cancelled")


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def summary_lines(
    *,
    seen: Mapping[str, int],
    backend: Mapping[str, int] | None,
    enqueued: int,
    unsettled: int,
    waits: Sequence[float],
    durations: Sequence[float],
    stream: IO[str] | None = None,
) -> list[str]:
    """The outcome table (what the demo saw next to what the backend reports) and the latency lines."""
    headers = ["outcome", "jobs"] + (["backend"] if backend is not None else [])
    rows: list[list[object]] = []
    colors = {"completed": "green", "failed": "red", "expired": "yellow", "cancelled": "magenta"}
    for outcome in OUTCOMES:
        row: list[object] = [outcome, seen.get(outcome, 0)]
        if backend is not None:
            row.append(backend.get(outcome, 0))
        rows.append(row)
    if unsettled or (backend is not None and backend_open(backend)):
        rows.append(["unsettled", unsettled] + ([backend_open(backend)] if backend is not None else []))
    rows.append(["total", enqueued] + ([sum(backend.values())] if backend is not None else []))
    table = format_table(headers, rows, indent="  ")
    lines = [table[0]]
    for line, row in zip(table[1:], rows, strict=True):
        name = str(row[0])
        color = colors.get(name)
        lines.append(line.replace(name, paint(name, color, stream), 1) if color else line)
    lines.append("")
    for label, values in (("wait", waits), ("duration", durations)):
        p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
        lines.append(f"  {label:<9} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms   ({len(values)} samples)")
    return lines


def backend_open(counts: Mapping[str, int]) -> int:
    """Jobs the backend still holds as waiting, delayed or active."""
    return sum(counts.get(state, 0) for state in ("waiting", "delayed", "active"))


# -- traces ---------------------------------------------------------------------------------------------
class _CountingExporter:
    """Wraps the OTLP span exporter and counts what it delivered and what it could not.

    The demo promises traces in Jaeger; without these counts it would say so even when every export
    failed (the SDK only logs ``Failed to export spans batch``).
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415 - loads only when used

        try:
            result = self._exporter.export(spans)
        except Exception:  # noqa: BLE001 - an exporter that raises delivered nothing; the count says so
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.delivered += len(spans)
            else:
                self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class SpanCapture:
    """An SDK tracer provider that keeps finished spans in memory (and exports them over OTLP when asked).

    Args:
        service_name: ``service.name`` of the spans.
        otlp_endpoint: base OTLP/HTTP URL (``/v1/traces`` is appended); ``None`` uses
            ``OTEL_EXPORTER_OTLP_*`` when set, else nothing is exported.

    Raises:
        ConfigError: an OTLP endpoint is configured but the OTLP exporter is not installed.

    """

    def __init__(self, service_name: str, otlp_endpoint: str | None = None) -> None:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - OpenTelemetry loads only when used
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
            InMemorySpanExporter,
        )

        self.exporter: InMemorySpanExporter = InMemorySpanExporter()
        self.delivery: _CountingExporter | None = None
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": service_name})
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        from_env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        self.otlp_endpoint = otlp_endpoint or from_env
        if self.otlp_endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise ConfigError(
                    f"--otlp-endpoint needs the OTLP exporter ({exc}): pip install 'asyncmq-otel[otlp]'"
                ) from exc
            target = f"{otlp_endpoint.rstrip('/')}/v1/traces" if otlp_endpoint else None
            self.delivery = _CountingExporter(OTLPSpanExporter(endpoint=target))
            self.provider.add_span_processor(BatchSpanProcessor(cast("SpanExporter", self.delivery)))

    def spans(self) -> list[ReadableSpan]:
        """Finished spans so far."""
        return list(self.exporter.get_finished_spans())

    def shutdown(self) -> None:
        """Flush the OTLP exporter (2 s at most) and stop the provider (blocking)."""
        self.provider.force_flush(timeout_millis=2000)
        self.provider.shutdown()


def _duration_ms(span: ReadableSpan) -> float:
    if span.start_time is None or span.end_time is None:
        return 0.0
    return (span.end_time - span.start_time) / 1e6


def _span_line(span: ReadableSpan) -> str:
    attributes: Mapping[str, Any] = span.attributes or {}
    parts = [span.name, span.kind.name]
    status = span.status.status_code.name
    if status != "UNSET":
        parts.append(status)
    parts.append(f"{_duration_ms(span):.1f} ms")
    attempt = attributes.get("asyncmq.job.attempt")
    if attempt is not None and span.kind.name == "CONSUMER":
        parts.append(f"attempt {attempt}")
    outcome = attributes.get("asyncmq.job.outcome")
    if outcome:
        parts.append(f"→ {outcome}")
    for event in span.events:
        if event.name == "asyncmq.job.retry_scheduled":
            backoff = (event.attributes or {}).get("asyncmq.job.backoff_s")
            parts.append(
                f"retry in {float(backoff):.2f}s" if isinstance(backoff, int | float) else "retry scheduled"
            )
        elif event.name == "asyncmq.job.dead_lettered":
            parts.append(f"dead-lettered ({(event.attributes or {}).get('asyncmq.dlq.reason')})")
        elif event.name == "exception":
            exc_type = str((event.attributes or {}).get("exception.type", "")).rsplit(".", 1)[-1]
            message = str((event.attributes or {}).get("exception.message", ""))
            parts.append(f"{exc_type}: {message}"[:90])
    return "  ".join(parts)


def render_trace(spans: Sequence[ReadableSpan], job_id: str, stream: IO[str] | None = None) -> list[str]:
    """The trace tree of ``job_id`` (its creation span, every attempt and their children), or ``[]``."""
    mine = [s for s in spans if (s.attributes or {}).get("messaging.message.id") == job_id and s.context]
    if not mine:
        return []
    trace_ids = {s.context.trace_id for s in mine if s.context is not None}
    in_trace = sorted(
        (s for s in spans if s.context is not None and s.context.trace_id in trace_ids),
        key=lambda s: s.start_time or 0,
    )
    by_id = {s.context.span_id: s for s in in_trace if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in in_trace:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in by_id else None
        children.setdefault(parent, []).append(span)
    unicode = (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"
    tee, last, bar = ("├─ ", "└─ ", "│  ") if unicode else ("|- ", "`- ", "|  ")
    lines = [f"  trace id {format(next(iter(trace_ids)), '032x')}"]

    def text_of(span: ReadableSpan) -> str:
        text = _span_line(span)
        return paint(text, "red", stream) if span.status.status_code.name == "ERROR" else text

    def walk(parent: int, indent: str) -> None:
        kids = children.get(parent, [])
        for index, span in enumerate(kids):
            final = index == len(kids) - 1
            lines.append(f"  {indent}{last if final else tee}{text_of(span)}")
            if span.context is not None:
                walk(span.context.span_id, indent + ("   " if final else bar))

    for root in children.get(None, []):
        lines.append(f"  {text_of(root)}")
        if root.context is not None:
            walk(root.context.span_id, "")
    return lines


def render_lifecycle(events: Sequence[LifecycleEvent]) -> list[str]:
    """The job's lifecycle events, one line each (used when no spans were recorded)."""
    lines = []
    for event in events:
        detail = ""
        if event.name == "job:retried":
            detail = f"  backoff {event.backoff_s or 0:.2f}s  {event.error_type}: {event.error_message}"
        elif event.name in {"job:completed", "job:failed"} and event.duration_s is not None:
            detail = f"  after {event.duration_s * 1000:.1f} ms"
        lines.append(f"  attempt {event.attempt}  {event.name:<14}{detail}")
    return lines

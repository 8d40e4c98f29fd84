"""Helpers for users' tests: ``capture_telemetry()`` records every span, metric, log line and event.

Example:
    >>> from asyncmq_otel.testing import capture_telemetry
    >>> with capture_telemetry() as captured:  # doctest: +SKIP
    ...     ...  # enqueue and run jobs
    >>> captured.spans_named("process orders")  # doctest: +SKIP
    >>> captured.metric_value("asyncmq_job_outcomes_total", outcome="completed")  # doctest: +SKIP

"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry

from . import events
from .backends._default import memory_backend, reset_default_backend
from .settings import override_settings
from .telemetry import instrumentation as _telemetry
from .telemetry.config import TelemetryConfig
from .telemetry.metrics import METRICS_BY_NAME, label_key

if TYPE_CHECKING:
    from opentelemetry.util.types import Attributes

    from .backends.memory import InMemoryBackend
    from .events import EventBus, LifecycleEvent

__all__ = [
    "Captured",
    "Sample",
    "SpanNode",
    "capture_telemetry",
    "clean_bus",
    "install_switchable_tracer_provider",
    "isolated_state",
]


@contextlib.contextmanager
def clean_bus() -> Iterator[EventBus]:
    """The event bus as it is now, and as it was again on exit.

    Listeners, operation observers, drop observers and services registered before the block stay;
    on exit, those added inside are removed and undelivered events dropped
    (:meth:`~asyncmq_otel.events.EventBus.snapshot` and :meth:`~asyncmq_otel.events.EventBus.restore`).
    The caller context's structlog context variables come back as they were (an attempt a test
    started and never finished leaves its fields bound there otherwise).
    """
    bus = events.bus
    saved = bus.snapshot()
    try:
        with _restored_log_context():
            yield bus
    finally:
        bus.restore(saved)


@contextlib.contextmanager
def _restored_log_context() -> Iterator[None]:
    """The caller context's structlog context variables as they were on entry, again on exit.

    The log adapter binds an attempt's fields at ``job:started`` in the emitting context and unbinds
    them at its outcome. The worker emits both in the attempt's own task, whose context dies with it;
    a test that emits a ``job:started`` without an outcome itself binds them in its own context, which
    in a sync test is the thread's, inherited by every later test (anyio copies it into its runner).
    """
    saved = structlog.contextvars.get_contextvars()
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved)


@contextlib.contextmanager
def isolated_state(**setting_changes: Any) -> Iterator[InMemoryBackend]:  # noqa: ANN401 - any setting value
    """A fresh in-memory default backend and a clean event bus, for one test; all restored on exit.

    The default backend and the bus are process-wide, so without this a delayed job or a listener
    from one test reaches the next. Inside the block, ``settings.backend`` is a new
    :class:`~asyncmq_otel.backends.memory.InMemoryBackend` (``Queue``, ``task.enqueue`` and ``Worker``
    use it) and ``setting_changes`` apply; the bus is cleaned as :func:`clean_bus` says, and the
    previous settings come back on exit.

    Example:
        >>> with isolated_state(worker_concurrency=2) as backend:  # doctest: +SKIP
        ...     job_id = await send_welcome.enqueue("ada@example.com")
        ...     assert (await backend.counts("emails"))["waiting"] == 1

    """
    reset_default_backend()
    try:
        with clean_bus(), override_settings(**setting_changes):
            backend = cast("InMemoryBackend", memory_backend())  # sized by the changed settings
            with override_settings(backend=backend):
                yield backend
    finally:
        reset_default_backend()


class Sample(NamedTuple):
    """One metric sample: its exposed name, labels and value, and the sink it came from."""

    name: str
    labels: Mapping[str, str]
    value: float
    sink: str = "prometheus"


@dataclass
class SpanNode:
    """A finished span and its captured children, in start order."""

    span: ReadableSpan
    children: list[SpanNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The span's name."""
        return self.span.name

    def render(self, indent: int = 0) -> str:
        """The subtree as indented text: name, kind and status per line."""
        status = self.span.status.status_code.name
        lines = [f"{'  ' * indent}{self.span.name} {self.span.kind.name} {status}"]
        lines.extend(child.render(indent + 1) for child in self.children)
        return "\n".join(lines)


class _LogCapture(logging.Handler):
    """Keeps the event dict of every record on the ``asyncmq_otel`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if isinstance(msg, dict):
            entry = {k: v for k, v in msg.items() if k not in {"_record", "_from_structlog"}}
        else:
            entry = {"event": record.getMessage(), "level": record.levelname.lower(), "logger": record.name}
        with self._lock_records:
            self.records.append(entry)


class Captured:
    """What :func:`capture_telemetry` recorded; every property reads the current state."""

    def __init__(
        self,
        exporter: InMemorySpanExporter,
        reader: InMemoryMetricReader,
        registry: CollectorRegistry,
        logs: _LogCapture,
        captured_events: list[LifecycleEvent],
    ) -> None:
        self._exporter = exporter
        self._reader = reader
        self.registry = registry
        self._logs = logs
        self.events = captured_events

    @property
    def spans(self) -> list[ReadableSpan]:
        """Finished spans, in end order."""
        return list(self._exporter.get_finished_spans())

    def spans_named(self, name: str) -> list[ReadableSpan]:
        """Finished spans called ``name``, in start order."""
        return sorted((s for s in self.spans if s.name == name), key=lambda s: s.start_time or 0)

    def span_tree(self) -> list[SpanNode]:
        """Captured spans as trees: roots are spans whose parent was not captured."""
        spans = sorted(self.spans, key=lambda s: s.start_time or 0)
        nodes = {s.context.span_id: SpanNode(s) for s in spans if s.context is not None}
        roots: list[SpanNode] = []
        for span in spans:
            if span.context is None:
                continue
            node = nodes[span.context.span_id]
            parent = nodes.get(span.parent.span_id) if span.parent is not None else None
            (parent.children if parent is not None else roots).append(node)
        return roots

    @property
    def logs(self) -> list[dict[str, Any]]:
        """Event dicts of the lines written through the ``asyncmq_otel`` logger."""
        return list(self._logs.records)

    def logs_named(self, event: str) -> list[dict[str, Any]]:
        """Lines whose ``event`` is ``event`` (``job.completed``, ...)."""
        return [line for line in self.logs if line.get("event") == event]

    def events_named(self, name: str) -> list[LifecycleEvent]:
        """Bus events called ``name`` (``job:completed``, ...)."""
        return [e for e in self.events if e.name == name]

    @property
    def metrics(self) -> list[Sample]:
        """Samples of both sinks: the scrape registry, then the OTel reader (names translated)."""
        samples = [
            Sample(s.name, dict(s.labels), float(s.value), "prometheus")
            for family in self.registry.collect()
            for s in family.samples
        ]
        samples.extend(self._otel_samples())
        return samples

    def _otel_samples(self) -> Iterator[Sample]:
        data = self._reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    row = METRICS_BY_NAME.get(metric.name)
                    name = row.prometheus_name if row is not None else metric.name.replace(".", "_")
                    for point in metric.data.data_points:
                        labels = _labels(point.attributes)
                        if isinstance(point, HistogramDataPoint):
                            yield Sample(f"{name}_count", labels, float(point.count), "otlp")
                            yield Sample(f"{name}_sum", labels, float(point.sum), "otlp")
                            running = 0
                            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                                running += count
                                yield Sample(
                                    f"{name}_bucket", {**labels, "le": str(float(bound))}, running, "otlp"
                                )
                            yield Sample(
                                f"{name}_bucket", {**labels, "le": "+Inf"}, float(point.count), "otlp"
                            )
                        elif isinstance(point, NumberDataPoint) and isinstance(metric.data, (Sum, Gauge)):
                            yield Sample(name, labels, float(point.value), "otlp")

    def metric_value(self, name: str, *, sink: str = "prometheus", **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0.0 when none match).

        Label keys are the Prometheus ones (``messaging_destination_name``, ``outcome``, ...).
        """
        wanted = {label_key(k): v for k, v in labels.items()}
        return sum(
            s.value
            for s in self.metrics
            if s.name == name and s.sink == sink and all(s.labels.get(k) == v for k, v in wanted.items())
        )

    def otel_metric_names(self) -> set[str]:
        """OTel names of the instruments that produced data in the OTLP sink."""
        data = self._reader.get_metrics_data()
        if data is None:
            return set()
        return {
            metric.name
            for resource_metrics in data.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        }

    def clear(self) -> None:
        """Forget the spans, logs and events captured so far (metrics are cumulative)."""
        self._exporter.clear()
        self._logs.records.clear()
        self.events.clear()


def _labels(attributes: Attributes) -> dict[str, str]:
    return {label_key(k): str(v) for k, v in (attributes or {}).items()}


class _SwitchTracer(trace.ProxyTracer):
    """A tracer of the global switch provider: resolves the current capture's provider on every call."""

    def __init__(self, switch: _SwitchTracerProvider, *args: Any) -> None:  # noqa: ANN401 - ProxyTracer's args
        super().__init__(*args)
        self._switch = switch

    @property
    def _tracer(self) -> trace.Tracer:
        return self._switch.target.get_tracer(
            self._instrumenting_module_name,
            self._instrumenting_library_version,
            self._schema_url,
            self._attributes,
        )


class _SwitchTracerProvider(trace.TracerProvider):
    """Installed as the OTel global once (when none is set), so user handler spans reach the capture."""

    def __init__(self) -> None:
        self.target: trace.TracerProvider = trace.NoOpTracerProvider()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return _SwitchTracer(
            self, instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )


_SWITCH = _SwitchTracerProvider()


def install_switchable_tracer_provider() -> bool:
    """Make the capture's switch provider OTel's global tracer provider, unless a global is set already.

    OTel lets a process set its global tracer provider once. A test suite calls this before any test
    (a session fixture), so a test that instruments cannot pin the global to its own, later shut down,
    provider: handler spans then reach whichever :func:`capture_telemetry` is active, and nothing
    outside one. :func:`capture_telemetry` calls it too. Returns whether the switch is the global.
    """
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_SWITCH)
    return trace.get_tracer_provider() is _SWITCH


@contextlib.contextmanager
def capture_telemetry(config: TelemetryConfig | None = None, /, **overrides: Any) -> Iterator[Captured]:  # noqa: ANN401 - TelemetryConfig's fields
    """Record telemetry in memory for the duration of the block; open no ports; restore everything on exit.

    It instruments with an always-on sampler, an ``InMemorySpanExporter`` behind a
    ``SimpleSpanProcessor``, an ``InMemoryMetricReader`` (the OTLP sink is on), a fresh Prometheus
    registry and a log capture, and records every bus event; the log fields bound in the caller's
    context are restored on exit. An instrumentation already active is
    suspended for the block and comes back afterwards. When no global tracer provider is set, a
    switch provider is installed once as the global, so spans created by handlers reach the
    capture (outside a capture it is inert).

    The options are those of :func:`asyncmq_otel.telemetry.instrument` (a :class:`TelemetryConfig`
    and/or its fields as keywords), except what the capture sets itself: the providers, the registry,
    ``metrics_addr`` (nothing is served) and the log output. ``log_level`` defaults to ``DEBUG`` here
    (every event's line).

    Yields:
        The :class:`Captured` record.

    Raises:
        TypeError: a keyword that is not a field of :class:`TelemetryConfig`.

    """
    base = (config if config is not None else TelemetryConfig()).replace(**overrides)
    target_bus = base.bus if base.bus is not None else events.bus
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_ON)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    registry = CollectorRegistry()
    logs = _LogCapture()
    captured_events: list[LifecycleEvent] = []
    capture_config = base.replace(
        service_name=base.service_name or "asyncmq-test",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        prometheus_registry=registry,
        metrics_addr="",
        otlp_metrics=True,
        otlp_endpoint=None,
        logs_exporter=None,
        log_format="json",
        logs_output="stderr",
        log_level=base.log_level if base.log_level is not None else "DEBUG",
        propagation=base.propagation or "child",
        span_name_style=base.span_name_style or "{op} {queue}",
        sampling_ratio=1.0,
        bus=target_bus,
    )

    suspended = _telemetry._state  # noqa: SLF001 - suspend the active instrumentation for the block
    if suspended is not None:
        _telemetry._state = None  # noqa: SLF001 - as above
        suspended.detach()
        if suspended.log_output is not None:
            suspended.log_output.uninstall(suspended.config.flush_timeout_s)
    previous_target = _SWITCH.target
    if install_switchable_tracer_provider():
        _SWITCH.target = tracer_provider
    try:
        # The package's own helper: the capture handler is called synchronously, nothing is rendered.
        _telemetry._instrument(capture_config, log_handlers=[logs], render_logs=False)  # noqa: SLF001
        target_bus.on("*", captured_events.append, inline=True)
        with _restored_log_context():  # an attempt started but not finished in the block stays in it
            yield Captured(exporter, reader, registry, logs, captured_events)
    finally:
        target_bus.off("*", captured_events.append)
        _telemetry.uninstrument()
        tracer_provider.shutdown()
        meter_provider.shutdown()
        _SWITCH.target = previous_target
        if suspended is not None:
            if suspended.log_output is not None:
                suspended.log_output.install()
            suspended.attach()
            _telemetry._state = suspended  # noqa: SLF001 - restore the suspended instrumentation

"""Telemetry: lifecycle events → OpenTelemetry spans, Prometheus metrics and structured logs.

``instrument()`` subscribes three adapters to the event bus (traces, metrics, logs) and builds or
adopts providers; ``uninstrument()`` removes exactly what it added. The worker, the queue API and the
backends know nothing of this package: they emit events and report backend writes.

Example:
    >>> import asyncmq_otel.telemetry as telemetry
    >>> telemetry.instrument(metrics_addr="127.0.0.1:0")  # doctest: +SKIP
    >>> telemetry.metrics_url()  # doctest: +SKIP
    'http://127.0.0.1:40123/metrics'

"""

from __future__ import annotations

import atexit
import importlib
import logging as _stdlib_logging  # the `logging` name is this package's submodule
import os
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from .. import events
from .._version import __version__
from ._metrics_adapter import MetricsAdapter
from ._sampler import QueueGauges, QueueSampler, SamplerLock, StatsSource
from .logging import AddTraceContext, LoggingAdapter, LogOutput
from .metrics import MetricSinks
from .setup import (
    MetricsServer,
    Providers,
    TelemetryConfig,
    build_providers,
    build_registry,
    flush_and_shutdown,
)
from .tracing import AFTER_EVENTS, BEFORE_EVENTS, LinkAwareSampler, TracingAdapter

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ..events import EventBus, LifecycleEvent

__all__ = [
    "AddTraceContext",
    "AsyncMQInstrumentor",
    "LinkAwareSampler",
    "QueueGauges",
    "QueueSampler",
    "SamplerLock",
    "TelemetryConfig",
    "active_config",
    "flush",
    "instrument",
    "is_instrumented",
    "metrics_url",
    "run_queue_sampler",
    "uninstrument",
]

_log = _stdlib_logging.getLogger("asyncmq_otel.telemetry")


class _Instrumentation:
    """Everything one ``instrument()`` call added, so that ``uninstrument()`` can remove exactly that."""

    def __init__(
        self,
        config: TelemetryConfig,
        bus: EventBus,
        providers: Providers,
        *,
        registry: CollectorRegistry | None,
        log_handlers: Sequence[_stdlib_logging.Handler],
        render_logs: bool,
    ) -> None:
        self.config = config
        self.bus = bus
        self.providers = providers
        self.pid = os.getpid()
        self.subscriptions: list[tuple[str, events.Listener]] = []
        self.observers: list[Any] = []
        self.drop_observers: list[Any] = []
        self.services: list[Any] = []
        self.samplers: list[tuple[anyio.CancelScope, int, anyio.lowlevel.EventLoopToken]] = []
        self.server: MetricsServer | None = None
        self.sinks: MetricSinks | None = None
        self.metrics: MetricsAdapter | None = None
        self.gauges: QueueGauges | None = None
        self.tracing: TracingAdapter | None = None
        self.logging: LoggingAdapter | None = None
        self.log_output: LogOutput | None = None
        self.saved_queue_size = bus.queue_size
        try:
            self._build(registry, log_handlers, render_logs=render_logs)
        except BaseException:
            self.close(flush=False)
            raise

    def _build(
        self,
        registry: CollectorRegistry | None,
        log_handlers: Sequence[_stdlib_logging.Handler],
        *,
        render_logs: bool,
    ) -> None:
        config = self.config
        if config.logs or log_handlers:
            self.log_output = LogOutput(
                log_format=config.log_format,
                level=config.log_level,
                logger_provider=self.providers.logger_provider if config.logs_exporter == "otlp" else None,
                extra_handlers=list(log_handlers),
                render=render_logs and config.logs,
            )
            self.log_output.install()
            self.logging = LoggingAdapter(self.log_output.logger())
        if config.metrics:
            if registry is None:
                registry = build_registry(
                    {key.replace(".", "_"): str(value) for key, value in config.resource_attributes().items()}
                )
            self.sinks = MetricSinks(
                registry=registry,
                meter_provider=self.providers.meter_provider if config.otlp_metrics else None,
                cardinality_limit=config.metric_cardinality_limit,
                histogram_buckets=config.histogram_buckets,
                on_overflow=lambda row: self.metrics.on_overflow(row) if self.metrics is not None else None,
                version=__version__,
            )
            self.metrics = MetricsAdapter(
                self.sinks,
                bus=self.bus,
                error_type_limit=config.error_type_limit,
                warn=self._warn,
                exemplars=config.traces,
            )
            if config.queue_sampler != "off":
                self.gauges = QueueGauges(config.queue_sample_interval_s)
                self.metrics.attach_queue_gauges(self.gauges)  # #17–#19 and #25
            if config.metrics_addr:
                self.server = MetricsServer(registry, config.metrics_addr)
                self.server.set_health(self.metrics.health)
        if config.traces and self.providers.tracer_provider is not None:
            tracer = self.providers.tracer_provider.get_tracer("asyncmq_otel", __version__)
            self.tracing = TracingAdapter(
                tracer,
                propagation=cast("Any", config.propagation),
                span_name_style=config.span_name_style,
                bulk_create_spans=config.bulk_create_spans,
                progress_events_per_span=config.progress_events_per_span,
            )
        self.attach()

    def _warn(self, event: str, fields: Mapping[str, object]) -> None:
        if self.logging is not None:
            self.logging.telemetry(event, fields)
        else:
            _log.warning("%s %s", event, dict(fields))

    # -- bus wiring ------------------------------------------------------------------------------------
    def _on(self, pattern: str, listener: events.Listener, signal: events.Signal) -> None:
        self.bus.on(pattern, listener, inline=True, signal=signal)
        self.subscriptions.append((pattern, listener))

    def attach(self) -> None:
        """Subscribe the adapters: tracing's ``before``, then metrics and logs, then tracing's ``after``."""
        self.bus.queue_size = self.config.event_queue_size
        if self.tracing is not None:
            for name in BEFORE_EVENTS:
                self._on(name, self.tracing.before, "span")
            self.bus.add_observer(self.tracing)
            self.observers.append(self.tracing)
        if self.metrics is not None:
            for name, handler in self.metrics.handlers.items():
                self._on(name, handler, "metric")
            self.bus.add_observer(self.metrics)
            self.observers.append(self.metrics)
            self.bus.add_drop_observer(self.metrics.on_drop)
            self.drop_observers.append(self.metrics.on_drop)
        if self.gauges is not None:
            # Every Worker started from now on runs the elected queue sampler beside it.
            self.bus.add_service(_sampler_service)
            self.services.append(_sampler_service)
        if self.logging is not None:
            self._on("*", self.logging, "log")
        if self.tracing is not None:
            for name in AFTER_EVENTS:
                self._on(name, self.tracing.after, "span")
        if self.providers.owned:
            # A queued listener: the worker's shutdown tail drains the queue right after worker:stopped,
            # so the flush runs there, in a thread, bounded by flush_timeout_s.
            self.bus.on("worker:stopped", self._flush_on_stop, inline=False)
            self.subscriptions.append(("worker:stopped", self._flush_on_stop))

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        for pattern, listener in self.subscriptions:
            self.bus.off(pattern, listener)
        self.subscriptions.clear()
        for observer in self.observers:
            self.bus.remove_observer(observer)
        self.observers.clear()
        for drop_observer in self.drop_observers:
            self.bus.remove_drop_observer(drop_observer)
        self.drop_observers.clear()
        for service in self.services:
            self.bus.remove_service(service)
        self.services.clear()
        self.bus.queue_size = self.saved_queue_size

    def _flush_on_stop(self, _event: LifecycleEvent) -> None:
        self.flush()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Flush the providers built here (never the caller's) within ``timeout_s``."""
        timeout = self.config.flush_timeout_s if timeout_s is None else timeout_s
        return flush_and_shutdown(self.providers.owned, timeout, shutdown=False)

    # -- teardown -----------------------------------------------------------------------------------------
    def _cancel_samplers(self) -> None:
        me = threading.get_ident()
        for scope, thread, token in list(self.samplers):
            try:
                if thread == me:
                    scope.cancel()
                else:
                    anyio.from_thread.run_sync(scope.cancel, token=token)
            except Exception as exc:  # noqa: BLE001 - its event loop may be gone already
                _log.debug("queue sampler could not be cancelled: %s", exc)
        self.samplers.clear()

    def close(self, *, flush: bool = True) -> None:
        """Remove listeners, server, collectors, log handlers and samplers; flush and stop our providers."""
        self.detach()
        self._cancel_samplers()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.sinks is not None:
            self.sinks.close()
        if self.tracing is not None:
            self.tracing.shutdown()
        if self.logging is not None:
            self.logging.close()
        if self.log_output is not None:
            self.log_output.uninstall()
        if self.providers.owned:
            flush_and_shutdown(self.providers.owned, self.config.flush_timeout_s if flush else 0.0)
            self.providers.owned.clear()

    def abandon(self) -> None:
        """In a forked child: drop the inherited wiring without touching the parent's threads."""
        self.detach()
        self.samplers.clear()
        if self.server is not None:
            self.server.abandon()
            self.server = None
        if self.sinks is not None:
            self.sinks.close()
        if self.log_output is not None:
            self.log_output.uninstall()
        self.providers.owned.clear()


_lock = threading.RLock()
_state: _Instrumentation | None = None


def instrument(
    *,
    service_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    logger_provider: LoggerProvider | None = None,
    otlp_endpoint: str | None = None,
    traces: bool = True,
    metrics: bool = True,
    logs: bool = True,
    otlp_metrics: bool | None = None,
    logs_exporter: str | None = None,
    metrics_addr: str | None = None,
    prometheus_registry: CollectorRegistry | None = None,
    sampling_ratio: float | None = None,
    propagation: str | None = None,
    span_name_style: str | None = None,
    bulk_create_spans: bool = True,
    progress_events_per_span: int = 10,
    metric_cardinality_limit: int = 2000,
    error_type_limit: int = 20,
    histogram_buckets: Mapping[str, Sequence[float]] | None = None,
    queue_sampler: str = "elected",
    queue_sample_interval_s: float = 10.0,
    event_queue_size: int = 10_000,
    log_format: str | None = None,
    log_level: str | int = "INFO",
    flush_timeout_s: float = 2.0,
    bus: EventBus | None = None,
) -> None:
    """Turn lifecycle telemetry on: spans, metrics and logs from the event bus.

    Arguments left at ``None`` fall back to their environment variable, then to the default:
    ``service_name`` (``OTEL_SERVICE_NAME``, ``"asyncmq-worker"``), ``otlp_endpoint``
    (``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_|LOGS_]ENDPOINT``; no OTLP exporter without one),
    ``metrics_addr`` (``ASYNCMQ_METRICS_ADDR``, ``"127.0.0.1:9464"``; ``""`` serves nothing),
    ``sampling_ratio`` (``OTEL_TRACES_SAMPLER[_ARG]``, 1.0), ``propagation``
    (``ASYNCMQ_TRACE_PROPAGATION``, ``"child"``), ``span_name_style`` (``ASYNCMQ_SPAN_NAME_STYLE``),
    ``log_format`` (``ASYNCMQ_LOG_FORMAT``, ``"auto"``), ``otlp_metrics`` (``OTEL_METRICS_EXPORTER=otlp``)
    and ``logs_exporter`` (``OTEL_LOGS_EXPORTER=otlp``). ``OTEL_SDK_DISABLED=true`` turns traces and
    every OTLP path off; the scrape sink stays.

    Providers passed in are used as they are and never shut down here. Otherwise they are built
    (``ParentBased(LinkAware(TraceIdRatioBased(ratio)))``, ``BatchSpanProcessor``) and installed as
    the OTel globals when none are set yet, so spans of the user's handlers share the pipeline.

    A second call while instrumented logs a warning and changes nothing: call :func:`uninstrument`
    first to reconfigure. A forked child calls it again to get its own providers and sinks.

    Args:
        service_name: ``service.name`` of the resource.
        tracer_provider: use this provider instead of building one.
        meter_provider: the OTLP sink's provider (with ``otlp_metrics=True``).
        logger_provider: the OTLP log handler's provider (with ``logs_exporter="otlp"``).
        otlp_endpoint: base OTLP/HTTP URL, e.g. ``http://collector:4318``.
        traces: turn the trace adapter on.
        metrics: turn the metrics adapter (scrape sink) on.
        logs: turn the log adapter on.
        otlp_metrics: also record the metric table through the OTel metrics API.
        logs_exporter: ``"otlp"`` adds an OTel log handler next to the console/JSON one.
        metrics_addr: where ``/metrics`` and ``/healthz`` are served; port 0 picks a free port.
        prometheus_registry: record into this registry (nothing else is added to it) instead of a fresh one.
        sampling_ratio: root sampling ratio of the provider built here.
        propagation: ``"child"``, ``"link"`` or ``"none"``.
        span_name_style: ``"{op} {queue}"`` or ``"{op} {queue} {task}"``.
        bulk_create_spans: one ``create`` span per job of a bulk enqueue.
        progress_events_per_span: progress reports bridged to span events per attempt.
        metric_cardinality_limit: label sets per metric before the ``_OTHER`` overflow series.
        error_type_limit: distinct ``error_type`` values per (metric, task) before ``_OTHER``.
        histogram_buckets: bucket overrides by OTel metric name.
        queue_sampler: ``"elected"`` (default) or ``"off"`` (an exporter process samples instead).
        queue_sample_interval_s: seconds between queue samples.
        event_queue_size: bound of the bus FIFO feeding queued listeners.
        log_format: ``"auto"``, ``"json"`` or ``"console"``.
        log_level: level of the ``asyncmq_otel`` logger.
        flush_timeout_s: total time allowed to flush the providers built here.
        bus: the event bus to subscribe to (the process bus by default).

    """
    _instrument(
        {
            "service_name": service_name,
            "otlp_endpoint": otlp_endpoint,
            "traces": traces,
            "metrics": metrics,
            "logs": logs,
            "otlp_metrics": otlp_metrics,
            "logs_exporter": logs_exporter,
            "metrics_addr": metrics_addr,
            "sampling_ratio": sampling_ratio,
            "propagation": propagation,
            "span_name_style": span_name_style,
            "bulk_create_spans": bulk_create_spans,
            "progress_events_per_span": progress_events_per_span,
            "metric_cardinality_limit": metric_cardinality_limit,
            "error_type_limit": error_type_limit,
            "histogram_buckets": None
            if histogram_buckets is None
            else {k: [float(b) for b in v] for k, v in histogram_buckets.items()},
            "queue_sampler": queue_sampler,
            "queue_sample_interval_s": queue_sample_interval_s,
            "event_queue_size": event_queue_size,
            "log_format": log_format,
            "log_level": log_level,
            "flush_timeout_s": flush_timeout_s,
        },
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        registry=prometheus_registry,
        bus=bus,
    )


def _instrument(
    arguments: dict[str, Any],
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    logger_provider: LoggerProvider | None = None,
    registry: CollectorRegistry | None = None,
    bus: EventBus | None = None,
    log_handlers: Sequence[_stdlib_logging.Handler] = (),
    render_logs: bool = True,
) -> bool:
    """``instrument()`` with the extra knobs ``capture_telemetry()`` needs; False when already active."""
    global _state  # noqa: PLW0603 - the process-wide instrumentation, guarded by _lock
    with _lock:
        if _state is not None and _state.pid != os.getpid():
            _state.abandon()  # inherited across fork: rebuild rather than reuse the parent's
            _state = None
        if _state is not None:
            _log.warning(
                "telemetry.already_instrumented: instrument() was called again and changed nothing; "
                "call uninstrument() first to reconfigure"
            )
            return False
        config = TelemetryConfig.resolve(**arguments)
        providers = build_providers(
            config,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
        )
        try:
            state = _Instrumentation(
                config,
                bus if bus is not None else events.bus,
                providers,
                registry=registry,
                log_handlers=log_handlers,
                render_logs=render_logs,
            )
        except BaseException:
            flush_and_shutdown(providers.owned, 0.0)
            raise
        _state = state
        atexit.register(_at_exit)
        return True


def uninstrument() -> None:
    """Remove exactly what :func:`instrument` added; a no-op when not instrumented.

    Bus listeners, observers, collectors, the HTTP server, queue samplers and the handlers on the
    ``asyncmq_otel`` logger go; providers built by ``instrument()`` are flushed, then shut down
    (if they were installed as OTel globals they stay installed, inert, since OTel allows one set).
    """
    global _state
    with _lock:
        state, _state = _state, None
        atexit.unregister(_at_exit)
    if state is None:
        return
    if state.pid != os.getpid():
        state.abandon()
        return
    state.close()


def _at_exit() -> None:
    state = _state
    if state is not None and state.pid == os.getpid():
        state.flush()
        uninstrument()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is active in this process."""
    state = _state
    return state is not None and state.pid == os.getpid()


def active_config() -> TelemetryConfig | None:
    """The resolved configuration of the active instrumentation (``None`` when not instrumented)."""
    state = _state
    return None if state is None else state.config


def metrics_url() -> str | None:
    """The URL of ``/metrics`` served by :func:`instrument` (``None`` when nothing is served)."""
    state = _state
    if state is None or state.server is None:
        return None
    return state.server.url


def flush(timeout_s: float | None = None) -> bool:
    """Flush the providers built by :func:`instrument` within ``timeout_s`` (default ``flush_timeout_s``).

    Blocking: from async code, call it through ``anyio.to_thread.run_sync``.
    """
    state = _state
    return True if state is None else state.flush(timeout_s)


async def run_queue_sampler(backend: StatsSource, *, queues: Sequence[str] | None = None) -> None:
    """Sample queue gauges (#17–#19) from ``backend`` until cancelled or :func:`uninstrument` is called.

    Run it as a task next to a worker (or in the standalone exporter). When the backend offers
    :class:`SamplerLock`, only the process holding the lock exports the gauges; otherwise this
    process does. Returns at once when telemetry is off or ``queue_sampler="off"``.
    """
    state = _state
    if state is None or state.gauges is None or state.metrics is None:
        return
    sampler = QueueSampler(
        backend,
        state.gauges,
        interval=state.config.queue_sample_interval_s,
        queues=queues,
        on_result=state.metrics.backend_result,
    )
    with anyio.CancelScope() as scope:
        entry = (scope, threading.get_ident(), anyio.lowlevel.current_token())
        state.samplers.append(entry)
        try:
            await sampler.run()
        finally:
            if entry in state.samplers:
                state.samplers.remove(entry)


async def _sampler_service(backend: Any, queues: list[str]) -> None:  # noqa: ANN401 - any backend
    """The bus service a worker runs: the queue sampler for the queues it serves."""
    await run_queue_sampler(backend, queues=queues)


class _StandaloneInstrumentor:
    """The ``BaseInstrumentor`` surface, for when ``opentelemetry-instrumentation`` is not installed."""

    _instance: _StandaloneInstrumentor | None = None
    _is_instrumented_by_opentelemetry = False

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandaloneInstrumentor:  # noqa: ANN401, ARG004, PYI034 - a singleton, as BaseInstrumentor
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """Whether :meth:`instrument` is in effect."""
        return self._is_instrumented_by_opentelemetry

    def instrument(self, **kwargs: Any) -> None:  # noqa: ANN401 - forwarded to instrument()
        """Instrument once; a second call only warns."""
        if self._is_instrumented_by_opentelemetry:
            _log.warning("Attempting to instrument while already instrumented")
            return
        self._instrument(**kwargs)
        self._is_instrumented_by_opentelemetry = True

    def uninstrument(self, **kwargs: Any) -> None:  # noqa: ANN401 - forwarded to uninstrument()
        """Undo :meth:`instrument`."""
        if self._is_instrumented_by_opentelemetry:
            self._uninstrument(**kwargs)
            self._is_instrumented_by_opentelemetry = False

    def _instrument(self, **kwargs: Any) -> None:  # noqa: ANN401
        raise NotImplementedError

    def _uninstrument(self, **kwargs: Any) -> None:  # noqa: ANN401
        raise NotImplementedError


def _instrumentor_base() -> type:
    try:
        module = importlib.import_module("opentelemetry.instrumentation.instrumentor")
    except ImportError:
        return _StandaloneInstrumentor
    return cast("type", module.BaseInstrumentor)


class AsyncMQInstrumentor(_instrumentor_base()):  # type: ignore[misc] # the base is BaseInstrumentor when installed
    """The ``opentelemetry_instrumentor`` entry point: ``opentelemetry-instrument`` and friends use it.

    ``_instrument(**kwargs)`` calls :func:`instrument` with the global providers unless others are
    given; ``_uninstrument()`` calls :func:`uninstrument`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """No instrumented library beyond this package itself."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:  # noqa: ANN401 - instrument()'s keyword arguments
        from opentelemetry import metrics, trace  # noqa: PLC0415 - only when instrumenting

        kwargs.setdefault("tracer_provider", trace.get_tracer_provider())
        if kwargs.get("otlp_metrics"):
            kwargs.setdefault("meter_provider", metrics.get_meter_provider())
        instrument(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:  # noqa: ANN401, ARG002 - BaseInstrumentor's signature
        uninstrument()

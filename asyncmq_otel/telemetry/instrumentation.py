"""Wiring: ``instrument()`` connects the three adapters to the event bus; ``uninstrument()`` undoes it.

``instrument()`` subscribes three adapters to the event bus (traces, metrics, logs) and builds or
adopts providers; ``uninstrument()`` removes exactly what it added. The worker, the queue API and the
backends know nothing of this package: they emit events and report backend writes.
"""

from __future__ import annotations

import atexit
import importlib
import logging as _stdlib_logging
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from .. import events
from .._version import __version__
from ._metrics_adapter import MetricsAdapter
from ._sampler import QueueGauges, QueueSampler, StatsSource
from .config import TelemetryConfig
from .log_adapter import LoggingAdapter, LogOutput
from .metrics import MetricSinks
from .providers import (
    MetricsServer,
    Providers,
    build_log_output,
    build_providers,
    build_registry,
    flush_and_shutdown,
    shutdown_providers,
)
from .tracing import AFTER_EVENTS, BEFORE_EVENTS, TracingAdapter

if TYPE_CHECKING:
    from ..events import LifecycleEvent

# What this module defines; ``asyncmq_otel.telemetry`` re-exports it with the adapters' public names.
__all__ = [
    "AsyncMQInstrumentor",
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
    """Everything one ``instrument()`` call added, so that ``uninstrument()`` can remove exactly that.

    Building (providers, the registry and server, the log output: :mod:`.providers`) and wiring (the
    adapters' bus listeners, observers and the sampler service: :meth:`attach`) are separate steps.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        providers: Providers,
        *,
        log_handlers: Sequence[_stdlib_logging.Handler],
        render_logs: bool,
    ) -> None:
        self.config = config
        self.bus = config.bus if config.bus is not None else events.bus
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
        self.saved_queue_size = self.bus.queue_size
        try:
            self._build(log_handlers, render_logs=render_logs)
        except BaseException:
            self.close(flush=False)
            raise
        self.attach()

    def _build(self, log_handlers: Sequence[_stdlib_logging.Handler], *, render_logs: bool) -> None:
        config = self.config
        self.log_output = build_log_output(
            config, self.providers, log_handlers, render=render_logs, on_drop=self._log_dropped
        )
        if self.log_output is not None:
            self.log_output.install()
            self.logging = LoggingAdapter(self.log_output.logger(), self.log_output.direct_lines())
        if config.metrics:
            registry = config.prometheus_registry
            if registry is None:
                registry = build_registry(
                    {key.replace(".", "_"): str(value) for key, value in config.resource_attributes().items()}
                )
            self.sinks = MetricSinks(
                registry=registry,
                meter_provider=self.providers.meter_provider if config.otlp_metrics else None,
                cardinality_limit=config.metric_cardinality_limit,
                histogram_buckets=cast("dict[str, list[float]]", config.histogram_buckets or {}),
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
                self.metrics.attach_queue_gauges(self.gauges)  # depth, oldest age, paused, consumers
            if config.metrics_addr:
                self.server = MetricsServer(registry, config.metrics_addr)
                self.server.set_health(self.metrics.health)
        if config.traces and self.providers.tracer_provider is not None:
            tracer = self.providers.tracer_provider.get_tracer("asyncmq_otel", __version__)
            self.tracing = TracingAdapter(
                tracer,
                propagation=cast("Any", config.propagation),
                span_name_style=config.span_name_style or "{op} {queue}",
                bulk_create_spans=config.bulk_create_spans,
                progress_events_per_span=config.progress_events_per_span,
                settle_spans=config.settle_spans,
            )

    def _log_dropped(self) -> None:
        self.bus.record_drop("log", "queue_full")

    def _warn(self, event: str, fields: Mapping[str, object]) -> None:
        if self.logging is not None:
            self.logging.telemetry(event, fields)
        else:
            _log.warning("%s %s", event, dict(fields))

    # -- bus wiring ------------------------------------------------------------------------------------
    def _on(
        self,
        pattern: str,
        listener: events.Listener,
        signal: events.Signal,
        from_job: events.JobListener | None = None,
    ) -> None:
        self.bus.on(pattern, listener, inline=True, signal=signal, from_job=from_job)
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
                self._on(name, handler, "metric", self.metrics.job_handlers.get(name))
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
        if self.providers.owned or self.log_output is not None:
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
        """Write the queued log lines, then flush the providers built here (never the caller's).

        Both within ``timeout_s`` in total (default ``flush_timeout_s``).
        """
        timeout = self.config.flush_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        logs_ok = True if self.log_output is None else self.log_output.flush(timeout)
        if not logs_ok:
            _log.warning("telemetry.flush_timeout: log lines were not written within %.1fs", timeout)
        remaining = max(deadline - time.monotonic(), 0.0)
        return flush_and_shutdown(self.providers.owned, remaining, shutdown=False) and logs_ok

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
        """Remove listeners, server, collectors, log handlers and samplers; flush and stop our providers.

        ``flush=False`` (a failed ``instrument()``): nothing was recorded yet, so nothing is flushed.
        """
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
        deadline = time.monotonic() + self.config.flush_timeout_s
        if self.log_output is not None:
            self.log_output.uninstall(self.config.flush_timeout_s if flush else 0.0)
            self.log_output = None
        if self.providers.owned:
            if flush:
                flush_and_shutdown(self.providers.owned, max(deadline - time.monotonic(), 0.0))
            else:
                shutdown_providers(self.providers.owned)
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
            self.log_output.abandon()
            self.log_output = None
        self.providers.owned.clear()


_lock = threading.RLock()
_state: _Instrumentation | None = None


def instrument(config: TelemetryConfig | None = None, /, **overrides: Any) -> None:  # noqa: ANN401 - TelemetryConfig's fields
    """Turn lifecycle telemetry on: spans, metrics and logs from the event bus.

    Pass a :class:`TelemetryConfig`, its fields as keywords, or both (keywords override the config's
    fields). Options left at ``None`` fall back to their environment variable, then to the default
    (see :class:`TelemetryConfig`). ``OTEL_SDK_DISABLED=true`` turns traces and every OTLP path off;
    the scrape sink stays.

    Providers passed in are used as they are and never shut down here; so is an SDK tracer provider
    the application already installed as the OTel global. Otherwise they are built
    (``ParentBased(LinkAware(TraceIdRatioBased(ratio)))``, ``BatchSpanProcessor``) and installed as
    the OTel globals when none are set yet, so spans of the user's handlers share the pipeline.

    A second call while instrumented logs a warning and changes nothing: call :func:`uninstrument`
    first to reconfigure. A forked child calls it again to get its own providers and sinks.

    Args:
        config: the options; ``TelemetryConfig()`` (every default) when omitted.
        **overrides: fields of :class:`TelemetryConfig` to set on top of ``config``.

    Raises:
        TypeError: a keyword that is not a field of :class:`TelemetryConfig`.
        TelemetryConfigError: an invalid value, or ``metrics_addr`` is in use (the message says how
            to choose another address).

    """
    base = config if config is not None else TelemetryConfig()
    _instrument(base.replace(**overrides) if overrides else base)


def _instrument(
    config: TelemetryConfig,
    *,
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
        resolved = config.resolve()
        providers = build_providers(resolved)
        try:
            state = _Instrumentation(resolved, providers, log_handlers=log_handlers, render_logs=render_logs)
        except BaseException:
            shutdown_providers(providers.owned)
            raise
        _state = state
        atexit.register(_at_exit)
        return True


def uninstrument() -> None:
    """Remove exactly what :func:`instrument` added; a no-op when not instrumented.

    Bus listeners, observers, collectors, the HTTP server, queue samplers and the handlers on the
    ``asyncmq_otel`` logger go (queued log lines are written first, within ``flush_timeout_s``);
    providers built by ``instrument()`` are flushed, then shut down (if they were installed as OTel
    globals they stay installed, inert, since OTel allows one set).
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
    """Sample queue gauges (depth, oldest age, paused) from ``backend`` until cancelled or uninstrumented.

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

    ``_instrument(**kwargs)`` builds a :class:`TelemetryConfig` from ``kwargs`` and only wires the bus
    to the global providers (tracer; meter with ``otlp_metrics``; logger with ``logs_exporter``): it
    builds none of its own, and it serves ``/metrics`` only when ``metrics_addr`` is given (as an
    argument or as ``ASYNCMQ_METRICS_ADDR``). ``_uninstrument()`` calls :func:`uninstrument`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """No instrumented library beyond this package itself."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:  # noqa: ANN401 - TelemetryConfig's fields
        from opentelemetry import metrics, trace  # noqa: PLC0415 - only when instrumenting
        from opentelemetry._logs import get_logger_provider  # noqa: PLC0415

        kwargs.pop("skip_dep_check", None)  # BaseInstrumentor's own option
        config = TelemetryConfig().replace(**kwargs)
        globals_: dict[str, Any] = {}
        if config.tracer_provider is None:
            globals_["tracer_provider"] = trace.get_tracer_provider()
        if config.meter_provider is None:
            globals_["meter_provider"] = metrics.get_meter_provider()
        if config.logger_provider is None:
            globals_["logger_provider"] = get_logger_provider()
        if config.metrics_addr is None and os.environ.get("ASYNCMQ_METRICS_ADDR") is None:
            globals_["metrics_addr"] = ""  # the entry point opens no port unless asked to
        instrument(config.replace(**globals_))

    def _uninstrument(self, **kwargs: Any) -> None:  # noqa: ANN401, ARG002 - BaseInstrumentor's signature
        uninstrument()

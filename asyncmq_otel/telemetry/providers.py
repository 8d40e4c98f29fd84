"""Providers, the ``/metrics`` server and flushing.

Providers handed in by the caller are used as they are and never shut down here; providers built here
(OTLP/HTTP exporters only when an endpoint is configured) are flushed within ``flush_timeout_s`` and
shut down by ``uninstrument()``.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from ..errors import TelemetryConfigError
from .config import DEFAULT_METRICS_ADDR, TelemetryConfig
from .log_adapter import LogOutput

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import TracerProvider

__all__ = [
    "MetricsServer",
    "Providers",
    "build_log_output",
    "build_providers",
    "build_registry",
    "flush_and_shutdown",
    "shutdown_providers",
]

_log = logging.getLogger("asyncmq_otel.telemetry")

_SHUTDOWN_GRACE_S: Final = 0.2


# -- providers ------------------------------------------------------------------------------------------
@dataclass
class Providers:
    """The providers telemetry uses, and which of them were built here (and are ours to shut down)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    owned: list[Any] = field(default_factory=list)


def build_resource(config: TelemetryConfig) -> Resource:
    """The resource: service name, instance id, version, host name and pid, plus the OTEL_ environment."""
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - the SDK loads only when providers are built

    return Resource.create(config.resource_attributes())


_BUILT: weakref.WeakSet[Any] = weakref.WeakSet()
"""Providers built here: never adopted as "the application's" global (they may be shut down already)."""


def _application_global(current: Any, sdk_type: str) -> Any | None:  # noqa: ANN401 - any OTel provider
    """``current`` when it is an SDK provider the application installed as the OTel global, else None."""
    cls = type(current)
    if current in _BUILT or not any(
        f"{base.__module__}.{base.__qualname__}" == sdk_type for base in cls.__mro__
    ):
        return None
    return current


def build_providers(config: TelemetryConfig) -> Providers:
    """Use the caller's providers, or SDK providers the application installed as globals, or build ours.

    Only providers built here are ``owned`` (flushed and shut down by ``uninstrument()``); the ones
    built here are installed as the OTel globals when none is set yet (an application's own providers win).
    """
    from opentelemetry import metrics, trace  # noqa: PLC0415 - see build_resource
    from opentelemetry._logs import get_logger_provider, set_logger_provider  # noqa: PLC0415

    out = Providers(config.tracer_provider, config.meter_provider, config.logger_provider)
    if config.traces and out.tracer_provider is None:
        out.tracer_provider = _application_global(
            trace.get_tracer_provider(), "opentelemetry.sdk.trace.TracerProvider"
        )
    if config.otlp_metrics and out.meter_provider is None:
        out.meter_provider = _application_global(
            metrics.get_meter_provider(), "opentelemetry.sdk.metrics.MeterProvider"
        )
    if config.logs and config.logs_exporter == "otlp" and out.logger_provider is None:
        out.logger_provider = _application_global(
            get_logger_provider(), "opentelemetry.sdk._logs.LoggerProvider"
        )
    need_traces = config.traces and out.tracer_provider is None
    need_metrics = bool(config.otlp_metrics) and out.meter_provider is None
    need_logs = config.logs and config.logs_exporter == "otlp" and out.logger_provider is None
    resource = build_resource(config) if (need_traces or need_metrics or need_logs) else None
    if need_traces and resource is not None:
        built_tp = _tracer_provider(config, resource)
        out.tracer_provider = built_tp
        out.owned.append(built_tp)
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(built_tp)
    if need_metrics and resource is not None:
        built_mp = _meter_provider(config, resource)
        out.meter_provider = built_mp
        out.owned.append(built_mp)
        if type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
            metrics.set_meter_provider(built_mp)
    if need_logs and resource is not None:
        built_lp = _logger_provider(config, resource)
        out.logger_provider = built_lp
        out.owned.append(built_lp)
        if type(get_logger_provider()).__name__ == "ProxyLoggerProvider":
            set_logger_provider(built_lp)
    _BUILT.update(out.owned)
    return out


def build_log_output(
    config: TelemetryConfig,
    providers: Providers,
    extra_handlers: Sequence[logging.Handler],
    *,
    render: bool,
    on_drop: Callable[[], None],
) -> LogOutput | None:
    """The handlers of the ``asyncmq_otel`` logger and their writer thread (``None`` when logs are off)."""
    if not (config.logs or extra_handlers):
        return None
    return LogOutput(
        log_format=config.log_format or "auto",
        level=config.log_level,
        logger_provider=providers.logger_provider if config.logs_exporter == "otlp" else None,
        extra_handlers=list(extra_handlers),
        render=render and config.logs,
        output=config.logs_output or "stderr",
        max_lines=config.log_queue_size,
        on_drop=on_drop,
    )


def _tracer_provider(config: TelemetryConfig, resource: Resource) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    from .tracing import LinkAwareSampler  # noqa: PLC0415 - tracing imports the SDK sampler API

    ratio = 1.0 if config.sampling_ratio is None else config.sampling_ratio
    provider = SDKTracerProvider(
        resource=resource, sampler=ParentBased(root=LinkAwareSampler(TraceIdRatioBased(ratio)))
    )
    endpoint = config.endpoint("traces")
    if endpoint is not None and config.traces_exporter:
        # The SDK's OTLP/HTTP exporter with a cheaper encoder: export shares the GIL with the worker.
        from ._otlp_spans import FastOTLPSpanExporter  # noqa: PLC0415 - needs the [otlp] extra

        provider.add_span_processor(BatchSpanProcessor(FastOTLPSpanExporter(endpoint=endpoint or None)))
    return provider


def _meter_provider(config: TelemetryConfig, resource: Resource) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader  # noqa: PLC0415

    readers: list[MetricReader] = []
    endpoint = config.endpoint("metrics")
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint or None)))
    return SDKMeterProvider(resource=resource, metric_readers=readers)


def _logger_provider(config: TelemetryConfig, resource: Resource) -> LoggerProvider:
    from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider  # noqa: PLC0415
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: PLC0415

    provider = SDKLoggerProvider(resource=resource)
    endpoint = config.endpoint("logs")
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # noqa: PLC0415

        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint or None)))
    return provider


def _bounded(call: Callable[[], object], timeout_s: float) -> tuple[bool, object]:
    """Run ``call`` in a daemon thread for at most ``timeout_s``: (finished, result).

    The SDK's batch processors ignore ``timeout_millis`` and block until their exporter returns, so the
    total budget is enforced here; a thread still stuck in an exporter is left behind (it is a daemon).
    """
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - exiting must go on whatever an exporter does
            _log.warning("telemetry.flush_error: %s", exc)
            outcome.append(False)

    thread = threading.Thread(target=run, name="asyncmq-otel-flush", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.0))
    return (not thread.is_alive(), outcome[0] if outcome else None)


def flush_and_shutdown(providers: Sequence[Any], timeout_s: float, *, shutdown: bool = True) -> bool:
    """``force_flush`` every provider within ``timeout_s`` in total, then shut them down.

    Returns False (after logging ``telemetry.flush_timeout``) when the flush did not finish in time;
    shutting down then gets a short grace and is abandoned if an exporter still hangs.
    """
    deadline = time.monotonic() + timeout_s
    ok = True
    for provider in providers:
        remaining = deadline - time.monotonic()
        flush = functools.partial(provider.force_flush, timeout_millis=max(int(remaining * 1000), 1))
        finished, result = (False, None) if remaining <= 0 else _bounded(flush, remaining)
        ok = ok and finished and result is not False
    if not ok:
        _log.warning(
            "telemetry.flush_timeout: telemetry was not flushed within %.1fs; exiting anyway", timeout_s
        )
    if shutdown:
        for provider in providers:
            grace = max(deadline - time.monotonic(), _SHUTDOWN_GRACE_S)
            if not _bounded(provider.shutdown, grace)[0]:
                _log.warning(
                    "telemetry.shutdown_timeout: %s did not shut down in time", type(provider).__name__
                )
    return ok


def shutdown_providers(providers: Sequence[Any]) -> None:
    """Shut providers down without flushing (``instrument()`` failed: they recorded nothing)."""
    for provider in providers:
        if not _bounded(provider.shutdown, _SHUTDOWN_GRACE_S)[0]:
            _log.warning("telemetry.shutdown_timeout: %s did not shut down in time", type(provider).__name__)


# -- the scrape sink --------------------------------------------------------------------------------------
def build_registry(service: Mapping[str, str]) -> CollectorRegistry:
    """A fresh registry with the process and platform collectors and ``target_info``."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.set_target_info(dict(service))
    return registry


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port). Port 0 picks a free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise TelemetryConfigError(
            f"metrics_addr {addr!r} must be host:port, e.g. 127.0.0.1:9464 (port 0 picks a free one)"
        )
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(self.server.registry)
            except Exception as exc:  # noqa: BLE001 - a broken collector gives a 500, not a dead server
                self._reply(500, "text/plain; charset=utf-8", f"collection failed: {exc}\n".encode())
                return
            self._reply(200, content_type, body)
        elif path == "/healthz":
            healthy, reason = self.server.health() if self.server.health is not None else (True, "ok")
            self._reply(200 if healthy else 503, "text/plain; charset=utf-8", f"{reason}\n".encode())
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - BaseHTTPRequestHandler's signature
        """Requests are not logged."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Callable[[], tuple[bool, str]] | None = None


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """``/metrics`` (OpenMetrics when asked) and ``/healthz`` on a background thread.

    Args:
        registry: what ``/metrics`` serves.
        addr: ``host:port``; ``127.0.0.1:9464`` by default, port 0 picks a free port.

    Raises:
        TelemetryConfigError: ``addr`` is malformed, in use or cannot be bound; the message names it and
            says how to choose another.

    """

    def __init__(self, registry: CollectorRegistry, addr: str = DEFAULT_METRICS_ADDR) -> None:
        host, port = parse_addr(addr)
        try:
            self._server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        except OSError as exc:
            problem = (
                "the address is in use (another worker or process serves it)"
                if exc.errno == errno.EADDRINUSE
                else f"the address cannot be bound ({exc.strerror or exc})"
            )
            raise TelemetryConfigError(
                f"cannot serve /metrics on {addr}: {problem}; choose another with metrics_addr= "
                "(instrument), ASYNCMQ_METRICS_ADDR or --metrics-addr (command line): port 0 picks one "
                "that is free, and an empty address serves no /metrics"
            ) from exc
        self._server.registry = registry
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="asyncmq-otel-metrics", daemon=True
        )
        self._thread.start()

    def set_health(self, check: Callable[[], tuple[bool, str]]) -> None:
        """Answer ``/healthz`` from ``check()``: 200 with its reason when healthy, else 503."""
        self._server.health = check

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def abandon(self) -> None:
        """Close the socket inherited by a forked child without touching the parent's thread."""
        self._server.server_close()

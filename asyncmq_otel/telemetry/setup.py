"""Setup: configuration precedence, providers, the ``/metrics`` server and flushing (§5, §6).

Precedence is explicit argument > environment variable > default. Providers handed in by the caller
are used as they are and never shut down here; providers built here (OTLP/HTTP exporters only when an
endpoint is configured) are flushed within ``flush_timeout_s`` and shut down by ``uninstrument()``.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from .._version import __version__
from .logging import LOG_FORMATS
from .tracing import PROPAGATION_MODES, SPAN_NAME_STYLES

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import TracerProvider

__all__ = [
    "MetricsServer",
    "Providers",
    "TelemetryConfig",
    "build_providers",
    "build_registry",
    "flush_and_shutdown",
]

_log = logging.getLogger("asyncmq_otel.telemetry")

DEFAULT_METRICS_ADDR: Final = "127.0.0.1:9464"
DEFAULT_SERVICE_NAME: Final = "asyncmq-worker"
QUEUE_SAMPLER_MODES: Final = ("elected", "off")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_SHUTDOWN_GRACE_S: Final = 0.2


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None else value.strip()


@dataclass
class TelemetryConfig:
    """Every ``instrument()`` option after precedence was applied (argument > environment > default)."""

    service_name: str = DEFAULT_SERVICE_NAME
    otlp_endpoint: str | None = None
    traces: bool = True
    metrics: bool = True
    logs: bool = True
    otlp_metrics: bool = False
    logs_exporter: str | None = None
    metrics_addr: str = DEFAULT_METRICS_ADDR
    sampling_ratio: float = 1.0
    propagation: str = "child"
    span_name_style: str = "{op} {queue}"
    bulk_create_spans: bool = True
    progress_events_per_span: int = 10
    metric_cardinality_limit: int = 2000
    error_type_limit: int = 20
    histogram_buckets: dict[str, list[float]] = field(default_factory=dict)
    queue_sampler: str = "elected"
    queue_sample_interval_s: float = 10.0
    event_queue_size: int = 10_000
    log_format: str = "auto"
    log_level: str | int = "INFO"
    flush_timeout_s: float = 2.0
    sdk_disabled: bool = False
    traces_exporter: bool = True
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def resource_attributes(self) -> dict[str, str | int]:
        """``service.name``, ``service.instance.id``, ``service.version``, ``host.name``, ``process.pid``."""
        return {
            "service.name": self.service_name,
            "service.instance.id": self.instance_id,
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **arguments: Any) -> TelemetryConfig:  # noqa: ANN401, C901
        """Apply the precedence rules to ``instrument()``'s arguments (``None`` = not given)."""
        env = os.environ if environ is None else environ
        given = {key: value for key, value in arguments.items() if value is not None}
        config = cls()
        for key, value in given.items():
            if not hasattr(config, key):
                raise TypeError(f"instrument() got an unexpected argument {key!r}")
            setattr(config, key, value)
        if "service_name" not in given:
            config.service_name = (
                _env(env, "OTEL_SERVICE_NAME") or _service_from_resource_env(env) or DEFAULT_SERVICE_NAME
            )
        if "metrics_addr" not in given and (addr := env.get("ASYNCMQ_METRICS_ADDR")) is not None:
            config.metrics_addr = addr.strip()
        if "propagation" not in given and (mode := _env(env, "ASYNCMQ_TRACE_PROPAGATION")):
            config.propagation = mode
        if "span_name_style" not in given and (style := env.get("ASYNCMQ_SPAN_NAME_STYLE")):
            config.span_name_style = style
        if "log_format" not in given and (fmt := _env(env, "ASYNCMQ_LOG_FORMAT")):
            config.log_format = fmt
        if "sampling_ratio" not in given:
            config.sampling_ratio = _ratio_from_env(env)
        if "logs_exporter" not in given and (_env(env, "OTEL_LOGS_EXPORTER") or "").lower() == "otlp":
            config.logs_exporter = "otlp"
        if "otlp_metrics" not in given and "otlp" in (_env(env, "OTEL_METRICS_EXPORTER") or "").lower():
            config.otlp_metrics = True
        config.traces_exporter = (_env(env, "OTEL_TRACES_EXPORTER") or "otlp").lower() != "none"
        config.sdk_disabled = (_env(env, "OTEL_SDK_DISABLED") or "").lower() in _TRUE
        if config.sdk_disabled:  # traces and every OTLP path off; the scrape sink stays
            config.traces = False
            config.otlp_metrics = False
            config.logs_exporter = None
        config.validate()
        return config

    def validate(self) -> None:
        """Reject values the contract does not allow, saying what to use instead."""
        if self.propagation not in PROPAGATION_MODES:
            raise ValueError(f"propagation must be one of {PROPAGATION_MODES}, not {self.propagation!r}")
        if self.span_name_style not in SPAN_NAME_STYLES:
            raise ValueError(
                f"span_name_style must be one of {SPAN_NAME_STYLES}, not {self.span_name_style!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {self.log_format!r}")
        if self.queue_sampler not in QUEUE_SAMPLER_MODES:
            raise ValueError(
                f"queue_sampler must be one of {QUEUE_SAMPLER_MODES}, not {self.queue_sampler!r}"
            )
        if self.logs_exporter not in {None, "otlp"}:
            raise ValueError(f"logs_exporter must be None or 'otlp', not {self.logs_exporter!r}")
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ValueError(f"sampling_ratio must be within [0, 1], not {self.sampling_ratio}")
        self._validate_numbers()

    def _validate_numbers(self) -> None:
        for name, value, low in (
            ("metric_cardinality_limit", self.metric_cardinality_limit, 1),
            ("error_type_limit", self.error_type_limit, 1),
            ("event_queue_size", self.event_queue_size, 1),
            ("progress_events_per_span", self.progress_events_per_span, 0),
            ("flush_timeout_s", self.flush_timeout_s, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, not {value}")
        if self.queue_sample_interval_s <= 0:
            raise ValueError(f"queue_sample_interval_s must be > 0, not {self.queue_sample_interval_s}")

    def endpoint(self, signal: str, environ: Mapping[str, str] | None = None) -> str | None:
        """The OTLP/HTTP URL of ``signal`` (``traces``, ``metrics``, ``logs``), or ``None`` when none is set.

        An explicit ``otlp_endpoint`` is a base URL (``/v1/<signal>`` is appended); otherwise the
        exporter reads ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` itself,
        and ``""`` is returned to say "configured by the environment".
        """
        env = os.environ if environ is None else environ
        if self.otlp_endpoint:
            return f"{self.otlp_endpoint.rstrip('/')}/v1/{signal}"
        if _env(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or _env(
            env, "OTEL_EXPORTER_OTLP_ENDPOINT"
        ):
            return ""
        return None


def _service_from_resource_env(env: Mapping[str, str]) -> str | None:
    for item in (env.get("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return None


def _ratio_from_env(env: Mapping[str, str]) -> float:
    sampler = (_env(env, "OTEL_TRACES_SAMPLER") or "").lower()
    if sampler in {"always_off", "parentbased_always_off"}:
        return 0.0
    if sampler in {"traceidratio", "parentbased_traceidratio"}:
        try:
            return min(max(float(_env(env, "OTEL_TRACES_SAMPLER_ARG") or "1.0"), 0.0), 1.0)
        except ValueError:
            _log.warning("OTEL_TRACES_SAMPLER_ARG is not a number; sampling everything")
    return 1.0


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


def build_providers(
    config: TelemetryConfig,
    *,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    logger_provider: LoggerProvider | None,
) -> Providers:
    """Use the caller's providers or build ours (§5 providers row)."""
    from opentelemetry import metrics, trace  # noqa: PLC0415 - see build_resource
    from opentelemetry._logs import get_logger_provider, set_logger_provider  # noqa: PLC0415

    out = Providers(tracer_provider, meter_provider, logger_provider)
    need_traces = config.traces and tracer_provider is None
    need_metrics = config.otlp_metrics and meter_provider is None
    need_logs = config.logs and config.logs_exporter == "otlp" and logger_provider is None
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
    return out


def _tracer_provider(config: TelemetryConfig, resource: Resource) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    from .tracing import LinkAwareSampler  # noqa: PLC0415 - tracing imports the SDK sampler API

    provider = SDKTracerProvider(
        resource=resource,
        sampler=ParentBased(root=LinkAwareSampler(TraceIdRatioBased(config.sampling_ratio))),
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


# -- the scrape sink --------------------------------------------------------------------------------------
def build_registry(service: Mapping[str, str]) -> CollectorRegistry:
    """A fresh registry with the process and platform collectors and ``target_info`` (§3.1)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.set_target_info(dict(service))
    return registry


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port). Port 0 picks a free port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
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

    """

    def __init__(self, registry: CollectorRegistry, addr: str = DEFAULT_METRICS_ADDR) -> None:
        host, port = parse_addr(addr)
        self._server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
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

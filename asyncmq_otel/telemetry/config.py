"""The telemetry configuration: every ``instrument()`` option, declared once as a frozen dataclass.

``instrument()``, ``capture_telemetry()``, the command line and ``AsyncMQInstrumentor`` all build a
:class:`TelemetryConfig`; :meth:`TelemetryConfig.resolve` applies the precedence rule (explicit value >
environment variable > default) and validates.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._version import __version__
from ..errors import TelemetryConfigError
from ..settings import DEFAULT_METRICS_ADDR
from .log_adapter import LOG_FORMATS, LOG_OUTPUTS
from .tracing import PROPAGATION_MODES, SPAN_NAME_STYLES

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from ..events import EventBus

__all__ = [
    "DEFAULT_METRICS_ADDR",
    "DEFAULT_SERVICE_NAME",
    "QUEUE_SAMPLER_MODES",
    "TelemetryConfig",
]

_log = logging.getLogger("asyncmq_otel.telemetry")

DEFAULT_SERVICE_NAME: Final = "asyncmq-worker"
QUEUE_SAMPLER_MODES: Final = ("elected", "off")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None else value.strip()


@dataclass(frozen=True)
class TelemetryConfig:
    """Every telemetry option, declared once. ``None`` means "not given": the environment, then the default.

    Build one and pass it to ``instrument(config)``, or pass the same names as keywords
    (``instrument(metrics_addr="127.0.0.1:0")``); keywords given with a config override its fields.

    Attributes:
        service_name: ``service.name`` (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
            ``"asyncmq-worker"``).
        tracer_provider: use this provider as is and never shut it down. Without one, an SDK provider
            installed as the OTel global is used the same way; otherwise one is built.
        meter_provider: the OTLP metric sink's provider (with ``otlp_metrics=True``).
        logger_provider: the OTLP log handler's provider (with ``logs_exporter="otlp"``).
        otlp_endpoint: base OTLP/HTTP URL (``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_|LOGS_]ENDPOINT``).
        traces: turn the trace adapter on.
        metrics: turn the metrics adapter (the scrape sink) on.
        logs: turn the log adapter on.
        otlp_metrics: also record the metric table through the OTel metrics API (``OTEL_METRICS_EXPORTER``).
        logs_exporter: ``"otlp"`` adds an OTel log handler (``OTEL_LOGS_EXPORTER``).
        traces_exporter: export spans over OTLP when an endpoint is set (``OTEL_TRACES_EXPORTER=none``: no).
        metrics_addr: where ``/metrics`` and ``/healthz`` are served (``ASYNCMQ_METRICS_ADDR``,
            ``"127.0.0.1:9464"``); ``""`` serves nothing, port 0 picks a free port.
        prometheus_registry: record into this registry (nothing else is added to it).
        sampling_ratio: root sampling ratio of a provider built here (``OTEL_TRACES_SAMPLER[_ARG]``, 1.0).
        propagation: ``"child"``, ``"link"`` or ``"none"`` (``ASYNCMQ_TRACE_PROPAGATION``).
        span_name_style: ``"{op} {queue}"`` or ``"{op} {queue} {task}"`` (``ASYNCMQ_SPAN_NAME_STYLE``).
        bulk_create_spans: one ``create`` span per job of a bulk enqueue.
        settle_spans: a ``settle`` span for every settle, not only for jobs settled without a run.
        progress_events_per_span: progress reports bridged to span events per attempt.
        metric_cardinality_limit: label sets per metric before the ``_OTHER`` overflow series.
        error_type_limit: ``error_type`` values kept per (metric, task).
        histogram_buckets: bucket overrides by OTel metric name.
        queue_sampler: ``"elected"`` or ``"off"`` (an exporter process samples instead).
        queue_sample_interval_s: seconds between queue samples.
        event_queue_size: bound of the bus FIFO feeding queued listeners.
        log_format: ``"auto"``, ``"json"`` or ``"console"`` (``ASYNCMQ_LOG_FORMAT``).
        log_level: level of the ``asyncmq_otel`` logger (``"INFO"`` with ``logs_output="stderr"``; with
            ``"stdlib"`` the application's level applies unless this is given).
        logs_output: ``"stderr"`` (own handler, no propagation) or ``"stdlib"`` (records propagate to the
            application's logging configuration) (``ASYNCMQ_LOGS_OUTPUT``).
        log_queue_size: lines waiting for the log writer thread before new ones are dropped and counted.
        flush_timeout_s: total time allowed to flush what was built here.
        instance_id: ``service.instance.id`` (a fresh UUID by default).
        bus: the event bus to subscribe to (the process bus by default).

    """

    service_name: str | None = None
    tracer_provider: TracerProvider | None = dataclasses.field(default=None, compare=False, repr=False)
    meter_provider: MeterProvider | None = dataclasses.field(default=None, compare=False, repr=False)
    logger_provider: LoggerProvider | None = dataclasses.field(default=None, compare=False, repr=False)
    otlp_endpoint: str | None = None
    traces: bool = True
    metrics: bool = True
    logs: bool = True
    otlp_metrics: bool | None = None
    logs_exporter: str | None = None
    traces_exporter: bool | None = None
    metrics_addr: str | None = None
    prometheus_registry: CollectorRegistry | None = dataclasses.field(default=None, compare=False, repr=False)
    sampling_ratio: float | None = None
    propagation: str | None = None
    span_name_style: str | None = None
    bulk_create_spans: bool = True
    settle_spans: bool = False
    progress_events_per_span: int = 10
    metric_cardinality_limit: int = 2000
    error_type_limit: int = 20
    histogram_buckets: Mapping[str, Sequence[float]] | None = None
    queue_sampler: str = "elected"
    queue_sample_interval_s: float = 10.0
    event_queue_size: int = 10_000
    log_format: str | None = None
    log_level: str | int | None = None
    logs_output: str | None = None
    log_queue_size: int = 10_000
    flush_timeout_s: float = 2.0
    instance_id: str | None = None
    bus: EventBus | None = dataclasses.field(default=None, compare=False, repr=False)

    def replace(self, **overrides: Any) -> TelemetryConfig:  # noqa: ANN401 - any option's value
        """A copy with ``overrides`` applied; an unknown name is a ``TypeError`` listing the options."""
        unknown = sorted(set(overrides) - _FIELD_NAMES)
        if unknown:
            raise TypeError(
                f"unknown telemetry option(s) {', '.join(map(repr, unknown))}; "
                f"the options are the fields of TelemetryConfig: {', '.join(sorted(_FIELD_NAMES))}"
            )
        return dataclasses.replace(self, **overrides)

    def resource_attributes(self) -> dict[str, str | int]:
        """``service.name``, ``service.instance.id``, ``service.version``, ``host.name``, ``process.pid``."""
        return {
            "service.name": self.service_name or DEFAULT_SERVICE_NAME,
            "service.instance.id": self.instance_id or "",
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }

    def resolve(self, environ: Mapping[str, str] | None = None) -> TelemetryConfig:  # noqa: C901, PLR0912 - one rule per option
        """Fill every option left at ``None`` from the environment, then the default, and validate.

        Raises:
            TelemetryConfigError: a value the contract does not allow (the message says what to use).

        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if self.service_name is None:
            values["service_name"] = (
                _env(env, "OTEL_SERVICE_NAME") or _service_from_resource_env(env) or DEFAULT_SERVICE_NAME
            )
        if self.metrics_addr is None:
            addr = env.get("ASYNCMQ_METRICS_ADDR")
            values["metrics_addr"] = DEFAULT_METRICS_ADDR if addr is None else addr.strip()
        if self.propagation is None:
            values["propagation"] = _env(env, "ASYNCMQ_TRACE_PROPAGATION") or "child"
        if self.span_name_style is None:
            values["span_name_style"] = env.get("ASYNCMQ_SPAN_NAME_STYLE") or "{op} {queue}"
        if self.log_format is None:
            values["log_format"] = _env(env, "ASYNCMQ_LOG_FORMAT") or "auto"
        if self.logs_output is None:
            values["logs_output"] = _env(env, "ASYNCMQ_LOGS_OUTPUT") or "stderr"
        if self.sampling_ratio is None:
            values["sampling_ratio"] = _ratio_from_env(env)
        if self.logs_exporter is None and (_env(env, "OTEL_LOGS_EXPORTER") or "").lower() == "otlp":
            values["logs_exporter"] = "otlp"
        if self.otlp_metrics is None:
            values["otlp_metrics"] = "otlp" in (_env(env, "OTEL_METRICS_EXPORTER") or "").lower()
        if self.traces_exporter is None:
            values["traces_exporter"] = (_env(env, "OTEL_TRACES_EXPORTER") or "otlp").lower() != "none"
        if self.instance_id is None:
            values["instance_id"] = str(uuid.uuid4())
        if self.histogram_buckets is not None:
            buckets = self.histogram_buckets
            values["histogram_buckets"] = {k: [float(b) for b in v] for k, v in buckets.items()}
        if (_env(env, "OTEL_SDK_DISABLED") or "").lower() in _TRUE:
            # traces and every OTLP path off; the scrape sink stays
            values.update(traces=False, otlp_metrics=False, logs_exporter=None)
        resolved = dataclasses.replace(self, **values)
        resolved.validate()
        return resolved

    def validate(self) -> None:
        """Reject values the contract does not allow, saying what to use instead."""
        for name, allowed in (
            ("propagation", PROPAGATION_MODES),
            ("span_name_style", SPAN_NAME_STYLES),
            ("log_format", LOG_FORMATS),
            ("logs_output", LOG_OUTPUTS),
            ("queue_sampler", QUEUE_SAMPLER_MODES),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise TelemetryConfigError(f"{name} must be one of {allowed}, not {value!r}")
        if self.logs_exporter not in {None, "otlp"}:
            raise TelemetryConfigError(f"logs_exporter must be None or 'otlp', not {self.logs_exporter!r}")
        if self.sampling_ratio is not None and not 0.0 <= self.sampling_ratio <= 1.0:
            raise TelemetryConfigError(f"sampling_ratio must be within [0, 1], not {self.sampling_ratio}")
        self._validate_numbers()

    def _validate_numbers(self) -> None:
        for name, value, low in (
            ("metric_cardinality_limit", self.metric_cardinality_limit, 1),
            ("error_type_limit", self.error_type_limit, 1),
            ("event_queue_size", self.event_queue_size, 1),
            ("log_queue_size", self.log_queue_size, 1),
            ("progress_events_per_span", self.progress_events_per_span, 0),
            ("flush_timeout_s", self.flush_timeout_s, 0),
        ):
            if value < low:
                raise TelemetryConfigError(f"{name} must be >= {low}, not {value}")
        if self.queue_sample_interval_s <= 0:
            raise TelemetryConfigError(
                f"queue_sample_interval_s must be > 0, not {self.queue_sample_interval_s}"
            )

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


_FIELD_NAMES: Final = frozenset(f.name for f in dataclasses.fields(TelemetryConfig))


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

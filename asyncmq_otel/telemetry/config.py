"""The telemetry configuration: every ``instrument()`` option after precedence (argument > env > default)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .._version import __version__
from .log_adapter import LOG_FORMATS
from .tracing import PROPAGATION_MODES, SPAN_NAME_STYLES

__all__ = ["DEFAULT_METRICS_ADDR", "DEFAULT_SERVICE_NAME", "QUEUE_SAMPLER_MODES", "TelemetryConfig"]

_log = logging.getLogger("asyncmq_otel.telemetry")

DEFAULT_METRICS_ADDR: Final = "127.0.0.1:9464"
DEFAULT_SERVICE_NAME: Final = "asyncmq-worker"
QUEUE_SAMPLER_MODES: Final = ("elected", "off")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


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

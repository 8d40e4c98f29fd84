"""Telemetry for the commands, loaded lazily: ``/metrics``, OTLP traces and structured job logs.

The telemetry package (and OpenTelemetry with it) is imported only when a command turns it on.
When it cannot be imported, a command that asked for it explicitly exits 2 with what to install;
otherwise it warns once and runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ..errors import TelemetryConfigError
from ._exit import CLIError, ExitCode
from ._output import Reporter

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from ..backends.base import Backend
    from ..telemetry import TelemetryConfig

__all__ = ["TelemetryHandle", "otlp_from_environment", "start_telemetry"]


def otlp_from_environment() -> str | None:
    """The OTLP endpoint the OpenTelemetry environment configures, if any (for the banner)."""
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


@dataclass
class TelemetryHandle:
    """Telemetry turned on by a command; :meth:`stop` removes exactly that."""

    metrics_url: str | None
    otlp_endpoint: str | None
    sampling: bool
    otlp_signals: tuple[str, ...] = ("traces",)

    async def run_queue_sampler(self, backend: Backend, queues: Sequence[str] | None = None) -> None:
        """Sample the queue gauges from ``backend`` until cancelled (returns at once when sampling is off)."""
        if not self.sampling:
            return
        from .. import telemetry  # noqa: PLC0415 - loaded already by start_telemetry

        await telemetry.run_queue_sampler(backend, queues=queues)

    async def stop(self) -> None:
        """Flush (bounded by the telemetry's ``flush_timeout_s``) and uninstrument, off the event loop."""
        from .. import telemetry  # noqa: PLC0415 - loaded already by start_telemetry

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(telemetry.uninstrument)


def start_telemetry(
    reporter: Reporter,
    *,
    metrics_addr: str | None,
    otlp_endpoint: str | None,
    log_format: str | None,
    service_name: str | None = None,
    required: bool = False,
    queue_sampler: str = "elected",
    queue_sample_interval: float = 10.0,
    traces: bool = True,
    logs: bool = True,
    log_level: str = "INFO",
    tracer_provider: TracerProvider | None = None,
) -> TelemetryHandle | None:
    """Call ``asyncmq_otel.telemetry.instrument`` with the command's flags.

    Args:
        reporter: where the "telemetry unavailable" warning goes.
        metrics_addr: ``host:port`` of ``/metrics`` and ``/healthz``; ``""`` serves nothing.
        otlp_endpoint: base OTLP/HTTP URL; ``None`` leaves it to ``OTEL_EXPORTER_OTLP_*``.
        log_format: ``json``, ``console`` or ``None`` (``ASYNCMQ_LOG_FORMAT``, else auto).
        service_name: ``service.name``; ``None`` leaves it to ``OTEL_SERVICE_NAME``.
        required: the user asked for telemetry explicitly: fail (exit 2) rather than warn.
        queue_sampler: ``elected`` or ``off``.
        queue_sample_interval: seconds between queue samples.
        traces: turn spans on.
        logs: write one log line per job event (stderr).
        log_level: level of the job log lines.
        tracer_provider: use this provider instead of building one.

    Returns:
        The handle, or ``None`` when telemetry is not installed and was not required.

    Raises:
        CLIError: exit 2 when the metrics address is taken or invalid (the message names it and says how
            to choose another), an option is invalid, the OTLP exporter is missing, or telemetry was
            required and cannot be imported.

    """
    try:
        from .. import telemetry  # noqa: PLC0415 - OpenTelemetry loads only when a command wants it
    except ImportError as exc:
        hint = "reinstall asyncmq-otel with its dependencies (pip install 'asyncmq-otel[otlp]')"
        if required:
            raise CLIError(
                f"telemetry is not available ({exc}): {hint}, or drop --metrics-addr/--otlp-endpoint",
                ExitCode.USAGE,
            ) from exc
        reporter.say(
            "telemetry.unavailable",
            f"telemetry is not available ({exc}); running without /metrics, traces or job logs: {hint}",
            level="warning",
        )
        return None
    config = telemetry.TelemetryConfig(
        service_name=service_name,
        metrics_addr=metrics_addr,
        otlp_endpoint=otlp_endpoint or None,
        log_format=log_format,
        log_level=log_level,
        queue_sampler=queue_sampler,
        queue_sample_interval_s=queue_sample_interval,
        traces=traces,
        logs=logs,
        tracer_provider=tracer_provider,
    )
    try:
        telemetry.instrument(config)
    except TelemetryConfigError as exc:
        # A busy address keeps its OSError as the cause: the demo falls back to a free port on it.
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise CLIError(str(exc), ExitCode.USAGE) from cause
    except ImportError as exc:
        raise CLIError(
            f"--otlp-endpoint needs the OTLP exporter ({exc}): pip install 'asyncmq-otel[otlp]'",
            ExitCode.USAGE,
        ) from exc
    active = telemetry.active_config()
    endpoint = otlp_endpoint or (active.otlp_endpoint if active is not None else None)
    return TelemetryHandle(
        metrics_url=telemetry.metrics_url(),
        otlp_endpoint=endpoint or otlp_from_environment(),
        sampling=queue_sampler != "off",
        otlp_signals=_otlp_signals(active),
    )


def _otlp_signals(config: TelemetryConfig | None) -> tuple[str, ...]:
    """Which signals go over OTLP when an endpoint is set."""
    if config is None:
        return ()
    wanted = {
        "traces": config.traces and bool(config.traces_exporter),
        "metrics": config.otlp_metrics,
        "logs": config.logs_exporter == "otlp",
    }
    return tuple(name for name, on in wanted.items() if on)

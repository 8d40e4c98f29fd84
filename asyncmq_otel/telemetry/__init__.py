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

from ._sampler import QueueGauges, QueueSampler, SamplerLock
from .config import TelemetryConfig
from .instrumentation import (
    AsyncMQInstrumentor,
    active_config,
    flush,
    instrument,
    is_instrumented,
    metrics_url,
    run_queue_sampler,
    uninstrument,
)
from .log_adapter import AddTraceContext
from .tracing import LinkAwareSampler

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

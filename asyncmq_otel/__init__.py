"""asyncmq_otel: an observability-first async job queue and worker framework.

The worker model is AsyncMQ's (``@task``, ``Queue``, ``Worker``, ``process_job``,
``handle_job``, lifecycle hooks, ``event_emitter``); every lifecycle transition is an event
on one bus, which the telemetry adapters turn into OpenTelemetry spans, Prometheus metrics
and structlog records.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AsyncMQError,
    BackendUnavailable,
    ConfigError,
    DuplicateJob,
    InvalidSchedule,
    JobArgumentError,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobTimeout,
    PayloadTooLarge,
    ResultSerializationError,
    ResultTooLarge,
    ScheduleNotFound,
    UnknownTask,
)

if TYPE_CHECKING:
    from .backends.base import Backend
    from .backends.memory import InMemoryBackend
    from .backends.redis import RedisBackend
    from .events import EventBus, LifecycleEvent, bus, event_emitter
    from .flows import FlowCycleError, FlowProducer, parent_results
    from .hooks import run_hooks, run_hooks_safely
    from .jobs import Backoff, Job, JobState
    from .limiters import RateLimiter
    from .queues import Queue
    from .settings import Settings, settings
    from .tasks import autodiscover_tasks, task
    from .telemetry import AsyncMQInstrumentor, instrument, metrics_url, uninstrument
    from .workers import Worker, handle_job, process_job

__all__ = [
    "AsyncMQError",
    "AsyncMQInstrumentor",
    "Backend",
    "BackendUnavailable",
    "Backoff",
    "ConfigError",
    "DuplicateJob",
    "EventBus",
    "FlowCycleError",
    "FlowProducer",
    "InMemoryBackend",
    "InvalidSchedule",
    "Job",
    "JobArgumentError",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobState",
    "JobTimeout",
    "LifecycleEvent",
    "PayloadTooLarge",
    "Queue",
    "RateLimiter",
    "RedisBackend",
    "ResultSerializationError",
    "ResultTooLarge",
    "ScheduleNotFound",
    "Settings",
    "UnknownTask",
    "Worker",
    "__version__",
    "autodiscover_tasks",
    "bus",
    "event_emitter",
    "handle_job",
    "instrument",
    "metrics_url",
    "parent_results",
    "process_job",
    "run_hooks",
    "run_hooks_safely",
    "settings",
    "task",
    "uninstrument",
]

# Public name -> the module that defines it, imported on first access (PEP 562): `import asyncmq_otel`
# stays cheap (the sandbox child and `@task`-only modules never load anyio, the backends or the
# worker), and adapters (redis-py, OpenTelemetry, prometheus_client) load only when asked for.
_LAZY: dict[str, str] = {
    "Backend": ".backends.base",
    "InMemoryBackend": ".backends.memory",
    "RedisBackend": ".backends.redis",
    "EventBus": ".events",
    "LifecycleEvent": ".events",
    "bus": ".events",
    "event_emitter": ".events",
    "FlowCycleError": ".flows",
    "FlowProducer": ".flows",
    "parent_results": ".flows",
    "run_hooks": ".hooks",
    "run_hooks_safely": ".hooks",
    "Backoff": ".jobs",
    "Job": ".jobs",
    "JobState": ".jobs",
    "RateLimiter": ".limiters",
    "Queue": ".queues",
    "Settings": ".settings",
    "settings": ".settings",
    "autodiscover_tasks": ".tasks",
    "task": ".tasks",
    "AsyncMQInstrumentor": ".telemetry",
    "instrument": ".telemetry",
    "metrics_url": ".telemetry",
    "uninstrument": ".telemetry",
    "Worker": ".workers",
    "_run_with_limits": ".workers",
    "handle_job": ".workers",
    "process_job": ".workers",
}


def __getattr__(name: str) -> Any:  # noqa: ANN401 - lazy attributes of the facade
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncmq_otel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

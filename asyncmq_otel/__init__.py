"""asyncmq_otel: an observability-first async job queue and worker framework.

The worker model is AsyncMQ's (``@task``, ``Queue``, ``Worker``, ``process_job``,
``handle_job``, lifecycle hooks, ``event_emitter``); every lifecycle transition is an event
on one bus, which the telemetry adapters turn into OpenTelemetry spans, Prometheus metrics
and structlog records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .backends.base import Backend as Backend
from .backends.memory import InMemoryBackend as InMemoryBackend
from .errors import (
    AsyncMQError as AsyncMQError,
)
from .errors import (
    BackendUnavailable as BackendUnavailable,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    DuplicateJob as DuplicateJob,
)
from .errors import (
    JobArgumentError as JobArgumentError,
)
from .errors import (
    JobTimeout as JobTimeout,
)
from .errors import (
    PayloadTooLarge as PayloadTooLarge,
)
from .errors import (
    ResultSerializationError as ResultSerializationError,
)
from .errors import (
    ResultTooLarge as ResultTooLarge,
)
from .errors import (
    UnknownTask as UnknownTask,
)
from .events import EventBus as EventBus
from .events import LifecycleEvent as LifecycleEvent
from .events import bus as bus
from .events import event_emitter as event_emitter
from .hooks import run_hooks as run_hooks
from .hooks import run_hooks_safely as run_hooks_safely
from .jobs import Backoff as Backoff
from .jobs import Job as Job
from .jobs import JobState as JobState
from .limiters import RateLimiter as RateLimiter
from .queues import Queue as Queue
from .settings import Settings as Settings
from .settings import settings as settings
from .tasks import autodiscover_tasks as autodiscover_tasks
from .tasks import task as task
from .workers import Worker as Worker
from .workers import _run_with_limits as _run_with_limits
from .workers import handle_job as handle_job
from .workers import process_job as process_job

if TYPE_CHECKING:
    from .backends.redis import RedisBackend as RedisBackend
    from .telemetry import AsyncMQInstrumentor as AsyncMQInstrumentor
    from .telemetry import instrument as instrument
    from .telemetry import metrics_url as metrics_url
    from .telemetry import uninstrument as uninstrument

__all__ = [
    "AsyncMQError",
    "AsyncMQInstrumentor",
    "Backend",
    "BackendUnavailable",
    "Backoff",
    "ConfigError",
    "DuplicateJob",
    "EventBus",
    "InMemoryBackend",
    "Job",
    "JobArgumentError",
    "JobState",
    "JobTimeout",
    "LifecycleEvent",
    "PayloadTooLarge",
    "Queue",
    "RateLimiter",
    "RedisBackend",
    "ResultSerializationError",
    "ResultTooLarge",
    "Settings",
    "UnknownTask",
    "Worker",
    "__version__",
    "_run_with_limits",
    "autodiscover_tasks",
    "bus",
    "event_emitter",
    "handle_job",
    "instrument",
    "metrics_url",
    "process_job",
    "run_hooks",
    "run_hooks_safely",
    "settings",
    "task",
    "uninstrument",
]

_TELEMETRY = frozenset({"instrument", "uninstrument", "metrics_url", "AsyncMQInstrumentor"})


def __getattr__(name: str) -> Any:  # noqa: ANN401 - lazy attributes of the facade
    # Adapters (redis-py, OpenTelemetry, prometheus_client) load only when someone asks for them.
    if name == "RedisBackend":
        from .backends.redis import RedisBackend  # noqa: PLC0415

        return RedisBackend
    if name in _TELEMETRY:  # OpenTelemetry and prometheus_client load on first use
        from . import telemetry  # noqa: PLC0415

        return getattr(telemetry, name)
    raise AttributeError(f"module 'asyncmq_otel' has no attribute {name!r}")

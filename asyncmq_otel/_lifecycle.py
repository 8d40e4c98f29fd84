"""Building lifecycle events from jobs: the one place that maps job fields to event fields."""

from __future__ import annotations

import time
from typing import Any

from .events import LifecycleEvent, bus
from .jobs import Job

__all__ = ["emit_job_event", "job_event"]


def job_event(name: str, job: Job, *, attempt: int | None = None, **fields: Any) -> LifecycleEvent:  # noqa: ANN401
    """An event about ``job`` carrying every field the contract puts on ``job:*`` events."""
    context = job.trace_context
    return LifecycleEvent(
        name=name,
        ts=time.time(),
        queue=job.queue,
        job_id=job.id,
        task=job.task,
        attempt=job.attempts if attempt is None else attempt,
        max_attempts=job.max_attempts,
        priority=job.priority,
        enqueued_at=job.enqueued_at,
        eligible_at=job.eligible_at,
        trace_context=dict(context) if context else None,
        **fields,
    )


def emit_job_event(name: str, job: Job, *, attempt: int | None = None, **fields: Any) -> None:  # noqa: ANN401
    """Build and emit a job event on the process bus."""
    bus.emit(job_event(name, job, attempt=attempt, **fields))

"""Building lifecycle events from jobs: the one place that maps job fields to event fields."""

from __future__ import annotations

import time
from typing import Any

from .events import LifecycleEvent, bus, make_event, make_event_unchecked
from .jobs import Job

__all__ = ["emit_job_event", "emit_job_fields", "job_event", "server_fields"]


def job_event(name: str, job: Job, *, attempt: int | None = None, **fields: Any) -> LifecycleEvent:  # noqa: ANN401
    """An event about ``job`` carrying every field the contract puts on ``job:*`` events."""
    return _job_event(name, job, attempt, fields)


def _job_event(
    name: str, job: Job, attempt: int | None, fields: dict[str, Any], *, checked: bool = True
) -> LifecycleEvent:
    """``job_event`` on a dict of fields it may fill in (the caller's own)."""
    context = job.trace_context
    fields["name"] = name
    fields["ts"] = time.time()
    fields["queue"] = job.queue
    fields["job_id"] = job.id
    fields["task"] = job.task
    fields["attempt"] = job.attempts if attempt is None else attempt
    fields["max_attempts"] = job.max_attempts
    fields["priority"] = job.priority
    fields["enqueued_at"] = job.enqueued_at
    fields["eligible_at"] = job.eligible_at
    fields["trace_context"] = dict(context) if context else None
    if job.schedule is not None:
        fields["schedule_key"] = job.schedule
        fields["schedule_due"] = job.schedule_due
    return make_event(fields) if checked else make_event_unchecked(fields)


def emit_job_event(name: str, job: Job, *, attempt: int | None = None, **fields: Any) -> None:  # noqa: ANN401
    """Build and emit a job event on the process bus (nothing is built when nobody listens)."""
    if bus.wants(name):
        bus.emit(_job_event(name, job, attempt, fields))


def emit_job_fields(name: str, job: Job, fields: dict[str, Any], attempt: int | None = None) -> None:
    """:func:`emit_job_event` with the extra fields in a dict it may fill in (the worker's hot path).

    The field names are not checked: every key must be a :class:`LifecycleEvent` field.
    """
    if bus.wants(name):
        bus.emit(_job_event(name, job, attempt, fields, checked=False))


def server_fields(backend: object) -> dict[str, Any]:
    """``server_address``/``server_port`` of a networked backend (none for the in-memory one)."""
    address = getattr(backend, "server_address", None)
    if not address:
        return {}
    return {"server_address": str(address), "server_port": getattr(backend, "server_port", None)}

"""Building lifecycle events from jobs: the one place that maps job fields to event fields.

An event's ``ts`` is read from the emitter's clock (the worker's, a FakeClock in tests), the real one
by default.
"""

from __future__ import annotations

from typing import Any

from .clock import Clock, system_clock
from .events import _EVENT_FIELDS, JOB_FIELD_NAMES, LifecycleEvent, bus, make_job_event
from .jobs import Job

__all__ = ["emit_job_event", "emit_job_fields", "job_event", "server_fields"]

_EXTRA_FIELDS = _EVENT_FIELDS - JOB_FIELD_NAMES


def job_event(
    name: str,
    job: Job,
    *,
    attempt_number: int | None = None,
    clock: Clock = system_clock,
    **fields: Any,  # noqa: ANN401 - event fields
) -> LifecycleEvent:
    """An event about ``job`` carrying every field the contract puts on ``job:*`` events.

    ``attempt_number`` is the event's ``attempt`` field (default: the job's ``attempts``); ``clock``
    gives its ``ts``.
    """
    _check(fields)
    number = job.attempts if attempt_number is None else attempt_number
    return make_job_event(name, clock.time(), job, number, fields)


def _check(fields: dict[str, Any]) -> None:
    """The ``TypeError`` ``LifecycleEvent(**fields)`` would raise for a key that is not a field.

    A field the job fills (``attempt``, ``queue``...) is refused too: the job's value would win silently.
    """
    if not fields.keys() <= _EXTRA_FIELDS:
        unknown = sorted(fields.keys() - _EVENT_FIELDS)
        if unknown:
            raise TypeError(f"LifecycleEvent.__init__() got an unexpected keyword argument {unknown[0]!r}")
        taken = sorted(fields.keys() & JOB_FIELD_NAMES)
        raise TypeError(f"the job fills the event field {taken[0]!r} (pass the attempt as attempt_number=)")


def emit_job_event(
    name: str,
    job: Job,
    *,
    attempt_number: int | None = None,
    clock: Clock = system_clock,
    **fields: Any,  # noqa: ANN401 - event fields
) -> None:
    """Build and emit a job event on the process bus (nothing is built when nobody listens)."""
    _check(fields)
    emit_job_fields(name, job, fields, attempt_number, clock)


def emit_job_fields(
    name: str,
    job: Job,
    fields: dict[str, Any],
    attempt_number: int | None = None,
    clock: Clock = system_clock,
) -> None:
    """:func:`emit_job_event` with the extra fields in a dict (the worker's hot path).

    The field names are not checked: every key must be a :class:`LifecycleEvent` field.
    """
    route = bus.route(name)
    if route is not None:
        number = job.attempts if attempt_number is None else attempt_number
        if route[2]:  # every listener takes the job as is (EventBus.on's from_job): no event to build
            bus.deliver_job(route, name, job, number, fields)
        else:
            bus.deliver(route, make_job_event(name, clock.time(), job, number, fields))


def server_fields(backend: object) -> dict[str, Any]:
    """``server_address``/``server_port`` of a networked backend (none for the in-memory one)."""
    address = getattr(backend, "server_address", None)
    if not address:
        return {}
    return {"server_address": str(address), "server_port": getattr(backend, "server_port", None)}

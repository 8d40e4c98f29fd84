"""Backend writes under observation: the :class:`Operation` telemetry sees, and the context managers.

:meth:`asyncmq_otel.events.EventBus.operation` and :meth:`~asyncmq_otel.events.EventBus.write` return
these; the write observers are the trace and metrics adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .jobs import Job

__all__ = ["ObservedWrite", "Operation", "OperationObserver", "TimedWrite"]

ObserverFailed = Callable[[Any, "Operation", Exception], None]
"""How an observer's exception is reported: ``(observer, operation, exc)`` (the bus logs and counts it)."""


@dataclass(slots=True)
class Operation:
    """A backend write being observed.

    ``name`` is ``send``, ``schedule``, ``ack``, ``retry``, ``dead_letter``, ``expire``, ``cancel``,
    ``requeue``, ``pause`` or ``resume``.

    Observers may set ``job.trace_context`` on the jobs of a ``send``/``schedule`` before the
    write happens; ``scratch`` keeps per-observer state between start and finish.
    """

    name: str
    queue: str
    jobs: list[Job] = field(default_factory=list)
    bulk: bool = False
    started_at: float = 0.0
    started_monotonic: float = 0.0
    duration_s: float | None = None
    error: BaseException | None = None
    outcome: str | None = None  # the backend's answer to a fenced write: OK, STALE, GONE, TOO_LARGE
    server_address: str | None = None
    server_port: int | None = None
    scratch: dict[int, Any] = field(default_factory=dict)


class OperationObserver(Protocol):
    """Sees backend writes start and finish (telemetry uses it for producer spans and write timings)."""

    def operation_started(self, operation: Operation) -> None:
        """Called before the write, in the writing task."""
        ...

    def operation_finished(self, operation: Operation) -> None:
        """Called after the write, in reverse order; ``operation.error`` is set when it raised."""
        ...


class ObservedWrite:
    """The context manager of ``EventBus.operation``.

    A class: a generator-based one costs a generator and its frames on every settle write.
    """

    __slots__ = ("_failed", "_observers", "_operation")

    def __init__(
        self, failed: ObserverFailed, operation: Operation, observers: list[OperationObserver]
    ) -> None:
        self._failed = failed
        self._operation = operation
        self._observers = observers

    def __enter__(self) -> Operation:
        operation = self._operation
        operation.started_at = time.time()
        operation.started_monotonic = time.perf_counter()
        for observer in self._observers:
            try:
                observer.operation_started(operation)
            except Exception as exc:  # noqa: BLE001 - isolation boundary: telemetry never breaks a write
                self._failed(observer, operation, exc)
        return operation

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        operation = self._operation
        if exc is not None:
            operation.error = exc
        operation.duration_s = time.perf_counter() - operation.started_monotonic
        for observer in reversed(self._observers):
            try:
                observer.operation_finished(operation)
            except Exception as error:  # noqa: BLE001 - isolation boundary, as above
                self._failed(observer, operation, error)


class TimedWrite:
    """The context manager of ``EventBus.write`` when the observers need only the write's timing."""

    __slots__ = ("_failed", "_jobs", "_name", "_observers", "_queue", "_started", "outcome")

    def __init__(
        self,
        failed: ObserverFailed,
        name: str,
        queue: str,
        jobs: list[Job],
        observers: list[OperationObserver],
    ) -> None:
        self._failed = failed
        self._name = name
        self._queue = queue
        self._jobs = jobs
        self._observers = observers
        self.outcome: str | None = None

    def __enter__(self) -> TimedWrite:  # noqa: PYI034 - a private class, never subclassed
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        duration = time.perf_counter() - self._started
        for observer in reversed(self._observers):
            try:
                observer.write_finished(  # type: ignore[attr-defined] # EventBus.write checked it has one
                    self._name, self._queue, self._jobs, duration, exc, self.outcome
                )
            except Exception as error:  # noqa: BLE001 - isolation boundary: telemetry never breaks a write
                self._failed(observer, Operation(self._name, self._queue, self._jobs), error)

"""What a worker holds while it runs jobs: ``WorkerContext``, with each claimed job's ``JobAttempt``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ..clock import Clock, system_clock
from ..settings import Settings, get_settings

if TYPE_CHECKING:
    from .attempt import JobAttempt

_REQUEUE_BUDGET = 3.0


@dataclass(slots=True)
class WorkerContext:
    """What ``handle_job`` needs beyond the queue name: identity, limits, and the jobs in flight."""

    worker_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    group: str = "default"
    config: Settings = field(default_factory=get_settings)
    held: dict[tuple[str, str], JobAttempt] = field(default_factory=dict)
    burst: bool = False
    requeue_failures: int = 0  # interrupted jobs this worker could not return within the budget
    server: dict[str, Any] = field(default_factory=dict)  # server.address / server.port for telemetry
    idle: anyio.Event | None = None
    handlers: anyio.abc.TaskGroup | None = None
    clock: Clock = system_clock  # what the claim loop and the attempts wait on and read wall time from

    def hold(self, attempt: JobAttempt) -> JobAttempt:
        """Record a claimed job's attempt as held by this worker until :meth:`release`."""
        self.held[attempt.queue, attempt.job_id] = attempt
        return attempt

    def idle_event(self) -> anyio.Event:
        """The event set when the last held job is released; every waiter shares it until then.

        A fresh event replaces only one already set: replacing a pending one would leave whoever
        waits on it (another queue's claim loop) asleep after the last job ends.
        """
        idle = self.idle
        if idle is None or idle.is_set():
            idle = self.idle = anyio.Event()
        return idle

    def release(self, queue: str, job_id: str) -> None:
        """Forget a held job; the last release sets the idle event."""
        self.held.pop((queue, job_id), None)
        if not self.held and self.idle is not None:
            self.idle.set()

    def running(self) -> int:
        """Handlers running right now (claimed jobs still in their pickup checks not included)."""
        return sum(1 for attempt in list(self.held.values()) if attempt.started_monotonic is not None)

    def leases(self) -> dict[str, dict[str, str]]:
        """Every lease this worker holds, by queue (the renewer thread reads a copy)."""
        out: dict[str, dict[str, str]] = {}
        for attempt in list(self.held.values()):
            out.setdefault(attempt.queue, {})[attempt.job_id] = attempt.token
        return out

    def oldest_running_age(self, queue: str) -> float:
        """Age in seconds of the oldest attempt running on ``queue`` (0 when idle)."""
        now = time.perf_counter()
        ages = [
            now - attempt.started_monotonic
            for attempt in list(self.held.values())
            if attempt.queue == queue and attempt.started_monotonic is not None
        ]
        return max(ages, default=0.0)

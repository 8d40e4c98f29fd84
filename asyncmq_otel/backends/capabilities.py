"""Optional capabilities a backend may offer besides the :class:`~asyncmq_otel.backends.base.Backend` port.

Each is a runtime-checkable Protocol: a caller tests ``isinstance(backend, Capability)`` and does
without the feature when the backend lacks it (a custom backend implements the port alone and
still runs every job). Both built-in backends offer :class:`ConsumerCounter`; ``RedisBackend``
offers :class:`EventPublisher` and :class:`SamplerLock` too, which only matter across processes;
both store flows (:class:`FlowBackend`), schedules (:class:`ScheduleStore`) and shared rate limits
(:class:`RateLimitStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .base import EnqueueItem, EnqueueReply, FireReply, FlowNode, QueueRateLimit

if TYPE_CHECKING:
    from ..schedules import ScheduleRecord

__all__ = [
    "ConsumerCounter",
    "EventPublisher",
    "FlowBackend",
    "RateLimitStore",
    "SamplerLock",
    "ScheduleStore",
]


@runtime_checkable
class EventPublisher(Protocol):
    """A backend that can hand events to other processes."""

    async def publish_events(self, messages: Sequence[str]) -> None:
        """Publish JSON messages, in order, in one round trip where possible."""
        ...


@runtime_checkable
class SamplerLock(Protocol):
    """The lock that elects one queue sampler among processes.

    ``acquire_sampler_lock(owner, ttl)`` takes the lock when it is free (``SET NX PX``) or extends it
    when ``owner`` already holds it (compare-and-extend), and returns whether ``owner`` holds it now.
    ``release_sampler_lock(owner)`` frees it only when ``owner`` holds it.
    """

    async def acquire_sampler_lock(self, owner: str, ttl: float) -> bool:
        """Take or extend the sampler lock for ``ttl`` seconds; True when ``owner`` holds it."""
        ...

    async def release_sampler_lock(self, owner: str) -> None:
        """Give the lock up if ``owner`` holds it."""
        ...


@runtime_checkable
class ConsumerCounter(Protocol):
    """How many live workers consume each queue, read from the backend's worker registry."""

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers consuming each of ``queues`` (0 for none), O(log N) per queue, never a scan."""
        ...


@runtime_checkable
class FlowBackend(Protocol):
    """A backend that stores flows, besides ``enqueue(..., depends_on)`` on the port."""

    async def add_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> list[EnqueueReply]:
        """Store every ``(queue, item)`` (parents before children) or none of them."""
        ...

    async def get_flow(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """Every job connected to ``queue/job_id`` by dependencies, or ``None`` if it does not exist."""
        ...

    async def last_spans(self, parents: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ``traceparent`` each parent's completing attempt stored, ``None`` where there is none."""
        ...


@runtime_checkable
class ScheduleStore(Protocol):
    """An optional backend capability: durable schedules (periodic jobs) and firing their ticks.

    Both built-in backends have it; a backend without it still runs every other job. Times are
    integer milliseconds of the backend's clock.
    """

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store a schedule unless one with the same key and revision exists; True when written.

        A redefined schedule keeps its paused flag and its last run.
        """
        ...

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        ...

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue, soonest first (paused ones last)."""
        ...

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule (its fired jobs stay); False when absent."""
        ...

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume with a new next due time; False when absent."""
        ...

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """The backend's time, up to ``limit`` due schedules, and the earliest next due time."""
        ...

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Fire a tick: store the jobs (skipping ids that exist) and the next due time, atomically.

        Only if ``key`` still has revision ``rev`` and next due ``expected_due_ms``, and every job's
        due time has passed on the backend's clock; otherwise nothing is written.
        """
        ...


@runtime_checkable
class RateLimitStore(Protocol):
    """An optional backend capability: a rate limit per queue, shared by every worker of the queue.

    The limit is stored with the queue; :meth:`Backend.claim` enforces it in the claim's own atomic
    step, from a sliding log of claim times on the backend's clock, so no window of ``interval``
    seconds ever holds more than ``limit`` claims, whatever the number of workers.
    """

    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Store (or replace) the queue's limit; claims already made keep counting in their window."""
        ...

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit (and the log of claims it counted); False when it had none."""
        ...

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None``."""
        ...

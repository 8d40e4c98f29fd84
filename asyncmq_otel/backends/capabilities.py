"""Optional capabilities a backend may offer besides the :class:`~asyncmq_otel.backends.base.Backend` port.

Each is a runtime-checkable Protocol: a caller tests ``isinstance(backend, Capability)`` and does
without the feature when the backend lacks it (a custom backend implements the port alone and
still runs every job). Both built-in backends offer :class:`ConsumerCounter`; ``RedisBackend``
offers :class:`EventPublisher` and :class:`SamplerLock` too, which only matter across processes;
both store flows (:class:`FlowBackend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .base import EnqueueItem, EnqueueReply, FlowNode

__all__ = ["ConsumerCounter", "EventPublisher", "FlowBackend", "SamplerLock"]


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

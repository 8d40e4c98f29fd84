"""The in-memory backend's worker registry and cancel listeners (a part of :class:`InMemoryBackend`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .base import WorkerInfo

if TYPE_CHECKING:
    from ._memory_store import MemoryStore

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    """Live workers by id with their registration deadlines, and who to tell about cancellations."""

    def __init__(self, store: MemoryStore) -> None:
        self._lock = store.lock
        self.clock = store.clock
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        self._cancel_listeners = store.cancel_listeners  # read by MemoryJobs.cancel

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration."""
        with self._lock:
            now = self.clock()
            info.heartbeat_at = now
            self._workers[info.worker_id] = (WorkerInfo.from_dict(info.to_dict()), now + ttl)

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        with self._lock:
            self._workers.pop(worker_id, None)

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers whose registration has not expired."""
        with self._lock:
            now = self.clock()
            return [info for info, deadline in self._workers.values() if deadline > now]

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers registered here that consume each of ``queues``."""
        with self._lock:
            now = self.clock()
            live = [info for info, deadline in self._workers.values() if deadline > now]
        return {queue: sum(queue in info.queues for info in live) for queue in queues}

    def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(queue, job_id)`` when a running job's cancellation is requested."""
        self._cancel_listeners.append(listener)

    def remove_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        if listener in self._cancel_listeners:
            self._cancel_listeners.remove(listener)

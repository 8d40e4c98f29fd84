"""``InMemoryBackend``: the embedded default. Same transitions and replies as Redis, in one process.

Each transition is a synchronous method with no ``await`` inside, guarded by a
``threading.Lock`` (the lease renewer is a thread). Time comes from an injectable clock (waits
sleep on it too, so a FakeClock's advance releases them); idle workers wait on one
``anyio.Event`` per waiter, woken by wake tokens exactly like Redis' ``BLPOP`` on the ``signal``
list. Jobs live as long as the process does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from ..clock import Clock, as_clock, system_clock
from ._memory_admin import MemoryAdminMixin
from ._memory_flows import MemoryFlowsMixin
from ._memory_jobs import MemoryJobsMixin
from ._memory_ratelimit import MemoryRateLimitMixin
from ._memory_record import _Queue
from ._memory_registry import MemoryRegistryMixin
from ._memory_schedules import MemorySchedulesMixin
from ._memory_store import MemoryStoreMixin
from .base import DataLossCallback, RenewStatus, WorkerInfo

__all__ = ["InMemoryBackend"]

MIB = 1024 * 1024


class _Renewer:
    """The renewer thread's channel: the same lock-guarded transition, called synchronously."""

    def __init__(self, backend: InMemoryBackend) -> None:
        self._backend = backend

    def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        return self._backend.renew_sync(queue, leases, lease)

    def close(self) -> None:
        """Nothing to release."""


class InMemoryBackend(
    MemoryStoreMixin,
    MemoryJobsMixin,
    MemoryAdminMixin,
    MemoryRegistryMixin,
    MemorySchedulesMixin,
    MemoryFlowsMixin,
    MemoryRateLimitMixin,
):
    """The embedded backend: zero set-up, one process, not durable.

    Args:
        clock: a :class:`~asyncmq_otel.clock.Clock` (a ``FakeClock`` drives TTLs, delays, leases and
            idle waits in tests), or a bare ``() -> unix seconds`` callable (skew tests; sleeps stay real).
        max_payload_bytes: largest envelope accepted (checked again here, as Redis does).
        max_result_bytes: largest encoded result accepted at completion.
        keep_completed, keep_completed_age, keep_failed, keep_failed_age: retention bounds.

    """

    url = "memory://"

    def __init__(
        self,
        *,
        clock: Clock | Callable[[], float] = system_clock,
        max_payload_bytes: int = MIB,
        max_result_bytes: int = MIB,
        keep_completed: int = 1000,
        keep_completed_age: float = 86_400.0,
        keep_failed: int = 10_000,
        keep_failed_age: float = 7 * 86_400.0,
    ) -> None:
        self.timer: Clock = as_clock(clock)
        """The clock: its wall time stamps jobs, its sleeps bound idle waits (a worker may share it)."""
        self.clock: Callable[[], float] = self.timer.time
        """Unix seconds now (the timer's wall time)."""
        self.max_payload_bytes = max_payload_bytes
        self.max_result_bytes = max_result_bytes
        self.keep_completed = keep_completed
        self.keep_completed_age = keep_completed_age
        self.keep_failed = keep_failed
        self.keep_failed_age = keep_failed_age
        self.on_data_loss: DataLossCallback | None = None
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        self._cancel_listeners: list[Callable[[str, str], None]] = []

    def __repr__(self) -> str:
        return f"InMemoryBackend(queues={len(self._queues)})"

    # -- time and lifecycle --------------------------------------------------------------------------
    async def now(self) -> float:
        """The backend clock."""
        return self.clock()

    async def close(self) -> None:
        """Nothing to release: jobs stay for the life of the process."""

    def lease_renewer(self) -> _Renewer:
        """A synchronous renewal channel for the renewer thread."""
        return _Renewer(self)

"""``InMemoryBackend``: the embedded default. Same transitions and replies as Redis, in one process.

Each transition is a synchronous method with no ``await`` inside, guarded by a
``threading.Lock`` (the lease renewer is a thread). Time comes from an injectable clock (waits
sleep on it too, so a FakeClock's advance releases them); idle workers wait on one
``anyio.Event`` per waiter, woken by wake tokens exactly like Redis' ``BLPOP`` on the ``signal``
list. Jobs live as long as the process does.

``InMemoryBackend`` is the port's face; the work is done by collaborators it owns, one per
responsibility (``_memory_jobs``, ``_memory_admin``, ``_memory_registry``, ``_memory_schedules``,
``_memory_flows``, ``_memory_ratelimit``), which share one ``_memory_store.MemoryStore``: the lock,
the clock, the queue records with their wake tokens, the limits and the dependency edges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..clock import Clock, as_clock, system_clock
from ._memory_admin import MemoryAdmin
from ._memory_flows import MemoryFlowStore
from ._memory_jobs import MemoryJobs, MemoryLeaseRenewer
from ._memory_ratelimit import MemoryRateLimits
from ._memory_registry import MemoryRegistry
from ._memory_schedules import MemorySchedules
from ._memory_store import Limits, MemoryStore
from .base import (
    CancelStatus,
    ClaimReply,
    DataLossCallback,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    FireReply,
    FlowNode,
    QueueRateLimit,
    QueueStats,
    ReapReply,
    RenewStatus,
    SettleReply,
    StoredJob,
    WorkerInfo,
)

if TYPE_CHECKING:
    from ..schedules import ScheduleRecord

__all__ = ["InMemoryBackend"]

MIB = 1024 * 1024


class InMemoryBackend:
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
        self.limits = Limits(
            max_payload_bytes=max_payload_bytes,
            max_result_bytes=max_result_bytes,
            keep_completed=keep_completed,
            keep_completed_age=keep_completed_age,
            keep_failed=keep_failed,
            keep_failed_age=keep_failed_age,
        )
        self._store = MemoryStore(as_clock(clock), self.limits)
        self.timer: Clock = self._store.timer
        """The clock: its wall time stamps jobs, its sleeps bound idle waits (a worker may share it)."""
        self.clock: Callable[[], float] = self._store.clock
        """Unix seconds now (the timer's wall time)."""
        self.on_data_loss: DataLossCallback | None = None
        self._rate_limits = MemoryRateLimits(self._store)
        self._jobs = MemoryJobs(self._store, self._rate_limits)
        self._admin = MemoryAdmin(self._store)
        self._registry = MemoryRegistry(self._store)
        self._schedules = MemorySchedules(self._store)
        self._flows = MemoryFlowStore(self._store)

    def __repr__(self) -> str:
        return f"InMemoryBackend(queues={len(self._store.queues)})"

    # -- limits kept by the store ----------------------------------------------------------------
    @property
    def max_payload_bytes(self) -> int:
        """The largest envelope accepted."""
        return self.limits.max_payload_bytes

    @property
    def max_result_bytes(self) -> int:
        """The largest encoded result accepted at completion."""
        return self.limits.max_result_bytes

    @property
    def keep_completed(self) -> int:
        """Completed and cancelled jobs kept, by count."""
        return self.limits.keep_completed

    @property
    def keep_completed_age(self) -> float:
        """Completed and cancelled jobs kept, by age in seconds."""
        return self.limits.keep_completed_age

    @property
    def keep_failed(self) -> int:
        """Dead-lettered jobs kept, by count."""
        return self.limits.keep_failed

    @property
    def keep_failed_age(self) -> float:
        """Dead-lettered jobs kept, by age in seconds."""
        return self.limits.keep_failed_age

    # -- time and lifecycle ----------------------------------------------------------------------
    async def now(self) -> float:
        """The backend clock."""
        return self.clock()

    async def close(self) -> None:
        """Nothing to release: jobs stay for the life of the process."""

    def lease_renewer(self) -> MemoryLeaseRenewer:
        """A synchronous renewal channel for the renewer thread."""
        return MemoryLeaseRenewer(self.renew_sync)

    # -- jobs (MemoryJobs) -----------------------------------------------------------------------
    async def enqueue(self, queue: str, item: EnqueueItem) -> EnqueueReply:
        """Store one job, idempotently by id and nonce."""
        return (await self.enqueue_bulk(queue, [item]))[0]

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs at once."""
        return await self._jobs.enqueue_bulk(queue, items)

    def inject_raw_job(self, queue: str, job_id: str, payload: str) -> None:
        """Store a payload as is, bypassing the producer's checks (tests of malformed jobs use it)."""
        self._jobs.inject_raw_job(queue, job_id, payload)

    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then lease up to ``count`` ready jobs to ``worker_id``."""
        return await self._jobs.claim(queue, worker_id, count, lease)

    async def wait_for_work(self, queue: str, timeout: float) -> bool:
        """Take a wake token, waiting up to ``timeout`` seconds for one."""
        return await self._jobs.wait_for_work(queue, timeout)

    async def complete(
        self,
        queue: str,
        job_id: str,
        token: str,
        result: str,
        *,
        want_job: bool = True,
        last_span: str | None = None,
    ) -> SettleReply:
        """``active`` → ``completed``; the reply carries the job unless ``want_job`` is false."""
        return await self._jobs.complete(queue, job_id, token, result, want_job=want_job, last_span=last_span)

    async def retry(
        self,
        queue: str,
        job_id: str,
        token: str,
        backoff: float,
        error: ErrorInfo,
        prev_attempt: str | None = None,
    ) -> SettleReply:
        """``active`` → ``delayed`` until now + ``backoff`` (straight to ``waiting`` when it is 0)."""
        return await self._jobs.retry(queue, job_id, token, backoff, error, prev_attempt)

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: ErrorInfo | None = None
    ) -> SettleReply:
        """``active`` → DLQ (``expired`` for reason ``expired``, else ``failed``)."""
        return await self._jobs.fail(queue, job_id, token, reason, error)

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """Give back a job picked before its ``delay_until``: ``delayed`` again, attempt returned."""
        return await self._jobs.defer(queue, job_id, token)

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled``."""
        return await self._jobs.settle_cancelled(queue, job_id, token)

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """Return an interrupted job to its original place; past ``max_interrupts``, DLQ ``interrupted``."""
        return await self._jobs.requeue(queue, job_id, token, max_interrupts)

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Record the running job's progress (fenced on the owner alone: a progress is never replayed)."""
        return await self._jobs.report_progress(queue, job_id, token, progress)

    async def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend leases (see :meth:`renew_sync`)."""
        return self.renew_sync(queue, leases, lease)

    def renew_sync(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend every lease whose token still matches, even past its deadline (only ``reap`` revokes)."""
        return self._jobs.renew_sync(queue, leases, lease)

    async def reap(
        self, queue: str, worker_id: str, max_stalls: int, hold: float, max_delay: float | None = None
    ) -> ReapReply:
        """Take or keep the reaper role, then recover up to 100 expired leases."""
        return await self._jobs.reap(queue, worker_id, max_stalls, hold, max_delay)

    async def pause(self, queue: str) -> None:
        """Stop claims."""
        return await self._jobs.pause(queue)

    async def resume(self, queue: str) -> None:
        """Allow claims and wake idle workers, one token per ready job."""
        return await self._jobs.resume(queue)

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether claims are stopped."""
        return await self._jobs.is_queue_paused(queue)

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job now, or flag a running one for its owner."""
        return await self._jobs.cancel(queue, job_id)

    # -- inspection and admin (MemoryAdmin) --------------------------------------------------------
    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job, or ``None``."""
        return await self._admin.get_job(queue, job_id)

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state."""
        return await self._admin.counts(queue)

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``."""
        return await self._admin.list_jobs(queue, state, offset, limit)

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """Dead-lettered jobs, newest first."""
        return await self._admin.list_dlq(queue, offset, limit)

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """DLQ → ``waiting`` with fresh counters."""
        return await self._admin.retry_dead(queue, job_id)

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job."""
        return await self._admin.purge_dlq(queue)

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete finished jobs in ``state`` older than ``older_than`` seconds."""
        return await self._admin.clean(queue, state, older_than)

    async def queue_stats(self, queue: str) -> QueueStats:
        """What the queue sampler exports."""
        return await self._admin.queue_stats(queue)

    async def list_queues(self) -> list[str]:
        """Every queue seen by this backend."""
        return await self._admin.list_queues()

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue exists; never creates it."""
        return await self._admin.has_queue(queue)

    # -- workers (MemoryRegistry) ------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a live worker."""
        await self.heartbeat(info, ttl)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration."""
        return await self._registry.heartbeat(info, ttl)

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        return await self._registry.deregister_worker(worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        """Workers whose registration has not expired."""
        return await self._registry.list_workers()

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers registered here that consume each of ``queues``."""
        return await self._registry.consumer_counts(queues)

    def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(queue, job_id)`` when a running job's cancellation is requested."""
        self._registry.add_cancel_listener(listener)

    def remove_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        self._registry.remove_cancel_listener(listener)

    # -- schedules (MemorySchedules) ---------------------------------------------------------------
    def watch_schedules(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change of a schedule; returns a function that stops it."""
        return self._schedules.watch_schedules(callback)

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store unless the same revision is stored; a redefinition keeps pause and last run."""
        return await self._schedules.schedule_upsert(queue, record)

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        return await self._schedules.schedule_get(queue, key)

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Soonest first, paused last."""
        return await self._schedules.schedule_list(queue)

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule; False when absent."""
        return await self._schedules.schedule_remove(queue, key)

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume from ``next_due_ms``."""
        return await self._schedules.schedule_set_paused(queue, key, paused=paused, next_due_ms=next_due_ms)

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """Now, the due schedules (up to ``limit``) and the earliest next due time."""
        return await self._schedules.schedule_peek(queue, limit)

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Store the tick's jobs and the next due time, if the schedule is still as read."""
        return await self._schedules.schedule_fire(queue, key, rev, expected_due_ms, jobs, next_due_ms)

    # -- flows (MemoryFlowStore) -------------------------------------------------------------------
    async def add_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> list[EnqueueReply]:
        """Store jobs of any queues, parents first: every parent is checked before any write."""
        return await self._flows.add_flow(items)

    async def get_flow(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """The dependency graph around a job, or ``None``."""
        return await self._flows.get_flow(queue, job_id)

    async def last_spans(self, parents: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ``last_span`` each ``(queue, job_id)`` stored at completion (``None``: none, or gone)."""
        return await self._flows.last_spans(parents)

    # -- shared rate limits (MemoryRateLimits) -----------------------------------------------------
    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Allow at most ``limit`` claims of the queue in any window of ``interval`` seconds (1 ms steps)."""
        return await self._rate_limits.set_rate_limit(queue, limit, interval)

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit and its log of claims; False when it had none."""
        return await self._rate_limits.clear_rate_limit(queue)

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None``."""
        return await self._rate_limits.get_rate_limit(queue)

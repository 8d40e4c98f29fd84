"""The job transitions of :class:`InMemoryBackend`: producer, worker and queue control.

Each transition is a synchronous step with no ``await`` inside, under the store's
``threading.Lock`` (the lease renewer is a thread: it reaches :meth:`MemoryJobs.renew_sync`
without the event loop). Idle workers wait on one ``anyio.Event`` per waiter, woken by wake
tokens exactly like Redis' ``BLPOP`` on the ``signal`` list; the wait sleeps on the store's
clock, so a FakeClock's advance releases it.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from ..clock import move_on_after
from ..jobs import DLQ_REASONS, TERMINAL_STATES, JobState
from ._memory_record import _owned, _Queue, _Record
from .base import (
    CancelStatus,
    ClaimedJob,
    ClaimReply,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    ReapReply,
    RenewStatus,
    SettleReply,
    SettleStatus,
    StoredJob,
)

if TYPE_CHECKING:
    from ._memory_ratelimit import MemoryRateLimits
    from ._memory_store import MemoryStore

__all__ = ["MemoryJobs", "MemoryLeaseRenewer"]

_PROMOTE_LIMIT = 100
_REAP_LIMIT = 100


class MemoryLeaseRenewer:
    """The renewer thread's channel: the same lock-guarded transition, called synchronously.

    It calls the backend's ``renew_sync``, so a subclass that wraps it sees the renewer's rounds.
    """

    def __init__(self, renew: Callable[[str, Mapping[str, str], float], dict[str, RenewStatus]]) -> None:
        self._renew = renew

    def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend leases (see :meth:`MemoryJobs.renew_sync`)."""
        return self._renew(queue, leases, lease)

    def close(self) -> None:
        """Nothing to release."""


class MemoryJobs:
    """Producer, worker and queue-control transitions of ``InMemoryBackend``, each one step under the lock."""

    def __init__(self, store: MemoryStore, rate_limits: MemoryRateLimits) -> None:
        self._store = store
        self._lock = store.lock
        self._flows = store.flows
        self._rate_limits = rate_limits
        self.timer = store.timer
        self.clock = store.clock

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs at once."""
        for item in items:
            self._store.check_size(item)
        with self._lock:
            self._flows.check(queue, items)
            state = self._store.queue(queue)
            return [self._store.enqueue(state, item) for item in items]

    def inject_raw_job(self, queue: str, job_id: str, payload: str) -> None:
        """Store a payload as is, bypassing the producer's checks (tests of malformed jobs use it)."""
        with self._lock:
            state = self._store.queue(queue)
            self._store.enqueue(state, EnqueueItem(job_id, payload))

    def _settle(
        self,
        name: str,
        job_id: str,
        token: str,
        apply: Callable[[_Queue, _Record], object],
        *,
        want_job: bool = True,
        refuse: SettleStatus | None = None,
    ) -> SettleReply:
        """Every settle's fence, then its transition, under the lock: the one place a settle is judged.

        A replay of the settle ``token`` already made answers ``OK`` again and writes nothing; a job
        ``token`` does not own answers ``STALE`` (or ``GONE``). Otherwise ``refuse`` (a status) is
        answered with nothing written, or the lease is released and ``apply(queue, record)`` runs.
        """
        with self._lock:
            state = self._store.queue(name)
            record = state.jobs.get(job_id)
            if record is not None and token and record.settled_token == token:
                return SettleReply(SettleStatus.OK, record.stored(name) if want_job else None)
            owned = _owned(record, token)
            if isinstance(owned, SettleReply):
                return owned
            if refuse is not None:
                return SettleReply(refuse)
            self._release(state, owned, token)
            apply(state, owned)
            return SettleReply(SettleStatus.OK, owned.stored(name) if want_job else None)

    def _release(self, queue: _Queue, record: _Record, token: str) -> None:
        queue.leases.pop(record.job_id, None)
        record.settled_token = token
        record.token = None

    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then lease up to ``count`` ready jobs to ``worker_id``."""
        with self._lock:
            state = self._store.queue(queue)
            now = self.clock()
            self._promote(state, now)
            if state.paused:
                return ClaimReply([], paused=True, now=now)
            limited = self._rate_limits.free(queue, now)  # the shared rate limit, as claim.lua applies it
            cut = limited is not None and limited[0] < count
            if limited is not None:
                count = min(count, limited[0])
                if count == 0 and state.counts["waiting"]:
                    return ClaimReply([], now=now, throttled_for=self._rate_limits.taken(limited[1], now, 0))
            nonce = uuid.uuid4().hex
            jobs: list[ClaimedJob] = []
            while state.ready and len(jobs) < count:
                _priority, seq, job_id = heapq.heappop(state.ready)
                record = state.jobs.get(job_id)
                if record is None or record.state != "waiting" or record.seq != seq:
                    continue  # a stale heap entry: the job moved on since it was pushed
                record.attempts += 1
                record.token = f"{nonce}.{len(jobs)}"
                record.owner = worker_id
                record.settled_token = None
                record.cancel_requested = False
                self._store.set_state(state, record, "active")
                state.leases[job_id] = now + lease
                jobs.append(ClaimedJob.from_fields(record.raw(queue), now))
            next_due = None
            if not jobs:
                next_due = self._next_due(state, now)
                return ClaimReply(jobs, next_due_in=next_due, now=now)
            throttled = None if limited is None else self._rate_limits.taken(limited[1], now, len(jobs))
            return ClaimReply(jobs, now=now, throttled_for=throttled if cut else None)

    def _promote(self, queue: _Queue, now: float) -> None:
        promoted = 0
        while queue.delayed and queue.delayed[0][0] <= now and promoted < _PROMOTE_LIMIT:
            due, _seq, job_id = heapq.heappop(queue.delayed)
            record = queue.jobs.get(job_id)
            if record is None or record.state != "delayed" or record.due != due:
                continue
            record.eligible_at = due
            self._store.make_ready(queue, record)
            promoted += 1

    def _next_due(self, queue: _Queue, now: float) -> float | None:
        while queue.delayed:
            due, _seq, job_id = queue.delayed[0]
            record = queue.jobs.get(job_id)
            if record is not None and record.state == "delayed" and record.due == due:
                return max(due - now, 0.0)
            heapq.heappop(queue.delayed)
        return None

    async def wait_for_work(self, queue: str, timeout: float) -> bool:
        """Take a wake token, waiting up to ``timeout`` seconds for one."""
        with self._lock:
            state = self._store.queue(queue)
            if state.signal > 0:
                state.signal -= 1
                return True
            waiter = anyio.Event()
            state.waiters.append(waiter)
        try:
            with move_on_after(self.timer, timeout):
                await waiter.wait()
        finally:
            with self._lock:
                state.waiters.remove(waiter)
        with self._lock:
            if state.signal > 0:
                state.signal -= 1
                return True
        return False

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
        too_large = len(result.encode("utf-8")) > self._store.limits.max_result_bytes

        def apply(state: _Queue, record: _Record) -> None:
            record.result = result
            record.last_span = last_span
            self._store.finish(state, record, "completed", state.completed)

        refuse = SettleStatus.TOO_LARGE if too_large else None
        return self._settle(queue, job_id, token, apply, want_job=want_job, refuse=refuse)

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

        def apply(state: _Queue, record: _Record) -> None:
            now = self.clock()
            record.retries += 1
            record.error = error.to_dict()
            if prev_attempt is not None:
                record.prev_attempt = prev_attempt
            record.owner = None
            if backoff > 0:
                record.delay_until = record.eligible_at = record.due = now + backoff
                self._store.set_state(state, record, "delayed")
                heapq.heappush(state.delayed, (record.due, record.seq, record.job_id))
                self._store.wake(state, 1)
            else:
                record.eligible_at = now
                self._store.make_ready(state, record)

        return self._settle(queue, job_id, token, apply)

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: ErrorInfo | None = None
    ) -> SettleReply:
        """``active`` → DLQ (``expired`` for reason ``expired``, else ``failed``)."""
        if reason not in DLQ_REASONS:
            raise ValueError(f"unknown DLQ reason {reason!r}; one of {sorted(DLQ_REASONS)}")

        def apply(state: _Queue, record: _Record) -> None:
            record.dlq_reason = reason
            if error is not None:
                record.error = error.to_dict()
            self._store.finish(state, record, "expired" if reason == "expired" else "failed", state.dlq)

        return self._settle(queue, job_id, token, apply)

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """Give back a job picked before its ``delay_until``: ``delayed`` again, attempt returned."""

        def apply(state: _Queue, record: _Record) -> None:
            record.attempts -= 1
            record.owner = None
            now = self.clock()
            if record.delay_until is not None and record.delay_until > now:
                record.due = record.eligible_at = record.delay_until
                self._store.set_state(state, record, "delayed")
                heapq.heappush(state.delayed, (record.due, record.seq, record.job_id))
            else:
                self._store.make_ready(state, record, keep_place=True)

        return self._settle(queue, job_id, token, apply)

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled``."""

        def apply(state: _Queue, record: _Record) -> None:
            self._store.finish(state, record, "cancelled", state.cancelled)

        return self._settle(queue, job_id, token, apply)

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """Return an interrupted job to its original place; past ``max_interrupts``, DLQ ``interrupted``."""

        def apply(state: _Queue, record: _Record) -> None:
            record.interrupts += 1
            if record.interrupts > max_interrupts:
                record.dlq_reason = "interrupted"
                self._store.finish(state, record, "failed", state.dlq)
            else:
                record.eligible_at = self.clock()
                self._store.make_ready(state, record, keep_place=True)

        return self._settle(queue, job_id, token, apply)

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Record the running job's progress (fenced on the owner alone: a progress is never replayed)."""
        with self._lock:
            owned = _owned(self._store.queue(queue).jobs.get(job_id), token)
            if isinstance(owned, SettleReply):
                return owned
            owned.progress = progress
            return SettleReply(SettleStatus.OK)

    def renew_sync(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend every lease whose token still matches, even past its deadline (only ``reap`` revokes)."""
        with self._lock:
            state = self._store.queue(queue)
            deadline = self.clock() + lease
            out: dict[str, RenewStatus] = {}
            for job_id, token in leases.items():
                record = _owned(state.jobs.get(job_id), token)
                if isinstance(record, SettleReply):
                    out[job_id] = RenewStatus.LOST
                    continue
                state.leases[job_id] = deadline
                out[job_id] = RenewStatus.CANCEL if record.cancel_requested else RenewStatus.OK
            return out

    async def reap(
        self,
        queue: str,
        worker_id: str,
        max_stalls: int,
        hold: float,
        max_delay: float | None = None,  # noqa: ARG002 - a port parameter with no effect here
    ) -> ReapReply:
        """Take or keep the reaper role, then recover up to 100 expired leases.

        In-process calls are never held in transit, so ``max_delay`` never applies.
        """
        with self._lock:
            state = self._store.queue(queue)
            now = self.clock()
            if state.reaper is not None and state.reaper[0] != worker_id and state.reaper[1] > now:
                return ReapReply(is_reaper=False)
            state.reaper = (worker_id, now + hold)
            expired = sorted(
                (deadline, job_id) for job_id, deadline in state.leases.items() if deadline <= now
            )
            stalled: list[StoredJob] = []
            dead: list[StoredJob] = []
            for _deadline, job_id in expired[:_REAP_LIMIT]:
                state.leases.pop(job_id, None)
                record = state.jobs.get(job_id)
                if record is None or record.state != "active":
                    continue
                record.stalls += 1
                record.token = None
                record.prev_attempt = None  # the lost attempt's span never ended: no previous-attempt link
                if record.stalls > max_stalls:
                    record.dlq_reason = "worker_lost"
                    record.owner = None
                    self._store.finish(state, record, "failed", state.dlq)
                    dead.append(record.stored(queue))
                else:
                    record.eligible_at = now
                    self._store.make_ready(state, record, keep_place=True)
                    stalled.append(record.stored(queue))
            dead += self._flows.drain_failed(state, queue)  # children dead-lettered for a parent (flows)
            return ReapReply(is_reaper=True, stalled=stalled, dead=dead, more=len(expired) > _REAP_LIMIT)

    async def pause(self, queue: str) -> None:
        """Stop claims."""
        with self._lock:
            self._store.queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        """Allow claims and wake idle workers, one token per ready job."""
        with self._lock:
            state = self._store.queue(queue)
            state.paused = False
            self._store.wake(state, max(state.counts["waiting"], 1))

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether claims are stopped."""
        with self._lock:
            return self._store.queue(queue).paused

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job now, or flag a running one for its owner."""
        with self._lock:
            state = self._store.queue(queue)
            record = state.jobs.get(job_id)
            if record is None:
                return CancelStatus.GONE
            if JobState(record.state) in TERMINAL_STATES:
                return CancelStatus.FINISHED
            if record.state == "active":
                record.cancel_requested = True
                listeners = list(self._store.cancel_listeners)
            else:
                self._store.finish(state, record, "cancelled", state.cancelled)
                return CancelStatus.CANCELLED
        for listener in listeners:
            listener(queue, job_id)
        return CancelStatus.RUNNING

"""``InMemoryBackend``: the embedded default. Same transitions and replies as Redis, in one process.

Each transition is a synchronous method with no ``await`` inside, guarded by a
``threading.Lock`` (the lease renewer is a thread). Time comes from an injectable clock (waits
sleep on it too, so a FakeClock's advance releases them); idle workers wait on one
``anyio.Event`` per waiter, woken by wake tokens exactly like Redis' ``BLPOP`` on the ``signal``
list. Jobs live as long as the process does.
"""

from __future__ import annotations

import collections
import heapq
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence

import anyio

from .._stored import decode_stored_envelope
from ..clock import Clock, as_clock, move_on_after, system_clock
from ..errors import PayloadTooLarge
from ..jobs import DLQ_REASONS, TERMINAL_STATES, JobState
from ._memory_flows import MemoryFlowsMixin
from ._memory_ratelimit import MemoryRateLimitMixin
from ._memory_record import _owned, _Queue, _Record
from ._memory_registry import MemoryRegistryMixin
from ._memory_schedules import MemorySchedulesMixin
from .base import (
    CancelStatus,
    ClaimedJob,
    ClaimReply,
    DataLossCallback,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    QueueStats,
    ReapReply,
    RenewStatus,
    SettleReply,
    SettleStatus,
    StoredJob,
    WorkerInfo,
)

__all__ = ["InMemoryBackend"]

MIB = 1024 * 1024
_SIGNAL_CAP = 1024
_PROMOTE_LIMIT = 100
_REAP_LIMIT = 100
_TRIM_PER_SETTLE = 10


class _Renewer:
    """The renewer thread's channel: the same lock-guarded transition, called synchronously."""

    def __init__(self, backend: InMemoryBackend) -> None:
        self._backend = backend

    def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        return self._backend.renew_sync(queue, leases, lease)

    def close(self) -> None:
        """Nothing to release."""


class InMemoryBackend(MemoryRegistryMixin, MemorySchedulesMixin, MemoryFlowsMixin, MemoryRateLimitMixin):
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

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _wake(self, queue: _Queue, tokens: int) -> None:
        if tokens <= 0:
            return
        queue.signal = min(queue.signal + tokens, _SIGNAL_CAP)
        for waiter in queue.waiters:
            waiter.set()

    # -- time and lifecycle --------------------------------------------------------------------------
    async def now(self) -> float:
        """The backend clock."""
        return self.clock()

    async def close(self) -> None:
        """Nothing to release: jobs stay for the life of the process."""

    # -- producer ------------------------------------------------------------------------------------
    async def enqueue(self, queue: str, item: EnqueueItem) -> EnqueueReply:
        """Store one job, idempotently by id and nonce."""
        return (await self.enqueue_bulk(queue, [item]))[0]

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs at once."""
        for item in items:
            self._check_size(item)
        with self._lock:
            self._flows.check(queue, items)
            state = self._queue(queue)
            return [self._enqueue(state, item) for item in items]

    def _check_size(self, item: EnqueueItem) -> None:
        size = len(item.payload.encode("utf-8"))
        if size > self.max_payload_bytes:
            raise PayloadTooLarge(size, self.max_payload_bytes)

    def _enqueue(self, queue: _Queue, item: EnqueueItem) -> EnqueueReply:
        existing = queue.jobs.get(item.job_id)
        if existing is not None:
            replay = bool(item.nonce) and existing.nonce == item.nonce
            return EnqueueReply(
                item.job_id, existing.state, not replay, existing.enqueued_at, existing.eligible_at
            )
        self._check_size(item)
        envelope, payload_error = decode_stored_envelope(item.payload)
        if item.priority is not None:  # the producer passed what its envelope holds
            priority: object = item.priority
            ttl: object = item.ttl
        else:
            priority = envelope.get("priority", 5) if envelope else 5
            ttl = envelope.get("ttl") if envelope else None
        now = self.clock()
        record = _Record(
            job_id=item.job_id,
            payload=item.payload,
            envelope=envelope,
            priority=priority if isinstance(priority, int) else 5,
            seq=queue.next_seq(),
            nonce=item.nonce,
            enqueued_at=now,
            eligible_at=now,
            flow_id=item.flow_id,
        )
        if payload_error:
            record.payload_error = payload_error
        if isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
            record.expires_at = now + float(ttl)
        queue.jobs[item.job_id] = record
        if item.depends_on and self._flows.block(queue, record, item):
            return EnqueueReply(item.job_id, record.state, duplicate=False, enqueued_at=now, eligible_at=now)
        if item.delay > 0:
            record.delay_until = record.eligible_at = record.due = now + item.delay
            self._set_state(queue, record, "delayed")
            heapq.heappush(queue.delayed, (record.due, record.seq, record.job_id))
            self._wake(queue, 1)  # an idle worker re-reads the next due time instead of oversleeping
        else:
            self._make_ready(queue, record)
        return EnqueueReply(
            item.job_id,
            record.state,
            duplicate=False,
            enqueued_at=record.enqueued_at,
            eligible_at=record.eligible_at,
        )

    def inject_raw_job(self, queue: str, job_id: str, payload: str) -> None:
        """Store a payload as is, bypassing the producer's checks (tests of malformed jobs use it)."""
        with self._lock:
            state = self._queue(queue)
            self._enqueue(state, EnqueueItem(job_id, payload))

    # -- helpers -------------------------------------------------------------------------------------
    def _set_state(self, queue: _Queue, record: _Record, state: str) -> None:
        if record.state == state:
            return
        if record.state:
            queue.counts[record.state] -= 1
        queue.counts[state] += 1
        record.state = state

    def _make_ready(self, queue: _Queue, record: _Record, *, keep_place: bool = False) -> None:
        """Put a job in ``waiting``: at its original place, or at the back of its priority."""
        if not keep_place:
            record.seq = queue.next_seq()
        self._set_state(queue, record, "waiting")
        record.token = None
        record.owner = None
        heapq.heappush(queue.ready, (record.priority, record.seq, record.job_id))
        self._wake(queue, 1)

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
            state = self._queue(name)
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

    def _finish(
        self, queue: _Queue, record: _Record, state: str, index: collections.OrderedDict[str, float]
    ) -> None:
        now = self.clock()
        record.finished_at = now
        self._set_state(queue, record, state)
        index[record.job_id] = now
        if index is queue.dlq:
            self._trim(queue, index, self.keep_failed, self.keep_failed_age, now)
        else:
            self._trim(queue, index, self.keep_completed, self.keep_completed_age, now)
        self._flows.finished(queue, record, state)

    def _trim(
        self, queue: _Queue, index: collections.OrderedDict[str, float], keep: int, age: float, now: float
    ) -> None:
        for _ in range(_TRIM_PER_SETTLE):
            if not index:
                return
            oldest_id, finished = next(iter(index.items()))
            if len(index) <= keep and finished >= now - age:
                return
            index.popitem(last=False)
            self._delete(queue, oldest_id)

    def _delete(self, queue: _Queue, job_id: str) -> None:
        record = queue.jobs.pop(job_id, None)
        if record is not None:
            queue.counts[record.state] -= 1

    # -- worker --------------------------------------------------------------------------------------
    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then lease up to ``count`` ready jobs to ``worker_id``."""
        with self._lock:
            state = self._queue(queue)
            now = self.clock()
            self._promote(state, now)
            if state.paused:
                return ClaimReply([], paused=True, now=now)
            limited = self._rate_free(queue, now)  # the shared rate limit, as claim.lua applies it
            cut = limited is not None and limited[0] < count
            if limited is not None:
                count = min(count, limited[0])
                if count == 0 and state.counts["waiting"]:
                    return ClaimReply([], now=now, throttled_for=self._rate_taken(limited[1], now, 0))
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
                self._set_state(state, record, "active")
                state.leases[job_id] = now + lease
                jobs.append(ClaimedJob.from_fields(record.raw(queue), now))
            next_due = None
            if not jobs:
                next_due = self._next_due(state, now)
                return ClaimReply(jobs, next_due_in=next_due, now=now)
            throttled = None if limited is None else self._rate_taken(limited[1], now, len(jobs))
            return ClaimReply(jobs, now=now, throttled_for=throttled if cut else None)

    def _promote(self, queue: _Queue, now: float) -> None:
        promoted = 0
        while queue.delayed and queue.delayed[0][0] <= now and promoted < _PROMOTE_LIMIT:
            due, _seq, job_id = heapq.heappop(queue.delayed)
            record = queue.jobs.get(job_id)
            if record is None or record.state != "delayed" or record.due != due:
                continue
            record.eligible_at = due
            self._make_ready(queue, record)
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
            state = self._queue(queue)
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
        too_large = len(result.encode("utf-8")) > self.max_result_bytes

        def apply(state: _Queue, record: _Record) -> None:
            record.result = result
            record.last_span = last_span
            self._finish(state, record, "completed", state.completed)

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
                self._set_state(state, record, "delayed")
                heapq.heappush(state.delayed, (record.due, record.seq, record.job_id))
                self._wake(state, 1)
            else:
                record.eligible_at = now
                self._make_ready(state, record)

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
            self._finish(state, record, "expired" if reason == "expired" else "failed", state.dlq)

        return self._settle(queue, job_id, token, apply)

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """Give back a job picked before its ``delay_until``: ``delayed`` again, attempt returned."""

        def apply(state: _Queue, record: _Record) -> None:
            record.attempts -= 1
            record.owner = None
            now = self.clock()
            if record.delay_until is not None and record.delay_until > now:
                record.due = record.eligible_at = record.delay_until
                self._set_state(state, record, "delayed")
                heapq.heappush(state.delayed, (record.due, record.seq, record.job_id))
            else:
                self._make_ready(state, record, keep_place=True)

        return self._settle(queue, job_id, token, apply)

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled``."""

        def apply(state: _Queue, record: _Record) -> None:
            self._finish(state, record, "cancelled", state.cancelled)

        return self._settle(queue, job_id, token, apply)

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """Return an interrupted job to its original place; past ``max_interrupts``, DLQ ``interrupted``."""

        def apply(state: _Queue, record: _Record) -> None:
            record.interrupts += 1
            if record.interrupts > max_interrupts:
                record.dlq_reason = "interrupted"
                self._finish(state, record, "failed", state.dlq)
            else:
                record.eligible_at = self.clock()
                self._make_ready(state, record, keep_place=True)

        return self._settle(queue, job_id, token, apply)

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Record the running job's progress (fenced on the owner alone: a progress is never replayed)."""
        with self._lock:
            owned = _owned(self._queue(queue).jobs.get(job_id), token)
            if isinstance(owned, SettleReply):
                return owned
            owned.progress = progress
            return SettleReply(SettleStatus.OK)

    async def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend leases (see :meth:`renew_sync`)."""
        return self.renew_sync(queue, leases, lease)

    def renew_sync(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend every lease whose token still matches, even past its deadline (only ``reap`` revokes)."""
        with self._lock:
            state = self._queue(queue)
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

    def lease_renewer(self) -> _Renewer:
        """A synchronous renewal channel for the renewer thread."""
        return _Renewer(self)

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
            state = self._queue(queue)
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
                    self._finish(state, record, "failed", state.dlq)
                    dead.append(record.stored(queue))
                else:
                    record.eligible_at = now
                    self._make_ready(state, record, keep_place=True)
                    stalled.append(record.stored(queue))
            dead += self._flows.drain_failed(state, queue)  # children dead-lettered for a parent (flows)
            return ReapReply(is_reaper=True, stalled=stalled, dead=dead, more=len(expired) > _REAP_LIMIT)

    # -- queue control -------------------------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Stop claims."""
        with self._lock:
            self._queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        """Allow claims and wake idle workers, one token per ready job."""
        with self._lock:
            state = self._queue(queue)
            state.paused = False
            self._wake(state, max(state.counts["waiting"], 1))

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether claims are stopped."""
        with self._lock:
            return self._queue(queue).paused

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job now, or flag a running one for its owner."""
        with self._lock:
            state = self._queue(queue)
            record = state.jobs.get(job_id)
            if record is None:
                return CancelStatus.GONE
            if JobState(record.state) in TERMINAL_STATES:
                return CancelStatus.FINISHED
            if record.state == "active":
                record.cancel_requested = True
                listeners = list(self._cancel_listeners)
            else:
                self._finish(state, record, "cancelled", state.cancelled)
                return CancelStatus.CANCELLED
        for listener in listeners:
            listener(queue, job_id)
        return CancelStatus.RUNNING

    # -- inspection and admin ------------------------------------------------------------------------
    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job, or ``None``."""
        with self._lock:
            record = self._queue(queue).jobs.get(job_id)
            return None if record is None else record.stored(queue)

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            counts = self._queue(queue).counts
            return {state.value: max(counts[state.value], 0) for state in JobState}

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``."""
        wanted = JobState(state).value
        with self._lock:
            q = self._queue(queue)
            records = [r for r in q.jobs.values() if r.state == wanted]
            if wanted == "waiting":
                records.sort(key=lambda r: (r.priority, r.seq))
            elif wanted == "delayed":
                records.sort(key=lambda r: r.due)
            elif wanted != "active":
                records.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
            return [r.stored(queue) for r in records[offset : offset + limit]]

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """Dead-lettered jobs, newest first."""
        with self._lock:
            q = self._queue(queue)
            ids = list(reversed(q.dlq))[offset : offset + limit]
            return [q.jobs[job_id].stored(queue) for job_id in ids if job_id in q.jobs]

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """DLQ → ``waiting`` with fresh counters."""
        with self._lock:
            q = self._queue(queue)
            record = q.jobs.get(job_id)
            if record is None or job_id not in q.dlq:
                return False
            del q.dlq[job_id]
            record.attempts = record.retries = record.stalls = record.interrupts = 0
            record.error = record.dlq_reason = record.finished_at = record.result = None
            record.settled_token = None
            record.eligible_at = self.clock()
            ttl = (record.envelope or {}).get("ttl")
            if isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
                record.expires_at = record.eligible_at + float(ttl)  # a fresh start gets a fresh TTL
            self._make_ready(q, record)
            self._flows.retried(q, record)
            return True

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job."""
        with self._lock:
            q = self._queue(queue)
            ids = list(q.dlq)
            q.dlq.clear()
            for job_id in ids:
                self._delete(q, job_id)
            return len(ids)

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete finished jobs in ``state`` older than ``older_than`` seconds."""
        wanted = JobState(state)
        if wanted not in TERMINAL_STATES:
            raise ValueError(
                f"clean takes a finished state (completed, failed, expired, cancelled), not {state!r}"
            )
        with self._lock:
            q = self._queue(queue)
            index = {"completed": q.completed, "cancelled": q.cancelled}.get(wanted.value, q.dlq)
            cutoff = self.clock() - older_than
            doomed = [
                job_id
                for job_id, finished in index.items()
                if finished <= cutoff and job_id in q.jobs and q.jobs[job_id].state == wanted.value
            ]
            for job_id in doomed:
                del index[job_id]
                self._delete(q, job_id)
            return len(doomed)

    async def queue_stats(self, queue: str) -> QueueStats:
        """What the queue sampler exports."""
        with self._lock:
            q = self._queue(queue)
            now = self.clock()
            oldest = min((r.eligible_at for r in q.jobs.values() if r.state == "waiting"), default=None)
            return QueueStats(
                ready=max(q.counts["waiting"], 0),
                scheduled=max(q.counts["delayed"], 0),
                active=max(q.counts["active"], 0),
                dead=len(q.dlq),
                oldest_ready_age=0.0 if oldest is None else max(now - oldest, 0.0),
                paused=q.paused,
                **self._flows.stats(q, now),
            )

    async def list_queues(self) -> list[str]:
        """Every queue seen by this backend."""
        with self._lock:
            return sorted(self._queues)

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue exists; never creates it (one dict lookup: no lock needed)."""
        return queue in self._queues

"""The state every part of :class:`InMemoryBackend` shares, and the transitions of one job record.

The backend is composed of collaborators by responsibility (``_memory_jobs``, ``_memory_admin``,
``_memory_registry``, ``_memory_schedules``, ``_memory_flows``, ``_memory_ratelimit``), as
``RedisBackend`` is; each receives this one :class:`MemoryStore`. It holds the one lock (the lease
renewer is a thread, so every transition takes it), the injected clock, the queue records with their
wake tokens, the limits, the dependency edges, and the record transitions more than one collaborator
applies, so a job is stored, made ready or finished the same way whoever calls. Its methods run under
the caller's ``lock``.
"""

from __future__ import annotations

import collections
import heapq
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .._stored import decode_stored_envelope
from ..clock import Clock
from ..errors import PayloadTooLarge
from ._memory_flows import MemoryFlows
from ._memory_record import _Queue, _Record
from .base import EnqueueItem, EnqueueReply

__all__ = ["Limits", "MemoryStore"]

_SIGNAL_CAP = 1024
_TRIM_PER_SETTLE = 10


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and retention that the collaborators apply (the backend's arguments)."""

    max_payload_bytes: int
    max_result_bytes: int
    keep_completed: int
    keep_completed_age: float
    keep_failed: int
    keep_failed_age: float


class MemoryStore:
    """The lock, the clock, the queue records, the limits and the dependency edges of one backend."""

    def __init__(self, timer: Clock, limits: Limits) -> None:
        self.timer = timer
        self.clock: Callable[[], float] = timer.time
        self.limits = limits
        self.lock = threading.Lock()
        self.queues: dict[str, _Queue] = {}
        self.cancel_listeners: list[Callable[[str, str], None]] = []
        self.flows = MemoryFlows(self)

    def queue(self, name: str) -> _Queue:
        """The queue's record, made on first use."""
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue()
        return queue

    def wake(self, queue: _Queue, tokens: int) -> None:
        """Add wake tokens (bounded) and wake every idle waiter of the queue."""
        if tokens <= 0:
            return
        queue.signal = min(queue.signal + tokens, _SIGNAL_CAP)
        for waiter in queue.waiters:
            waiter.set()

    def check_size(self, item: EnqueueItem) -> None:
        """Refuse an envelope over ``max_payload_bytes``."""
        size = len(item.payload.encode("utf-8"))
        if size > self.limits.max_payload_bytes:
            raise PayloadTooLarge(size, self.limits.max_payload_bytes)

    def enqueue(self, queue: _Queue, item: EnqueueItem) -> EnqueueReply:
        """Store one job in ``queue`` (idempotent by id and nonce): blocked, delayed or ready."""
        existing = queue.jobs.get(item.job_id)
        if existing is not None:
            replay = bool(item.nonce) and existing.nonce == item.nonce
            return EnqueueReply(
                item.job_id, existing.state, not replay, existing.enqueued_at, existing.eligible_at
            )
        self.check_size(item)
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
        if item.depends_on and self.flows.block(queue, record, item):
            return EnqueueReply(item.job_id, record.state, duplicate=False, enqueued_at=now, eligible_at=now)
        if item.delay > 0:
            record.delay_until = record.eligible_at = record.due = now + item.delay
            self.set_state(queue, record, "delayed")
            heapq.heappush(queue.delayed, (record.due, record.seq, record.job_id))
            self.wake(queue, 1)  # an idle worker re-reads the next due time instead of oversleeping
        else:
            self.make_ready(queue, record)
        return EnqueueReply(
            item.job_id,
            record.state,
            duplicate=False,
            enqueued_at=record.enqueued_at,
            eligible_at=record.eligible_at,
        )

    def set_state(self, queue: _Queue, record: _Record, state: str) -> None:
        """Move a job to ``state``, keeping the per-state counts."""
        if record.state == state:
            return
        if record.state:
            queue.counts[record.state] -= 1
        queue.counts[state] += 1
        record.state = state

    def make_ready(self, queue: _Queue, record: _Record, *, keep_place: bool = False) -> None:
        """Put a job in ``waiting``: at its original place, or at the back of its priority."""
        if not keep_place:
            record.seq = queue.next_seq()
        self.set_state(queue, record, "waiting")
        record.token = None
        record.owner = None
        heapq.heappush(queue.ready, (record.priority, record.seq, record.job_id))
        self.wake(queue, 1)

    def finish(
        self, queue: _Queue, record: _Record, state: str, index: collections.OrderedDict[str, float]
    ) -> None:
        """Finish a job in a terminal ``state``: indexed, retention applied, its children told."""
        now = self.clock()
        record.finished_at = now
        self.set_state(queue, record, state)
        index[record.job_id] = now
        if index is queue.dlq:
            self.trim(queue, index, self.limits.keep_failed, self.limits.keep_failed_age, now)
        else:
            self.trim(queue, index, self.limits.keep_completed, self.limits.keep_completed_age, now)
        self.flows.finished(queue, record, state)

    def trim(
        self, queue: _Queue, index: collections.OrderedDict[str, float], keep: int, age: float, now: float
    ) -> None:
        """Delete the oldest finished jobs past ``keep`` or ``age``, a few per settle."""
        for _ in range(_TRIM_PER_SETTLE):
            if not index:
                return
            oldest_id, finished = next(iter(index.items()))
            if len(index) <= keep and finished >= now - age:
                return
            index.popitem(last=False)
            self.delete(queue, oldest_id)

    def delete(self, queue: _Queue, job_id: str) -> None:
        """Forget a job."""
        record = queue.jobs.pop(job_id, None)
        if record is not None:
            queue.counts[record.state] -= 1

# mypy: disable-error-code="no-any-return"
"""The record transitions every part of :class:`InMemoryBackend` shares (moved out of ``memory.py``)."""

from __future__ import annotations

import collections
import heapq
from typing import TYPE_CHECKING, Any

from .._stored import decode_stored_envelope
from ..errors import PayloadTooLarge
from ._memory_record import _Queue, _Record
from .base import EnqueueItem, EnqueueReply

__all__ = ["MemoryStoreMixin"]

_SIGNAL_CAP = 1024
_TRIM_PER_SETTLE = 10


class MemoryStoreMixin:
    """Queue records and the transitions of one record, under the caller's lock."""

    if TYPE_CHECKING:  # the rest of InMemoryBackend

        def __getattr__(self, name: str) -> Any: ...  # noqa: ANN401 - a step of the move to collaborators

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

"""Inspection and admin of :class:`InMemoryBackend`: reads and admin writes over the queue records.

Each call is one step under the store's lock, like a transition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..jobs import TERMINAL_STATES, JobState
from .base import QueueStats, StoredJob

if TYPE_CHECKING:
    from ._memory_store import MemoryStore

__all__ = ["MemoryAdmin"]


class MemoryAdmin:
    """Jobs by id, state and DLQ; counts and stats; DLQ retry and purge; cleaning; the queue names."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = store.lock
        self.clock = store.clock

    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job, or ``None``."""
        with self._lock:
            record = self._store.queue(queue).jobs.get(job_id)
            return None if record is None else record.stored(queue)

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            counts = self._store.queue(queue).counts
            return {state.value: max(counts[state.value], 0) for state in JobState}

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``."""
        wanted = JobState(state).value
        with self._lock:
            q = self._store.queue(queue)
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
            q = self._store.queue(queue)
            ids = list(reversed(q.dlq))[offset : offset + limit]
            return [q.jobs[job_id].stored(queue) for job_id in ids if job_id in q.jobs]

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """DLQ → ``waiting`` with fresh counters."""
        with self._lock:
            q = self._store.queue(queue)
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
            self._store.make_ready(q, record)
            self._store.flows.retried(q, record)
            return True

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job."""
        with self._lock:
            q = self._store.queue(queue)
            ids = list(q.dlq)
            q.dlq.clear()
            for job_id in ids:
                self._store.delete(q, job_id)
            return len(ids)

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete finished jobs in ``state`` older than ``older_than`` seconds."""
        wanted = JobState(state)
        if wanted not in TERMINAL_STATES:
            raise ValueError(
                f"clean takes a finished state (completed, failed, expired, cancelled), not {state!r}"
            )
        with self._lock:
            q = self._store.queue(queue)
            index = {"completed": q.completed, "cancelled": q.cancelled}.get(wanted.value, q.dlq)
            cutoff = self.clock() - older_than
            doomed = [
                job_id
                for job_id, finished in index.items()
                if finished <= cutoff and job_id in q.jobs and q.jobs[job_id].state == wanted.value
            ]
            for job_id in doomed:
                del index[job_id]
                self._store.delete(q, job_id)
            return len(doomed)

    async def queue_stats(self, queue: str) -> QueueStats:
        """What the queue sampler exports."""
        with self._lock:
            q = self._store.queue(queue)
            now = self.clock()
            oldest = min((r.eligible_at for r in q.jobs.values() if r.state == "waiting"), default=None)
            return QueueStats(
                ready=max(q.counts["waiting"], 0),
                scheduled=max(q.counts["delayed"], 0),
                active=max(q.counts["active"], 0),
                dead=len(q.dlq),
                oldest_ready_age=0.0 if oldest is None else max(now - oldest, 0.0),
                paused=q.paused,
                **self._store.flows.stats(q, now),
            )

    async def list_queues(self) -> list[str]:
        """Every queue seen by this backend."""
        with self._lock:
            return sorted(self._store.queues)

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue exists; never creates it (one dict lookup: no lock needed)."""
        return queue in self._store.queues

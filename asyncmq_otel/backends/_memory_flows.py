"""Job dependencies for ``InMemoryBackend``: blocked jobs, their release and failure propagation.

Every method runs under the backend's lock, inside the transition that called it, so a child
becomes ``waiting`` in the same step that completes its last parent, in any queue of the backend.
Dead-lettering cascades through a work list rather than recursion: a chain of thousands of jobs
must not reach Python's recursion limit.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import JobArgumentError
from .base import FlowNode

if TYPE_CHECKING:
    from ._memory_record import _Queue, _Record
    from ._memory_store import MemoryStore
    from .base import EnqueueItem, EnqueueReply, StoredJob

__all__ = ["MemoryFlowStore", "MemoryFlows"]

Ref = tuple[str, str]  # (queue, job id)
_DEAD = frozenset({"failed", "expired", "cancelled"})
_MAX_FLOW_NODES = 10_000
_MAX_REPORTED = 10_000  # dead-lettered children awaiting their job:failed event, per queue
_REPORT_PAGE = 100


class MemoryFlows:
    """The dependency edges of one in-memory backend and the transitions they drive.

    Part of the backend's shared :class:`~._memory_store.MemoryStore`: storing and finishing a job
    consult the edges in the same step.
    """

    __slots__ = (
        "_draining",
        "_failed",
        "_store",
        "_work",
        "children",
        "failed_for",
        "parents",
        "pending",
        "run_anyway",
    )

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.parents: dict[Ref, tuple[Ref, ...]] = {}
        self.children: dict[Ref, set[Ref]] = {}
        self.pending: dict[Ref, set[Ref]] = {}  # a child's parents that have not completed
        self.failed_for: dict[Ref, set[Ref]] = {}  # the dead parents a child was dead-lettered for
        self.run_anyway: set[Ref] = set()  # children enqueued with on_parent_failure="run"
        self._work: collections.deque[tuple[Ref, str]] = collections.deque()
        self._draining = False
        # children dead-lettered for a parent, by queue, until the queue's reaper reports them
        self._failed: dict[str, collections.deque[str]] = {}

    def _name(self, queue: _Queue) -> str:
        """The name of a queue of the backend (a backend holds a handful of queues)."""
        return next(name for name, each in self._store.queues.items() if each is queue)

    def stats(self, queue: _Queue, now: float) -> dict[str, Any]:
        """The flow fields of ``QueueStats``: blocked jobs and the age of the longest-blocked one."""
        stored = [record.enqueued_at for record in queue.jobs.values() if record.state == "blocked"]
        return {"blocked": len(stored), "oldest_blocked_age": max(now - min(stored), 0.0) if stored else 0.0}

    def _record(self, ref: Ref) -> _Record | None:
        queue = self._store.queues.get(ref[0])
        return None if queue is None else queue.jobs.get(ref[1])

    def check(self, queue: str, items: Sequence[EnqueueItem]) -> None:
        """Refuse the call before any write when a parent does not exist (ids stored earlier in it count)."""
        self.check_flow([(queue, item) for item in items])

    def check_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> None:
        """:meth:`check` for jobs of several queues, parents first."""
        earlier: set[Ref] = set()
        for index, (queue, item) in enumerate(items):
            for parent in item.depends_on:
                if parent not in earlier and self._record(parent) is None:
                    where = "depends_on" if len(items) == 1 else f"jobs[{index}].depends_on"
                    raise JobArgumentError(
                        where,
                        f"parent job {parent[1]!r} does not exist in queue {parent[0]!r}; "
                        "enqueue the parent first (or use FlowProducer.add_flow for a whole graph)",
                    )
            earlier.add((queue, item.job_id))

    def block(self, queue: _Queue, record: _Record, item: EnqueueItem) -> bool:
        """Register a new job's parents; True when it was stored ``blocked`` (or dead-lettered).

        A completed parent counts as done; a dead one dead-letters the job at once, unless it was
        enqueued with ``on_parent_failure="run"``.
        """
        ref = (self._name(queue), record.job_id)
        if item.delay > 0:  # counted from the enqueue, applied at the release
            record.delay_until = record.enqueued_at + item.delay
        self.parents[ref] = item.depends_on
        run = item.on_parent_failure == "run"
        if run:
            self.run_anyway.add(ref)
        pending: set[Ref] = set()
        dead: set[Ref] = set()
        for parent in item.depends_on:
            self.children.setdefault(parent, set()).add(ref)
            found = self._record(parent)
            # flow ids (flows.py): a parent without one takes its own id; a child its first parent's
            flow = parent[1] if found is None else found.flow_id or parent[1]
            if found is not None:
                found.flow_id = flow
            record.flow_id = record.flow_id or flow
            state = "completed" if found is None else found.state
            if state == "completed" or (run and state in _DEAD):
                continue
            pending.add(parent)
            if state in _DEAD:
                dead.add(parent)
        if not pending:
            return False
        self.pending[ref] = pending
        store = self._store
        store.set_state(queue, record, "blocked")
        if dead:
            self._dead_letter(queue, record, dead)
        return True

    def finished(self, queue: _Queue, record: _Record, state: str) -> None:
        """A job reached a terminal state: release or dead-letter its blocked children."""
        if not self.children:
            return  # no job of this backend ever had a parent: the common case costs nothing more
        self._work.append(((self._name(queue), record.job_id), state))
        if self._draining:
            return  # the outer call drains the work list
        self._draining = True
        try:
            while self._work:
                ref, outcome = self._work.popleft()
                self._settled(ref, outcome)
        finally:
            self._draining = False

    def _settled(self, ref: Ref, outcome: str) -> None:
        found = self._record(ref)
        if found is None or found.dlq_reason != "dependency_failed":
            # a finished job waits for nothing, unless it was dead-lettered for a parent: a retry of
            # that parent re-blocks it on the parents it still waits for
            self.pending.pop(ref, None)
        if outcome == "completed":
            self.failed_for.pop(ref, None)
        for child in sorted(self.children.get(ref, ())):
            record = self._record(child)
            if record is None:
                continue
            if outcome == "completed" or (outcome in _DEAD and child in self.run_anyway):
                self._parent_done(child, record, ref)
            elif record.state == "blocked":
                self._dead_letter(self._store.queue(child[0]), record, {ref})
            elif record.state == "failed" and record.dlq_reason == "dependency_failed":
                self.failed_for.setdefault(child, set()).add(ref)  # dead already: one more reason

    def _parent_done(self, child: Ref, record: _Record, parent: Ref) -> None:
        pending = self.pending.get(child)
        if pending is None or parent not in pending:
            return
        pending.discard(parent)
        if pending or record.state != "blocked":
            return
        del self.pending[child]
        store = self._store
        queue = store.queue(child[0])
        now = store.clock()
        if record.delay_until is not None and record.delay_until > now:
            record.due = record.eligible_at = record.delay_until
            store.set_state(queue, record, "delayed")
            heapq.heappush(queue.delayed, (record.due, record.seq, record.job_id))
            store.wake(queue, 1)  # an idle worker re-reads the next due time
        else:
            record.eligible_at = now
            store.make_ready(queue, record)

    def _dead_letter(self, queue: _Queue, record: _Record, parents: set[Ref]) -> None:
        ref = (self._name(queue), record.job_id)
        self.failed_for.setdefault(ref, set()).update(parents)
        self._failed.setdefault(ref[0], collections.deque(maxlen=_MAX_REPORTED)).append(ref[1])
        record.dlq_reason = "dependency_failed"
        names = ", ".join(f"{q}/{job_id}" for q, job_id in sorted(parents))
        record.error = {
            "type": "DependencyFailed",
            "message": f"parent {names} did not complete; retry the parent from the DLQ to run this job",
        }
        self._store.finish(queue, record, "failed", queue.dlq)  # cascades through finished()

    def drain_failed(self, queue: _Queue, name: str) -> list[StoredJob]:
        """Up to 100 children dead-lettered for a parent since the last call (their ``job:failed`` is due)."""
        pending = self._failed.get(name)
        out: list[StoredJob] = []
        while pending and len(out) < _REPORT_PAGE:
            record = queue.jobs.get(pending.popleft())
            if record is not None and record.dlq_reason == "dependency_failed":
                out.append(record.stored(name))
        return out

    def retried(self, queue: _Queue, record: _Record) -> None:
        """A parent left the DLQ: re-block the descendants that were dead-lettered only for it."""
        work = collections.deque([(self._name(queue), record.job_id)])
        while work:
            parent = work.popleft()
            for child in sorted(self.children.get(parent, ())):
                found = self._record(child)
                reasons = self.failed_for.get(child)
                if found is None or reasons is None or parent not in reasons:
                    continue
                if found.state != "failed" or found.dlq_reason != "dependency_failed":
                    continue
                reasons.discard(parent)
                if reasons:
                    continue  # still dead for another parent
                del self.failed_for[child]
                child_queue = self._store.queue(child[0])
                child_queue.dlq.pop(child[1], None)
                found.dlq_reason = None
                found.error = None
                found.finished_at = None
                self._store.set_state(child_queue, found, "blocked")
                self.pending.setdefault(child, set()).add(parent)
                work.append(child)

    def graph(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """Every job connected to ``queue/job_id`` by dependencies, each with its state and parents."""
        start = (queue, job_id)
        if self._record(start) is None:
            return None
        seen = {start}
        work = collections.deque([start])
        while work and len(seen) < _MAX_FLOW_NODES:
            ref = work.popleft()
            for other in (*self.parents.get(ref, ()), *self.children.get(ref, ())):
                if other not in seen:
                    seen.add(other)
                    work.append(other)
        nodes: list[FlowNode] = []
        for ref in sorted(seen):
            found = self._record(ref)
            task = None if found is None or found.envelope is None else found.envelope.get("task")
            nodes.append(
                FlowNode(
                    queue=ref[0],
                    id=ref[1],
                    state=None if found is None else found.state,
                    task=task if isinstance(task, str) else None,
                    parents=tuple(self.parents.get(ref, ())),
                    dlq_reason=None if found is None else found.dlq_reason,
                    flow_id=None if found is None else found.flow_id,
                )
            )
        return nodes


class MemoryFlowStore:
    """The :class:`~asyncmq_otel.backends.capabilities.FlowBackend` capability of ``InMemoryBackend``.

    One lock, so a whole flow is stored in one step.
    """

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = store.lock
        self._flows = store.flows

    async def add_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> list[EnqueueReply]:
        """Store jobs of any queues, parents first: every parent is checked before any write."""
        store = self._store
        for _queue, item in items:
            store.check_size(item)
        with self._lock:
            self._flows.check_flow(items)
            return [store.enqueue(store.queue(queue), item) for queue, item in items]

    async def get_flow(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """The dependency graph around a job (see :meth:`MemoryFlows.graph`), or ``None``."""
        with self._lock:
            return self._flows.graph(queue, job_id)

    async def last_spans(self, parents: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ``last_span`` each ``(queue, job_id)`` stored at completion (``None``: none, or gone)."""
        with self._lock:
            found = [self._flows._record(parent) for parent in parents]  # noqa: SLF001 - the backend's own
            return [None if record is None else record.last_span for record in found]

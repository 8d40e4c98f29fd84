"""Flows: jobs that wait for other jobs; ``FlowProducer`` stores a graph; handlers read parents' results.

A job enqueued with ``depends_on`` is ``blocked`` until each parent has completed, then
``waiting`` (released by the transition that completes its last parent). A parent that is
dead-lettered dead-letters its blocked descendants with reason ``dependency_failed``, unless a
child was enqueued with ``on_parent_failure="run"``; retrying the parent from the DLQ blocks them
again. ``FlowProducer.add_flow`` checks a whole graph (cycles, ids, arguments, sizes) before it
stores anything, then stores it all or none, across queues too (on Redis, in two phases: see
``backends/redis/_flows.py``).

Every job of a flow carries a flow id (``asyncmq.flow.id`` on its log lines and ``process`` spans,
``FlowNode.flow_id``): ``add_flow`` gives all the jobs of a graph the id of the first job it
stores (one without a parent in the graph); a job enqueued with ``depends_on`` takes its first
parent's flow id; a job named as a parent that has none takes its own id as its flow id. A job
never linked to another has none.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ._dependencies import ParentRef, current_job
from .backends._default import default_backend
from .backends.base import Backend, FlowNode
from .backends.capabilities import FlowBackend  # still importable from here, where it was defined
from .errors import JobArgumentError
from .jobs import check_job_id, check_queue_name, new_job_id
from .queues import Queue
from .settings import get_settings

__all__ = ["FlowCycleError", "FlowNode", "FlowProducer", "parent_results"]


class FlowCycleError(JobArgumentError):
    """A flow whose dependencies form a cycle: no job of it could ever run; nothing was stored."""


class FlowProducer:
    """Stores a graph of jobs at once (AsyncMQ's ``FlowProducer``).

    Args:
        backend: where the jobs live; the default backend when omitted.

    """

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend = backend

    @property
    def backend(self) -> Backend:
        """The backend the flows go to."""
        if self._backend is None:
            self._backend = default_backend()
        return self._backend

    async def add_flow(self, queue: str, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store ``jobs`` as one graph and return their ids, in the order given.

        Each job is a mapping with the keys of :meth:`Queue.add_bulk
        <asyncmq_otel.queues.Queue.add_bulk>` (``task_id``, ``args``, ``kwargs``, ``job_id``, ...),
        plus ``queue`` (default: ``queue``). ``depends_on`` names parents by the ``job_id`` of
        another job of the flow, by the id of a job already stored (in this job's queue), or as a
        ``(queue, job_id)`` pair. Give ``job_id`` to the jobs other jobs depend on.

        Raises:
            FlowCycleError: the dependencies form a cycle (the message names it); nothing is stored.
            JobArgumentError: a bad job (the message names ``jobs[i]``) or a parent that does not
                exist; nothing is stored.
            BackendError: Redis refused the graph (a job key of another type, or a flow across
                queues that took longer than ``RedisBackend.flow_stage_timeout`` to stage); nothing
                is stored.

        """
        check_queue_name(queue)
        ids: list[str] = []
        where: dict[str, str] = {}  # job id -> its queue, for the jobs of this flow
        for index, spec in enumerate(jobs):
            job_id = spec.get("job_id")
            job_id = new_job_id() if job_id is None else check_job_id(job_id)
            if job_id in where:
                raise JobArgumentError(f"jobs[{index}].job_id", f"{job_id!r} appears twice in the flow")
            where[job_id] = check_queue_name(spec.get("queue", queue))
            ids.append(job_id)
        built = []
        for index, spec in enumerate(jobs):
            node_queue = where[ids[index]]
            parents = [_resolve(parent, where, node_queue) for parent in spec.get("depends_on") or ()]
            fields = {key: value for key, value in spec.items() if key != "queue"}
            fields.update(job_id=ids[index], depends_on=parents or None)
            built.append((node_queue, Queue(node_queue, self._backend)._build_spec(index, fields)))  # noqa: SLF001 - one validation for both paths
        order = _topological_order([(node_queue, one.job.id) for node_queue, one in built], built)
        limit = get_settings().max_payload_bytes
        flow_id = built[order[0]][1].job.id if order else None  # the flow id rule: see the module
        items = [(built[i][0], dataclasses.replace(built[i][1].item(limit), flow_id=flow_id)) for i in order]
        backend = self.backend
        if not isinstance(backend, FlowBackend):
            raise JobArgumentError("backend", f"{type(backend).__name__} does not store flows")
        replies = await backend.add_flow(items)
        by_id = {reply.job_id: reply for reply in replies}
        for node_queue, one in built:
            one.job.flow_id = flow_id  # job:enqueued (and its log line) carries it too
            Queue(node_queue, backend)._after_store(one.job, by_id[one.job.id], one.delay_s)  # noqa: SLF001 - the same events as add()
        return ids


def _resolve(parent: object, flow: Mapping[str, str], node_queue: str) -> object:
    """A plain id of a job of the flow becomes ``(its queue, id)``; anything else is checked later."""
    if isinstance(parent, str):
        return (flow.get(parent, node_queue), parent)
    return parent


def _topological_order(refs: Sequence[ParentRef], built: Sequence[tuple[str, Any]]) -> list[int]:
    """Indexes of the flow's jobs, parents first (Kahn); a cycle raises :class:`FlowCycleError`."""
    index = {ref: i for i, ref in enumerate(refs)}
    children: dict[int, list[int]] = collections.defaultdict(list)
    waiting = [0] * len(refs)
    for i, (_queue, one) in enumerate(built):
        for parent in one.depends_on:
            if parent in index:
                children[index[parent]].append(i)
                waiting[i] += 1
    ready = collections.deque(i for i, count in enumerate(waiting) if count == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for child in children[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) < len(refs):
        stuck = [f"{refs[i][0]}/{refs[i][1]}" for i, count in enumerate(waiting) if count > 0]
        shown = ", ".join(stuck[:10]) + (" ..." if len(stuck) > 10 else "")  # noqa: PLR2004 - a short message
        raise FlowCycleError("depends_on", f"the flow has a cycle through {shown}; nothing was stored")
    return order


async def parent_results() -> dict[str, Any]:
    """The results of the running job's parents, by parent job id (``None``: the parent did not complete).

    Await it in an async handler of a job enqueued with ``depends_on`` (or stored by
    :meth:`FlowProducer.add_flow`); a job without parents gets ``{}``. A parent whose result was
    trimmed by retention reads as ``None``. Sandboxed handlers run in another process and cannot
    call it.

    Raises:
        RuntimeError: called outside a running handler.

    """
    current = current_job.get()
    if current is None:
        raise RuntimeError("parent_results() reads the running job's parents: call it from a handler")
    backend, claimed = current
    out: dict[str, Any] = {}
    for parent_queue, parent_id in claimed.parents:
        stored = await backend.get_job(parent_queue, parent_id)
        completed = stored is not None and stored.state == "completed"
        out[parent_id] = stored.result if completed and stored is not None else None
    return out

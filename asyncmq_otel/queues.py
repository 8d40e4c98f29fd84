"""``Queue``: the producer and admin API, written once over the ``Backend`` port.

Every public method does the bookkeeping (validation, encoding, size checks, events) and
then delegates the state change to the backend, which only moves bytes.
"""

from __future__ import annotations

import contextlib
import difflib
import time
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import _repeatables, _results
from ._dependencies import OnParentFailure, ParentRef, check_parents
from ._lifecycle import emit_job_event, server_fields
from .backends._default import default_backend
from .backends.base import (
    Backend,
    CancelStatus,
    EnqueueItem,
    EnqueueReply,
    FlowNode,
    QueueRateLimit,
    QueueStats,
    StoredJob,
    WorkerInfo,
)
from .backends.capabilities import FlowBackend, RateLimitStore
from .errors import ConfigError, DuplicateJob, JobArgumentError, TaskNameWarning, UnsupportedOption
from .events import LifecycleEvent, Operation, bus
from .jobs import (
    MAX_PRIORITY,
    MAX_RETRIES,
    TERMINAL_STATES,
    Backoff,
    BackoffSpec,
    Job,
    JobState,
    check_int_option,
    check_job_id,
    check_json,
    check_queue_name,
    check_seconds,
    encode_payload,
    new_job_id,
)
from .schedules import ScheduleSpec
from .settings import get_settings
from .tasks import TASK_REGISTRY, UNSUPPORTED_OPTIONS

__all__ = ["Queue"]

_BULK_KEYS = frozenset(
    {
        "task_id",
        "task",
        "args",
        "kwargs",
        "retries",
        "ttl",
        "backoff",
        "priority",
        "delay",
        "job_id",
        "timeout",
        "depends_on",
        "on_parent_failure",
    }
)
_MAX_RATE_LIMIT = 1_000_000  # claims logged per queue at most (one sorted-set member each on Redis)
_MIN_RATE_INTERVAL = 0.001  # the backends keep the interval in whole milliseconds
_LIVE_TASKS_TTL = 5.0  # seconds a producer reuses its view of the live workers' task names
_FRESH_ENOUGH = 0.5  # ... and before it warns, at most this old (a bad name costs one look-up per 0.5 s)
_live_workers: weakref.WeakKeyDictionary[Any, tuple[float, list[WorkerInfo]]] = weakref.WeakKeyDictionary()


def _provisional_times(job: Job, delay_s: float) -> None:
    """Producer-side estimates for the observers of the store write; the backend's clock replaces them."""
    now = time.time()
    job.enqueued_at = now
    job.eligible_at = now + delay_s
    job.delay_until = now + delay_s if delay_s > 0 else None


class _Built:
    """A validated job, its delay, and whether the caller set its retries (else the task's apply)."""

    __slots__ = ("delay_s", "depends_on", "job", "on_parent_failure", "retries_set")

    def __init__(
        self,
        job: Job,
        delay_s: float,
        retries_set: bool,
        depends_on: tuple[ParentRef, ...] = (),
        on_parent_failure: str = "fail",
    ) -> None:
        self.job = job
        self.delay_s = delay_s
        self.retries_set = retries_set
        self.depends_on = depends_on
        self.on_parent_failure = on_parent_failure

    def item(self, limit: int) -> EnqueueItem:
        """The backend's view of the job.

        An option the caller left unset is not stored (``ttl``, ``backoff``, ``timeout`` are absent
        when None, ``max_retries`` is dropped here): the worker gives the job its task's declared
        value. No nonce: the backend gives each item one of its call, so a re-send of the call
        replays and any other enqueue of the same id is a duplicate.
        """
        job = self.job
        envelope = job.envelope()
        if not self.retries_set:
            del envelope["max_retries"]
        if self.depends_on:  # the worker reads them for parent_results() and the span links
            envelope["depends_on"] = [list(parent) for parent in self.depends_on]
            if self.on_parent_failure != "fail":
                envelope["on_parent_failure"] = self.on_parent_failure
        payload = encode_payload(envelope, limit)
        return EnqueueItem(
            job.id,
            payload,
            self.delay_s,
            priority=job.priority,
            ttl=job.ttl,
            depends_on=self.depends_on,
            on_parent_failure=self.on_parent_failure,
        )


def _did_you_mean(task_id: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known task id, or nothing."""
    names = sorted(set(known))
    suffix = [name for name in names if name.endswith("." + task_id.rpartition(".")[2])]
    close = suffix or difflib.get_close_matches(task_id, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_rate_limit(limit: object, interval: object) -> tuple[int, float]:
    """A queue rate limit's ``limit`` and ``interval``, checked (also by the CLI, before it connects).

    Raises:
        JobArgumentError: ``limit`` not an int in [1, 1,000,000], or ``interval`` under 1 ms.

    """
    checked_limit = check_int_option("limit", limit, 1, _MAX_RATE_LIMIT)
    checked_interval = check_seconds("interval", interval)
    if checked_interval < _MIN_RATE_INTERVAL:
        raise JobArgumentError("interval", f"must be at least 0.001 seconds, not {checked_interval!r}")
    return checked_limit, checked_interval


class Queue:
    """A named queue on a backend (``settings.backend`` when none is given).

    Args:
        name: the queue name, ``[A-Za-z0-9._-]{1,64}``.
        backend: where the jobs live; the default backend when omitted.

    """

    def __init__(self, name: str, backend: Backend | None = None) -> None:
        self.name = check_queue_name(name)
        self._backend = backend

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, backend={self.backend!r})"

    @property
    def backend(self) -> Backend:
        """The backend this queue uses."""
        if self._backend is None:
            self._backend = default_backend()
        return self._backend

    @classmethod
    async def for_task(cls, task_id: str, backend: Backend | None = None) -> Queue:
        """The queue ``task_id`` declares in ``@task``, for producers that know the task only by name.

        Taken from this process's task registry, else from the live workers' registrations (each
        publishes its tasks and their queues), else ``"default"``.
        """
        info = TASK_REGISTRY.get(task_id)
        if info is not None:
            return cls(info.queue, backend)
        queue = cls("default", backend)
        declared = sorted(
            {worker.tasks[task_id] for worker in await queue._live_workers() if task_id in worker.tasks}
        )
        return cls(declared[0], backend) if declared else queue

    # -- producer ------------------------------------------------------------------------------------
    def _build(
        self,
        task_id: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        *,
        retries: int | None,
        ttl: float | None,
        backoff: BackoffSpec,
        priority: int,
        delay: float | None,
        job_id: str | None,
        timeout: float | None,
        depends_on: Sequence[Any] | None = None,
        on_parent_failure: object = "fail",
    ) -> _Built:
        """Validate one job before anything is sent (reliability: bad input is refused at enqueue)."""
        if type(task_id) is not str or not task_id:
            raise JobArgumentError("task_id", f"must be a non-empty string, not {task_id!r:.60}")
        if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            priority = check_int_option("priority", priority, -MAX_PRIORITY, MAX_PRIORITY)
        if retries is not None:
            retries = check_int_option("retries", retries, 0, MAX_RETRIES)
        delay_s = 0.0 if delay is None else check_seconds("delay", delay, zero_ok=True)
        if ttl is not None:
            ttl = check_seconds("ttl", ttl)
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        try:
            parsed_backoff = Backoff.parse(backoff)
        except (TypeError, ValueError, OverflowError) as exc:
            raise JobArgumentError("backoff", str(exc)) from None
        if args is not None and not isinstance(args, (list, tuple)):
            raise JobArgumentError("args", f"must be a list or tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise JobArgumentError("kwargs", f"must be a mapping, not {type(kwargs).__name__}")
        if retries is None:
            declared = TASK_REGISTRY.get(task_id)
            # what the worker will apply, for the max_attempts of this producer's events
            max_retries = 0 if declared is None else declared.retries
        else:
            max_retries = retries
        job = Job(
            id=check_job_id(job_id) if job_id is not None else new_job_id(),
            task=task_id,
            queue=self.name,
            args=check_json(list(args or ()), "args"),
            kwargs=check_json(dict(kwargs or {}), "kwargs"),
            max_retries=max_retries,
            ttl=ttl,
            backoff=None if parsed_backoff is None else parsed_backoff.to_dict(),
            priority=priority,
            timeout=timeout,
        )
        parents = check_parents(depends_on, self.name, job.id, on_parent_failure)
        return _Built(job, delay_s, retries is not None, parents, str(on_parent_failure))

    async def add(
        self,
        task_id: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        retries: int | None = None,
        ttl: float | None = None,
        backoff: BackoffSpec = None,
        priority: int = 5,
        delay: float | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        depends_on: Sequence[str | tuple[str, str]] | None = None,
        on_parent_failure: OnParentFailure = "fail",
    ) -> str:
        """Store a job and return its id (also for delayed jobs and duplicates).

        ``retries``, ``ttl``, ``backoff`` and ``timeout`` left as None take the values the task
        declares in ``@task`` (resolved by the worker that runs it); a value given here wins.
        ``kwargs`` are the handler's keyword arguments as they are, whatever their names (a handler
        argument called ``depends_on`` goes here). The job goes to this queue: :meth:`for_task`
        finds the queue a task declares.

        ``depends_on`` lists parent jobs, as ids of this queue or ``(queue, job_id)`` pairs: the job
        is ``blocked`` until every parent has completed (one already completed counts as done),
        then ``waiting``. When a parent is dead-lettered (failed, expired or cancelled) the job is
        dead-lettered too with reason ``dependency_failed``, unless ``on_parent_failure="run"``.

        Raises:
            JobArgumentError: an argument is not JSON (the message names its path) or an option is
                out of bounds (the message names it), or a parent in ``depends_on`` does not exist;
                nothing is stored.
            PayloadTooLarge: the encoded job is over ``settings.max_payload_bytes``; nothing is sent.
            DuplicateJob: ``job_id`` exists and ``settings.on_duplicate == "raise"``.
            BackendUnavailable: the backend cannot be reached (retrying is safe: enqueue is idempotent).

        """
        built = self._build(
            task_id,
            args,
            kwargs,
            retries=retries,
            ttl=ttl,
            backoff=backoff,
            priority=priority,
            delay=delay,
            job_id=job_id,
            timeout=timeout,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
        )
        job, delay_s = built.job, built.delay_s
        backend = self.backend
        limit = get_settings().max_payload_bytes
        if bus.observed:
            _provisional_times(job, delay_s)
            operation = Operation(
                "schedule" if delay_s > 0 else "send", self.name, [job], **server_fields(backend)
            )
            with bus.operation(operation):  # encoded inside: the operation adds the trace context
                reply = await backend.enqueue(self.name, built.item(limit))
        else:
            reply = await backend.enqueue(self.name, built.item(limit))
        self._after_store(job, reply, delay_s)
        # after the store: a job refused for its size or arguments sends nothing, not even this look-up
        await self._check_task_names((task_id,))
        return job.id

    async def add_bulk(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store many jobs in one backend round trip; every job is validated before any is sent.

        Each mapping takes the keyword arguments of :meth:`add` plus ``task_id`` (or ``task``).
        """
        built = [self._build_spec(index, spec) for index, spec in enumerate(jobs)]
        if not built:
            return []
        limit = get_settings().max_payload_bytes

        def items() -> list[EnqueueItem]:
            return [one.item(limit) for one in built]

        if bus.observed:
            for one in built:
                _provisional_times(one.job, one.delay_s)
            operation = Operation(
                "send", self.name, [one.job for one in built], bulk=True, **server_fields(self.backend)
            )
            with bus.operation(operation):
                replies = await self.backend.enqueue_bulk(self.name, items())
        else:
            replies = await self.backend.enqueue_bulk(self.name, items())
        duplicates = []
        for one, reply in zip(built, replies, strict=True):
            try:
                self._after_store(one.job, reply, one.delay_s)
            except DuplicateJob as exc:
                duplicates.append(exc)
        await self._check_task_names({one.job.task for one in built})  # after the store, as in add
        if duplicates:
            raise duplicates[0]
        return [one.job.id for one in built]

    def _build_spec(self, index: int, spec: Mapping[str, Any]) -> _Built:
        if not _BULK_KEYS.issuperset(spec):
            unknown = sorted(set(spec) - _BULK_KEYS, key=str)
            for key in unknown:
                if key in UNSUPPORTED_OPTIONS:
                    raise UnsupportedOption(
                        f"jobs[{index}][{key!r}]", f"{UNSUPPORTED_OPTIONS[key]} are not supported yet"
                    )
            raise JobArgumentError(
                f"jobs[{index}]", f"unknown keys {unknown}; handler arguments go in 'args' and 'kwargs'"
            )
        task_id = spec.get("task_id", spec.get("task"))
        if task_id is None:
            raise JobArgumentError(f"jobs[{index}]", "needs a task_id")
        try:
            return self._build(
                task_id,
                spec.get("args"),
                spec.get("kwargs"),
                retries=spec.get("retries"),
                ttl=spec.get("ttl"),
                backoff=spec.get("backoff"),
                priority=spec.get("priority", 5),
                delay=spec.get("delay"),
                job_id=spec.get("job_id"),
                timeout=spec.get("timeout"),
                depends_on=spec.get("depends_on"),
                on_parent_failure=spec.get("on_parent_failure", "fail"),
            )
        except JobArgumentError as exc:
            # name the job as well: jobs[3].ttl, jobs[0].args[1]
            raise type(exc)(f"jobs[{index}].{exc.path}", str(exc).partition(": ")[2]) from None

    async def _live_workers(self, max_age: float = _LIVE_TASKS_TTL) -> list[WorkerInfo]:
        """The live workers, as seen at most ``max_age`` seconds ago; none when unknown."""
        backend = self.backend
        now = time.monotonic()
        try:
            seen_at, workers = _live_workers[backend]
        except (KeyError, TypeError):
            pass
        else:
            if now - seen_at < max_age:
                return workers
        try:
            workers = await backend.list_workers()
        except Exception:  # noqa: BLE001 - the check is advice and never fails an enqueue (which reports its own errors)
            return []
        with contextlib.suppress(TypeError):  # a backend that cannot be weakly referenced is asked every time
            _live_workers[backend] = (now, workers)
        return workers

    async def _check_task_names(self, task_ids: Iterable[str]) -> None:
        """Warn (:class:`TaskNameWarning`) about a task id no worker is likely to run on this queue.

        A task registered here and declared for this queue needs no look-up. Otherwise the live
        workers' published task names decide; with none published, only names no other process can
        register are flagged: short names with a known match and ``__main__.`` names.
        """
        for task_id in task_ids:
            declared = TASK_REGISTRY.get(task_id)
            script = task_id.startswith("__main__.")
            if declared is not None and declared.queue == self.name and not script:
                continue
            problem = await self._task_name_problem(task_id, script, _LIVE_TASKS_TTL)
            if problem:  # a worker may have started since the cached look-up: look again before warning
                problem = await self._task_name_problem(task_id, script, _FRESH_ENOUGH)
            if problem:
                warnings.warn(problem, TaskNameWarning, stacklevel=3)

    async def _task_name_problem(self, task_id: str, script: bool, max_age: float) -> str:
        publishing = [worker for worker in await self._live_workers(max_age) if worker.tasks]
        if publishing:
            serving = [worker for worker in publishing if task_id in worker.tasks]
            if not serving:
                known = [name for worker in publishing for name in worker.tasks]
                hint = _did_you_mean(task_id, [*known, *TASK_REGISTRY])
                return (
                    f"no live worker serves task {task_id!r}{hint}; "
                    f"job stored on queue {self.name!r} and waits until one does"
                )
            if not any(self.name in worker.queues for worker in serving):
                queues = sorted({queue for worker in serving for queue in worker.queues})
                return (
                    f"the live workers that serve task {task_id!r} consume {queues}, not {self.name!r}; "
                    f"the job waits until one does (Queue.for_task({task_id!r}) finds the declared queue)"
                )
            return ""
        if script and not self.backend.url.startswith("memory:"):
            return (
                f"task {task_id!r} was defined in a script run directly: a worker in another process "
                "registers it under its module's name; move it to a module or give @task(name=...)"
            )
        if "." not in task_id and task_id not in TASK_REGISTRY:
            hint = _did_you_mean(task_id, TASK_REGISTRY)
            if hint:
                return f"task ids are module-qualified: no task {task_id!r} is registered here{hint}"
        return ""

    def _after_store(self, job: Job, reply: EnqueueReply, delay_s: float) -> None:
        job.enqueued_at = reply.enqueued_at
        job.eligible_at = reply.eligible_at
        if reply.duplicate:
            if get_settings().on_duplicate == "raise":
                raise DuplicateJob(job.id, reply.state)
            emit_job_event("job:duplicated", job, attempt_number=0)
            return
        if delay_s > 0:
            emit_job_event("job:delayed", job, attempt_number=0, delay_s=delay_s)
        else:
            emit_job_event("job:enqueued", job, attempt_number=0)

    # -- queue control -------------------------------------------------------------------------------
    _known = False
    """Set once the queue was seen to exist: a queue is not deleted behind our back (a flush is the
    backends' data-loss path), so the admin methods below ask the backend at most once."""

    async def exists(self) -> bool:
        """Whether the queue exists on the backend (enqueued to, paused or consumed); creates nothing.

        The admin and inspection methods below answer "nothing there" for a queue that does not
        exist instead of creating it, so a typo never shows up in ``queues`` or the gauges.
        """
        if not self._known:
            self._known = await self.backend.has_queue(self.name)
        return self._known

    async def pause(self) -> None:
        """Stop workers from claiming jobs of this queue (running jobs finish).

        Pausing a queue that does not exist yet creates it paused (so it is paused before any
        worker starts); the command line asks for ``--create`` to do that.
        """
        with bus.operation(Operation("pause", self.name, **server_fields(self.backend))):
            await self.backend.pause(self.name)
        self._known = True
        bus.emit(LifecycleEvent("queue:paused", time.time(), queue=self.name))

    async def resume(self) -> None:
        """Let workers claim again; idle workers wake at once. A queue that does not exist is left alone."""
        if not await self.exists():
            return
        with bus.operation(Operation("resume", self.name, **server_fields(self.backend))):
            await self.backend.resume(self.name)
        bus.emit(LifecycleEvent("queue:resumed", time.time(), queue=self.name))

    async def is_paused(self) -> bool:
        """Whether the queue is paused."""
        return await self.exists() and await self.backend.is_queue_paused(self.name)

    async def set_rate_limit(self, limit: int, interval: float = 1.0) -> None:
        """Let every worker of this queue together start at most ``limit`` jobs per ``interval`` seconds.

        The limit is stored in the backend and applies at once to every worker (a worker's own
        ``rate_limit`` still applies on top): a claim takes a token in the same atomic step, so no
        window of ``interval`` seconds ever holds more than ``limit`` claims. ``interval`` has a
        resolution of 1 ms. Creates the queue when it does not exist yet.

        Raises:
            JobArgumentError: ``limit`` not an int in [1, 1,000,000], or ``interval`` under 1 ms.
            ConfigError: the backend cannot store a queue rate limit.

        """
        limit, interval = _check_rate_limit(limit, interval)
        await self._rate_limits().set_rate_limit(self.name, limit, interval)
        self._known = True

    async def clear_rate_limit(self) -> bool:
        """Remove the queue's shared rate limit; False when it had none."""
        if not await self.exists():
            return False
        return await self._rate_limits().clear_rate_limit(self.name)

    async def get_rate_limit(self) -> QueueRateLimit | None:
        """The queue's shared rate limit (``limit``, ``interval``), or ``None``."""
        backend = self.backend
        if not isinstance(backend, RateLimitStore) or not await self.exists():
            return None
        return await backend.get_rate_limit(self.name)

    def _rate_limits(self) -> RateLimitStore:
        backend = self.backend
        if not isinstance(backend, RateLimitStore):
            raise ConfigError(f"{type(backend).__name__} cannot store a queue rate limit")
        return backend

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job: a queued one never runs; a running one is stopped at its next ``await``.

        Returns True when the job was cancelled or its cancellation was requested, False when it
        had already finished or does not exist.
        """
        check_job_id(job_id)
        if not await self.exists():
            return False
        status = await self.backend.cancel(self.name, job_id)
        if status is CancelStatus.CANCELLED:
            stored = await self.backend.get_job(self.name, job_id)
            job = None if stored is None else stored.job
            if job is not None:
                # The transition is immediate, so the event is emitted here rather than at a pickup
                # that will never happen (a delayed job could be due in days).
                job.queue = self.name  # not the envelope's field: a job cannot mint label values
                emit_job_event("job:cancelled", job, reason="queued", finished_at=job.finished_at)
        return status in {CancelStatus.CANCELLED, CancelStatus.RUNNING}

    # -- inspection and admin ------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The stored job (envelope, state, counters, result, error), or ``None``."""
        stored = await self._stored(job_id)
        return None if stored is None else stored.to_dict()

    async def _stored(self, job_id: str) -> StoredJob | None:
        """The typed stored job, or ``None`` (nothing is created when the queue does not exist)."""
        check_job_id(job_id)
        if not await self.exists():
            return None
        return await self.backend.get_job(self.name, job_id)

    async def get_job_state(self, job_id: str) -> str | None:
        """The job's state (``waiting``, ``delayed``, ``active``, ``completed``, ``failed``, ...)."""
        stored = await self._stored(job_id)
        return None if stored is None else stored.state

    async def get_job_result(self, job_id: str) -> Any:  # noqa: ANN401 - whatever the handler returned
        """The result of a completed job (``None`` otherwise)."""
        stored = await self._stored(job_id)
        if stored is None or stored.state != JobState.COMPLETED.value:
            return None
        return stored.result

    async def get_flow(self, job_id: str) -> list[FlowNode]:
        """The flow around a job: every job linked to it by ``depends_on``, each with its state.

        Raises:
            JobArgumentError: no job ``job_id`` in this queue, or a backend without flows.

        """
        backend = self.backend
        if not isinstance(backend, FlowBackend):
            raise JobArgumentError("backend", f"{type(backend).__name__} does not store flows")
        nodes = await backend.get_flow(self.name, check_job_id(job_id))
        if nodes is None:
            raise JobArgumentError("job_id", f"no job {job_id!r} in queue {self.name!r}")
        return nodes

    async def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        if not await self.exists():
            return {state.value: 0 for state in JobState}
        return await self.backend.counts(self.name)

    async def list_jobs(self, state: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """A page of jobs in ``state``."""
        wanted = JobState(state).value
        if not await self.exists():
            return []
        return [stored.to_dict() for stored in await self.backend.list_jobs(self.name, wanted, offset, limit)]

    async def dlq(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered jobs, newest first; each has ``dlq_reason`` and ``error``."""
        if not await self.exists():
            return []
        return [stored.to_dict() for stored in await self.backend.list_dlq(self.name, offset, limit)]

    async def retry_job(self, job_id: str) -> bool:
        """Move a dead-lettered job back to ``waiting`` with fresh retries."""
        check_job_id(job_id)
        if not await self.exists():
            return False
        return await self.backend.retry_dead(self.name, job_id)

    async def purge_dlq(self) -> int:
        """Delete every dead-lettered job; return how many."""
        if not await self.exists():
            return 0
        return await self.backend.purge_dlq(self.name)

    async def clean(self, state: str, older_than: float = 0.0) -> int:
        """Delete finished jobs in ``state`` older than ``older_than`` seconds; return how many."""
        wanted = JobState(state)
        if wanted not in TERMINAL_STATES:
            raise ValueError(
                f"clean takes a finished state (completed, failed, expired, cancelled), not {state!r}"
            )
        if not await self.exists():
            return 0
        return await self.backend.clean(self.name, wanted.value, older_than)

    async def stats(self) -> QueueStats:
        """Depth by state, the oldest ready job's age and the paused flag."""
        if not await self.exists():
            return QueueStats(0, 0, 0, 0, 0.0, paused=False)
        return await self.backend.queue_stats(self.name)

    # -- schedules and results (the logic lives in _repeatables and _results) ---------------------
    async def upsert_repeatable(
        self,
        task_id: str,
        *,
        every: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        key: str | None = None,
        catch_up: str = "latest",
        max_catch_up: int = 100,
        **job_options: Any,  # noqa: ANN401 - retries, ttl, backoff, priority, timeout
    ) -> str:
        """Create or redefine a periodic job and return its key (the task id unless ``key`` is given).

        Exactly one job per tick, whatever the number of workers: the tick's due time is the job's
        idempotency key. ``catch_up`` says what happens to ticks missed while no worker ran:
        ``"latest"`` fires once, ``"all"`` fires each (at most ``max_catch_up``), ``"none"`` skips
        them. Upserting the same definition again changes nothing.

        Raises:
            InvalidSchedule: a bad key, interval, cron expression, timezone, policy or option.
            ConfigError: the backend cannot store schedules.

        """
        spec = ScheduleSpec.build(
            self.name,
            task_id,
            every=every,
            cron=cron,
            timezone=timezone,
            args=args,
            kwargs=kwargs,
            key=key,
            catch_up=catch_up,
            max_catch_up=max_catch_up,
            options=job_options,
        )
        return await _repeatables.upsert_repeatable(self.backend, spec)

    async def remove_repeatable(self, key: str) -> None:
        """Delete a schedule (jobs it already fired stay); ``ScheduleNotFound`` when absent."""
        await _repeatables.remove_repeatable(self.backend, self.name, key)

    async def pause_repeatable(self, key: str) -> None:
        """Stop a schedule from firing until :meth:`resume_repeatable`."""
        await _repeatables.pause_repeatable(self.backend, self.name, key)

    async def resume_repeatable(self, key: str) -> None:
        """Fire a paused schedule again, from its first tick after now."""
        await _repeatables.resume_repeatable(self.backend, self.name, key)

    async def list_repeatables(self) -> list[dict[str, Any]]:
        """Every schedule: key, task, every/cron, timezone, next and last run, last job id, paused."""
        return await _repeatables.list_repeatables(self.backend, self.name)

    async def wait_for_result(self, job_id: str, timeout: float | None = None) -> Any:  # noqa: ANN401
        """Wait for a job to settle and return its result, without polling.

        Returns at once for a job that finished already (while its result is retained).

        Raises:
            JobFailed: the job failed for good (``error_type``, ``error_message``, ``reason``).
            JobCancelled: the job was cancelled.
            JobExpired: the job's TTL passed before it ran.
            TimeoutError: ``timeout`` seconds passed first.
            ConfigError: on Redis, when ``settings.publish_events`` is off.

        """
        return await _results.wait_for_result(self.backend, self.name, job_id, timeout)

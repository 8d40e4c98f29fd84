"""``Queue``: the producer and admin API, written once over the ``Backend`` port.

Every public method does the bookkeeping (validation, encoding, size checks, events) and
then delegates the state change to the backend, which only moves bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import _repeatables, _results
from ._context import server_fields
from ._lifecycle import emit_job_event
from .backends._default import default_backend
from .backends.base import Backend, CancelStatus, EnqueueItem, EnqueueReply, QueueStats
from .errors import DuplicateJob
from .events import LifecycleEvent, Operation, bus
from .jobs import (
    Backoff,
    BackoffSpec,
    Job,
    JobState,
    check_job_id,
    check_json,
    check_queue_name,
    encode_payload,
    new_job_id,
)
from .settings import settings

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
    }
)


def _provisional_times(job: Job, delay_s: float) -> None:
    """Producer-side estimates for the observers of the store write; the backend's clock replaces them."""
    now = time.time()
    job.enqueued_at = now
    job.eligible_at = now + delay_s
    job.delay_until = now + delay_s if delay_s > 0 else None


def _item(job: Job, delay_s: float, limit: int) -> EnqueueItem:
    """The backend's view of a built job.

    No nonce: the backend gives each item one of its call, so a re-send of the call replays and any
    other enqueue of the same id is a duplicate.
    """
    return EnqueueItem(
        job.id, encode_payload(job.envelope(), limit), delay_s, priority=job.priority, ttl=job.ttl
    )


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_int(value: object) -> bool:
    """A real int: ``True`` and ``False`` are refused."""
    return isinstance(value, int) and not isinstance(value, bool)


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

    # -- producer ------------------------------------------------------------------------------------
    def _build(
        self,
        task_id: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        *,
        retries: int,
        ttl: float | None,
        backoff: BackoffSpec,
        priority: int,
        delay: float | None,
        job_id: str | None,
        timeout: float | None,
    ) -> tuple[Job, float]:
        """Validate one job before anything is sent; return it and its delay."""
        if not task_id or not _is_str(task_id):
            raise TypeError(f"task_id must be a non-empty string, not {task_id!r}")
        if not _is_int(priority):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not _is_int(retries) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        delay_s = 0.0 if delay is None else float(delay)
        if not math.isfinite(delay_s) or delay_s < 0:
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
        if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        parsed_backoff = Backoff.parse(backoff)
        job = Job(
            id=check_job_id(job_id) if job_id is not None else new_job_id(),
            task=task_id,
            queue=self.name,
            args=check_json(list(args or ()), "args"),
            kwargs=check_json(dict(kwargs or {}), "kwargs"),
            max_retries=retries,
            ttl=None if ttl is None else float(ttl),
            backoff=None if parsed_backoff is None else parsed_backoff.to_dict(),
            priority=priority,
            timeout=None if timeout is None else float(timeout),
        )
        return job, delay_s

    async def add(
        self,
        task_id: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        retries: int = 0,
        ttl: float | None = None,
        backoff: BackoffSpec = None,
        priority: int = 5,
        delay: float | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Store a job and return its id (also for delayed jobs and duplicates).

        Raises:
            JobArgumentError: an argument is not JSON (the message names its path); nothing is sent.
            PayloadTooLarge: the encoded job is over ``settings.max_payload_bytes``; nothing is sent.
            DuplicateJob: ``job_id`` exists and ``settings.on_duplicate == "raise"``.
            BackendUnavailable: the backend cannot be reached (retrying is safe: enqueue is idempotent).

        """
        job, delay_s = self._build(
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
        )
        backend = self.backend
        limit = settings.max_payload_bytes
        if bus.observed:
            _provisional_times(job, delay_s)
            operation = Operation(
                "schedule" if delay_s > 0 else "send", self.name, [job], **server_fields(backend)
            )
            with bus.operation(operation):
                reply = await backend.enqueue(self.name, _item(job, delay_s, limit))
        else:
            reply = await backend.enqueue(self.name, _item(job, delay_s, limit))
        self._after_store(job, reply, delay_s)
        return job.id

    async def add_bulk(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Store many jobs in one backend round trip; every job is validated before any is sent.

        Each mapping takes the keyword arguments of :meth:`add` plus ``task_id`` (or ``task``).
        """
        built = [self._build_spec(index, spec) for index, spec in enumerate(jobs)]
        if not built:
            return []
        limit = settings.max_payload_bytes

        def items() -> list[EnqueueItem]:
            return [_item(job, delay_s, limit) for job, delay_s in built]

        if bus.observed:
            for job, delay_s in built:
                _provisional_times(job, delay_s)
            operation = Operation(
                "send", self.name, [job for job, _ in built], bulk=True, **server_fields(self.backend)
            )
            with bus.operation(operation):
                replies = await self.backend.enqueue_bulk(self.name, items())
        else:
            replies = await self.backend.enqueue_bulk(self.name, items())
        duplicates = []
        for (job, delay_s), reply in zip(built, replies, strict=True):
            try:
                self._after_store(job, reply, delay_s)
            except DuplicateJob as exc:
                duplicates.append(exc)
        if duplicates:
            raise duplicates[0]
        return [job.id for job, _ in built]

    def _build_spec(self, index: int, spec: Mapping[str, Any]) -> tuple[Job, float]:
        if not _BULK_KEYS.issuperset(spec):
            raise TypeError(f"jobs[{index}] has unknown keys {sorted(set(spec) - _BULK_KEYS)}")
        task_id = spec.get("task_id", spec.get("task"))
        if task_id is None:
            raise TypeError(f"jobs[{index}] needs a task_id")
        return self._build(
            task_id,
            spec.get("args"),
            spec.get("kwargs"),
            retries=spec.get("retries", 0),
            ttl=spec.get("ttl"),
            backoff=spec.get("backoff"),
            priority=spec.get("priority", 5),
            delay=spec.get("delay"),
            job_id=spec.get("job_id"),
            timeout=spec.get("timeout"),
        )

    def _after_store(self, job: Job, reply: EnqueueReply, delay_s: float) -> None:
        job.enqueued_at = reply.enqueued_at
        job.eligible_at = reply.eligible_at
        if reply.duplicate:
            if settings.on_duplicate == "raise":
                raise DuplicateJob(job.id, reply.state)
            emit_job_event("job:duplicated", job, attempt=0)
            return
        if delay_s > 0:
            emit_job_event("job:delayed", job, attempt=0, delay_s=delay_s)
        else:
            emit_job_event("job:enqueued", job, attempt=0)

    # -- queue control -------------------------------------------------------------------------------
    async def pause(self) -> None:
        """Stop workers from claiming jobs of this queue (running jobs finish)."""
        with bus.operation(Operation("pause", self.name, **server_fields(self.backend))):
            await self.backend.pause(self.name)
        bus.emit(LifecycleEvent("queue:paused", time.time(), queue=self.name))

    async def resume(self) -> None:
        """Let workers claim again; idle workers wake at once."""
        with bus.operation(Operation("resume", self.name, **server_fields(self.backend))):
            await self.backend.resume(self.name)
        bus.emit(LifecycleEvent("queue:resumed", time.time(), queue=self.name))

    async def is_paused(self) -> bool:
        """Whether the queue is paused."""
        return await self.backend.is_queue_paused(self.name)

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job: a queued one never runs; a running one is stopped at its next ``await``.

        Returns True when the job was cancelled or its cancellation was requested, False when it
        had already finished or does not exist.
        """
        status = await self.backend.cancel(self.name, check_job_id(job_id))
        if status is CancelStatus.CANCELLED:
            raw = await self.backend.get_job(self.name, job_id)
            if raw is not None and "payload_error" not in raw:
                # The transition is immediate, so the event is emitted here rather than at a pickup
                # that will never happen (a delayed job could be due in days).
                job = Job.from_dict(raw)
                emit_job_event("job:cancelled", job, reason="queued", finished_at=job.finished_at)
        return status in {CancelStatus.CANCELLED, CancelStatus.RUNNING}

    # -- inspection and admin ------------------------------------------------------------------------
    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The stored job (envelope, state, counters, result, error), or ``None``."""
        return await self.backend.get_job(self.name, job_id)

    async def get_job_state(self, job_id: str) -> str | None:
        """The job's state (``waiting``, ``delayed``, ``active``, ``completed``, ``failed``, ...)."""
        raw = await self.get_job(job_id)
        return None if raw is None else str(raw.get("state"))

    async def get_job_result(self, job_id: str) -> Any:  # noqa: ANN401 - whatever the handler returned
        """The result of a completed job (``None`` otherwise)."""
        raw = await self.get_job(job_id)
        if raw is None or raw.get("state") != JobState.COMPLETED.value:
            return None
        return raw.get("result")

    async def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return await self.backend.counts(self.name)

    async def list_jobs(self, state: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """A page of jobs in ``state``."""
        return await self.backend.list_jobs(self.name, JobState(state).value, offset, limit)

    async def dlq(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered jobs, newest first; each has ``dlq_reason`` and ``error``."""
        return await self.backend.list_dlq(self.name, offset, limit)

    async def retry_job(self, job_id: str) -> bool:
        """Move a dead-lettered job back to ``waiting`` with fresh retries."""
        return await self.backend.retry_dead(self.name, job_id)

    async def purge_dlq(self) -> int:
        """Delete every dead-lettered job; return how many."""
        return await self.backend.purge_dlq(self.name)

    async def clean(self, state: str, older_than: float = 0.0) -> int:
        """Delete finished jobs in ``state`` older than ``older_than`` seconds; return how many."""
        return await self.backend.clean(self.name, JobState(state).value, older_than)

    async def stats(self) -> QueueStats:
        """Depth by state, the oldest ready job's age and the paused flag."""
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
        return await _repeatables.upsert_repeatable(
            self.backend,
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
            job_options=job_options,
        )

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

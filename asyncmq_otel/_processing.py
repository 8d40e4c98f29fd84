"""Job processing: ``process_job`` (claim loop), ``_run_with_limits``, ``handle_job`` (one job's lifecycle).

``process_job`` reserves capacity (an anyio ``CapacityLimiter``) before it claims, so nothing
is fetched beyond what can run, and waits on the backend (never a sleep) when the queue is
empty or paused. ``handle_job`` runs the pickup checks (cancelled, expired, not yet due,
unknown task), the handler, and exactly one outcome write, emitting each lifecycle event
once, after its write succeeded, in the task that runs the handler.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._lifecycle import emit_job_event, emit_job_fields
from .backends._default import default_backend
from .backends.base import Backend, ClaimReply, RawJob, SettleReply, SettleStatus
from .errors import (
    BackendOutOfMemory,
    BackendUnavailable,
    JobArgumentError,
    JobTimeout,
    MalformedJob,
    ResultSerializationError,
    ResultTooLarge,
    UnknownTask,
)
from .events import Operation, bus
from .jobs import Job, check_json, dumps, error_type_name
from .limiters import RateLimiter
from .settings import Settings, get_settings
from .tasks import TaskInfo, get_task

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["WorkerContext", "_run_with_limits", "handle_job", "process_job"]

_log = logging.getLogger("asyncmq_otel.worker")

MAX_CLAIM_BATCH = 32
_TASK_NAME = "asyncmq_otel.job"  # named up front: anyio would otherwise build a name for every job
_ERROR_MESSAGE_LIMIT = 2048
_EVENT_MESSAGE_LIMIT = 1024
_TRACEBACK_LIMIT = 16_384
_THROTTLE_EVENT_THRESHOLD = 0.001
_REQUEUE_BUDGET = 3.0
_NON_RETRYABLE: tuple[type[BaseException], ...] = (ResultSerializationError, ResultTooLarge)


@dataclass(slots=True)
class _Attempt:
    """A claimed job this worker holds: its lease token and, once started, its cancel scope."""

    queue: str
    job_id: str
    token: str
    scope: anyio.CancelScope | None = None
    reason: str | None = None  # why we cancelled it: "cancel", "lost" or "shutdown"
    started_monotonic: float | None = None

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


@dataclass(slots=True)
class WorkerContext:
    """What ``handle_job`` needs beyond the queue name: identity, limits, and the jobs in flight."""

    worker_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    group: str = "default"
    config: Settings = field(default_factory=get_settings)
    held: dict[tuple[str, str], _Attempt] = field(default_factory=dict)
    burst: bool = False
    requeue_failures: int = 0  # interrupted jobs this worker could not return within the budget
    server: dict[str, Any] = field(default_factory=dict)  # server.address / server.port for telemetry
    idle: anyio.Event | None = None
    handlers: anyio.abc.TaskGroup | None = None

    def hold(self, queue: str, raw_job: RawJob) -> _Attempt:
        attempt = _Attempt(queue, str(raw_job.get("id")), str(raw_job.get("token")))
        self.held[queue, attempt.job_id] = attempt
        return attempt

    def release(self, queue: str, job_id: str) -> None:
        self.held.pop((queue, job_id), None)
        if not self.held and self.idle is not None:
            self.idle.set()

    def running(self) -> int:
        """Handlers running right now (claimed jobs still in their pickup checks not included)."""
        return sum(1 for attempt in list(self.held.values()) if attempt.started_monotonic is not None)

    def leases(self) -> dict[str, dict[str, str]]:
        """Every lease this worker holds, by queue (the renewer thread reads a copy)."""
        out: dict[str, dict[str, str]] = {}
        for attempt in list(self.held.values()):
            out.setdefault(attempt.queue, {})[attempt.job_id] = attempt.token
        return out

    def oldest_running_age(self, queue: str) -> float:
        """Age in seconds of the oldest attempt running on ``queue`` (0 when idle)."""
        now = time.perf_counter()
        ages = [
            now - attempt.started_monotonic
            for attempt in list(self.held.values())
            if attempt.queue == queue and attempt.started_monotonic is not None
        ]
        return max(ages, default=0.0)


# -- the claim loop ----------------------------------------------------------------------------------
async def process_job(
    queue_name: str,
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None = None,
    backend: Backend | None = None,
    *,
    context: WorkerContext | None = None,
) -> None:
    """Claim jobs of ``queue_name`` as capacity allows and run each in its own task.

    Returns only in burst mode (``context.burst``), once nothing is ready, due or running;
    otherwise it runs until cancelled. Handlers are spawned into ``context.handlers`` when set
    (so a worker can stop claiming while they finish), else into a task group of its own.
    """
    backend = backend or default_backend()
    ctx = context or WorkerContext()
    if ctx.handlers is not None:
        await _claim_loop(queue_name, limiter, rate_limiter, backend, ctx, ctx.handlers)
        return
    async with anyio.create_task_group() as handlers:
        await _claim_loop(queue_name, limiter, rate_limiter, backend, ctx, handlers)


async def _claim_loop(
    queue_name: str,
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None,
    backend: Backend,
    ctx: WorkerContext,
    handlers: anyio.abc.TaskGroup,
) -> None:
    config = ctx.config
    # next_due: when the next delayed job is due (monotonic), from the last empty claim; a job delayed
    # since then pushed a wake token. wanted: the claim size; a short claim sets it to twice what it
    # found (a trickle of jobs then does not reserve and release 32 slots per claim), a full one doubles it.
    next_due: float | None = None
    wanted = MAX_CLAIM_BATCH
    while True:
        slots = await _reserve_slots(limiter, rate_limiter, wanted)
        try:
            reply = await backend.claim(queue_name, ctx.worker_id, len(slots), config.lease)
        except BaseException:
            for slot in slots:
                limiter.release_on_behalf_of(slot)
            raise
        if reply.jobs:
            _start_claimed(queue_name, reply, slots, limiter, rate_limiter, backend, ctx, handlers)
            await anyio.lowlevel.checkpoint()  # let the jobs start before this loop's next round trip
            if len(reply.jobs) == len(slots) or ctx.burst:
                wanted = min(wanted * 2, MAX_CLAIM_BATCH)
                continue  # more may be ready
            wanted = max(2 * len(reply.jobs), 2)
            # Fewer than asked for: nothing else was ready. Every job made ready or delayed from now
            # on pushes a wake token, so wait for one rather than claim again only to hear EMPTY.
            timeout = config.block_timeout
            if next_due is not None:
                timeout = min(timeout, next_due - time.monotonic())
            if timeout > 0:
                await backend.wait_for_work(queue_name, timeout)
            continue
        for slot in slots:
            limiter.release_on_behalf_of(slot)
        next_due = None if reply.paused or reply.next_due_in is None else time.monotonic() + reply.next_due_in
        if not await _wait_when_empty(backend, queue_name, ctx, reply):
            return


async def _wait_when_empty(backend: Backend, queue_name: str, ctx: WorkerContext, reply: ClaimReply) -> bool:
    """After an empty claim: wait for a wake token or the next due job; False when a burst is done."""
    timeout = ctx.config.block_timeout
    if not reply.paused and reply.next_due_in is not None:
        timeout = min(timeout, reply.next_due_in)
    if not ctx.burst:
        await backend.wait_for_work(queue_name, timeout)
        return True
    return await _burst_wait(
        backend, queue_name, ctx, timeout, finished=reply.paused or reply.next_due_in is None
    )


def _start_claimed(
    queue_name: str,
    reply: ClaimReply,
    slots: list[object],
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None,
    backend: Backend,
    ctx: WorkerContext,
    handlers: anyio.abc.TaskGroup,
) -> None:
    """Start a task per claimed job, each holding one of ``slots``; release the slots left over."""
    jobs = reply.jobs
    for raw_job, slot in zip(jobs, slots, strict=False):
        raw_job.setdefault("claimed_at", reply.now)
        attempt = ctx.hold(queue_name, raw_job)
        handlers.start_soon(
            functools.partial(
                _run_with_limits,
                queue_name,
                raw_job,
                limiter,
                rate_limiter,
                backend,
                context=ctx,
                reserved=slot,
                attempt=attempt,
            ),
            name=_TASK_NAME,
        )
    for slot in slots[len(jobs) :]:
        limiter.release_on_behalf_of(slot)


async def _reserve_slots(
    limiter: anyio.CapacityLimiter, rate_limiter: RateLimiter | None, wanted: int = MAX_CLAIM_BATCH
) -> list[object]:
    """Wait for one free slot, then take up to ``wanted`` as are free now (and as rate tokens allow)."""
    slots = [object()]
    try:  # no checkpoint when a slot is free: the claim's own round trip yields soon enough
        limiter.acquire_on_behalf_of_nowait(slots[0])
    except anyio.WouldBlock:
        await limiter.acquire_on_behalf_of(slots[0])
    if rate_limiter is not None:
        wanted = max(min(rate_limiter.available, wanted), 1)
    while len(slots) < wanted and limiter.available_tokens >= 1:
        slot = object()
        limiter.acquire_on_behalf_of_nowait(slot)
        slots.append(slot)
    return slots


async def _burst_wait(
    backend: Backend, queue: str, ctx: WorkerContext, timeout: float, *, finished: bool
) -> bool:
    """In burst mode: False once nothing is ready, due or running; else wait for the next change."""
    if ctx.held:
        # A running job may still retry, so wait for it rather than for a wake token.
        ctx.idle = anyio.Event()
        with anyio.move_on_after(timeout):
            await ctx.idle.wait()
        return True
    if finished:
        return False
    await backend.wait_for_work(queue, timeout)  # a delayed job is due within `timeout`
    return True


async def _run_with_limits(
    queue_name: str,
    raw_job: RawJob,
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None = None,
    backend: Backend | None = None,
    *,
    context: WorkerContext | None = None,
    reserved: object | None = None,
    attempt: _Attempt | None = None,
) -> None:
    """Hold a concurrency slot, wait for a rate token, then hand the job to :func:`handle_job`.

    ``reserved`` is a slot ``process_job`` already took on this job's behalf; without one, a
    slot is acquired here.
    """
    borrower = reserved if reserved is not None else object()
    backend = backend or default_backend()
    ctx = context or WorkerContext()
    holding = reserved is not None
    try:
        if not holding:
            await limiter.acquire_on_behalf_of(borrower)
            holding = True
        waited = 0.0
        attempt = attempt or ctx.held.get((queue_name, str(raw_job.get("id"))))
        if rate_limiter is not None:
            throttled = await _wait_for_rate_token(queue_name, raw_job, rate_limiter, backend, ctx, attempt)
            if throttled is None:
                return
            waited = throttled
        await handle_job(queue_name, raw_job, backend, context=ctx, ratelimit_wait_s=waited, attempt=attempt)
    finally:
        if holding:
            limiter.release_on_behalf_of(borrower)


async def _wait_for_rate_token(
    queue: str,
    raw_job: RawJob,
    rate_limiter: RateLimiter,
    backend: Backend,
    ctx: WorkerContext,
    attempt: _Attempt | None,
) -> float | None:
    """Wait for a rate token; return the wait (0.0 unless over 1 ms), or None if the job was given back."""
    throttle_started = time.time()
    try:
        with anyio.CancelScope() as wait_scope:
            if attempt is not None:  # a stop request cancels the wait through the attempt
                attempt.scope = wait_scope
                if attempt.reason is not None:
                    wait_scope.cancel()
            waited = await rate_limiter.acquire()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(_REQUEUE_BUDGET):
            await _give_back(backend, queue, raw_job, ctx)
        raise
    finally:
        if attempt is not None:
            attempt.scope = None
    if wait_scope.cancelled_caught:
        await _give_back(backend, queue, raw_job, ctx)
        return None
    if waited <= _THROTTLE_EVENT_THRESHOLD:
        return 0.0  # not throttled: §1.1 reports 0.0 unless the job was held over 1 ms
    if "payload_error" not in raw_job:
        _emit_throttled(raw_job, ctx, throttle_started, waited)
    return waited


async def _give_back(backend: Backend, queue: str, raw_job: RawJob, ctx: WorkerContext) -> None:
    """Return a claimed job that never started (the worker is stopping) to its place, attempt included.

    Doing it now, rather than leaving it to the reaper, costs the job no stall.
    """
    job_id = str(raw_job.get("id"))
    try:
        await backend.defer(queue, job_id, str(raw_job.get("token") or ""))
    finally:
        ctx.release(queue, job_id)


def server_fields(backend: object) -> dict[str, Any]:
    """``server_address``/``server_port`` of a networked backend (none for the in-memory one)."""
    address = getattr(backend, "server_address", None)
    if not address:
        return {}
    return {"server_address": str(address), "server_port": getattr(backend, "server_port", None)}


def _emit_throttled(raw_job: RawJob, ctx: WorkerContext | None, started: float, waited: float) -> None:
    try:
        job = Job.from_dict(raw_job)
    except MalformedJob:
        return
    extra = {} if ctx is None else {"worker_id": ctx.worker_id, "group": ctx.group, **ctx.server}
    emit_job_event("job:throttled", job, ratelimit_wait_s=waited, started_at=started, **extra)


# -- one job's lifecycle -----------------------------------------------------------------------------
async def handle_job(
    queue_name: str,
    raw_job: RawJob,
    backend: Backend | None = None,
    *,
    context: WorkerContext | None = None,
    ratelimit_wait_s: float = 0.0,
    attempt: _Attempt | None = None,
) -> None:
    """Run one claimed job through its lifecycle and settle it exactly once.

    Order: cancelled → ``job:cancelled``; TTL passed → DLQ ``expired``; ``delay_until`` in the
    future → back to delayed; unknown task → DLQ ``unknown_task``; else ``job:started``, the
    handler, then ``job:completed``, ``job:retried`` (with backoff) or ``job:failed`` (DLQ).
    """
    backend = backend or default_backend()
    ctx = context or WorkerContext()
    run = _JobRun(queue_name, raw_job, backend, ctx, ratelimit_wait_s, attempt)
    try:
        await run.execute()
    finally:
        ctx.release(queue_name, run.job_id)


class _JobRun:
    """The state of one pickup: kept on an object so each step stays a small method."""

    def __init__(
        self,
        queue: str,
        raw_job: RawJob,
        backend: Backend,
        ctx: WorkerContext,
        ratelimit_wait_s: float,
        attempt: _Attempt | None,
    ) -> None:
        self.queue = queue
        self.raw = raw_job
        self.backend = backend
        self.ctx = ctx
        self.ratelimit_wait_s = ratelimit_wait_s
        self.job_id = str(raw_job.get("id"))
        self.token = str(raw_job.get("token") or "")
        self.attempt = attempt or ctx.held.get((queue, self.job_id)) or ctx.hold(queue, raw_job)
        self.job: Job | None = None
        self.started_at: float | None = None
        self.started_mono: float | None = None
        self.wait_s: float | None = None

    def _fields(self, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - event fields
        fields: dict[str, Any] = {"worker_id": self.ctx.worker_id, "group": self.ctx.group, **self.ctx.server}
        if self.started_at is not None:
            fields.update(started_at=self.started_at, wait_s=self.wait_s, started_monotonic=self.started_mono)
        else:
            fields["ratelimit_wait_s"] = self.ratelimit_wait_s
        fields.update(extra)
        return fields

    def _finish_fields(self, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - event fields
        finished = time.time()
        duration = None if self.started_mono is None else time.perf_counter() - self.started_mono
        return self._fields(finished_at=finished, duration_s=duration, **extra)

    async def execute(self) -> None:
        try:
            job = Job.from_dict(self.raw) if "payload_error" not in self.raw else None
        except MalformedJob as exc:
            job = None
            self.raw["payload_error"] = str(exc)
        if job is None:
            await self._malformed()
            return
        self.job = job
        if job.cancel_requested or self.attempt.reason == "cancel":
            await self._settle_cancelled("queued")
            return
        if self.attempt.reason == "shutdown":  # stopped before it started: not an interruption
            await self._retrying(lambda: self.backend.defer(self.queue, job.id, self.token))
            return
        now = float(self.raw.get("claimed_at") or time.time())
        if job.expires_at is not None and now > job.expires_at:
            await self._dead_letter("expired", "expire", None)
            return
        if job.delay_until is not None and job.delay_until > now:
            await self._defer()
            return
        try:
            task = get_task(job.task)
        except UnknownTask as exc:
            await self._dead_letter("unknown_task", "dead_letter", exc)
            return
        await self._run(task)

    # -- pickup settles ------------------------------------------------------------------------------
    async def _malformed(self) -> None:
        task = self.raw.get("task")
        job = Job(
            id=self.job_id,
            task=task if isinstance(task, str) else "",
            queue=self.queue,
            attempts=int(self.raw.get("attempts") or 1),
        )
        self.job = job
        error = {"type": "malformed_payload", "message": str(self.raw.get("payload_error")), "traceback": ""}
        _log.error(
            "job.malformed_payload: job %s on %s cannot be decoded (%s); dead-lettered without running",
            self.job_id,
            self.queue,
            error["message"][:256],
        )
        await self._dead_letter("malformed_payload", "dead_letter", None, error=error)

    async def _dead_letter(
        self, reason: str, op: str, exc: BaseException | None, *, error: dict[str, Any] | None = None
    ) -> None:
        job = self._job()
        if error is None and exc is not None:
            error = _error_record(exc)
        reply = await self._write(
            op, lambda: self.backend.fail(self.queue, job.id, self.token, reason, error)
        )
        if not reply.ok:
            return
        job.attempts = int((reply.job or {}).get("attempts", job.attempts))
        if reason == "expired":
            emit_job_event("job:expired", job, **self._finish_fields(reason="expired"))
            return
        emit_job_event(
            "job:failed",
            job,
            **self._finish_fields(
                reason=reason,
                error_type=reason if exc is None or reason != "failed" else _error_type(exc),
                error_message=None if error is None else str(error.get("message", ""))[:_EVENT_MESSAGE_LIMIT],
                exception=exc if reason == "failed" else None,
            ),
        )

    async def _settle_cancelled(self, stage: str) -> None:
        job = self._job()
        reply = await self._write(
            "cancel", lambda: self.backend.settle_cancelled(self.queue, job.id, self.token)
        )
        if reply.ok:
            emit_job_event("job:cancelled", job, **self._finish_fields(reason=stage))

    async def _defer(self) -> None:
        job = self._job()
        reply = await self._retrying(lambda: self.backend.defer(self.queue, job.id, self.token))
        if reply.ok:
            delay = max((job.delay_until or 0.0) - time.time(), 0.0)
            emit_job_event(
                "job:delayed", job, attempt=max(job.attempts - 1, 0), delay_s=delay, **self._fields()
            )
        else:
            self._stale("defer", reply)

    # -- the attempt ---------------------------------------------------------------------------------
    async def _run(self, task: TaskInfo) -> None:
        job = self._job()
        self.started_at = time.time()
        self.started_mono = time.perf_counter()
        self.wait_s = max(self.started_at - job.eligible_at, 0.0) if job.eligible_at else 0.0
        self.attempt.started_monotonic = self.started_mono
        outcome: tuple[str, Any] = ("error", None)
        emit_job_fields("job:started", job, self._fields(ratelimit_wait_s=self.ratelimit_wait_s))
        try:
            with anyio.CancelScope() as scope:
                self.attempt.scope = scope
                if self.attempt.reason is not None:
                    scope.cancel()
                try:
                    result = await self._invoke(task)
                except Exception as exc:  # noqa: BLE001 - every handler error is an outcome of the attempt
                    outcome = ("error", exc)
                else:
                    outcome = ("ok", result)
            if scope.cancelled_caught or (self.attempt.reason is not None and outcome[0] != "ok"):
                await self._cancelled_by_us()
                return
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (the worker's task group): requeue, shielded, then propagate.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_REQUEUE_BUDGET):
                await self._requeue()
            raise
        finally:
            self.attempt.scope = None
        if outcome[0] == "ok":
            await self._complete(outcome[1])
        else:
            await self._failed(outcome[1])

    async def _invoke(self, task: TaskInfo) -> Any:  # noqa: ANN401 - whatever the handler returns
        job = self._job()
        timeout = task.timeout if task.timeout is not None else job.timeout
        sandboxed = self.ctx.config.sandbox_enabled
        if timeout is None and task.is_async and not task.progress and not sandboxed:
            return await task.func(*job.args, **job.kwargs)  # the common case, without the wrapping below
        kwargs = dict(job.kwargs)
        if task.progress:
            kwargs["report_progress"] = self._progress_reporter(task)
        if sandboxed:
            # The sandbox starts processes: load it only when enabled.
            sandbox = importlib.import_module("asyncmq_otel.sandbox")
            kwargs.pop("report_progress", None)
            on_progress = self._progress_reporter(task) if task.progress else None
            return await sandbox.run_handler(
                task.task_id,
                job.args,
                kwargs,
                timeout if timeout is not None else self.ctx.config.sandbox_default_timeout,
                on_progress=on_progress,
            )
        call: Callable[[], Awaitable[Any]]
        if task.is_async:
            call = functools.partial(task.func, *job.args, **kwargs)
        else:
            # Sync handlers run in a worker thread; on timeout the thread is abandoned (use the sandbox
            # when a stop must be hard).
            call = functools.partial(
                anyio.to_thread.run_sync,
                functools.partial(task.func, *job.args, **kwargs),
                abandon_on_cancel=True,
            )
        if timeout is None:
            return await call()
        try:
            with anyio.fail_after(timeout):
                return await call()
        except TimeoutError as exc:
            raise JobTimeout(f"task {task.task_id} ran past its {timeout:g}s timeout") from exc

    def _progress_reporter(self, task: TaskInfo) -> Callable[..., None]:
        job = self._job()
        handlers = self.ctx.handlers
        loop_thread = _current_thread_token()

        def emit(pct: float, data: Any = None) -> None:  # noqa: ANN401 - user data travels as is
            emit_job_event("job:progress", job, progress=float(pct), progress_data=data, **self._fields())
            if handlers is not None:
                handlers.start_soon(self.backend.report_progress, self.queue, job.id, self.token, float(pct))

        def report_progress(pct: float, data: Any = None) -> None:  # noqa: ANN401 - as above
            """Report the job's progress (0-100); emits ``job:progress``."""
            if _current_thread_token() == loop_thread:
                emit(pct, data)
            else:  # a sync handler in a worker thread: hop back to the loop
                anyio.from_thread.run_sync(emit, pct, data)

        _ = task
        return report_progress

    # -- outcomes ------------------------------------------------------------------------------------
    async def _complete(self, result: Any) -> None:  # noqa: ANN401 - the handler's result
        job = self._job()
        limit = self.ctx.config.max_result_bytes
        try:
            # None (most handlers) needs no walk: dumps(check_json(None)) is "null"
            encoded = "null" if result is None else dumps(check_json(result, "result"))
        except JobArgumentError as exc:
            await self._failed(
                ResultSerializationError(f"the handler ran, but its result is not JSON-serialisable: {exc}")
            )
            return
        size = 4 if result is None else len(encoded.encode("utf-8"))
        if size > limit:
            await self._failed(ResultTooLarge(size, limit))
            return
        # the stored job is not used here: ask for the smaller reply
        reply = await self._write(
            "ack", lambda: self.backend.complete(self.queue, job.id, self.token, encoded, want_job=False)
        )
        if reply.status is SettleStatus.TOO_LARGE:
            await self._failed(ResultTooLarge(size, limit))
            return
        if reply.ok:
            emit_job_fields("job:completed", job, self._finish_fields(result=result))

    async def _failed(self, exc: BaseException) -> None:
        job = self._job()
        exc = _unwrap(exc)
        if isinstance(exc, _NON_RETRYABLE) or job.retries >= job.max_retries:
            await self._dead_letter("failed", "dead_letter", exc)
            return
        backoff = job.next_retry_delay()
        error = _error_record(exc)
        operation = Operation("retry", self.queue, [job], **self.ctx.server)

        async def write() -> SettleReply:
            prev = (job.trace_context or {}).get("prev_attempt")
            return await self.backend.retry(self.queue, job.id, self.token, backoff, error, prev)

        reply = await self._write("retry", write, operation=operation)
        if not reply.ok:
            return
        stored = reply.job or {}
        job.eligible_at = float(stored.get("eligible_at") or time.time() + backoff)
        emit_job_event(
            "job:retried",
            job,
            **self._finish_fields(
                backoff_s=backoff,
                error_type=_error_type(exc),
                error_message=str(error["message"])[:_EVENT_MESSAGE_LIMIT],
                exception=exc,
            ),
        )

    async def _cancelled_by_us(self) -> None:
        reason = self.attempt.reason
        if reason == "cancel":
            await self._settle_cancelled("running")
        elif reason == "lost":
            _log.warning(
                "job.lease_lost: job %s on %s was reclaimed from worker %s; its handler was stopped",
                self.job_id,
                self.queue,
                self.ctx.worker_id,
            )
        else:
            await self._requeue()

    async def _requeue(self) -> None:
        job = self._job()
        max_interrupts = self.ctx.config.max_interrupts
        reply: SettleReply | None = None
        # Bounded (reliability §7: requeues within a 3 s budget); what is not returned by then is
        # counted, and the reaper recovers it as a stall after its lease.
        with anyio.move_on_after(_REQUEUE_BUDGET):
            reply = await self._write(
                "requeue", lambda: self.backend.requeue(self.queue, job.id, self.token, max_interrupts)
            )
        if reply is None:
            self.ctx.requeue_failures += 1
            return
        if not reply.ok:  # STALE or GONE: the job is no longer ours to return (another worker owns it)
            return
        stored = reply.job or {}
        if stored.get("state") == "failed":
            emit_job_event(
                "job:failed", job, **self._finish_fields(reason="interrupted", error_type="interrupted")
            )
        else:
            emit_job_event("job:interrupted", job, **self._finish_fields())

    # -- writes --------------------------------------------------------------------------------------
    async def _write(
        self, op: str, call: Callable[[], Awaitable[SettleReply]], *, operation: Operation | None = None
    ) -> SettleReply:
        """One outcome write, observed by telemetry, retried through backend outages."""
        if bus.observed:
            operation = operation or Operation(op, self.queue, [self._job()], **self.ctx.server)
            with bus.operation(operation):
                reply = await self._retrying(call)
                operation.outcome = reply.status.value
        else:
            reply = await self._retrying(call)
        if not reply.ok and reply.status is not SettleStatus.TOO_LARGE:
            self._stale(op, reply)
        return reply

    async def _retrying(self, call: Callable[[], Awaitable[SettleReply]]) -> SettleReply:
        delay = 0.05
        while True:
            try:
                # One call is shielded (bounded by the backend's own timeouts) so a stop request
                # cannot lose a finished job's outcome mid-write; the waits between retries are not.
                with anyio.CancelScope(shield=True):
                    return await call()
            except (BackendUnavailable, BackendOutOfMemory) as exc:
                # The handler's work is done; keep trying until the backend answers (or has memory
                # again). If our lease is reaped meanwhile the write comes back STALE: redelivered.
                _log.warning("job.settle_retry: %s (%s), retrying in %.2fs", type(exc).__name__, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _stale(self, op: str, reply: SettleReply) -> None:
        _log.warning(
            "job.stale_write: %s of job %s on %s by worker %s was rejected (%s; current owner %s, state %s)",
            op,
            self.job_id,
            self.queue,
            self.ctx.worker_id,
            reply.status.value,
            reply.owner,
            reply.state,
        )

    def _job(self) -> Job:
        if self.job is None:  # pragma: no cover - execute() sets it before any step runs
            raise RuntimeError("job not decoded yet")
        return self.job


def _current_thread_token() -> int:
    return threading.get_ident()


def _unwrap(exc: BaseException) -> BaseException:
    """An exception group that wraps a single error is unwrapped, so the real type shows."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_type(exc: BaseException) -> str:
    declared = getattr(exc, "error_type", None)  # a sandboxed error keeps its original type name
    return declared if isinstance(declared, str) and declared else error_type_name(exc)


def _error_record(exc: BaseException) -> dict[str, Any]:
    exc = _unwrap(exc)
    tb = getattr(exc, "traceback", None)
    if not isinstance(tb, str):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": _error_type(exc),
        "message": str(getattr(exc, "message", None) or exc)[:_ERROR_MESSAGE_LIMIT],
        "traceback": tb[-_TRACEBACK_LIMIT:],
    }

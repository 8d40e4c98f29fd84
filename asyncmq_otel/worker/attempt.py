"""One attempt of a claimed job: ``JobAttempt`` runs the pickup checks, the handler and its one outcome write.

Each lifecycle event is emitted once, after its write succeeded, in the task that runs the handler.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from .._dependencies import current_job
from .._lifecycle import emit_job_event, emit_job_fields
from ..backends.base import Backend, ClaimedJob, ErrorInfo, SettleReply, SettleStatus
from ..clock import fail_after
from ..errors import (
    BackendOutOfMemory,
    BackendUnavailable,
    JobArgumentError,
    JobTimeout,
    ResultSerializationError,
    ResultTooLarge,
    UnknownTask,
)
from ..events import Operation, bus
from ..jobs import Job, check_json, dumps, error_type_name
from ..tasks import TaskInfo, get_task
from .context import _REQUEUE_BUDGET, WorkerContext
from .progress import ProgressWriter

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["CancelReason", "JobAttempt"]

_log = logging.getLogger("asyncmq_otel.worker")

_ERROR_MESSAGE_LIMIT = 2048
_EVENT_MESSAGE_LIMIT = 1024
_TRACEBACK_LIMIT = 16_384
_NON_RETRYABLE: tuple[type[BaseException], ...] = (ResultSerializationError, ResultTooLarge)


class CancelReason(str, Enum):
    """Why a worker stopped an attempt (its values are the words the logs have always used)."""

    CANCEL = "cancel"
    """The job was cancelled (``Queue.cancel``): it settles as cancelled."""
    LOST = "lost"
    """Its lease was lost: another worker owns the job now, so this one writes nothing."""
    SHUTDOWN = "shutdown"
    """The worker is stopping: the job goes back to its queue."""


class JobAttempt:
    """One attempt of a claimed job, held by its worker from the claim to the one outcome write.

    The claim loop makes it when it claims the job, so the lease keeper renews its lease and a stop or
    cancel request reaches it even before its handler starts (``cancel``). Its state is kept on the
    object so each step stays a small method.

    Args:
        queue: the queue it was claimed from.
        claimed: the claimed job as the backend decoded it.
        backend: where its outcome is written.
        ctx: the worker holding it.
        ratelimit_wait_s: how long it waited for a rate token (set again before it starts).

    """

    def __init__(
        self,
        queue: str,
        claimed: ClaimedJob,
        backend: Backend,
        ctx: WorkerContext,
        ratelimit_wait_s: float = 0.0,
    ) -> None:
        self.queue = queue
        self.claimed = claimed
        self.backend = backend
        self.ctx = ctx
        self.ratelimit_wait_s = ratelimit_wait_s
        self.job_id = claimed.id
        self.token = claimed.token
        self.scope: anyio.CancelScope | None = None
        """The cancel scope of what it waits on or runs now (a rate token, the handler), if any."""
        self.cancel_reason: CancelReason | None = None
        """Why this worker stopped it; ``None`` unless stopped."""
        self.job: Job | None = None
        self.started_at: float | None = None
        self.started_monotonic: float | None = None
        self.wait_s: float | None = None

    def cancel(self, reason: CancelReason) -> None:
        """Stop it: its handler (or its wait) is cancelled now, or it never starts; the first reason stays."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def _fields(self, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - event fields
        fields: dict[str, Any] = {"worker_id": self.ctx.worker_id, "group": self.ctx.group, **self.ctx.server}
        if self.started_at is not None:
            fields.update(
                started_at=self.started_at, wait_s=self.wait_s, started_monotonic=self.started_monotonic
            )
        else:
            fields["ratelimit_wait_s"] = self.ratelimit_wait_s
        fields.update(extra)
        return fields

    def _finish_fields(self, **extra: Any) -> dict[str, Any]:  # noqa: ANN401 - event fields
        finished = self.ctx.clock.time()
        duration = None if self.started_monotonic is None else time.perf_counter() - self.started_monotonic
        return self._fields(finished_at=finished, duration_s=duration, **extra)

    async def perform(self) -> None:  # noqa: PLR0911 - one return per pickup outcome
        """The pickup checks, then the handler, then exactly one outcome write (each event once, after it)."""
        job = self.claimed.job
        if job is None:
            await self._malformed()
            return
        # Telemetry names the queue this worker claimed from: the stored envelope's own "queue"
        # field is data the producer wrote, and must not mint label values.
        job.queue = self.queue
        self.job = job
        if job.cancel_requested or self.cancel_reason is CancelReason.CANCEL:
            await self._settle_cancelled("queued")
            return
        if self.cancel_reason is CancelReason.SHUTDOWN:  # stopped before it started: not an interruption
            await self._retrying(lambda: self.backend.defer(self.queue, job.id, self.token))
            return
        now = self.claimed.claimed_at
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
        # options the job left unset are the task's
        task.fill_unset(job, retries_set=self.claimed.retries_set)
        if job.expires_at is not None and now > job.expires_at:  # by the task's ttl
            await self._dead_letter("expired", "expire", None)
            return
        await self._call_handler_and_settle(task)

    # -- pickup settles ------------------------------------------------------------------------------
    async def _malformed(self) -> None:
        claimed = self.claimed
        job = Job(id=self.job_id, task=claimed.task, queue=self.queue, attempts=claimed.attempts or 1)
        self.job = job
        error = ErrorInfo("malformed_payload", str(claimed.decode_error))
        _log.error(
            "job.malformed_payload: job %s on %s cannot be decoded (%s); dead-lettered without running",
            self.job_id,
            self.queue,
            error.message[:256],
        )
        await self._dead_letter("malformed_payload", "dead_letter", None, error=error)

    async def _dead_letter(
        self, reason: str, op: str, exc: BaseException | None, *, error: ErrorInfo | None = None
    ) -> None:
        job = self._job()
        if error is None and exc is not None:
            error = _error_record(exc)
        reply = await self._write(
            op, lambda: self.backend.fail(self.queue, job.id, self.token, reason, error)
        )
        if not reply.ok:
            return
        if reply.job is not None:
            job.attempts = reply.job.attempts
        if reason == "expired":
            emit_job_event("job:expired", job, clock=self.ctx.clock, **self._finish_fields(reason="expired"))
            return
        emit_job_event(
            "job:failed",
            job,
            clock=self.ctx.clock,
            **self._finish_fields(
                reason=reason,
                error_type=reason if exc is None or reason != "failed" else _error_type(exc),
                error_message=None if error is None else error.message[:_EVENT_MESSAGE_LIMIT],
                exception=exc if reason == "failed" else None,
            ),
        )

    async def _settle_cancelled(self, stage: str) -> None:
        job = self._job()
        reply = await self._write(
            "cancel", lambda: self.backend.settle_cancelled(self.queue, job.id, self.token)
        )
        if reply.ok:
            emit_job_event("job:cancelled", job, clock=self.ctx.clock, **self._finish_fields(reason=stage))

    async def _defer(self) -> None:
        job = self._job()
        reply = await self._retrying(lambda: self.backend.defer(self.queue, job.id, self.token))
        if reply.ok:
            delay = max((job.delay_until or 0.0) - self.ctx.clock.time(), 0.0)
            emit_job_event(
                "job:delayed",
                job,
                clock=self.ctx.clock,
                attempt_number=max(job.attempts - 1, 0),
                delay_s=delay,
                **self._fields(),
            )
        else:
            self._stale("defer", reply)

    # -- the handler ---------------------------------------------------------------------------------
    async def _call_handler_and_settle(self, task: TaskInfo) -> None:
        job = self._job()
        self.started_at = self.ctx.clock.time()
        self.started_monotonic = time.perf_counter()
        self.wait_s = max(self.started_at - job.eligible_at, 0.0) if job.eligible_at else 0.0
        outcome: tuple[str, Any] = ("error", None)
        fields = self._fields(ratelimit_wait_s=self.ratelimit_wait_s)
        parents = self.claimed.parents
        if parents and bus.traced:  # a child of a flow: its process span links to its parents'
            fields["parent_spans"] = await self._parent_spans(parents)
        emit_job_fields("job:started", job, fields, clock=self.ctx.clock)
        current_job.set((self.backend, self.claimed))  # for flows.parent_results(); one task per job
        try:
            with anyio.CancelScope() as scope:
                self.scope = scope
                if self.cancel_reason is not None:
                    scope.cancel()
                try:
                    result = await self._call_handler(task)
                except BaseException as exc:
                    # Whatever a handler raises fails its job only: SystemExit, KeyboardInterrupt
                    # or a CancelledError a library leaked must not stop the worker.
                    if not isinstance(exc, Exception) and _cancelled_here():
                        raise  # the worker's own cancellation (a stop, a lost lease, an outer scope)
                    outcome = ("error", exc.raised if isinstance(exc, _RaisedInThread) else exc)
                else:
                    outcome = ("ok", result)
            if scope.cancelled_caught or (self.cancel_reason is not None and outcome[0] != "ok"):
                await self._cancelled_by_us()
                return
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (the worker's task group): requeue, shielded, then propagate.
            # The budget is real time: it bounds real I/O while the process stops, whatever the clock.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_REQUEUE_BUDGET):
                await self._requeue()
            raise
        finally:
            self.scope = None
        if self._progress_writer is not None:
            # the last report must be stored before the settle, which ends the job's active state
            await self._progress_writer.flush(_REQUEUE_BUDGET)
        if outcome[0] == "ok":
            await self._complete(outcome[1])
        else:
            await self._failed(outcome[1])

    async def _call_handler(self, task: TaskInfo) -> Any:  # noqa: ANN401 - whatever the handler returns
        job = self._job()
        timeout = job.timeout  # the job's own, else the task's (fill_unset)
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
                functools.partial(_call_in_thread, task.func, *job.args, **kwargs),
                abandon_on_cancel=True,
            )
        if timeout is None:
            return await call()
        try:
            with fail_after(self.ctx.clock, timeout):  # on the worker's clock: tests advance past it
                return await call()
        except TimeoutError as exc:
            raise JobTimeout(f"task {task.task_id} ran past its {timeout:g}s timeout") from exc

    _progress_writer: ProgressWriter | None = None

    def _progress_reporter(self, task: TaskInfo) -> Callable[..., None]:
        job = self._job()
        handlers = self.ctx.handlers
        loop_thread = _current_thread_token()
        writer = self._progress_writer
        if writer is None and handlers is not None:
            writer = self._progress_writer = ProgressWriter(
                lambda pct: self.backend.report_progress(self.queue, job.id, self.token, pct),
                handlers.start_soon,
            )

        def emit(pct: float, data: Any = None) -> None:  # noqa: ANN401 - user data travels as is
            emit_job_event(
                "job:progress",
                job,
                clock=self.ctx.clock,
                progress=float(pct),
                progress_data=data,
                **self._fields(),
            )
            if writer is not None:
                writer.report(float(pct))

        def report_progress(pct: float, data: Any = None) -> None:  # noqa: ANN401 - as above
            """Report the job's progress (0-100); emits ``job:progress``."""
            if _current_thread_token() == loop_thread:
                emit(pct, data)
            else:  # a sync handler in a worker thread: hop back to the loop
                anyio.from_thread.run_sync(emit, pct, data)

        _ = task
        return report_progress

    async def _parent_spans(self, parents: tuple[tuple[str, str], ...]) -> tuple[str, ...] | None:
        """The spans the parents' completing attempts stored: one read, bounded, never failing the job."""
        read = getattr(self.backend, "last_spans", None)
        if read is None:
            return None
        found: list[str | None] = []
        # shielded: a stop arriving here must not skip the requeue of a job that has not started
        with anyio.CancelScope(shield=True), anyio.move_on_after(_REQUEUE_BUDGET):
            try:
                found = await read(list(parents))
            except Exception as exc:  # noqa: BLE001 - telemetry never changes a job's outcome
                _log.debug("job.parent_spans: cannot read the parents' spans of job %s: %r", self.job_id, exc)
        return tuple(span for span in found if span) or None

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
            "ack",
            lambda: (
                self.backend.complete(self.queue, job.id, self.token, encoded, want_job=False)
                if job.flow_id is None or _last_span(job) is None
                else self.backend.complete(  # a job of a flow keeps its span for its children's links
                    self.queue, job.id, self.token, encoded, want_job=False, last_span=_last_span(job)
                )
            ),
        )
        if reply.status is SettleStatus.TOO_LARGE:
            await self._failed(ResultTooLarge(size, limit))
            return
        if reply.ok:
            emit_job_fields("job:completed", job, self._finish_fields(result=result), clock=self.ctx.clock)

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
        stored_at = 0.0 if reply.job is None else reply.job.eligible_at
        job.eligible_at = stored_at or self.ctx.clock.time() + backoff
        emit_job_event(
            "job:retried",
            job,
            clock=self.ctx.clock,
            **self._finish_fields(
                backoff_s=backoff,
                error_type=_error_type(exc),
                error_message=error.message[:_EVENT_MESSAGE_LIMIT],
                exception=exc,
            ),
        )

    async def _cancelled_by_us(self) -> None:
        reason = self.cancel_reason
        if reason is CancelReason.CANCEL:
            await self._settle_cancelled("running")
        elif reason is CancelReason.LOST:
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
        # Bounded (graceful shutdown requeues within a 3 s budget); what is not returned by then is
        # counted, and the reaper recovers it as a stall after its lease. Real time, like every
        # budget of a stopping process.
        with anyio.move_on_after(_REQUEUE_BUDGET):
            reply = await self._write(
                "requeue", lambda: self.backend.requeue(self.queue, job.id, self.token, max_interrupts)
            )
        if reply is None:
            self.ctx.requeue_failures += 1
            return
        if not reply.ok:  # STALE or GONE: the job is no longer ours to return (another worker owns it)
            return
        if reply.job is not None and reply.job.state == "failed":
            emit_job_event(
                "job:failed",
                job,
                clock=self.ctx.clock,
                **self._finish_fields(reason="interrupted", error_type="interrupted"),
            )
        else:
            emit_job_event("job:interrupted", job, clock=self.ctx.clock, **self._finish_fields())

    # -- writes --------------------------------------------------------------------------------------
    async def _write(
        self, op: str, call: Callable[[], Awaitable[SettleReply]], *, operation: Operation | None = None
    ) -> SettleReply:
        """One outcome write, observed by telemetry, retried through backend outages."""
        if bus.observed:
            with bus.write(op, self.queue, [self._job()], self.ctx.server, operation) as observed:
                reply = await self._retrying(call)
                observed.outcome = reply.status.value
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
                # Real time, not the worker's clock: a backend outage ends in real time.
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
        if self.job is None:  # pragma: no cover - perform() sets it before any step runs
            raise RuntimeError("job not decoded yet")
        return self.job


def _current_thread_token() -> int:
    return threading.get_ident()


class _RaisedInThread(Exception):
    """Carries a sync handler's ``BaseException`` (``SystemExit``, ``GeneratorExit``...) back to the loop.

    Delivered as itself, asyncio would throw it into the job's task: a ``GeneratorExit`` thrown
    into a coroutine closes it instead of reaching the ``except`` that fails the job.
    """

    def __init__(self, raised: BaseException) -> None:
        super().__init__(raised)
        self.raised = raised


def _call_in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - the handler's own
    try:
        return func(*args, **kwargs)
    except Exception:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to the loop as the job's failure
        raise _RaisedInThread(exc) from None


def _cancelled_here() -> bool:
    """Whether a cancel scope around the current task was really cancelled (or is past its deadline).

    A library may leak ``asyncio.CancelledError`` (or a handler raise ``SystemExit``) with no scope
    cancelled: that is the handler's failure, not a request to stop.
    """
    return anyio.current_effective_deadline() <= anyio.current_time()


def _unwrap(exc: BaseException) -> BaseException:
    """An exception group that wraps a single error is unwrapped, so the real type shows."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _error_type(exc: BaseException) -> str:
    declared = getattr(exc, "error_type", None)  # a sandboxed error keeps its original type name
    return declared if isinstance(declared, str) and declared else error_type_name(exc)


def _last_span(job: Job) -> str | None:
    """The span the trace adapter put on the job for the complete write (``None`` when unsampled)."""
    return None if job.trace_context is None else job.trace_context.get("last_span")


def _error_record(exc: BaseException) -> ErrorInfo:
    exc = _unwrap(exc)
    tb = getattr(exc, "traceback", None)
    if not isinstance(tb, str):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(
        type=_error_type(exc),
        message=str(getattr(exc, "message", None) or exc)[:_ERROR_MESSAGE_LIMIT],
        traceback=tb[-_TRACEBACK_LIMIT:],
    )

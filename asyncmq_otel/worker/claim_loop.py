"""The claim loop, a job's wait for its limits, and one job's lifecycle.

``claim_jobs`` (AsyncMQ's ``process_job``) is the claim loop, ``handle_within_limits`` (AsyncMQ's
``_run_with_limits``) holds a job's slot and rate token, and ``handle_job`` runs one job.

The claim loop reserves capacity (an anyio ``CapacityLimiter``) and, when rate-limited, a
token per job before it claims, so nothing is fetched beyond what can run, and waits on the
backend (never a sleep) when the queue is empty or paused. ``handle_job`` runs the pickup
checks (cancelled, expired, not yet due, unknown task), the handler, and exactly one outcome
write, emitting each lifecycle event once, after its write succeeded, in the task that runs
the handler.

One attempt itself is :class:`~asyncmq_otel.worker.attempt.JobAttempt`; ``WorkerContext`` lives in
``context`` and ``server_fields`` in ``_lifecycle``, both re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel

from .._lifecycle import emit_job_event, server_fields
from ..backends._default import default_backend
from ..backends.base import Backend, ClaimedJob, ClaimReply
from ..clock import Clock, move_on_after, system_clock
from ..limiters import RateLimiter
from ._queue_limit import THROTTLE_EVENT_THRESHOLD, QueueThrottle, Throttle
from .attempt import JobAttempt
from .context import _REQUEUE_BUDGET, WorkerContext

__all__ = [
    "WorkerContext",
    "_run_with_limits",
    "claim_jobs",
    "handle_job",
    "handle_within_limits",
    "process_job",
    "server_fields",
]

MAX_CLAIM_BATCH = 32
_TASK_NAME = "asyncmq_otel.job"  # named up front: anyio would otherwise build a name for every job


# -- the claim loop ----------------------------------------------------------------------------------
async def claim_jobs(
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


process_job = claim_jobs
"""AsyncMQ's name for the claim loop (:func:`claim_jobs`)."""


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
    queue_limit = QueueThrottle(config.block_timeout, ctx.clock)
    while True:
        slots, throttled = await _reserve_slots(limiter, rate_limiter, wanted, ctx.clock)
        reply = await _claim(queue_name, slots, limiter, rate_limiter, backend, ctx)
        if reply.jobs:
            throttled = queue_limit.claimed(throttled)
            _start_claimed(queue_name, reply, slots, limiter, backend, ctx, handlers, throttled)
            await anyio.lowlevel.checkpoint()  # let the jobs start before this loop's next round trip
            if reply.throttled_for is not None:  # the queue's shared rate limit cut the claim short
                await queue_limit.wait(reply.throttled_for)
                continue
            if len(reply.jobs) == len(slots) or ctx.burst:
                wanted = min(wanted * 2, MAX_CLAIM_BATCH)
                continue  # more may be ready
            wanted = max(2 * len(reply.jobs), 2)
            # Fewer than asked for: nothing else was ready. Every job made ready or delayed from now
            # on pushes a wake token, so wait for one rather than claim again only to hear EMPTY.
            timeout = config.block_timeout
            if next_due is not None:
                timeout = min(timeout, next_due - ctx.clock.monotonic())
            if timeout > 0:
                await backend.wait_for_work(queue_name, timeout)
            continue
        for slot in slots:
            limiter.release_on_behalf_of(slot)
        if reply.throttled_for is not None:  # jobs are ready, but the queue's shared limit has no token
            await queue_limit.wait(reply.throttled_for)
            continue
        queue_limit.reset()
        due_in = None if reply.paused else reply.next_due_in
        next_due = None if due_in is None else ctx.clock.monotonic() + due_in
        if not await _wait_when_empty(backend, queue_name, ctx, reply):
            return


async def _claim(
    queue_name: str,
    slots: list[object],
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None,
    backend: Backend,
    ctx: WorkerContext,
) -> ClaimReply:
    """Claim one job per slot; the rate tokens of the slots left empty go back to the bucket."""
    try:
        reply = await backend.claim(queue_name, ctx.worker_id, len(slots), ctx.config.lease)
    except BaseException:
        for slot in slots:
            limiter.release_on_behalf_of(slot)
        if rate_limiter is not None:
            rate_limiter.give_back(len(slots))
        raise
    if rate_limiter is not None:
        rate_limiter.give_back(len(slots) - len(reply.jobs))
    return reply


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
    backend: Backend,
    ctx: WorkerContext,
    handlers: anyio.abc.TaskGroup,
    throttled: Throttle | None,
) -> None:
    """Start a task per claimed job, each holding one of ``slots`` (and its rate token, if limited).

    ``throttled`` is ``(started, waited, scope)`` when the claim waited for a rate token: the
    first job reports that wait. The slots left over are released.
    """
    jobs = reply.jobs
    for claimed, slot in zip(jobs, slots, strict=False):
        attempt = ctx.hold(JobAttempt(queue_name, claimed, backend, ctx))
        handlers.start_soon(
            functools.partial(
                handle_within_limits,
                queue_name,
                claimed,
                limiter,
                None,  # its rate token was taken before the claim
                backend,
                context=ctx,
                reserved=slot,
                attempt=attempt,
                throttled=throttled,
            ),
            name=_TASK_NAME,
        )
        throttled = None
    for slot in slots[len(jobs) :]:
        limiter.release_on_behalf_of(slot)


async def _reserve_slots(
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None,
    wanted: int = MAX_CLAIM_BATCH,
    clock: Clock = system_clock,
) -> tuple[list[object], Throttle | None]:
    """Wait for one free slot (and a rate token), then take up to ``wanted`` as slots and tokens allow now.

    Nothing is claimed beyond what can start: a job claimed without a token would sit ``active``,
    held from every other worker, until one came. One token is taken per slot returned; returns the
    slots and, when the first token was waited for over 1 ms, ``(started, waited)``.
    """
    slots = [object()]
    try:  # no checkpoint when a slot is free: the claim's own round trip yields soon enough
        limiter.acquire_on_behalf_of_nowait(slots[0])
    except anyio.WouldBlock:
        await limiter.acquire_on_behalf_of(slots[0])
    throttled: Throttle | None = None
    if rate_limiter is not None:
        if not rate_limiter.try_acquire():
            started = clock.time()
            try:
                waited = await rate_limiter.acquire()
            except BaseException:
                limiter.release_on_behalf_of(slots[0])
                raise
            if waited > THROTTLE_EVENT_THRESHOLD:
                throttled = (started, waited, "worker")
        wanted = 1 + rate_limiter.take_up_to(min(wanted - 1, int(limiter.available_tokens)))
    while len(slots) < wanted and limiter.available_tokens >= 1:
        slot = object()
        limiter.acquire_on_behalf_of_nowait(slot)
        slots.append(slot)
    if rate_limiter is not None:
        rate_limiter.give_back(wanted - len(slots))
    return slots, throttled


async def _burst_wait(
    backend: Backend, queue: str, ctx: WorkerContext, timeout: float, *, finished: bool
) -> bool:
    """In burst mode: False once nothing is ready, due or running; else wait for the next change."""
    if ctx.held:
        # A running job may still retry, so wait for it rather than for a wake token (every
        # queue's loop waits on the same event: the last job's end wakes them all).
        with move_on_after(ctx.clock, timeout):
            await ctx.idle_event().wait()
        return True
    if finished:
        return False
    await backend.wait_for_work(queue, timeout)  # a delayed job is due within `timeout`
    return True


async def handle_within_limits(
    queue_name: str,
    raw_job: ClaimedJob | Mapping[str, Any],
    limiter: anyio.CapacityLimiter,
    rate_limiter: RateLimiter | None = None,
    backend: Backend | None = None,
    *,
    context: WorkerContext | None = None,
    reserved: object | None = None,
    attempt: JobAttempt | None = None,
    throttled: Throttle | None = None,
) -> None:
    """Hold a concurrency slot, wait for a rate token, then hand the job to :func:`handle_job`.

    ``reserved`` is a slot the claim loop already took on this job's behalf; without one, a
    slot is acquired here. The claim loop takes the rate token before it claims (and passes no
    ``rate_limiter``); ``throttled`` is then its wait for it, ``(started, waited, scope)``. A stored
    job dict is decoded as :func:`handle_job` does.
    """
    borrower = reserved if reserved is not None else object()
    backend = backend or default_backend()
    ctx = context or WorkerContext()
    # raw_job keeps AsyncMQ's parameter name: it may be a stored job dict, decoded here
    claimed = (
        raw_job if isinstance(raw_job, ClaimedJob) else ClaimedJob.from_fields(raw_job, ctx.clock.time())
    )
    holding = reserved is not None
    try:
        if not holding:
            await limiter.acquire_on_behalf_of(borrower)
            holding = True
        waited = 0.0
        attempt = attempt or ctx.held.get((queue_name, claimed.id))
        if throttled is not None:
            waited = throttled[1]
            _emit_throttled(queue_name, claimed, ctx, *throttled)
        elif rate_limiter is not None:
            token_wait = await _wait_for_rate_token(queue_name, claimed, rate_limiter, backend, ctx, attempt)
            if token_wait is None:
                return
            waited = token_wait
        await handle_job(queue_name, claimed, backend, context=ctx, ratelimit_wait_s=waited, attempt=attempt)
    finally:
        if holding:
            limiter.release_on_behalf_of(borrower)


async def _wait_for_rate_token(
    queue: str,
    claimed: ClaimedJob,
    rate_limiter: RateLimiter,
    backend: Backend,
    ctx: WorkerContext,
    attempt: JobAttempt | None,
) -> float | None:
    """Wait for a rate token; return the wait (0.0 unless over 1 ms), or None if the job was given back."""
    throttle_started = ctx.clock.time()
    try:
        with anyio.CancelScope() as wait_scope:
            if attempt is not None:  # a stop request cancels the wait through the attempt
                attempt.scope = wait_scope
                if attempt.cancel_reason is not None:
                    wait_scope.cancel()
            waited = await rate_limiter.acquire()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(_REQUEUE_BUDGET):
            await _give_back(backend, queue, claimed, ctx)
        raise
    finally:
        if attempt is not None:
            attempt.scope = None
    if wait_scope.cancelled_caught:
        await _give_back(backend, queue, claimed, ctx)
        return None
    if waited <= THROTTLE_EVENT_THRESHOLD:
        return 0.0  # not throttled: events report 0.0 unless the job was held over 1 ms
    _emit_throttled(queue, claimed, ctx, throttle_started, waited, "worker")
    return waited


async def _give_back(backend: Backend, queue: str, claimed: ClaimedJob, ctx: WorkerContext) -> None:
    """Return a claimed job that never started (the worker is stopping) to its place, attempt included.

    Doing it now, rather than leaving it to the reaper, costs the job no stall.
    """
    job_id = claimed.id
    try:
        await backend.defer(queue, job_id, claimed.token)
    finally:
        ctx.release(queue, job_id)


def _emit_throttled(
    queue: str, claimed: ClaimedJob, ctx: WorkerContext | None, started: float, waited: float, scope: str
) -> None:
    job = claimed.job
    if job is None:  # a malformed job has no event until it is dead-lettered
        return
    job.queue = queue  # the claimed queue, not the envelope's field (labels come from the claim)
    extra = {} if ctx is None else {"worker_id": ctx.worker_id, "group": ctx.group, **ctx.server}
    clock = system_clock if ctx is None else ctx.clock
    emit_job_event(
        "job:throttled", job, clock=clock, ratelimit_wait_s=waited, started_at=started, scope=scope, **extra
    )


_run_with_limits = handle_within_limits
"""AsyncMQ's name for :func:`handle_within_limits`."""


# -- one job's lifecycle -----------------------------------------------------------------------------
async def handle_job(
    queue_name: str,
    raw_job: ClaimedJob | Mapping[str, Any],
    backend: Backend | None = None,
    *,
    context: WorkerContext | None = None,
    ratelimit_wait_s: float = 0.0,
    attempt: JobAttempt | None = None,
) -> None:
    """Run one claimed job through its lifecycle and settle it exactly once.

    Order: cancelled → ``job:cancelled``; TTL passed → DLQ ``expired``; ``delay_until`` in the
    future → back to delayed; unknown task → DLQ ``unknown_task``; else ``job:started``, the
    handler, then ``job:completed``, ``job:retried`` (with backoff) or ``job:failed`` (DLQ).
    ``raw_job`` is a job of a :class:`ClaimReply`; a stored job dict (as AsyncMQ passes it, with its
    ``token``) is decoded first, claimed now.
    """
    backend = backend or default_backend()
    ctx = context or WorkerContext()
    claimed = (
        raw_job if isinstance(raw_job, ClaimedJob) else ClaimedJob.from_fields(raw_job, ctx.clock.time())
    )
    attempt = (
        attempt
        or ctx.held.get((queue_name, claimed.id))
        or ctx.hold(JobAttempt(queue_name, claimed, backend, ctx))
    )
    attempt.ratelimit_wait_s = ratelimit_wait_s
    try:
        await attempt.perform()
    finally:
        ctx.release(queue_name, attempt.job_id)

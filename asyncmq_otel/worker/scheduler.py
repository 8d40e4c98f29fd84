"""The worker's scheduler service: sleeps until the earliest due schedule, then fires it.

Every worker runs one; none leads. A fire is one atomic backend call that succeeds for the first
caller with the stored due time, so any number of schedulers make exactly one job per tick. Between
ticks the scheduler sleeps on its clock: an idle fleet sends nothing. Schedules upserted by other
processes are seen within ``max_sleep`` (the memory backend wakes the scheduler at once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread

from .._lifecycle import emit_job_event, server_fields
from ..backends.base import Backend, EnqueueItem, FireReply
from ..backends.capabilities import ScheduleStore
from ..clock import Clock, system_clock
from ..errors import AsyncMQError
from ..events import Operation, bus
from ..jobs import Job, encode_payload
from ..schedules import ScheduleRecord, plan_fire, schedule_job
from ..settings import get_settings

__all__ = ["Fired", "Scheduler"]

_log = logging.getLogger("asyncmq_otel.worker")

_PEEK_LIMIT = 100  # due schedules read per round trip
_ROUNDS = 5  # peeks per queue per round: fire, then read the next due time again
_MIN_PAUSE = 0.01  # seconds: the floor of a sleep when a due schedule could not be fired
_BACKOFF_CAP = 2.0
_HOLD_BROKEN = 60.0  # seconds a schedule whose fire raised (not a backend error) is left alone


@dataclass(frozen=True, slots=True)
class Fired:
    """One successful fire: the schedule, the due times fired and the jobs stored."""

    queue: str
    key: str
    dues: list[int]
    stored: list[str]
    duplicates: list[str]
    skipped: int
    fired_ms: int
    next_due_ms: int
    jobs: list[Job] = field(default_factory=list)


class Scheduler:
    """Fires the due schedules of ``queues`` on ``backend`` and sleeps until the next one.

    Args:
        backend: a backend with the :class:`ScheduleStore` capability.
        queues: the queues whose schedules this scheduler fires.
        clock: the clock to sleep on (a FakeClock in tests).
        max_sleep: the longest sleep, so schedules upserted by another process are seen.
        worker_id: named in log lines.
        on_fired: called after every successful fire (tests and telemetry).

    """

    def __init__(
        self,
        backend: Backend,
        queues: Sequence[str],
        *,
        clock: Clock = system_clock,
        max_sleep: float = 30.0,
        worker_id: str = "",
        on_fired: Callable[[Fired], None] | None = None,
    ) -> None:
        if not isinstance(backend, ScheduleStore):
            raise TypeError(f"{backend!r} does not store schedules")
        if not max_sleep > 0:
            raise ValueError(f"max_sleep must be > 0, not {max_sleep!r}")
        self.backend = backend
        self.store: ScheduleStore = backend
        self.queues = list(queues)
        self.clock = clock
        self.max_sleep = max_sleep
        self.worker_id = worker_id
        self.on_fired = on_fired
        self.fired: int = 0
        self.rounds: int = 0
        self._wake = anyio.Event()
        self._loop_thread = threading.get_ident()
        self._token: Any = None
        self._held_until: dict[tuple[str, str], float] = {}  # broken schedules, monotonic time

    def wake(self) -> None:
        """Re-read the schedules now (a schedule was upserted, paused or resumed)."""
        if threading.get_ident() == self._loop_thread or self._token is None:
            self._wake.set()
        else:
            anyio.from_thread.run_sync(self._wake.set, token=self._token)

    async def run(self) -> None:
        """Fire and sleep until cancelled; backend errors are logged and retried with backoff."""
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        watch = getattr(self.backend, "watch_schedules", None)
        stop = watch(self.wake) if callable(watch) else None
        failures = 0
        try:
            while True:
                try:
                    delay = await self.run_once()
                except (AsyncMQError, OSError) as exc:
                    failures += 1
                    delay = min(0.05 * 2**failures, _BACKOFF_CAP)
                    if failures == 1:
                        _log.warning("scheduler.backend_error: %s: %s (retrying)", type(exc).__name__, exc)
                else:
                    if failures:
                        _log.info("scheduler.recovered after %d failed rounds", failures)
                    failures = 0
                await self._sleep(self.max_sleep if delay is None else min(delay, self.max_sleep))
        finally:
            if callable(stop):
                stop()

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake
        if wake.is_set():
            self._wake = anyio.Event()
            await anyio.lowlevel.checkpoint()
            return
        async with anyio.create_task_group() as group:

            async def sleeper() -> None:
                await self.clock.sleep(seconds)
                group.cancel_scope.cancel()

            async def waker() -> None:
                await wake.wait()
                group.cancel_scope.cancel()

            group.start_soon(sleeper)
            group.start_soon(waker)
        if wake.is_set():
            self._wake = anyio.Event()

    async def run_once(self) -> float | None:
        """Fire every due schedule; return seconds until the next due one (None: no schedule)."""
        self.rounds += 1
        delay: float | None = None
        for queue in self.queues:
            now, earliest = 0, None
            due: list[ScheduleRecord] = []
            for _ in range(_ROUNDS):
                now, due, earliest = await self.store.schedule_peek(queue, _PEEK_LIMIT)
                due = [record for record in due if not self._held(queue, record.spec.key)]
                if not due:
                    break
                for record in due:
                    await self._fire_isolated(queue, record, now)
            if earliest is None:
                continue
            wait = max((earliest - now) / 1000, 0.0)
            if due:  # still due after every round (the backend said not yet): do not spin
                wait = max(wait, _MIN_PAUSE)
            elif wait == 0.0 and self._held_until:  # only held schedules are due: wake when one is free
                wait = max(min(self._held_until.values()) - self.clock.monotonic(), _MIN_PAUSE)
            delay = wait if delay is None else min(delay, wait)
        return delay

    def _held(self, queue: str, key: str) -> bool:
        until = self._held_until.get((queue, key))
        if until is None:
            return False
        if self.clock.monotonic() >= until:
            del self._held_until[queue, key]
            return False
        return True

    async def _fire_isolated(self, queue: str, record: ScheduleRecord, now_ms: int) -> None:
        """Fire one schedule; a schedule that breaks is held back for a while, never the scheduler.

        Backend errors pass (the loop backs off for every schedule); anything else is this
        schedule's own fault (a bug, a definition the cron library cannot evaluate) and is logged.
        """
        try:
            await self.fire(queue, record, now_ms)
        except (AsyncMQError, OSError):
            raise
        except Exception:  # noqa: BLE001 - isolation boundary: one schedule never stops the others
            key = record.spec.key
            self._held_until[queue, key] = self.clock.monotonic() + _HOLD_BROKEN
            _log.exception(
                "schedule.fire_failed: %s on queue %s (held back for %ss)", key, queue, _HOLD_BROKEN
            )

    async def fire(self, queue: str, record: ScheduleRecord, now_ms: int) -> FireReply | None:
        """Fire one schedule as its catch-up policy says; None when it is not due at ``now_ms``."""
        plan = plan_fire(record, now_ms)
        if plan is None:
            return None
        spec = record.spec
        jobs = [schedule_job(spec, due) for due in plan.dues]
        if jobs and bus.observed:
            # observers set each job's trace context when the operation starts: encode after that
            operation = Operation("send", queue, jobs, bulk=len(jobs) > 1, **server_fields(self.backend))
            with bus.operation(operation):
                reply = await self._fire(queue, record, plan.dues, jobs, plan.next_due_ms)
        else:
            reply = await self._fire(queue, record, plan.dues, jobs, plan.next_due_ms)
        if reply.status != "OK":
            return reply
        self._after_fire(queue, spec.key, plan.dues, jobs, reply, plan.skipped, plan.next_due_ms)
        return reply

    async def _fire(
        self, queue: str, record: ScheduleRecord, dues: list[int], jobs: list[Job], next_due_ms: int
    ) -> FireReply:
        limit = get_settings().max_payload_bytes
        items = [
            (
                due,
                EnqueueItem(
                    job.id, encode_payload(job.envelope(), limit), priority=job.priority, ttl=job.ttl
                ),
            )
            for due, job in zip(dues, jobs, strict=True)
        ]
        return await self.store.schedule_fire(
            queue, record.spec.key, record.rev, record.next_due_ms, items, next_due_ms
        )

    def _after_fire(
        self,
        queue: str,
        key: str,
        dues: list[int],
        jobs: list[Job],
        reply: FireReply,
        skipped: int,
        next_due_ms: int,
    ) -> None:
        stored = set(reply.stored)
        for job in jobs:
            job.enqueued_at = job.eligible_at = reply.now_ms / 1000
            if job.id in stored:
                emit_job_event("job:enqueued", job, attempt_number=0, clock=self.clock)
                # fire time and due time are both backend time, so the lag ignores host clock skew
                emit_job_event(
                    "schedule:fired",
                    job,
                    attempt_number=0,
                    clock=self.clock,
                    worker_id=self.worker_id or None,
                )
            else:
                emit_job_event("job:duplicated", job, attempt_number=0, clock=self.clock)
        if skipped:
            _log.info(
                "schedule.skipped: %s on queue %s skipped %d missed ticks (catch_up)", key, queue, skipped
            )
        self.fired += len(stored)
        if self.on_fired is not None:
            self.on_fired(
                Fired(
                    queue,
                    key,
                    dues,
                    list(reply.stored),
                    list(reply.duplicates),
                    skipped,
                    reply.now_ms,
                    next_due_ms,
                    jobs,
                )
            )


async def run_scheduler(
    backend: Backend, queues: Sequence[str], worker_id: str, clock: Clock = system_clock
) -> None:
    """The worker's service: upsert the schedules declared for ``queues``, then fire them forever.

    A backend without schedules runs no scheduler. Backend errors at start-up are retried with
    backoff like the rest of the loop (an unreachable Redis never takes the worker down).
    """
    if not isinstance(backend, ScheduleStore):
        return
    from .._repeatables import upsert_declared  # noqa: PLC0415 - _repeatables imports the task registry

    failures = 0
    keys: list[str] = []
    while True:
        try:
            keys = await upsert_declared(backend, queues)
        except (AsyncMQError, OSError) as exc:
            failures += 1
            if failures == 1:
                _log.warning("scheduler.upsert_failed: %s: %s (retrying)", type(exc).__name__, exc)
            await clock.sleep(min(0.05 * 2**failures, _BACKOFF_CAP))
        else:
            break
    if keys:
        _log.info("scheduler.declared: %s", ", ".join(keys))
    await Scheduler(backend, queues, clock=clock, worker_id=worker_id).run()

"""The schedule API that :class:`~asyncmq_otel.queues.Queue` delegates to (AsyncMQ's names).

Every function validates before it writes, computes due times from the backend's clock, and lets
the backend store the result in one atomic call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from .backends.base import Backend
from .backends.capabilities import ScheduleStore
from .errors import ConfigError, InvalidSchedule, ScheduleNotFound
from .schedules import ScheduleRecord, ScheduleSpec, check_schedule_key
from .tasks import TASK_REGISTRY

__all__ = [
    "declared_schedules",
    "list_repeatables",
    "pause_repeatable",
    "remove_repeatable",
    "resume_repeatable",
    "schedule_store",
    "upsert_declared",
    "upsert_repeatable",
]


def schedule_store(backend: Backend) -> ScheduleStore:
    """The backend as a :class:`ScheduleStore`, or :class:`ConfigError` when it has no schedules."""
    if not isinstance(backend, ScheduleStore):
        raise ConfigError(f"{backend!r} does not store schedules (it lacks the ScheduleStore methods)")
    return backend


def _not_found(queue: str, key: str) -> ScheduleNotFound:
    return ScheduleNotFound(f"no schedule {key!r} on queue {queue!r}")


async def backend_now_ms(backend: Backend) -> int:
    """The backend's clock (Redis ``TIME``) in whole milliseconds."""
    return math.floor(await backend.now() * 1000)


async def upsert_repeatable(backend: Backend, spec: ScheduleSpec) -> str:
    """Store (or redefine) a built schedule and return its key; the same definition twice changes nothing."""
    store = schedule_store(backend)
    await store.schedule_upsert(spec.queue, ScheduleRecord.new(spec, await backend_now_ms(backend)))
    return spec.key


async def remove_repeatable(backend: Backend, queue: str, key: str) -> None:
    """Delete a schedule (jobs it fired stay); :class:`ScheduleNotFound` when absent."""
    if not await schedule_store(backend).schedule_remove(queue, check_schedule_key(key)):
        raise _not_found(queue, key)


async def pause_repeatable(backend: Backend, queue: str, key: str) -> None:
    """Stop firing a schedule until it is resumed."""
    if not await schedule_store(backend).schedule_set_paused(
        queue, check_schedule_key(key), paused=True, next_due_ms=None
    ):
        raise _not_found(queue, key)


async def resume_repeatable(backend: Backend, queue: str, key: str) -> None:
    """Fire a paused schedule again from its next tick after now (ticks while paused are skipped)."""
    store = schedule_store(backend)
    record = await store.schedule_get(queue, check_schedule_key(key))
    if record is None:
        raise _not_found(queue, key)
    next_due = record.spec.next_after(await backend_now_ms(backend), record.anchor_ms)
    if not await store.schedule_set_paused(queue, key, paused=False, next_due_ms=next_due):
        raise _not_found(queue, key)


async def list_repeatables(backend: Backend, queue: str) -> list[dict[str, Any]]:
    """Every schedule of the queue: key, task, every/cron, timezone, next run, last run and job, paused."""
    return [record.to_dict() for record in await schedule_store(backend).schedule_list(queue)]


def declared_schedules(queues: Iterable[str]) -> list[ScheduleSpec]:
    """The schedules declared with ``@task(cron=...)`` or ``@task(every=...)`` for ``queues``."""
    wanted = set(queues)
    specs = []
    for info in TASK_REGISTRY.values():
        schedule: Callable[[], ScheduleSpec | None] | None = getattr(info, "schedule_spec", None)
        if info.queue in wanted and schedule is not None:
            spec = schedule()
            if spec is not None:
                specs.append(spec)
    return sorted(specs, key=lambda s: s.key)


async def upsert_declared(backend: Backend, queues: Iterable[str]) -> list[str]:
    """Upsert every declared schedule of ``queues`` (key = task name); the keys upserted."""
    specs = declared_schedules(queues)
    if not specs:
        return []
    store = schedule_store(backend)
    now = await backend_now_ms(backend)
    for spec in specs:
        if spec.key != spec.task:
            raise InvalidSchedule(f"a declared schedule's key is its task name, not {spec.key!r}")
        await store.schedule_upsert(spec.queue, ScheduleRecord.new(spec, now))
    return [spec.key for spec in specs]

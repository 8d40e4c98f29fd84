"""Schedules of :class:`InMemoryBackend`: the same transitions and replies as the Redis scripts.

Each call is synchronous under the store's lock, so a fire is as atomic as a Lua script.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .base import EnqueueItem, FireReply

if TYPE_CHECKING:
    from ..schedules import ScheduleRecord
    from ._memory_store import MemoryStore

__all__ = ["MemorySchedules"]


class MemorySchedules:
    """Schedules kept in a dict per queue; ``watch_schedules`` callbacks run on every change."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = store.lock
        self.clock = store.clock
        self._schedules: dict[str, dict[str, ScheduleRecord]] = {}
        self._schedule_watchers: list[Callable[[], None]] = []

    def watch_schedules(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change of a schedule; returns a function that stops it."""
        self._schedule_watchers.append(callback)

        def stop() -> None:
            if callback in self._schedule_watchers:
                self._schedule_watchers.remove(callback)

        return stop

    def _schedules_changed(self) -> None:
        for callback in list(self._schedule_watchers):
            callback()

    def _now_ms(self) -> int:
        return math.floor(self.clock() * 1000)

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store unless the same revision is stored; a redefinition keeps pause and last run."""
        with self._lock:
            stored = self._schedules.setdefault(queue, {})
            current = stored.get(record.spec.key)
            if current is not None and current.rev == record.rev:
                return False
            if current is not None:
                record = replace(
                    record,
                    paused=current.paused,
                    last_due_ms=current.last_due_ms,
                    last_job_id=current.last_job_id,
                    last_fired_ms=current.last_fired_ms,
                )
            stored[record.spec.key] = record
        self._schedules_changed()
        return True

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        with self._lock:
            return self._schedules.get(queue, {}).get(key)

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Soonest first, paused last."""
        with self._lock:
            records = list(self._schedules.get(queue, {}).values())
        return sorted(records, key=lambda r: (r.paused, r.next_due_ms, r.spec.key))

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule; False when absent."""
        with self._lock:
            removed = self._schedules.get(queue, {}).pop(key, None) is not None
        if removed:
            self._schedules_changed()
        return removed

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume from ``next_due_ms``."""
        with self._lock:
            stored = self._schedules.get(queue, {})
            current = stored.get(key)
            if current is None:
                return False
            changes: dict[str, Any] = {"paused": paused}
            if next_due_ms is not None:
                changes["next_due_ms"] = next_due_ms
            stored[key] = replace(current, **changes)
        self._schedules_changed()
        return True

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """Now, the due schedules (up to ``limit``) and the earliest next due time."""
        with self._lock:
            now = self._now_ms()
            active = [r for r in self._schedules.get(queue, {}).values() if not r.paused]
        active.sort(key=lambda r: r.next_due_ms)
        due = [r for r in active if r.next_due_ms <= now][:limit]
        return now, due, active[0].next_due_ms if active else None

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Store the tick's jobs and the next due time, if the schedule is still as read."""
        for _, item in jobs:
            self._store.check_size(item)
        with self._lock:
            now = self._now_ms()
            stored = self._schedules.get(queue, {})
            current = stored.get(key)
            if current is None:
                return FireReply("GONE", now)
            if current.paused:
                return FireReply("PAUSED", now)
            if current.rev != rev or current.next_due_ms != expected_due_ms:
                return FireReply("CHANGED", now)
            if any(due > now for due, _ in jobs) or expected_due_ms > now:
                return FireReply("NOT_DUE", now)
            state = self._store.queue(queue)
            fresh: list[str] = []
            duplicates: list[str] = []
            for _, item in jobs:
                reply = self._store.enqueue(state, item)
                (duplicates if reply.duplicate else fresh).append(item.job_id)
            changes: dict[str, Any] = {"next_due_ms": next_due_ms}
            if jobs:
                changes.update(last_due_ms=jobs[-1][0], last_job_id=jobs[-1][1].job_id, last_fired_ms=now)
            stored[key] = replace(current, **changes)
        return FireReply("OK", now, fresh, duplicates)

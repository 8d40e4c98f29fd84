"""Schedules of :class:`RedisBackend`: one ZSET of next due times and one HASH per schedule, per queue.

Keys: ``<prefix>:{<queue>}:schedules`` (key -> next due ms; ``inf`` while paused) and
``<prefix>:{<queue>}:schedule:<key>``, under the queue's hash tag like every other key, so the
scripts run on one cluster slot and are fenced on the queue's epoch.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, InvalidSchedule, PayloadTooLarge
from ...schedules import ScheduleRecord, ScheduleSpec, check_schedule_key
from ..base import EnqueueItem, FireReply
from . import _scripts
from ._connection import AsyncClient
from ._events import schedules_changed_message

if TYPE_CHECKING:
    from ._events import EventChannel
    from ._keys import QueueKeys
    from ._store import Store

__all__ = ["Schedules"]

_log = logging.getLogger("asyncmq_otel.backends.redis")


def _int(value: object) -> int | None:
    if value is None or value == b"":
        return None
    return int(float(_scripts.text(value)))


def _record(key: str, values: Sequence[Any]) -> ScheduleRecord | None:
    """A schedule from its HMGET values (in ``_FIELDS`` order).

    None for a damaged one, logged: it is skipped, never fired.
    """
    spec_text, rev, anchor, next_due, paused, last_due, last_job, last_fired = values
    if spec_text is None:
        return None
    try:
        spec = ScheduleSpec.from_json(spec_text)
        anchor_ms, next_due_ms = _int(anchor), _int(next_due)
    except (InvalidSchedule, ValueError) as exc:
        _log.warning("schedule.damaged: schedule %s cannot be read and is skipped: %s", key, exc)
        return None
    if anchor_ms is None or next_due_ms is None:
        _log.warning("schedule.damaged: schedule %s has no anchor or next due time and is skipped", key)
        return None
    return ScheduleRecord(
        spec=spec,
        rev=_scripts.text(rev),
        anchor_ms=anchor_ms,
        next_due_ms=next_due_ms,
        paused=paused == b"1",
        last_due_ms=_int(last_due),
        last_job_id=None if last_job is None else _scripts.text(last_job),
        last_fired_ms=_int(last_fired),
    )


_FIELDS = ("spec", "rev", "anchor", "next_due", "paused", "last_due", "last_job", "last_fired")


class Schedules:
    """The :class:`~asyncmq_otel.backends.capabilities.ScheduleStore` capability of ``RedisBackend``."""

    def __init__(self, store: Store, events: EventChannel) -> None:
        self._store = store
        self._events = events
        self.keys = store.keys
        self.connections = store.connections
        self._limits = store.limits
        self._hints = store.hints

    def watch_schedules(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change of a schedule, here or in another process.

        Returns a function that stops it. Other processes' changes arrive on the control channel,
        read in the event loop of this call.
        """
        self._hints.schedule_watchers.append(callback)
        self._hints.ensure_reader()

        def stop() -> None:
            if callback in self._hints.schedule_watchers:
                self._hints.schedule_watchers.remove(callback)

        return stop

    async def _schedules_changed(self, queue: str) -> None:
        """Tell this process's schedulers at once and the other processes' through the control channel."""
        self._hints.schedules_changed()
        try:
            await self._events.publish_event(
                schedules_changed_message(queue, self._store.origin), channel="control"
            )
        except (BackendError, OSError):  # best effort: their longest sleep still bounds how late they see it
            _log.warning("backend.schedules_changed_not_published: queue %s", queue, exc_info=True)

    def _schedule_keys(self, queue: str, key: str | None = None) -> tuple[QueueKeys, str, str]:
        keys = self.keys.queue(queue)
        schedule = "" if key is None else f"{keys.base}schedule:{check_schedule_key(key)}"
        return keys, keys.base + "schedules", schedule

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store unless the same revision is stored (``SAME``); True when written."""
        keys, index, schedule = self._schedule_keys(queue, record.spec.key)
        reply = await self._store.transition(
            keys,
            "schedule_upsert",
            [keys.meta, index, schedule],
            [record.spec.key, record.rev, record.spec.to_json(), record.anchor_ms, record.next_due_ms],
        )
        written = bool(reply[0] == b"OK")
        if written:
            await self._schedules_changed(queue)
        return written

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        keys, _, schedule = self._schedule_keys(queue, key)
        await self._store.epoch(keys)
        values = await self.connections.run(lambda client: client.hmget(schedule, _FIELDS))
        return _record(key, values)

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule, soonest first, paused last (one pipeline: the ZSET, then the hashes)."""
        keys, index, _ = self._schedule_keys(queue)
        await self._store.epoch(keys)
        names = [
            _scripts.text(k) for k in await self.connections.run(lambda client: client.zrange(index, 0, -1))
        ]

        async def read(client: AsyncClient) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.hmget(f"{keys.base}schedule:{name}", _FIELDS)
            return list(await pipe.execute())

        rows = await self.connections.run(read) if names else []
        return [r for r in (_record(n, v) for n, v in zip(names, rows, strict=True)) if r is not None]

    async def _control(self, queue: str, key: str, op: str, next_due_ms: int | None) -> bool:
        keys, index, schedule = self._schedule_keys(queue, key)
        reply = await self._store.transition(
            keys,
            "schedule_control",
            [keys.meta, index, schedule],
            [op, key, "" if next_due_ms is None else next_due_ms],
        )
        changed = bool(reply[0] == b"OK")
        if changed:
            await self._schedules_changed(queue)
        return changed

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule; False when absent."""
        return await self._control(queue, key, "remove", None)

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume from ``next_due_ms``."""
        if paused:
            return await self._control(queue, key, "pause", None)
        if next_due_ms is None:
            raise ValueError("resuming a schedule needs its next due time")
        return await self._control(queue, key, "resume", next_due_ms)

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """Redis ``TIME``, up to ``limit`` due schedules and the earliest next due time, in one call."""
        keys, index, _ = self._schedule_keys(queue)
        await self._store.epoch(keys)

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - a RESP reply
            return await _scripts.call(client, "schedule_peek", [index], [limit])

        now, earliest, rows = await self.connections.run(op)
        due = []
        for row in rows:
            name = _scripts.text(row[0])
            record = _record(name, row[1:])
            if record is not None:
                due.append(record)
        return int(now), due, _int(earliest) if earliest else None

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Fire: store the jobs and the next due time if the schedule is still as read (one script)."""
        keys, index, schedule = self._schedule_keys(queue, key)
        args: list[Any] = [
            self._limits.max_payload_bytes,
            key,
            rev,
            expected_due_ms,
            next_due_ms,
            uuid.uuid4().hex,
        ]
        job_keys = []
        for due, item in jobs:
            size = len(item.payload.encode("utf-8"))
            if size > self._limits.max_payload_bytes:
                raise PayloadTooLarge(size, self._limits.max_payload_bytes)
            ttl = "" if item.ttl is None else str(max(math.ceil(item.ttl * 1000), 1))
            priority = 5 if item.priority is None else item.priority
            args += [item.payload, f"{due},{priority},{ttl}"]
            job_keys.append(keys.job(item.job_id))
        reply = await self._store.transition(
            keys, "schedule_fire", [keys.meta, keys.ready, keys.signal, index, schedule, *job_keys], args
        )
        status = _scripts.text(reply[0])
        if status == "OK":
            return FireReply(
                "OK",
                int(reply[1]),
                [_scripts.text(i) for i in reply[2]],
                [_scripts.text(i) for i in reply[3]],
            )
        if status == "REPLAY":  # the first call's reply was lost: it stored what it could
            return FireReply("OK", int(reply[1]), [item.job_id for _, item in jobs])
        if status == "NOT_DUE":
            return FireReply("NOT_DUE", 0)
        if status == "TOO_LARGE":
            raise PayloadTooLarge(int(reply[2]), self._limits.max_payload_bytes)
        return FireReply(status, 0)

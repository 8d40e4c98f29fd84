"""Schedule metrics (fired, lag, next run, interval): the capped ``schedule`` label, the sampler's gauges.

The ``schedule`` label is bounded by what the code declares: keys of schedules declared with
``@task(cron=..., every=...)`` are always kept, and up to ``limit`` other keys per process (those
upserted through the API), first come first kept; any further key is ``_OTHER``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..tasks import TASK_REGISTRY
from .metrics import OTHER

if TYPE_CHECKING:
    from ..schedules import ScheduleRecord

__all__ = ["ScheduleGauges", "ScheduleLabels", "declared_schedule_keys", "schedule_labels"]

_STALE_INTERVALS = 3.0


def declared_schedule_keys(queue: str | None = None) -> list[str]:
    """Keys of the schedules declared in code (a declared schedule's key is its task id)."""
    return sorted(
        info.task_id
        for info in TASK_REGISTRY.values()
        if (info.cron is not None or info.every is not None) and (queue is None or info.queue == queue)
    )


class ScheduleLabels:
    """Maps a schedule key to its label value: itself while within the cap, else ``_OTHER``."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str | None) -> str:
        """The label value of ``key``."""
        if not key:
            return OTHER
        if key in self._seen:
            return key
        declared = key in TASK_REGISTRY and key in declared_schedule_keys()
        with self._lock:
            if declared or len(self._seen) < self.limit:
                self._seen.add(key)
                return key
        return OTHER


schedule_labels = ScheduleLabels()
"""The process's cap, shared by the counter, the histogram and the sampler's gauges."""


class ScheduleGauges:
    """The sampler's cache of schedule gauges (next run, interval); no I/O at collection."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, list[tuple[str, float, float]]]] = {}

    def update(self, queue: str, records: Sequence[ScheduleRecord]) -> None:
        """Store the active schedules of ``queue`` (paused ones export nothing: they never run)."""
        rows = []
        for record in records:
            if record.paused:
                continue
            due = record.next_due_ms
            gap = record.spec.next_after(due, record.anchor_ms) - due
            rows.append((schedule_labels(record.spec.key), due / 1000, gap / 1000))
        with self._lock:
            self._values[queue] = (self._clock(), rows)

    def clear(self) -> None:
        """Forget every sample."""
        with self._lock:
            self._values.clear()

    def _fresh(self) -> list[tuple[str, list[tuple[str, float, float]]]]:
        limit = self._clock() - _STALE_INTERVALS * self.interval
        with self._lock:
            return [(queue, rows) for queue, (at, rows) in self._values.items() if at >= limit]

    def next_run(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of asyncmq.schedule.next_run.timestamp: the earliest per (queue, schedule label)."""
        return self._per_label(lambda row: row[1], min)

    def intervals(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of asyncmq.schedule.interval: the longest per (queue, schedule label)."""
        return self._per_label(lambda row: row[2], max)

    def _per_label(
        self,
        value_of: Callable[[tuple[str, float, float]], float],
        keep: Callable[[float, float], float],
    ) -> Iterator[tuple[tuple[str, ...], float]]:
        """One observation per (queue, label): ``keep`` (min or max) of its rows' values."""
        for queue, rows in self._fresh():
            kept: dict[str, float] = {}
            for row in rows:
                value = value_of(row)
                kept[row[0]] = keep(value, kept.get(row[0], value))
            for label, value in kept.items():
                yield (queue, label), value

"""The queue sampler: queue-level gauges (depth, oldest age, paused, consumers) come from one place.

A :class:`QueueSampler` runs as a task in the event loop. Each interval it makes sure it holds the
sampler lock, then reads ``queue_stats()`` for every queue and stores the values in a
:class:`QueueGauges` cache. Collection (the scrape thread, or the OTel periodic reader) reads only
that cache, so no backend I/O ever happens while ``/metrics`` is served. Values older than three
intervals, or held by a sampler that lost the lock, are not exported: stale beats wrong.

The live consumers of each queue (``asyncmq.queue.consumers``, an extension to the contract
asked for by the operations issue) are counted in the same round when the backend offers
:class:`ConsumerCounter`.

Election is optional. A backend that offers :class:`SamplerLock` (the Redis backend: ``SET NX PX``
on ``<prefix>:telemetry:sampler``, renewed by compare-and-extend) decides which process samples; a
backend without it is single-process by nature, so its sampler always holds the role.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio

from ..backends.capabilities import ConsumerCounter, SamplerLock, ScheduleStore  # still importable from here
from ._schedule_metrics import ScheduleGauges

if TYPE_CHECKING:
    from ..backends.base import QueueStats

__all__ = ["ConsumerCounter", "QueueGauges", "QueueSampler", "SamplerLock", "StatsSource"]

_log = logging.getLogger("asyncmq_otel.telemetry")
_STALE_INTERVALS = 3.0


class StatsSource(Protocol):
    """What the sampler needs from a backend (a subset of the ``Backend`` port)."""

    async def queue_stats(self, queue: str) -> QueueStats:
        """Depths, oldest ready age and paused flag of one queue."""
        ...

    async def list_queues(self) -> list[str]:
        """Every queue the backend has seen."""
        ...


class QueueGauges:
    """The sampler's cache, read by collection without any I/O.

    Args:
        interval: the sampling interval; values older than three of them are not exported.
        clock: monotonic clock (injectable for tests).

    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, QueueStats]] = {}
        self._consumers: dict[str, tuple[float, int]] = {}
        self.schedules = ScheduleGauges(interval, clock)  # next run and interval, as fresh as the rest

    def update(self, queue: str, stats: QueueStats) -> None:
        """Store a fresh sample of ``queue``."""
        with self._lock:
            self._values[queue] = (self._clock(), stats)

    def update_consumers(self, counts: Mapping[str, int]) -> None:
        """Store fresh live-consumer counts by queue."""
        at = self._clock()
        with self._lock:
            for queue, count in counts.items():
                self._consumers[queue] = (at, count)

    def clear(self) -> None:
        """Forget every sample (the lock was lost or sampling stopped)."""
        with self._lock:
            self._values.clear()
            self._consumers.clear()
        self.schedules.clear()

    def fresh(self) -> list[tuple[str, QueueStats]]:
        """The samples younger than three intervals, by queue."""
        limit = self._clock() - _STALE_INTERVALS * self.interval
        with self._lock:
            return [(queue, stats) for queue, (at, stats) in self._values.items() if at >= limit]

    def depth(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of ``asyncmq.queue.depth``: ``(queue, state)``."""
        for queue, s in self.fresh():
            yield (queue, "ready"), float(s.ready)
            yield (queue, "scheduled"), float(s.scheduled)
            yield (queue, "active"), float(s.active)
            yield (queue, "dead"), float(s.dead)
            yield (queue, "blocked"), float(s.blocked)

    def oldest_age(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of ``asyncmq.queue.oldest_age``."""
        for queue, s in self.fresh():
            yield (queue,), max(float(s.oldest_ready_age), 0.0)

    def blocked_oldest_age(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of ``asyncmq.queue.blocked.oldest_age`` (flows)."""
        for queue, s in self.fresh():
            yield (queue,), max(float(s.oldest_blocked_age), 0.0)

    def paused(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of ``asyncmq.queue.paused``."""
        for queue, s in self.fresh():
            yield (queue,), 1.0 if s.paused else 0.0

    def consumers(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """Observations of ``asyncmq.queue.consumers``, as fresh as the other queue gauges."""
        limit = self._clock() - _STALE_INTERVALS * self.interval
        with self._lock:
            fresh = [(queue, count) for queue, (at, count) in self._consumers.items() if at >= limit]
        for queue, count in fresh:
            yield (queue,), float(count)


class QueueSampler:
    """Samples queue stats into :class:`QueueGauges` while it holds the sampler role.

    Args:
        backend: where the stats come from; its optional :class:`SamplerLock` decides the holder.
        gauges: the cache to fill.
        interval: seconds between samples (the lock's TTL is three of them).
        owner: this sampler's identity in the lock (a fresh UUID by default).
        queues: the queues to sample; every queue the backend lists when ``None``.
        on_result: told ``True`` after a successful round trip and ``False`` after a failed one
            (the metrics adapter maps it to ``asyncmq_backend_up``).

    """

    def __init__(
        self,
        backend: StatsSource,
        gauges: QueueGauges,
        *,
        interval: float = 10.0,
        owner: str | None = None,
        queues: Sequence[str] | None = None,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"queue_sample_interval_s must be > 0, not {interval}")
        self.backend = backend
        self.gauges = gauges
        self.interval = interval
        self.owner = owner or uuid.uuid4().hex
        self.queues = None if queues is None else list(queues)
        self.holder = False
        self._on_result = on_result
        self._failed_once = False

    @property
    def elected(self) -> bool:
        """Whether the backend elects a holder (it offers :class:`SamplerLock`)."""
        return callable(getattr(self.backend, "acquire_sampler_lock", None))

    async def _elect(self) -> bool:
        acquire = getattr(self.backend, "acquire_sampler_lock", None)
        if not callable(acquire):
            return True
        result = acquire(self.owner, _STALE_INTERVALS * self.interval)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)

    async def sample_once(self) -> bool:
        """One round: elect, then sample every queue. Returns whether this sampler holds the role."""
        try:
            self.holder = await self._elect()
            if not self.holder:
                self.gauges.clear()
                return False
            queues = self.queues if self.queues is not None else await self.backend.list_queues()
            stats = [(queue, await self.backend.queue_stats(queue)) for queue in queues]
            # backend up is set before the gauges it vouches for: no scrape shows fresh gauges without it
            self._report(ok=True)
            for queue, queue_stats in stats:
                self.gauges.update(queue, queue_stats)
            if isinstance(self.backend, ConsumerCounter) and queues:
                await self._sample_consumers(self.backend, queues)
            if isinstance(self.backend, ScheduleStore):
                await self._sample_schedules(self.backend, queues)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - isolation boundary: the sampler never stops a worker
            self.gauges.clear()
            self.holder = False
            if not self._failed_once:
                self._failed_once = True
                _log.warning("telemetry.sampler_error: queue sampling failed (%s); retrying", exc)
            self._report(ok=False)
            return False
        return True

    async def _sample_consumers(self, backend: ConsumerCounter, queues: Sequence[str]) -> None:
        """Count live consumers; a failure here keeps the other queue gauges and the role."""
        try:
            counts = await backend.consumer_counts(queues)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - consumer counts are optional; its old counts go stale by themselves
            _log.debug("queue consumer count failed: %s", exc)
            return
        self.gauges.update_consumers(counts)

    async def _sample_schedules(self, backend: ScheduleStore, queues: Sequence[str]) -> None:
        """Next runs and intervals of the schedules; a failure keeps the other gauges."""
        try:
            for queue in queues:
                self.gauges.schedules.update(queue, await backend.schedule_list(queue))
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - schedule gauges are optional; old values go stale by themselves
            _log.debug("schedule sampling failed: %s", exc)

    def _report(self, *, ok: bool) -> None:
        if self._on_result is not None:
            self._on_result(ok)

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled; the lock is released on the way out."""
        try:
            while True:
                await self.sample_once()
                await anyio.sleep(self.interval)
        finally:
            self.gauges.clear()
            if self.holder:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await self._release()

    async def _release(self) -> None:
        release: Callable[[str], Awaitable[None] | None] | None = getattr(
            self.backend, "release_sampler_lock", None
        )
        self.holder = False
        if release is None:
            return
        try:
            result = release(self.owner)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - best effort: the lock expires by itself
            _log.debug("sampler lock release failed: %s", exc)

"""Queue gauges come from one elected sampler; stale values are never exported."""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import pytest
from prometheus_client import CollectorRegistry

from asyncmq_otel import telemetry
from asyncmq_otel.backends.base import QueueStats
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import EventBus
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry import QueueGauges, QueueSampler, SamplerLock
from asyncmq_otel.telemetry._metrics_adapter import MetricsAdapter
from asyncmq_otel.telemetry.metrics import MetricSinks
from asyncmq_otel.testing import Captured, capture_telemetry
from tests.support.poll import eventually

pytestmark = pytest.mark.anyio


class SharedLock:
    """The Redis lock's semantics (SET NX PX, compare-and-extend), shared by several 'processes'."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.until = 0.0

    def acquire(self, owner: str, ttl: float) -> bool:
        now = time.monotonic()
        if self.owner is None or self.owner == owner or now >= self.until:
            self.owner, self.until = owner, now + ttl
            return True
        return False


class LockingBackend(InMemoryBackend):
    def __init__(self, lock: SharedLock) -> None:
        super().__init__()
        self.lock = lock
        self.released: list[str] = []

    async def acquire_sampler_lock(self, owner: str, ttl: float) -> bool:
        return self.lock.acquire(owner, ttl)

    async def release_sampler_lock(self, owner: str) -> None:
        if self.lock.owner == owner:
            self.lock.owner = None
        self.released.append(owner)


def stats(ready: int = 1, *, paused: bool = False) -> QueueStats:
    return QueueStats(ready=ready, scheduled=2, active=3, dead=4, oldest_ready_age=5.0, paused=paused)


async def test_one_holder_among_samplers_and_hand_over_on_lock_loss(unique_name) -> None:
    lock = SharedLock()
    backends = [LockingBackend(lock), LockingBackend(lock)]
    assert all(isinstance(b, SamplerLock) for b in backends)
    gauges = [QueueGauges(10.0), QueueGauges(10.0)]
    samplers = [
        QueueSampler(b, g, interval=10.0, owner=f"w{i}", queues=[unique_name])
        for i, (b, g) in enumerate(zip(backends, gauges, strict=True))
    ]
    assert [s.elected for s in samplers] == [True, True]
    assert [await s.sample_once() for s in samplers] == [True, False]
    assert [len(list(g.depth())) for g in gauges] == [5, 0]  # ready, scheduled, active, dead, blocked

    lock.owner, lock.until = "someone-else", time.monotonic() + 60  # w0 lost its lock (e.g. a long pause)
    assert await samplers[0].sample_once() is False
    assert list(gauges[0].depth()) == []  # a process that lost the lock exports nothing
    lock.until = 0.0  # the other holder's lease ran out
    assert [await s.sample_once() for s in (samplers[1], samplers[0])] == [True, False]
    assert [len(list(g.depth())) for g in gauges] == [0, 5]


async def test_backends_without_a_lock_always_hold_the_role(backend, unique_name) -> None:
    gauges = QueueGauges(10.0)
    await Queue(unique_name, backend=backend).add("never.runs")
    sampler = QueueSampler(backend, gauges, interval=10.0)
    assert not sampler.elected
    assert await sampler.sample_once() is True
    depth = dict(gauges.depth())
    assert depth[(unique_name, "ready")] == 1.0
    assert depth[(unique_name, "dead")] == 0.0


async def test_sampler_errors_clear_the_cache_and_report_the_backend_down(unique_name) -> None:
    class Broken(InMemoryBackend):
        async def queue_stats(self, queue: str) -> QueueStats:
            raise ConnectionError("down")

    results: list[bool] = []
    gauges = QueueGauges(10.0)
    gauges.update(unique_name, stats())
    sampler = QueueSampler(Broken(), gauges, queues=[unique_name], on_result=results.append)
    assert await sampler.sample_once() is False
    assert list(gauges.depth()) == []
    assert results == [False]


def test_values_older_than_three_intervals_are_not_exported() -> None:
    now = [100.0]
    gauges = QueueGauges(interval=1.0, clock=lambda: now[0])
    gauges.update("q", stats(ready=7, paused=True))
    assert dict(gauges.depth())[("q", "ready")] == 7.0
    assert list(gauges.paused()) == [(("q",), 1.0)]
    assert list(gauges.oldest_age()) == [(("q",), 5.0)]
    now[0] += 3.5
    assert list(gauges.depth()) == []
    assert list(gauges.paused()) == []


async def test_run_queue_sampler_exports_gauges_until_uninstrument(backend, unique_name) -> None:
    with capture_telemetry(queue_sample_interval_s=0.02) as captured:
        q = Queue(unique_name, backend=backend)
        await q.add("never.runs")
        await q.pause()
        async with anyio.create_task_group() as group:
            group.start_soon(telemetry.run_queue_sampler, backend)
            await eventually(lambda: _depth(captured, unique_name) == 1.0, what="the ready depth")
            assert captured.metric_value("asyncmq_queue_paused", messaging_destination_name=unique_name) == 1
            assert (
                captured.metric_value(
                    "asyncmq_queue_oldest_age_seconds", messaging_destination_name=unique_name
                )
                >= 0
            )
            assert captured.metric_value("asyncmq_queue_depth", sink="otlp", state="ready") == 1
            assert captured.metric_value("asyncmq_backend_up") == 1
            telemetry.uninstrument()  # cancels the sampler task: the task group can exit
        assert not telemetry.is_instrumented()


async def test_the_depth_gauge_counts_blocked_children(backend, unique_name) -> None:
    with capture_telemetry(queue_sample_interval_s=0.02) as captured:
        q = Queue(unique_name, backend=backend)
        parent = await q.add("never.runs")
        await q.add("never.runs", depends_on=[parent])
        await q.add("never.runs", depends_on=[parent])
        async with anyio.create_task_group() as group:
            group.start_soon(telemetry.run_queue_sampler, backend)
            await eventually(lambda: _depth(captured, unique_name) == 1.0, what="the ready depth")
            for sink in ("prometheus", "otlp"):  # the same sample feeds both
                blocked = captured.metric_value(
                    "asyncmq_queue_depth", sink=sink, messaging_destination_name=unique_name, state="blocked"
                )
                assert blocked == 2, sink
            telemetry.uninstrument()


async def test_queue_sampler_off_exports_no_queue_gauges(backend, unique_name) -> None:
    with capture_telemetry(queue_sampler="off") as captured:
        await Queue(unique_name, backend=backend).add("never.runs")
        await telemetry.run_queue_sampler(backend)  # returns at once
        assert not [s for s in captured.metrics if s.name == "asyncmq_queue_depth"]


def _depth(captured: Captured, queue: str) -> float:
    return captured.metric_value("asyncmq_queue_depth", messaging_destination_name=queue, state="ready")


async def test_a_library_worker_runs_the_queue_sampler_beside_it(backend, unique_name) -> None:
    from tests.support.running import running_worker

    # Values older than three intervals are withheld, so the interval leaves room for a busy machine.
    with capture_telemetry(queue_sample_interval_s=0.5) as captured:
        q = Queue(unique_name, backend=backend)
        await q.pause()
        await q.add("never.runs")
        async with running_worker(unique_name, backend):
            await eventually(
                lambda: _depth(captured, unique_name) == 1.0, what="the ready depth from the worker"
            )
            assert captured.metric_value("asyncmq_queue_paused", messaging_destination_name=unique_name) == 1


class NoConsumerCount(InMemoryBackend):
    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        raise ConnectionError("registry down")


async def test_a_failing_consumer_count_keeps_the_other_queue_gauges(unique_name) -> None:
    results: list[bool] = []
    gauges = QueueGauges(10.0)
    backend = NoConsumerCount()
    await Queue(unique_name, backend=backend).add("never.runs")
    sampler = QueueSampler(backend, gauges, queues=[unique_name], on_result=results.append)
    assert await sampler.sample_once() is True
    assert sampler.holder
    assert dict(gauges.depth())[(unique_name, "ready")] == 1.0
    assert list(gauges.consumers()) == []
    assert results == [True]

    with capture_telemetry(queue_sample_interval_s=0.02) as captured:
        async with anyio.create_task_group() as group:
            group.start_soon(telemetry.run_queue_sampler, backend)
            await eventually(lambda: _depth(captured, unique_name) == 1.0, what="the ready depth")
            assert captured.metric_value("asyncmq_queue_paused", messaging_destination_name=unique_name) == 0
            assert captured.metric_value("asyncmq_backend_up") == 1
            assert not [s for s in captured.metrics if s.name == "asyncmq_queue_consumers"]
            telemetry.uninstrument()


def test_attach_queue_gauges_sets_and_clears_every_queue_gauge() -> None:
    registry = CollectorRegistry()
    adapter = MetricsAdapter(MetricSinks(registry=registry), bus=EventBus())
    gauges = QueueGauges(10.0)
    gauges.update("q", stats())
    gauges.update_consumers({"q": 2})
    queue_gauges = {
        "asyncmq_queue_depth",
        "asyncmq_queue_oldest_age_seconds",
        "asyncmq_queue_paused",
        "asyncmq_queue_consumers",
    }

    def exported() -> set[str]:
        return {s.name for family in registry.collect() for s in family.samples} & queue_gauges

    adapter.attach_queue_gauges(gauges)
    assert exported() == queue_gauges
    adapter.attach_queue_gauges(None)
    assert exported() == set()

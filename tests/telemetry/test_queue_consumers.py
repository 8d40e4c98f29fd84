"""Live consumers per queue (``asyncmq_queue_consumers``): the backend port and the sampler's gauge.

Both backends answer ``consumer_counts`` from their worker registry: a worker counts for each queue it
consumes while its heartbeat is fresher than the registration's expiry, and stops counting at once
when it deregisters. On Redis the count reads a per-queue set the heartbeat keeps, so the test also
checks that the set is removed once its last consumer has expired.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from asyncmq_otel.backends.base import Backend, WorkerInfo
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry import QueueGauges, QueueSampler
from asyncmq_otel.testing import capture_telemetry
from asyncmq_otel.workers import Worker
from tests.support.poll import eventually
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    redis_prefix,
    redis_url,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's async client is asyncio-only."""
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
async def any_backend(
    request: pytest.FixtureRequest,
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield InMemoryBackend()
        return
    made = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    yield made
    await made.close()


@contextlib.asynccontextmanager
async def _running(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` for the duration of the block, then stop it and wait for its shutdown."""
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await eventually(lambda: worker.state == "running", timeout=10, what="worker running")
        yield worker
        worker.stop()


def _info(*queues: str) -> WorkerInfo:
    return WorkerInfo(uuid.uuid4().hex, list(queues), socket.gethostname(), os.getpid(), concurrency=2)


async def test_counts_follow_registrations_heartbeats_and_expiry(
    any_backend: Backend, unique_name: str
) -> None:
    a, b, idle = f"{unique_name}a", f"{unique_name}b", f"{unique_name}idle"
    both, only_a, short = _info(a, b), _info(a), _info(b)
    assert await any_backend.consumer_counts([a, b, idle]) == {a: 0, b: 0, idle: 0}
    assert await any_backend.consumer_counts([]) == {}

    await any_backend.register_worker(both, 30.0)
    await any_backend.register_worker(only_a, 30.0)
    await any_backend.register_worker(short, 0.3)
    assert await any_backend.consumer_counts([a, b, idle]) == {a: 2, b: 2, idle: 0}
    await any_backend.heartbeat(both, 30.0)  # a heartbeat refreshes, it never counts twice
    assert await any_backend.consumer_counts([b, a]) == {b: 2, a: 2}

    # The short registration stops counting once its heartbeat is older than its expiry.
    async def expired() -> bool:
        return await any_backend.consumer_counts([b]) == {b: 1}

    await eventually(expired, timeout=10, interval=0.05, what="the expired registration no longer counts")
    assert {info.worker_id for info in await any_backend.list_workers()} == {both.worker_id, only_a.worker_id}

    await any_backend.deregister_worker(only_a.worker_id)
    assert await any_backend.consumer_counts([a, b]) == {a: 1, b: 1}
    await any_backend.deregister_worker(both.worker_id)
    assert await any_backend.consumer_counts([a, b]) == {a: 0, b: 0}


async def test_redis_deregistration_through_another_client_and_set_removal(
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
    unique_name: str,
) -> None:
    writer = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    admin = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    raw = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}:{{@}}:consumers:{unique_name}"
    try:
        kept, dropped = _info(unique_name), _info(unique_name)
        await writer.register_worker(kept, 0.5)
        await writer.register_worker(dropped, 0.5)
        assert await admin.consumer_counts([unique_name]) == {unique_name: 2}
        # A client that never saw the worker finds its queues in the stored registration.
        await admin.deregister_worker(dropped.worker_id)
        assert await writer.consumer_counts([unique_name]) == {unique_name: 1}
        assert raw.zcard(key) == 1

        # Nobody heartbeats any more: counting prunes the expired entry, and the emptied set is gone.
        async def pruned() -> bool:
            return await writer.consumer_counts([unique_name]) == {unique_name: 0}

        await eventually(pruned, timeout=10, interval=0.05, what="the last consumer expired")
        assert raw.exists(key) == 0
    finally:
        raw.close()
        await writer.close()
        await admin.close()


async def test_the_sampler_exports_live_consumers_with_the_queue_gauges(unique_name: str) -> None:
    backend = InMemoryBackend()
    served, other = f"{unique_name}a", f"{unique_name}b"
    await Queue(other, backend=backend).add("nowhere.registered", [1])  # a queue nobody consumes
    with capture_telemetry() as cap:
        worker = Worker(served, backend=backend)
        async with _running(worker):
            gauges = QueueGauges(0.05)
            sampler = QueueSampler(backend, gauges, interval=0.05, queues=[served, other])
            assert await sampler.sample_once()
            assert dict(gauges.consumers()) == {(served,): 1.0, (other,): 0.0}

            async def exported() -> bool:
                return cap.metric_value("asyncmq_queue_consumers", messaging_destination_name=served) == 1.0

            await eventually(
                exported, timeout=10, what="the worker's own sampler exported the consumer gauge"
            )
        assert await backend.consumer_counts([served]) == {served: 0}
        assert await sampler.sample_once()
        assert dict(gauges.consumers()) == {(served,): 0.0, (other,): 0.0}
        gauges.clear()
        assert list(gauges.consumers()) == []


def test_stale_consumer_counts_are_withheld() -> None:
    now = [100.0]
    gauges = QueueGauges(1.0, clock=lambda: now[0])
    gauges.update_consumers({"q": 3})
    assert list(gauges.consumers()) == [(("q",), 3.0)]
    now[0] += 3.5  # older than three intervals
    assert list(gauges.consumers()) == []

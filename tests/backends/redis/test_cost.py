"""Cost bounds: counts and listings cost the same at any queue size; retention bounds memory."""

from __future__ import annotations

import json

import pytest

from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.redis import RedisBackend
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def items(start: int, count: int) -> list[EnqueueItem]:
    return [
        EnqueueItem(f"j{i}", json.dumps({"v": 1, "id": f"j{i}", "task": "t.x", "queue": "q"}))
        for i in range(start, start + count)
    ]


def commandstats(server: RedisServer) -> dict[str, int]:
    admin = server.client()
    try:
        stats = admin.info("commandstats")
    finally:
        admin.close()
    return {name: int(value["calls"]) for name, value in stats.items()}


async def reads_cost(backend: RedisBackend, server: RedisServer) -> dict[str, int]:
    before = commandstats(server)
    await backend.counts("q")
    await backend.list_jobs("q", "waiting", 0, 10)
    await backend.queue_stats("q")
    after = commandstats(server)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in delta.items() if calls and name != "cmdstat_info"}


async def test_reads_cost_the_same_at_1000_and_10000_jobs(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p")
    try:
        await backend.enqueue_bulk("q", items(0, 1000))
        small = await reads_cost(backend, redis_server)
        await backend.enqueue_bulk("q", items(1000, 9000))
        assert (await backend.counts("q"))["waiting"] == 10_000
        large = await reads_cost(backend, redis_server)
    finally:
        await backend.close()
    assert small == large
    assert not {"cmdstat_keys", "cmdstat_scan", "cmdstat_smembers"} & set(large)


async def test_retention_keeps_memory_flat(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", keep_completed=50)
    try:
        for round_number in range(4):
            await backend.enqueue_bulk("q", items(round_number * 500, 500))
            while jobs := (await backend.claim("q", "w", 100, 30.0)).jobs:
                for job in jobs:
                    assert (await backend.complete("q", job.id, job.token, "null")).ok
        counts = await backend.counts("q")
    finally:
        await backend.close()
    assert counts["completed"] == 50
    admin = redis_server.client()
    try:
        assert admin.dbsize() < 80  # 50 retained jobs plus the queue's own keys
    finally:
        admin.close()

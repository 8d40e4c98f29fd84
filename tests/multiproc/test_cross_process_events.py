"""Issue 3, cross-process events: a worker process publishes its lifecycle events on
``<prefix>:events``, and this process, which shares nothing with it but Redis, hears them under the
``event_emitter`` names with the same fields."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

QUEUE = "mp"


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_url, prefix=redis_prefix)
    yield backend
    await backend.close()


@pytest.mark.timeout(60)
async def test_a_worker_process_publishes_its_lifecycle_events(
    backend: RedisBackend, worker_proc: StartWorker, redis_url: str, redis_prefix: str
) -> None:
    heard: list[dict[str, Any]] = []
    names = {"worker:started", "job:started", "job:completed", "job:failed", "worker:stopped"}
    async with await backend.subscribe_events(names=names) as events:

        async def listen() -> None:
            async for event in events:
                heard.append(event)  # noqa: PERF401 - seen by the test while the stream goes on

        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=2)
            queue = Queue(QUEUE, backend=backend)
            ok = [await queue.add("chaos.noop", [i], job_id=f"ok{i}") for i in range(2)]
            bad = await queue.add("chaos.unserialisable", job_id="bad")

            def named(name: str) -> list[dict[str, Any]]:
                return [event for event in heard if event["name"] == name]

            await eventually(
                lambda: len(named("job:completed")) == 2 and len(named("job:failed")) == 1,
                timeout=20,
                what="2 completions and 1 failure heard",
            )
            worker.signal(signal.SIGTERM)
            await eventually(lambda: named("worker:stopped"), timeout=20, what="worker:stopped heard")
            group.cancel_scope.cancel()

    [started] = [e for e in heard if e["name"] == "worker:started"]
    assert started["worker_id"] == worker.worker_id and started["queue"] == QUEUE
    assert started["concurrency"] == 2
    assert sorted(e["job_id"] for e in heard if e["name"] == "job:started") == sorted([*ok, bad])
    completed = {e["job_id"]: e for e in heard if e["name"] == "job:completed"}
    assert set(completed) == set(ok)
    for job_id, event in completed.items():
        assert event["task"] == "chaos.noop" and event["queue"] == QUEUE
        assert event["worker_id"] == worker.worker_id and event["attempt"] == 1
        assert event["duration_s"] >= 0
        assert event["result"]["r"] == int(job_id[2:])  # what the handler returned, as JSON
    [failed] = [e for e in heard if e["name"] == "job:failed"]
    assert (failed["job_id"], failed["error_type"]) == (bad, "asyncmq_otel.errors.ResultSerializationError")
    assert "exception" not in failed and "started_monotonic" not in failed  # never leave the process
    # in the order the worker emitted them: a job starts before it ends, the worker stops last
    order = [(e["name"], e.get("job_id")) for e in heard]
    for job_id in [*ok, bad]:
        end = "job:failed" if job_id == bad else "job:completed"
        assert order.index(("job:started", job_id)) < order.index((end, job_id))
    assert order[-1][0] == "worker:stopped"

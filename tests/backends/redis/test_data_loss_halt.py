"""``on_data_loss="halt"``: a worker that finds its queue's data gone reports it and stops (CLI exit 3)."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio

from asyncmq_otel import Queue, Worker
from asyncmq_otel.errors import DataLossDetected
from asyncmq_otel.settings import override_settings
from tests.support.poll import eventually
from tests.support.timings import TEST_TIMINGS

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_halt_stops_the_worker_with_data_loss_detected(
    make_backend, redis_url, redis_prefix, unique_name
):
    backend = make_backend()
    seen: list[str] = []
    from asyncmq_otel.events import bus

    bus.on("backend:data_loss", lambda e: seen.append(e.queue), inline=True)
    await Queue(unique_name, backend=backend).add("never.registered", delay=60)
    with override_settings(on_data_loss="halt", **TEST_TIMINGS):
        worker = Worker(unique_name, backend=backend)
        raised: list[BaseException] = []

        async def run() -> None:
            try:
                await worker.run()
            except DataLossDetected as exc:
                raised.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await eventually(lambda: worker.state == "running")
            client = redis.asyncio.Redis.from_url(redis_url)
            try:  # the queue's dataset disappears, as after a restart without persistence
                await client.delete(f"{redis_prefix}:{{{unique_name}}}:meta")
            finally:
                await client.aclose()
            await eventually(lambda: worker.state == "stopped", timeout=10)
    assert [type(exc) for exc in raised] == [DataLossDetected]
    assert raised[0].queue == unique_name
    assert seen == [unique_name]
    assert worker.exit_reason == "error"


async def test_report_mode_keeps_consuming(make_backend, redis_url, redis_prefix, unique_name):
    backend = make_backend()
    q = Queue(unique_name, backend=backend)
    await q.add("never.registered", delay=60)
    with override_settings(on_data_loss="report", **TEST_TIMINGS):
        worker = Worker(unique_name, backend=backend)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            await eventually(lambda: worker.state == "running")
            client = redis.asyncio.Redis.from_url(redis_url)
            try:
                await client.delete(f"{redis_prefix}:{{{unique_name}}}:meta")
            finally:
                await client.aclose()
            job_id = await q.add("never.registered")  # a fresh epoch: the queue works again

            async def dead_lettered() -> bool:
                return await q.get_job_state(job_id) == "failed"

            await eventually(dead_lettered, timeout=10)
            assert worker.state == "running"
            worker.stop()

"""Chaos rows 32, 33 and 34 with real CLI workers and a private Redis.

32. Cancel while waiting and while delayed: the job never runs. Cancel while running, with the
    Pub/Sub hint switched off in the worker (``CHAOS_NO_CANCEL_HINTS``): the renewer's ``CANCEL``
    answer stops the handler at its next ``await`` within about one renew interval (0.3 s); the job is
    ``cancelled``, not retried.
33. A job whose TTL (50 ms) passes while it waits, the worker starting 200 ms later (by Redis
    ``TIME``): ``expired``, DLQ ``expired``, ``job.expired`` logged, never run.
34. Retention and counts at scale: 30,000 jobs by default (``CHAOS_SCALE_JOBS=100000`` for the matrix's
    100,000; scaled down for CI time: the drain takes ~25 s at 100,000). The read calls cost the same
    commands at 1,000 and at that many jobs (``INFO commandstats``), and once every job is done with
    ``keep_completed`` = 1,000, ``used_memory`` is back near its baseline. Jobs are claimed and
    completed through the backend (batches of 500), not by a worker process, to keep CI time bounded.
(In-process forms on both backends: tests/chaos/test_memory_parity.py.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import anyio
import pytest

from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.chaos.helpers import backend_for, stop_all, wait_states
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.poll import eventually
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import TEST_CONFIG, StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "cx"
PREFIX = "chaos"
Servers = Callable[..., RedisServer]
RENEW_INTERVAL = float(TEST_CONFIG["ASYNCMQ_RENEW_INTERVAL"])
SCALE = int(os.environ.get("CHAOS_SCALE_JOBS", "30000"))


@pytest.mark.timeout(60)
async def test_rows32_33_cancel_in_each_state_and_ttl_passed_while_waiting(
    redis_url: str, redis_prefix: str, worker_proc: StartWorker, ledger: Ledger
) -> None:
    backend = backend_for(redis_url, redis_prefix)
    queue = Queue(QUEUE, backend=backend)
    try:
        expiring = await queue.add("chaos.noop", [33], ttl=0.05, job_id="ttl")
        expires_at = float((await queue.get_job(expiring) or {})["expires_at"])
        waiting = await queue.add("chaos.noop", [32], job_id="cancel-waiting")
        delayed = await queue.add("chaos.noop", [32], delay=30.0, job_id="cancel-delayed")
        assert await queue.cancel_job(waiting)
        assert await queue.cancel_job(delayed)

        async def ttl_long_past() -> bool:  # the worker starts 200 ms after enqueue, by Redis' clock
            return await backend.now() >= expires_at + 0.15

        await eventually(ttl_long_past, timeout=5, interval=0.02, what="200 ms after enqueue")
        worker = worker_proc(
            QUEUE,
            redis_url,
            redis_prefix,
            concurrency=2,
            env={**ledger.env, "CHAOS_HOLD": "1", "CHAOS_NO_CANCEL_HINTS": "1"},
        )
        await wait_states(queue, {expiring: "expired"}, timeout=10)
        running = await queue.add("chaos.zombie", job_id="cancel-running")
        with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
            await eventually(lambda: ledger.starts(running), timeout=10, what="the job runs")
            cancelled_at = monotonic()
            assert await queue.cancel_job(running)
            await wait_states(queue, {running: "cancelled"}, timeout=5)
            wait_quiescent(redis_url, redis_prefix, QUEUE)
        assert await stop_all([worker]) == [0]
        jobs = {job_id: await queue.get_job(job_id) for job_id in (expiring, waiting, delayed, running)}
        dlq = {job["id"]: job["dlq_reason"] for job in await queue.dlq()}
    finally:
        await backend.close()
    settled = [s for s in ledger.settles("ok") if s["id"] == running]
    assert [s["op"] for s in settled] == ["settle_cancelled"]
    stopped_after = settled[0]["mono"] - cancelled_at
    assert stopped_after <= RENEW_INTERVAL + 0.3, stopped_after  # the renewer's answer, no hint
    assert {job_id: (job or {}).get("state") for job_id, job in jobs.items()} == {
        expiring: "expired",
        waiting: "cancelled",
        delayed: "cancelled",
        running: "cancelled",
    }
    assert (jobs[running] or {})["attempts"] == 1  # not retried
    assert dlq == {expiring: "expired"}
    assert {start["id"] for start in ledger.starts()} == {running}  # nothing else ever ran
    assert [line["messaging.message.id"] for line in worker.events("job.expired")] == [expiring]
    report = check_invariants(
        redis_url,
        redis_prefix,
        QUEUE,
        Enqueued({expiring, waiting, delayed, running}),
        ledger,
        sampler=sampler,
        workers_stopped=True,
    ).check()
    assert report.states == {"expired": 1, "cancelled": 3}


def _items(start: int, count: int) -> list[EnqueueItem]:
    return [
        EnqueueItem(f"j{i}", json.dumps({"v": 1, "id": f"j{i}", "task": "chaos.noop", "queue": QUEUE}))
        for i in range(start, start + count)
    ]


def _commandstats(server: RedisServer) -> dict[str, int]:
    admin = server.client()
    try:
        return {name: int(value["calls"]) for name, value in admin.info("commandstats").items()}
    finally:
        admin.close()


def _used_memory(server: RedisServer) -> int:
    admin = server.client()
    try:
        return int(admin.info("memory")["used_memory"])
    finally:
        admin.close()


async def _reads_cost(backend: RedisBackend, server: RedisServer) -> dict[str, int]:
    before = _commandstats(server)
    await backend.counts(QUEUE)
    await backend.list_jobs(QUEUE, "waiting", 0, 10)
    await backend.queue_stats(QUEUE)
    after = _commandstats(server)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in delta.items() if calls and name != "cmdstat_info"}


@pytest.mark.timeout(180)
async def test_row34_counts_cost_the_same_at_scale_and_retention_keeps_memory_flat(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(redis_server.url, prefix=PREFIX, keep_completed=1000, retry_timeout=10.0)
    try:
        await backend.enqueue_bulk(QUEUE, _items(0, 1000))
        jobs = (await backend.claim(QUEUE, "w", 1000, 60.0)).jobs  # the queue exists, and is empty again
        for job in jobs:
            assert (await backend.complete(QUEUE, job.id, job.token, "null")).ok
        baseline = _used_memory(redis_server)
        await backend.enqueue_bulk(QUEUE, _items(1000, 1000))
        small = await _reads_cost(backend, redis_server)
        started = time.monotonic()
        for start in range(2000, 1000 + SCALE, 10_000):
            await backend.enqueue_bulk(QUEUE, _items(start, min(10_000, 1000 + SCALE - start)))
        enqueue_s = time.monotonic() - started
        assert (await backend.counts(QUEUE))["waiting"] == SCALE
        large = await _reads_cost(backend, redis_server)
        peak = _used_memory(redis_server)
        started = time.monotonic()
        done = 0
        while claimed := (await backend.claim(QUEUE, "w", 500, 60.0)).jobs:
            async with anyio.create_task_group() as group:  # concurrent completes share round trips
                for job in claimed:
                    group.start_soon(backend.complete, QUEUE, job.id, job.token, "null")
            done += len(claimed)
        drain_s = time.monotonic() - started
        counts = await backend.counts(QUEUE)
    finally:
        await backend.close()
    after = _used_memory(redis_server)
    print(
        f"row34: {SCALE} jobs enqueued in {enqueue_s:.1f}s, drained in {drain_s:.1f}s; used_memory "
        f"baseline {baseline / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB, after {after / 1e6:.1f} MB"
    )
    assert small == large  # the same commands, the same number of calls, at 1,000 and at SCALE jobs
    assert not {"cmdstat_keys", "cmdstat_scan", "cmdstat_smembers"} & set(large)
    assert done == SCALE
    assert (counts["waiting"], counts["active"], counts["completed"]) == (0, 0, 1000)
    assert peak - baseline > 10 * (after - baseline)  # the jobs took memory while they waited ...
    assert after - baseline < 2 * 1024 * 1024  # ... and gave it back: 1,000 retained, the rest gone

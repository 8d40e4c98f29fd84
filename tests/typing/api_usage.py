"""The public API used the way users do; ``mypy --strict`` checks this file in CI."""

from __future__ import annotations

from typing import Any

import anyio

from asyncmq_otel import LifecycleEvent, Queue, Worker, event_emitter, settings, task
from asyncmq_otel.backends import Backend
from asyncmq_otel.backends.base import ClaimedJob, ClaimReply, ErrorInfo, SettleReply, StoredJob
from asyncmq_otel.backends.capabilities import ConsumerCounter
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.jobs import Job


@task("typed", retries=2, backoff="exponential", timeout=5.0)
async def resize(path: str, width: int) -> dict[str, int]:
    return {"width": width}


@task("typed")
def total(values: list[int]) -> int:
    return sum(values)


def on_failed(event: LifecycleEvent) -> None:
    print(event.job_id, event.error_type, event.attempt)


async def main() -> None:
    job_id: str = await resize.using(priority=1, delay=2.0).enqueue("a.png", 640)
    same: str = await resize.enqueue("b.png", width=320, priority=3)
    overridden: str = await resize.using(retries=0, ttl=60.0, timeout=1.0).enqueue("c.png", 1)
    aliases: list[str] = [await resize.delay("d.png", 2), await resize.send("e.png", 3)]
    declared: Queue = await Queue.for_task("typed_usage.resize")
    direct: int = total([1, 2, 3])
    event_emitter.on("job:failed", on_failed)
    queue = Queue("typed")
    state: str | None = await queue.get_job_state(job_id)
    counts: dict[str, int] = await queue.counts()
    await queue.set_rate_limit(50, interval=1.0)  # shared by every worker of the queue
    limit = await queue.get_rate_limit()
    per_second: float | None = None if limit is None else limit.limit / limit.interval
    cleared: bool = await queue.clear_rate_limit()
    worker = Worker(queue, concurrency=settings.worker_concurrency)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        worker.stop()
    print(same, direct, state, counts, overridden, aliases, declared, per_second, cleared)


async def read_the_port(backend: Backend) -> None:
    """An admin script or a custom backend's test reads typed records, never dict keys."""
    reply: ClaimReply = await backend.claim("typed", "w", 1, 30.0)
    for claimed in reply.jobs:
        one: ClaimedJob = claimed
        decoded: Job | None = one.job
        why: str | None = one.decode_error
        settled: SettleReply = await backend.complete("typed", one.id, one.token, "null")
        error = ErrorInfo(type="ValueError", message="boom", traceback="")  # what retry and fail take
        retried: SettleReply = await backend.retry("typed", one.id, one.token, 1.0, error)
        print(decoded, why, settled.ok, retried.ok)
    stored: StoredJob | None = await backend.get_job("typed", "job-1")
    if stored is not None:
        shown: dict[str, Any] = stored.to_dict()  # the shape Queue.get_job returns
        print(stored.state, stored.attempts, stored.job and stored.job.task, shown)
    dead: list[StoredJob] = await backend.list_dlq("typed")
    if isinstance(backend, ConsumerCounter):  # optional: not every backend counts its consumers
        consumers: dict[str, int] = await backend.consumer_counts(["typed"])
        print(consumers)
    print(dead)


def the_builtin_backends_implement_the_port() -> list[Backend]:
    # structural: a signature that drifts from the Protocol fails here
    return [InMemoryBackend(), RedisBackend("redis://127.0.0.1:6379/0")]

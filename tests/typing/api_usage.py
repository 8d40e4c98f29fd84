"""The public API used the way users do; ``mypy --strict`` checks this file in CI."""

from __future__ import annotations

import anyio

from asyncmq_otel import LifecycleEvent, Queue, Worker, event_emitter, settings, task


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

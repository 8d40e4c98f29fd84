"""asyncmq driver: the upstream project whose worker model asyncmq_otel follows."""

import asyncio
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import asyncmq` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


class AsyncMQPeer(_common.Peer):
    name = "asyncmq"
    dists = ("asyncmq",)
    notes = ("library defaults (idle poll 0.05-2 s); add_bulk enqueues one job at a time",)
    has_bulk = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            from asyncmq.backends.redis import RedisBackend
            from asyncmq.conf import settings
            from asyncmq.tasks import task
        except ImportError:
            raise _common.import_or_unavailable("asyncmq") from None
        self.backend = RedisBackend(url)
        # The Worker reads its backend from the global settings, not from the queue.
        settings.backend = self.backend

        @task(queue=_common.QUEUE)
        async def job(ts: float) -> None:
            await _common.handle(ts)

        self.task_id = job.task_id
        self.queue = None

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        from asyncmq.queues import Queue

        self.queue = Queue(_common.QUEUE, backend=self.backend)

    async def enqueue(self, ts: float) -> None:
        await self.queue.add(self.task_id, args=[ts])

    async def enqueue_bulk(self, stamps: list[float]) -> None:
        await self.queue.add_bulk([{"task_id": self.task_id, "args": [ts]} for ts in stamps])

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from asyncmq.queues import Queue
        from asyncmq.workers import Worker

        worker = Worker(Queue(_common.QUEUE, backend=self.backend))
        worker.concurrency = concurrency  # the constructor takes it from settings.worker_concurrency
        task = asyncio.create_task(worker.run())
        await stop.wait()
        worker.stop()
        await asyncio.gather(task, return_exceptions=True)


if __name__ == "__main__":
    _common.main(AsyncMQPeer)

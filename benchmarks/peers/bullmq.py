"""bullmq (the Python port) driver: Lua scripts shared with the Node.js BullMQ."""

import asyncio
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import bullmq` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


async def process(job, _token) -> None:
    await _common.handle(job.data["ts"])


class BullMQPeer(_common.Peer):
    name = "bullmq"
    dists = ("bullmq",)
    notes = ("library defaults (completed jobs kept: removeOnComplete false)",)
    has_bulk = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import bullmq  # noqa: F401 - import check only
        except ImportError:
            raise _common.import_or_unavailable("bullmq") from None
        self.queue = None

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        from bullmq import Queue

        self.queue = Queue(_common.QUEUE, {"connection": self.url})

    async def close_producer(self) -> None:
        if self.queue is not None:
            await self.queue.close()
            self.queue = None

    async def enqueue(self, ts: float) -> None:
        await self.queue.add("job", {"ts": ts})

    async def enqueue_bulk(self, stamps: list[float]) -> None:
        await self.queue.addBulk([{"name": "job", "data": {"ts": ts}} for ts in stamps])

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from bullmq import Worker

        # autorun (the default) starts Worker.run() as a task from the constructor.
        worker = Worker(_common.QUEUE, process, {"connection": self.url, "concurrency": concurrency})
        await stop.wait()
        await worker.close()


if __name__ == "__main__":
    _common.main(BullMQPeer)

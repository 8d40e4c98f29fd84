"""saq driver: Lua enqueue, BLMOVE-based dequeue, one task per job."""

import asyncio
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import saq` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


async def job(_ctx: dict, *, ts: float) -> None:
    await _common.handle(ts)


class SaqPeer(_common.Peer):
    name = "saq"
    dists = ("saq",)
    notes = ("library defaults (results kept, job timeout 10 s)", "no bulk enqueue API")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            from saq import Queue
        except ImportError:
            raise _common.import_or_unavailable("saq") from None
        self._queue_cls = Queue
        self.queue = None

    def _make_queue(self):
        return self._queue_cls.from_url(self.url, name=_common.QUEUE)

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        self.queue = self._make_queue()
        await self.queue.connect()

    async def close_producer(self) -> None:
        if self.queue is not None:
            await self.queue.disconnect()
            self.queue = None

    async def enqueue(self, ts: float) -> None:
        await self.queue.enqueue("job", ts=ts)

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from saq import Worker

        queue = self._make_queue()
        worker = Worker(queue, functions=[job], concurrency=concurrency)
        task = asyncio.create_task(worker.start())
        await stop.wait()
        await worker.stop()
        await asyncio.gather(task, return_exceptions=True)
        await queue.disconnect()


if __name__ == "__main__":
    _common.main(SaqPeer)

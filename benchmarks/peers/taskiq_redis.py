"""taskiq + taskiq-redis driver, on ``RedisStreamBroker`` (XADD / XREADGROUP / XACK).

The stream broker is the one with acknowledgements (a job survives a worker crash); the list and
pub/sub brokers of taskiq-redis drop a job whose worker dies, so they are not comparable.
"""

import asyncio
import contextlib
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import taskiq_redis` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


class TaskiqPeer(_common.Peer):
    name = "taskiq-redis"
    dists = ("taskiq", "taskiq-redis")
    notes = (
        "RedisStreamBroker, no result backend, ack when saved (the taskiq CLI default)",
        "no bulk enqueue API",
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            from taskiq_redis import RedisStreamBroker
        except ImportError:
            raise _common.import_or_unavailable("taskiq-redis") from None
        self._broker_cls = RedisStreamBroker
        self.broker = None
        self.task = None

    def _make_broker(self) -> None:
        self.broker = self._broker_cls(self.url, queue_name=_common.QUEUE)

        @self.broker.task(task_name="job")
        async def job(ts: float) -> None:
            await _common.handle(ts)

        self.task = job

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        # startup() creates the consumer group at "$" before the first XADD, so jobs enqueued
        # before the worker starts are delivered to it.
        self._make_broker()
        await self.broker.startup()

    async def close_producer(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()
            self.broker = None

    async def enqueue(self, ts: float) -> None:
        await self.task.kiq(ts)

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from taskiq.acks import AcknowledgeType
        from taskiq.api import run_receiver_task

        self._make_broker()
        self.broker.is_worker_process = True
        await self.broker.startup()
        task = asyncio.create_task(
            run_receiver_task(self.broker, max_async_tasks=concurrency, ack_time=AcknowledgeType.WHEN_SAVED)
        )
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.broker.shutdown()


if __name__ == "__main__":
    _common.main(TaskiqPeer)

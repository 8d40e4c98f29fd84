"""An in-memory backend whose shutdown requeue always comes back STALE, with two jobs that never finish.

``ASYNCMQ_SETTINGS_MODULE=tests.cli.stale_app`` makes it the worker's backend (``backend`` below), so
a worker stopped at once cannot return its jobs: the CLI must exit 1.
"""

from __future__ import annotations

import anyio

from asyncmq_otel.backends.base import SettleReply, SettleStatus
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task


class StaleRequeue(InMemoryBackend):
    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        return SettleReply(SettleStatus.STALE, owner="another-worker")


backend = StaleRequeue()


@task("stale", name="stale.hold")
async def hold() -> None:
    print("stale.hold started", flush=True)
    await anyio.sleep_forever()


async def _enqueue() -> None:
    queue = Queue("stale", backend=backend)
    for _ in range(2):
        await queue.add("stale.hold")


anyio.run(_enqueue)

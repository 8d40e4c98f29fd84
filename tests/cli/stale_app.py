"""An in-memory backend whose shutdown requeue never gets through, with two jobs that never finish.

``ASYNCMQ_SETTINGS_MODULE=tests.cli.stale_app`` makes it the worker's backend (``backend`` below), so
a worker stopped at once cannot return its jobs within the requeue budget: the CLI must exit 1.
(A STALE answer would not count: it means another worker owns the job now.)
"""

from __future__ import annotations

import anyio

from asyncmq_otel.backends.base import SettleReply
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.errors import BackendUnavailable
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task


class StaleRequeue(InMemoryBackend):
    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        raise BackendUnavailable("the backend went away during shutdown")


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

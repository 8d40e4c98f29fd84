"""Child of the blocked-stderr test: a worker whose stderr is a pipe nobody reads runs N jobs.

argv: result file, job count, and optional ``instrument()`` keywords as JSON. When the burst is done it
writes ``{"completed": n, "dropped": {...}}`` to the result file (never to stdout or stderr, which may block).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from asyncmq_otel import events, telemetry
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.workers import Worker

QUEUE = "blocked-stderr"


@task(QUEUE, name="blocked.noop")
async def noop(n: int) -> int:
    return n


async def main(result: Path, jobs: int, options: dict[str, object]) -> None:
    completed = 0

    def count(_event: events.LifecycleEvent) -> None:
        nonlocal completed
        completed += 1

    events.bus.on("job:completed", count, inline=True)
    telemetry.instrument(metrics_addr="", log_format="json", log_level="INFO", **options)  # type: ignore[arg-type]
    backend = InMemoryBackend()
    queue = Queue(QUEUE, backend=backend)
    for n in range(jobs):
        await queue.add("blocked.noop", args=[n])
    await Worker(QUEUE, backend=backend, burst=True, concurrency=20).run()
    dropped = {f"{signal}/{reason}": n for (signal, reason), n in events.bus.dropped.items()}
    await anyio.Path(result).write_text(json.dumps({"completed": completed, "dropped": dropped}))


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})

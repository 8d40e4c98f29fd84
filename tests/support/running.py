"""Run a real worker inside a test's task group and stop it cleanly afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from asyncmq_otel.backends.base import Backend
from asyncmq_otel.workers import Worker

from .poll import eventually


@asynccontextmanager
async def running_worker(queue: str | list[str], backend: Backend, **options: Any) -> AsyncIterator[Worker]:
    """Start ``Worker(queue, backend=backend, **options)``; on exit stop it and wait for its tail."""
    worker = Worker(queue, backend=backend, **options)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await eventually(lambda: worker.state in {"running", "stopped"}, what="worker started")
        try:
            yield worker
        finally:
            worker.stop()
            with anyio.fail_after(15):
                await eventually(lambda: worker.state == "stopped", timeout=15, what="worker stopped")

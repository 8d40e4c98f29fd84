"""Tasks of the multi-process worker tests (``--app tests.cli.multiprocess_app``)."""

from __future__ import annotations

import os

import anyio

from asyncmq_otel.tasks import task


@task("mptest", name="mptest.record")
async def record(ledger: str, number: int) -> int:
    """Append ``<number> <pid>`` to the ledger file (one small O_APPEND write), then return the pid.

    The short await lets the other process claim its share of the queue.
    """
    await anyio.sleep(0.01)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{number} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return os.getpid()

"""arq driver: jobs in a sorted set, a worker that polls it (``poll_delay`` 0.5 s by default)."""

import asyncio
import contextlib
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import arq` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


async def job(_ctx: dict, ts: float) -> None:
    await _common.handle(ts)


class ArqPeer(_common.Peer):
    name = "arq"
    dists = ("arq",)
    notes = ("library defaults: poll_delay 0.5 s, keep_result 3600 s", "no bulk enqueue API")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            from arq.connections import RedisSettings
        except ImportError:
            raise _common.import_or_unavailable("arq") from None
        self.settings = RedisSettings.from_dsn(url)
        self.pool = None

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        from arq import create_pool

        self.pool = await create_pool(self.settings)

    async def close_producer(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue(self, ts: float) -> None:
        await self.pool.enqueue_job("job", ts)

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from arq.worker import Worker, func

        worker = Worker(
            functions=[func(job, name="job")],
            redis_settings=self.settings,
            max_jobs=concurrency,
            handle_signals=False,
        )
        task = asyncio.create_task(worker.async_run())
        await stop.wait()
        await worker.close()  # cancels the main task when signals are not handled
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    _common.main(ArqPeer)

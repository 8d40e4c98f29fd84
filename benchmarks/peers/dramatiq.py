"""dramatiq driver: RedisBroker, thread-based workers; W3 uses an async actor (AsyncIO middleware)."""

import asyncio
import sys
from pathlib import Path

# This script shares its name with the library it drives: take its folder off the import path so
# `import dramatiq` finds the library, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402


class DramatiqPeer(_common.Peer):
    name = "dramatiq"
    dists = ("dramatiq",)
    notes = (
        "concurrency = worker threads; no-op jobs on a sync actor, W3 on an async actor",
        "library defaults: idle consumers back off up to worker_timeout (1 s)",
        "connection pool raised to 1,000 (redis-py 8's default of 100 is too few for 100 threads)",
        "no bulk enqueue API",
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import dramatiq
            import redis
            from dramatiq.brokers.redis import RedisBroker
            from dramatiq.middleware import AsyncIO
        except ImportError:
            raise _common.import_or_unavailable("dramatiq[redis]") from None
        # redis-py 8 caps a pool at 100 connections, fewer than 100 worker threads plus the
        # consumer need in W3 ("Too many connections" on acks); lift the cap rather than the load.
        pool = redis.ConnectionPool.from_url(url, max_connections=1_000)
        self.broker = RedisBroker(connection_pool=pool)
        self.broker.add_middleware(AsyncIO())
        dramatiq.set_broker(self.broker)

        # Sync no-op: dramatiq's natural job; an async actor would add a thread hop per job.
        @dramatiq.actor(queue_name=_common.QUEUE, actor_name="noop", broker=self.broker)
        def noop(ts: float) -> None:
            _common.handle_sync(ts)

        @dramatiq.actor(queue_name=_common.QUEUE, actor_name="sleeper", broker=self.broker)
        async def sleeper(ts: float) -> None:
            await _common.handle(ts)

        # W1r's job body makes its Redis round trip from the sync actor's thread (a blocking client).
        self.actors = {"noop": noop, "sleep": sleeper, "redis": noop}
        self.actor = noop

    async def open_producer(self, mode: str) -> None:
        self.actor = self.actors[mode]

    async def enqueue(self, ts: float) -> None:
        self.actor.send(ts)  # synchronous: dramatiq has no asyncio client

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        import dramatiq

        worker = dramatiq.Worker(self.broker, worker_threads=concurrency)
        worker.start()
        await stop.wait()
        await asyncio.get_running_loop().run_in_executor(None, worker.stop)
        self.broker.close()


if __name__ == "__main__":
    _common.main(DramatiqPeer)

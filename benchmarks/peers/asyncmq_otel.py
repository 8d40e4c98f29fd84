"""asyncmq_otel driver: this repository's queue on its RedisBackend, installed editable in its venv.

Besides the common workloads it runs the telemetry overhead check (telemetry contract §6, rev. 2):
W1 with telemetry off, fully on (every attempt sampled, metrics, JSON logs at INFO to a file, spans
exported over OTLP/HTTP to a receiver in another process, /metrics scraped every second), the same
at sampling ratio 0, and each signal alone; and the producer's single enqueue with telemetry off and
fully on.
"""

import asyncio
import sys
import threading
import urllib.request
from pathlib import Path

# This script shares its name with the package it drives: take its folder off the import path so
# `import asyncmq_otel` finds the package, and reach the shared harness as `peers._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from peers import _common  # noqa: E402

TASK_ID = "bench.job"
PREFIX = "bench"


class AsyncMQOtelPeer(_common.Peer):
    name = "asyncmq_otel"
    dists = ("asyncmq-otel",)
    notes = ("editable install of this repository", "telemetry off unless a workload says otherwise")
    has_bulk = True
    has_telemetry = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            from asyncmq_otel.backends.redis import RedisBackend
            from asyncmq_otel.queues import Queue  # noqa: F401 - import check: the API must all be there
            from asyncmq_otel.tasks import task
            from asyncmq_otel.workers import Worker  # noqa: F401 - as above
        except ImportError:
            raise _common.import_or_unavailable("asyncmq_otel's Redis backend, queues or workers") from None
        self._backend_cls = RedisBackend
        self.backend = None
        self.queue = None

        @task(_common.QUEUE, name=TASK_ID)
        async def job(ts: float) -> None:
            await _common.handle(ts)

        self._scraper_stop = threading.Event()

    def _make_backend(self):
        return self._backend_cls(self.url, prefix=PREFIX)

    async def open_producer(self, mode: str) -> None:  # noqa: ARG002 - one task serves both modes
        from asyncmq_otel.queues import Queue

        self.backend = self._make_backend()
        self.queue = Queue(_common.QUEUE, backend=self.backend)

    async def close_producer(self) -> None:
        if self.backend is not None:
            await _close(self.backend)
            self.backend = None

    async def enqueue(self, ts: float) -> None:
        await self.queue.add(TASK_ID, args=[ts])

    async def enqueue_bulk(self, stamps: list[float]) -> None:
        await self.queue.add_bulk([{"task_id": TASK_ID, "args": [ts]} for ts in stamps])

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:  # noqa: ARG002
        from asyncmq_otel.workers import Worker

        backend = self._make_backend()
        worker = Worker(_common.QUEUE, backend=backend, concurrency=concurrency)
        task = asyncio.create_task(worker.run())
        await stop.wait()
        await _common.maybe_await(worker.stop())
        await asyncio.gather(task, return_exceptions=True)
        await _close(backend)

    def telemetry_missing(self) -> str | None:
        import asyncmq_otel

        missing = [
            f"asyncmq_otel.{n}()"
            for n in ("instrument", "uninstrument", "metrics_url")
            if not hasattr(asyncmq_otel, n)
        ]
        return f"{', '.join(missing)} not available yet" if missing else None

    def setup_telemetry(self, config: str, otlp_endpoint: str | None) -> None:
        import asyncmq_otel

        signals = {
            "full": {},
            "ratio0": {"sampling_ratio": 0.0},
            "metrics": {"traces": False, "logs": False},
            "logs": {"traces": False, "metrics": False},
            "traces": {"metrics": False, "logs": False},
        }[config]
        options = {
            "service_name": "asyncmq-bench",
            "otlp_endpoint": otlp_endpoint,
            "sampling_ratio": 1.0,
            "log_format": "json",
            "log_level": "INFO",
            # Without the scrape sink there is no /metrics to serve or scrape.
            "metrics_addr": "127.0.0.1:0" if signals.get("metrics", True) else "",
            **signals,
        }
        asyncmq_otel.instrument(**options)
        url = asyncmq_otel.metrics_url()
        if url:
            threading.Thread(target=self._scrape, args=(url,), daemon=True).start()

    def _scrape(self, url: str) -> None:
        # A Prometheus server would scrape every second; the scrape's cost is part of the budget.
        while not self._scraper_stop.wait(1.0):
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - 127.0.0.1 only
                    resp.read()
            except OSError:
                continue

    def teardown_telemetry(self) -> None:
        import asyncmq_otel

        self._scraper_stop.set()
        asyncmq_otel.uninstrument()


async def _close(backend: object) -> None:
    for name in ("aclose", "close"):
        method = getattr(backend, name, None)
        if method is not None:
            await _common.maybe_await(method())
            return


if __name__ == "__main__":
    _common.main(AsyncMQOtelPeer)

"""The standalone exporter reports worker liveness per queue from Redis (``asyncmq_queue_consumers``).

Two workers consume one queue of a unique prefix while ``asyncmq-otel exporter`` runs as a real process;
its ``/metrics`` must show 2 live consumers for that queue (and 0 for a queue nobody consumes), pass
``promtool check metrics``, and drop to 0 once the workers have stopped.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry.metrics import METRICS_BY_NUMBER
from asyncmq_otel.workers import Worker
from tests.ops._contract import REPO_ROOT
from tests.ops._processes import cli_env
from tests.support.poll import eventually
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    free_port,
    redis_prefix,
    redis_url,
)

pytestmark = [pytest.mark.ops, pytest.mark.redis, pytest.mark.anyio]

CONSUMERS = METRICS_BY_NUMBER[25].prometheus_name  # asyncmq_queue_consumers


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's async client is asyncio-only."""
    return "asyncio"


@pytest.fixture
async def backend(
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
) -> AsyncIterator[RedisBackend]:
    made = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    yield made
    await made.close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - the exporter on 127.0.0.1
        return str(reply.read().decode())


def _consumers(text: str) -> dict[str, float]:
    return {
        sample.labels["messaging_destination_name"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == CONSUMERS
    }


@pytest.mark.timeout(120)
async def test_exporter_reports_live_consumers_per_queue_and_zero_after_they_stop(
    backend: RedisBackend,
    promtool: str,
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
    unique_name: str,
    tmp_path: Path,
) -> None:
    served, unserved = Queue(f"{unique_name}a", backend=backend), Queue(f"{unique_name}b", backend=backend)
    # Known to the backend (so the exporter samples them) without giving the workers anything to run.
    await served.add("nowhere.registered", [0], delay=3600)
    await unserved.add("nowhere.registered", [0], delay=3600)
    address = f"127.0.0.1:{free_port()}"
    url = f"http://{address}/metrics"
    log = tmp_path / "exporter.log"
    scraped: list[str] = []

    async def consumers_are(expected: dict[str, float]) -> None:
        async def reached() -> bool:
            assert proc.returncode is None, log.read_text(encoding="utf-8", errors="replace")
            try:
                text = await anyio.to_thread.run_sync(_scrape, url)
            except OSError:
                return False  # not listening yet
            scraped[:] = [text]
            got = _consumers(text)
            return {queue: got.get(queue) for queue in expected} == expected

        try:
            await eventually(reached, timeout=30, interval=0.1, what=f"{CONSUMERS} == {expected}")
        except AssertionError:
            got = _consumers(scraped[0]) if scraped else "nothing scraped"
            pytest.fail(f"expected {expected}, got {got}\nexporter log:\n{log.read_text(encoding='utf-8')}")

    with log.open("wb") as handle:
        proc = await anyio.open_process(
            [sys.executable, "-m", "asyncmq_otel", "exporter", "--backend", redis_url, "--prefix", redis_prefix,
             "--metrics-addr", address, "--interval", "0.2", "--log-format", "json"],
            cwd=REPO_ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
        )  # fmt: skip
    try:
        workers = [Worker(served, backend=backend, concurrency=1) for _ in range(2)]
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.run)
            await consumers_are({served.name: 2.0, unserved.name: 0.0})
            text = scraped[0]
            for worker in workers:
                worker.stop()
        # Both deregistered on the way out: nobody consumes the queue any more.
        await consumers_are({served.name: 0.0, unserved.name: 0.0})
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
            with anyio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()

    checked = await anyio.run_process([promtool, "check", "metrics"], input=text.encode(), check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked
    family = next(f for f in text_string_to_metric_families(text) if f.name == CONSUMERS)
    assert family.type == "gauge"
    assert {tuple(sorted(sample.labels)) for sample in family.samples} == {
        ("messaging_destination_name", "messaging_system")
    }

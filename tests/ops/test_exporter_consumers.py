"""The standalone exporter reports worker liveness per queue from Redis (``asyncmq_queue_consumers``).

Two workers consume one queue of a unique prefix while ``asyncmq-otel exporter`` runs as a real process;
its ``/metrics`` must show 2 live consumers for that queue (and 0 for a queue nobody consumes), pass
``promtool check metrics``, and drop to 0 once the workers have stopped.
"""

from __future__ import annotations

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry.metrics import METRICS_BY_NAME
from asyncmq_otel.workers import Worker
from tests.ops._processes import StartExporter

pytestmark = [pytest.mark.ops, pytest.mark.redis, pytest.mark.anyio]

CONSUMERS = METRICS_BY_NAME["asyncmq.queue.consumers"].prometheus_name


def _consumers(text: str) -> dict[str, float]:
    return {
        sample.labels["messaging_destination_name"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == CONSUMERS
    }


@pytest.mark.timeout(120)
async def test_exporter_reports_live_consumers_per_queue_and_zero_after_they_stop(
    backend: RedisBackend, promtool: str, start_exporter: StartExporter, unique_name: str
) -> None:
    served, unserved = Queue(f"{unique_name}a", backend=backend), Queue(f"{unique_name}b", backend=backend)
    # Known to the backend (so the exporter samples them) without giving the workers anything to run.
    await served.add("nowhere.registered", [0], delay=3600)
    await unserved.add("nowhere.registered", [0], delay=3600)
    async with start_exporter() as exporter:
        workers = [Worker(served, backend=backend, concurrency=1) for _ in range(2)]
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.run)
            live = {served.name: 2.0, unserved.name: 0.0}
            text = await exporter.wait_for(_consumers, live, timeout=30, what=CONSUMERS)
            for worker in workers:
                worker.stop()
        # Both deregistered on the way out: nobody consumes the queue any more.
        await exporter.wait_for(
            _consumers, {served.name: 0.0, unserved.name: 0.0}, timeout=30, what=CONSUMERS
        )

    checked = await anyio.run_process([promtool, "check", "metrics"], input=text.encode(), check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked
    family = next(f for f in text_string_to_metric_families(text) if f.name == CONSUMERS)
    assert family.type == "gauge"
    assert {tuple(sorted(sample.labels)) for sample in family.samples} == {
        ("messaging_destination_name", "messaging_system")
    }

"""The standalone exporter's ``/metrics``: lint-clean exposition and the right depth per queue and state.

``asyncmq-otel exporter`` runs as a real process against the shared Redis under a unique prefix, sampling
two queues the test filled: one paused with 3 ready, 2 delayed and 1 dead-lettered job, and one running
with a single ready job. (tests/cli/test_signals.py covers its banner and SIGTERM exit; this is about
what it exports.)
"""

from __future__ import annotations

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry.metrics import METRICS, METRICS_BY_NAME, STATES
from asyncmq_otel.workers import Worker
from tests.ops._processes import StartExporter

pytestmark = [pytest.mark.ops, pytest.mark.redis, pytest.mark.anyio]

DEPTH = METRICS_BY_NAME["asyncmq.queue.depth"].prometheus_name
OLDEST_AGE = METRICS_BY_NAME["asyncmq.queue.oldest_age"].prometheus_name
PAUSED = METRICS_BY_NAME["asyncmq.queue.paused"].prometheus_name
QUEUE_GAUGES = {DEPTH, OLDEST_AGE, PAUSED}
BACKEND_UP = METRICS_BY_NAME["asyncmq.backend.up"].prometheus_name
UNKNOWN_TASK = "nowhere.registered"  # the exporter needs no task code; the worker dead-letters it


def _queue_gauges(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, queue, state) -> value for the queue gauges; state is "" for the per-queue ones."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in QUEUE_GAUGES:
                assert sample.labels.get("messaging_system") == "asyncmq", sample
                key = (
                    sample.name,
                    sample.labels["messaging_destination_name"],
                    sample.labels.get("state", ""),
                )
                values[key] = sample.value
    return values


def _gauges_and_backend_up(text: str) -> dict[tuple[str, str, str], float]:
    """The queue gauges and ``asyncmq_backend_up`` (keyed ``(name, "", "")``) of a scraped page."""
    values = _queue_gauges(text)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == BACKEND_UP:
                values[BACKEND_UP, "", ""] = sample.value
    return values


def _metrics_with_samples(text: str) -> set[str]:
    """OTel names of the definition table's metrics that have at least one sample in ``text``."""
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    rows = set()
    for row in METRICS:
        suffixes = ("_bucket", "_count", "_sum") if row.prometheus_type == "histogram" else ("",)
        if any(row.prometheus_name + suffix in names for suffix in suffixes):
            rows.add(row.name)
    return rows


@pytest.mark.timeout(90)
async def test_exporter_metrics_pass_promtool_and_report_depth_by_state(
    backend: RedisBackend, promtool: str, start_exporter: StartExporter, unique_name: str
) -> None:
    filled, other = Queue(f"{unique_name}a", backend=backend), Queue(f"{unique_name}b", backend=backend)
    # One dead-lettered job: a burst worker finds no code for the task and settles it as unknown_task.
    await filled.add(UNKNOWN_TASK, [0])
    await Worker(filled, backend=backend, burst=True).run()
    for index in range(3):
        await filled.add(UNKNOWN_TASK, [index])
    for index in range(2):
        await filled.add(UNKNOWN_TASK, [index], delay=3600)
    await filled.pause()
    await other.add(UNKNOWN_TASK, [0])
    counts = await filled.counts()
    assert (counts["waiting"], counts["delayed"], counts["active"]) == (3, 2, 0), counts
    assert len(await filled.dlq()) == 1

    expected = {
        **{(DEPTH, filled.name, state): value for state, value in zip(STATES, (3, 2, 0, 1, 0), strict=True)},
        **{(DEPTH, other.name, state): value for state, value in zip(STATES, (1, 0, 0, 0, 0), strict=True)},
        (PAUSED, filled.name, ""): 1,
        (PAUSED, other.name, ""): 0,
        # one page with the gauges and the backend's health: they are set by one sampling round
        (BACKEND_UP, "", ""): 1,
    }
    async with start_exporter() as exporter:
        text = await exporter.wait_for(
            _gauges_and_backend_up, expected, timeout=20, what="the filled queues' gauges exported"
        )

    checked = await anyio.run_process([promtool, "check", "metrics"], input=text.encode(), check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked

    gauges = _queue_gauges(text)
    # The oldest ready job of the paused queue has been runnable since the test enqueued it.
    assert 0 < gauges[(OLDEST_AGE, filled.name, "")] < 60
    assert 0 <= gauges[(OLDEST_AGE, other.name, "")] < 60
    # It holds no job data and runs no worker: of the table's metrics it exports the queue gauges (live
    # consumers included) and its own health (backend reachable, telemetry dropped), nothing about jobs.
    assert _metrics_with_samples(text) == {
        "asyncmq.queue.depth",
        "asyncmq.queue.oldest_age",
        "asyncmq.queue.paused",
        "asyncmq.telemetry.dropped",
        "asyncmq.backend.up",
        "asyncmq.queue.consumers",
        "asyncmq.queue.blocked.oldest_age",
    }

"""Log lines: trace correlation, one line per event, no field leaks between attempts (§4, §9 logs row)."""

from __future__ import annotations

import collections
import json
import re
from typing import Any

import anyio
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from asyncmq_otel import telemetry
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry import AddTraceContext
from asyncmq_otel.telemetry.logging import EVENT_LOG_LEVELS
from asyncmq_otel.testing import Captured
from asyncmq_otel.workers import Worker

from .spans import ctx, for_job

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

TRACE_ID, SPAN_ID, FLAGS = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}"), re.compile(r"0[01]")
app_lines: list[dict[str, Any]] = []
gate: dict[str, int] = {}


def _keep(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    app_lines.append(dict(event))
    raise structlog.DropEvent


# An application's own logger, configured the way §4.1 tells users to (no global configuration).
app_log = structlog.wrap_logger(
    structlog.PrintLogger(), processors=[structlog.contextvars.merge_contextvars, AddTraceContext(), _keep]
)


@task("logs-q", name="logs.interleaved")
async def interleaved(key: str) -> str:
    app_log.info("handler.begin", key=key)
    gate[key] = 1
    while len(gate) < 2:  # both attempts are inside their handler before either finishes
        await anyio.sleep(0.005)
    app_log.info("handler.end", key=key)
    return key


@task("logs-q", name="logs.flaky", retries=1, backoff=0.01)
async def flaky(key: str) -> None:
    gate[key] = gate.get(key, 0) + 1
    if gate[key] == 1:
        raise RuntimeError("first attempt fails")


@pytest.fixture(autouse=True)
def _reset() -> None:
    app_lines.clear()
    gate.clear()


async def drain(name: str, backend, **options: Any) -> None:
    with anyio.fail_after(10):
        await Worker(name, backend=backend, burst=True, **options).run()


async def test_handler_logs_carry_their_own_attempt_fields_and_ids(
    captured: Captured, backend, unique_name
) -> None:
    q = Queue(unique_name, backend=backend)
    ids = {key: await q.add("logs.interleaved", args=[key]) for key in ("a", "b")}
    await drain(unique_name, backend, concurrency=2)
    assert len(app_lines) == 4
    for line in app_lines:
        job_id = ids[line["key"]]
        (process,) = for_job(captured.spans, job_id, "process")
        assert line["messaging.message.id"] == job_id
        assert line["asyncmq.task.name"] == "logs.interleaved"
        assert line["asyncmq.job.attempt"] == 1
        assert line["trace_id"] == format(ctx(process).trace_id, "032x")
        assert line["span_id"] == format(ctx(process).span_id, "016x")
    # Outside the attempts, nothing is bound any more and no span is current.
    app_log.info("after")
    assert set(app_lines[-1]) == {"event"}


async def test_one_line_per_event_with_its_name_and_level(captured: Captured, backend, unique_name) -> None:
    q = Queue(unique_name, backend=backend)
    await q.add("logs.flaky", args=["x"], retries=1, backoff=0.01)
    await q.pause()
    await q.resume()
    await drain(unique_name, backend)
    expected = collections.Counter(
        (EVENT_LOG_LEVELS[e.name][0], logging_name(EVENT_LOG_LEVELS[e.name][1]))
        for e in captured.events
        if e.name in EVENT_LOG_LEVELS
    )
    lines = collections.Counter(
        (line["event"], line["level"]) for line in captured.logs if line.get("logger") == "asyncmq_otel"
    )
    assert lines == expected
    assert lines[("job.retried", "warning")] == 1
    assert lines[("job.started", "info")] == 2
    assert lines[("job.completed", "info")] == 1
    for line in captured.logs:
        if line["event"].startswith(("job.", "queue.", "worker.")):
            assert line["messaging.system"] == "asyncmq"
            assert line["messaging.destination.name"] == unique_name
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
        if "trace_id" in line:
            assert TRACE_ID.fullmatch(line["trace_id"])
            assert SPAN_ID.fullmatch(line["span_id"])
            assert FLAGS.fullmatch(line["trace_flags"])


async def test_ids_are_present_at_sampling_ratio_zero(backend, unique_name, capsys) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    telemetry.instrument(tracer_provider=provider, metrics_addr="", log_format="json", log_level="INFO")
    await Queue(unique_name, backend=backend).add("logs.flaky", args=["zero"], retries=1, backoff=0.01)
    await drain(unique_name, backend)
    telemetry.uninstrument()
    lines = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    started = [line for line in lines if line["event"] == "job.started"]
    assert len(started) == 2
    for line in started:
        assert TRACE_ID.fullmatch(line["trace_id"])
        assert SPAN_ID.fullmatch(line["span_id"])
        assert line["trace_flags"] == "00"
    # Rev. 2 (§6): an unsampled attempt makes no span; its lines carry the stored (producer's) ids.
    assert len({(line["trace_id"], line["span_id"]) for line in started}) == 1
    for line in lines:
        if line["event"].startswith("worker."):
            assert "trace_id" not in line
    assert {line["level"] for line in lines if line["event"] == "job.retried"} == {"warning"}
    assert not [
        line for line in lines if line["event"] in {"job.enqueued", "worker.heartbeat"}
    ]  # DEBUG is off
    provider.shutdown()


def logging_name(level: int) -> str:
    import logging

    return logging.getLevelName(level).lower()

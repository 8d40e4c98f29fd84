"""OTLP/HTTP on the wire: spans, metrics and logs reach a receiver with the right resource.

The worker runs in a child process so that the providers ``instrument()`` builds (and installs as the
OTel globals) never leak into this test process; the child also forks, and the forked child's spans
must arrive too (a forked child exports its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from asyncmq_otel.telemetry.metrics import B_PROC
from tests.support.poll import wait_until

from .otlp_receiver import attributes, otlp_receiver

ROOT = Path(__file__).resolve().parents[2]


def _reader(stream, lines: list[str]) -> None:
    lines.extend(line.strip() for line in stream)


def test_spans_metrics_and_logs_arrive_over_otlp_http_also_from_a_forked_child() -> None:
    with otlp_receiver() as (endpoint, received):
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "wire-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "PYTHONPATH": str(ROOT),
        }
        with subprocess.Popen(
            [sys.executable, "-m", "tests.telemetry.otlp_child"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as child:
            lines: list[str] = []
            reader = threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True)
            reader.start()
            try:
                _drive(child, lines, received)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
                reader.join(timeout=5)


def _drive(child: subprocess.Popen[str], lines: list[str], received) -> None:
    wait_until(lambda: "drained" in lines, timeout=20, what="the child's worker drained")
    # Nothing was uninstrumented yet: what arrived was flushed by the worker's shutdown tail.
    wait_until(
        lambda: len([s for _, s in received.spans() if s.name == "process otlp-wire"]) == 2,
        timeout=10,
        what="both attempts' spans",
    )
    wait_until(lambda: received.metric_points() and received.log_records(), timeout=10, what="metrics, logs")
    _check_parent_signals(received, child.pid)

    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.wait(timeout=20) == 0
    wait_until(lambda: "forked child exited 0" in lines, timeout=5, what="the forked child")
    wait_until(
        lambda: (
            {r["process.pid"] for r, s in received.spans() if s.name == "process otlp-wire"} - {child.pid}
        ),
        timeout=10,
        what="the forked child's spans",
    )


def _check_parent_signals(received, pid: int) -> None:
    spans = [(r, s) for r, s in received.spans() if r.get("process.pid") == pid]
    resource = spans[0][0]
    assert resource["service.name"] == "wire-test"
    assert resource["deployment.environment"] == "test"
    assert resource["service.instance.id"]
    assert resource["host.name"]
    by_name: dict[str, list[Span]] = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)
    (request,) = by_name["producer request"]
    (send,) = by_name["send otlp-wire"]
    first, second = sorted(by_name["process otlp-wire"], key=lambda s: s.start_time_unix_nano)
    assert send.kind == Span.SpanKind.SPAN_KIND_PRODUCER
    assert send.parent_span_id == request.span_id
    assert first.kind == second.kind == Span.SpanKind.SPAN_KIND_CONSUMER
    assert first.parent_span_id == second.parent_span_id == send.span_id
    assert attributes(first.attributes)["asyncmq.job.outcome"] == "retried"
    assert attributes(first.attributes)["error.type"] == "__main__.WireError"  # the child runs as __main__
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert attributes(second.attributes)["asyncmq.job.attempt"] == 2
    link_types = {attributes(link.attributes)["asyncmq.link.type"]: link.span_id for link in second.links}
    assert link_types == {"creation": send.span_id, "previous_attempt": first.span_id}

    metrics = {metric.name: (r, metric) for r, metric in received.metric_points()}
    resource, process = metrics["messaging.process.duration"]
    assert resource["service.name"] == "wire-test"
    assert process.unit == "s"
    points = process.histogram.data_points
    assert {tuple(p.explicit_bounds) for p in points} == {B_PROC}
    assert sum(p.count for p in points) == 2
    outcomes = {
        attributes(p.attributes)["outcome"]: p.as_double or p.as_int
        for p in metrics["asyncmq.job.outcomes"][1].sum.data_points
        if (p.as_double or p.as_int)
    }
    assert outcomes == {"retried": 1, "completed": 1}
    assert "error.type" not in {
        k
        for p in metrics["asyncmq.job.outcomes"][1].sum.data_points
        for k in attributes(p.attributes)
        if attributes(p.attributes)["outcome"] == "completed"
    }

    records = [(r, rec) for r, rec in received.log_records() if r.get("process.pid") == pid]
    started = [rec for _, rec in records if rec.body.string_value == "job.started"]
    assert len(started) == 2
    assert {rec.span_id for rec in started} == {first.span_id, second.span_id}
    assert {rec.trace_id for rec in started} == {send.trace_id}
    attrs = attributes(started[0].attributes)
    assert attrs["messaging.destination.name"] == "otlp-wire"
    assert attrs["asyncmq.task.name"] == "wire.flaky"
    assert started[0].severity_text == "DEBUG"  # one INFO line per attempt, at its outcome

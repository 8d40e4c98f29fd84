"""Log lines: trace correlation, one line per event, no field leaks between attempts."""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry

from asyncmq_otel import telemetry
from asyncmq_otel.errors import TelemetryConfigError
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry import AddTraceContext, TelemetryConfig, instrumentation
from asyncmq_otel.telemetry.log_adapter import EVENT_LOG_LEVELS, LogWriter
from asyncmq_otel.testing import Captured, capture_telemetry, clean_bus
from asyncmq_otel.workers import Worker
from tests.support.poll import wait_until

from .spans import ctx, for_job

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

TRACE_ID, SPAN_ID, FLAGS = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}"), re.compile(r"0[01]")
app_lines: list[dict[str, Any]] = []
gate: dict[str, int] = {}


def _keep(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    app_lines.append(dict(event))
    raise structlog.DropEvent


# An application's own logger, as the telemetry contract tells applications to build it: merge_contextvars
# and AddTraceContext in their own chain, no global configuration.
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


def _half_attempt(event_id: str) -> LifecycleEvent:
    return LifecycleEvent(
        "job:started",
        time.time(),
        queue="half-q",
        job_id=event_id,
        task="logs.half",
        attempt=1,
        worker_id="w-1",
        group="default",
    )


def _started_and_never_finished() -> None:
    """What a sync test of synthetic events does: a ``job:started`` whose outcome never comes."""
    with capture_telemetry():
        bus.emit(_half_attempt("half-1"))
        # the adapter bound the attempt's fields in this context: the thread's, in a sync test
        assert structlog.contextvars.get_contextvars()["messaging.message.id"] == "half-1"


def _a_later_test_logs_with_nothing_bound(runner: str) -> None:
    """A later async test: anyio copies the thread's context into the task that runs it."""

    async def log() -> dict[str, Any]:
        app_log.info("later")
        return app_lines[-1]

    assert set(anyio.run(log, backend=runner)) == {"event"}


@pytest.mark.parametrize("order", ["half_attempt_first", "half_attempt_last"])
@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_an_attempt_a_test_never_finished_leaves_no_fields_to_the_next_test(order: str, runner: str) -> None:
    """Each step runs in ``clean_bus()`` as the autouse fixture runs each test: both orders pass."""
    steps = [_started_and_never_finished, lambda: _a_later_test_logs_with_nothing_bound(runner)]
    for step in steps if order == "half_attempt_first" else steps[::-1]:
        with clean_bus():
            step()
    assert structlog.contextvars.get_contextvars() == {}


def test_clean_bus_unbinds_what_an_instrumentation_bound_in_the_block(capsys) -> None:
    """Without ``capture_telemetry``: ``instrument()`` itself, and a field bound before the block kept."""
    provider = TracerProvider(sampler=ALWAYS_OFF)
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        with clean_bus():
            telemetry.instrument(
                tracer_provider=provider, metrics_addr="", log_format="json", log_level="INFO"
            )
            bus.emit(_half_attempt("half-2"))
            assert structlog.contextvars.get_contextvars()["messaging.message.id"] == "half-2"
            telemetry.uninstrument()
        assert structlog.contextvars.get_contextvars() == {"request_id": "req-7"}
    provider.shutdown()
    capsys.readouterr()


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
    assert lines[("job.started", "debug")] == 2
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
    # One line per attempt at INFO, at its outcome (job.started is DEBUG).
    assert not [line for line in lines if line["event"] == "job.started"]
    started = [line for line in lines if line["event"] in {"job.retried", "job.completed"}]
    assert len(started) == 2
    for line in started:
        assert TRACE_ID.fullmatch(line["trace_id"])
        assert SPAN_ID.fullmatch(line["span_id"])
        assert line["trace_flags"] == "00"
    # An unsampled attempt makes no span (the overhead rule); its lines carry the stored (producer's) ids.
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


ROOT = Path(__file__).resolve().parents[2]


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("options", "dropped"),
    [({}, False), ({"log_queue_size": 50}, True)],
    ids=["default-queue", "small-queue-drops"],
)
def test_a_stderr_nobody_reads_does_not_stop_the_worker(
    tmp_path: Path, options: dict[str, Any], dropped: bool
) -> None:
    # rev. 1 wrote and flushed each line on the event loop: the worker stopped at 48 jobs.
    result = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.telemetry.blocked_stderr_child",
            str(result),
            "2000",
            json.dumps(options),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read
    ) as child:
        try:
            wait_until(lambda: _read_result(result) is not None, timeout=90, what="2,000 jobs completed")
        finally:
            child.kill()
            child.wait()
    outcome = _read_result(result)
    assert outcome is not None
    assert outcome["completed"] == 2000
    assert (outcome["dropped"].get("log/queue_full", 0) > 0) is dropped


async def test_context_bound_by_the_application_appears_on_the_adapters_lines(
    captured: Captured, backend, unique_name
) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-42"):
        await Queue(unique_name, backend=backend).add("logs.flaky", args=["ctx"], retries=1, backoff=0.01)
    (enqueued,) = captured.logs_named("job.enqueued")
    assert enqueued["request_id"] == "req-42"
    await Queue(unique_name, backend=backend).add("logs.flaky", args=["no-ctx"], retries=1, backoff=0.01)
    assert "request_id" not in captured.logs_named("job.enqueued")[-1]


class _Blocking(logging.Handler):
    """An application handler whose stream blocks until released (a stderr nobody reads)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.release.wait(timeout=20)
        self.records.append(record)


@pytest.fixture
def root_handler() -> Iterator[_Blocking]:
    handler = _Blocking()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        handler.release.set()
        root.removeHandler(handler)


def _dropped(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value(
        "asyncmq_telemetry_dropped_total", {"signal": "log", "reason": "queue_full"}
    )
    return value or 0.0


def test_stdlib_output_reaches_the_applications_handlers_and_a_full_queue_drops_and_counts(
    root_handler: _Blocking,
) -> None:
    registry = CollectorRegistry()
    telemetry.instrument(
        traces=False,
        metrics_addr="",
        prometheus_registry=registry,
        logs_output="stdlib",
        log_level="INFO",
        log_queue_size=2,
        flush_timeout_s=0.2,
    )
    assert logging.getLogger(
        "asyncmq_otel"
    ).handlers  # only the queue's handler: nothing is written on the loop
    bus.emit(LifecycleEvent("queue:paused", time.time(), queue="stdlib-q"))
    assert root_handler.entered.wait(
        timeout=10
    )  # the writer thread is now stuck in the application's handler
    assert _dropped(registry) == 0
    for _ in range(10):
        bus.emit(LifecycleEvent("queue:resumed", time.time(), queue="stdlib-q"))  # never blocks
    assert _dropped(registry) == 8  # two lines wait, the other eight are dropped and counted
    assert not telemetry.flush(0.1)  # the writer cannot get there while the handler blocks
    root_handler.release.set()
    assert telemetry.flush(10)
    events_written = [record.msg["event"] for record in root_handler.records if isinstance(record.msg, dict)]
    assert events_written == ["queue.paused", "queue.resumed", "queue.resumed"]
    full = [r.getMessage() for r in root_handler.records if r.getMessage().startswith("telemetry.queue_full")]
    assert len(full) == 1  # at most once a minute
    assert 'asyncmq_telemetry_dropped_total{signal="log",reason="queue_full"}' in full[0]
    telemetry.uninstrument()
    assert logging.getLogger("asyncmq_otel").handlers == []


def test_uninstrument_drains_the_queue_within_the_flush_timeout(root_handler: _Blocking) -> None:
    telemetry.instrument(
        traces=False, metrics=False, logs_output="stdlib", log_level="INFO", flush_timeout_s=0.3
    )
    bus.emit(LifecycleEvent("queue:paused", time.time(), queue="drain-q"))
    bus.emit(LifecycleEvent("queue:resumed", time.time(), queue="drain-q"))
    assert root_handler.entered.wait(timeout=10)
    state = instrumentation._state
    assert state is not None
    assert state.log_output is not None
    writer = state.log_output.writer
    assert writer is not None
    started = time.monotonic()
    telemetry.uninstrument()  # the writer is stuck: uninstrument gives up after flush_timeout_s
    assert time.monotonic() - started < 5.0
    assert not telemetry.is_instrumented()
    root_handler.release.set()
    # Released, the writer writes what it holds and stops (before this test's log capture goes away).
    writer._thread.join(timeout=10)
    assert not writer._thread.is_alive()
    assert [r.msg["event"] for r in root_handler.records] == ["queue.paused", "queue.resumed"]


def test_every_queued_line_is_written_by_uninstrument(capsys) -> None:
    telemetry.instrument(traces=False, metrics=False, log_format="json", log_level="INFO")
    for n in range(500):
        bus.emit(LifecycleEvent("queue:paused", time.time(), queue=f"q{n}"))
    telemetry.uninstrument()
    err = capsys.readouterr().err.splitlines()
    bad = [text for text in err if not text.startswith('{"')]
    assert not bad, bad[:5]
    lines = [json.loads(text) for text in err]
    assert [line["messaging.destination.name"] for line in lines] == [f"q{n}" for n in range(500)]


def test_the_queue_full_line_is_written_at_most_once_a_minute() -> None:
    release = threading.Event()
    delivered: list[logging.LogRecord] = []
    drops: list[int] = []
    now = [100.0]

    def deliver(record: logging.LogRecord) -> None:
        release.wait(timeout=20)
        delivered.append(record)

    writer = LogWriter(deliver, max_lines=1, on_drop=lambda: drops.append(1), clock=lambda: now[0])
    record = logging.LogRecord("asyncmq_otel", logging.INFO, __file__, 0, "line", (), None)
    try:
        assert writer.put(record)
        wait_until(lambda: writer._queue.qsize() == 0, what="the writer took the first line")
        assert writer.put(record)  # waits
        assert not writer.put(record)  # full: dropped, and one queue_full line queued past the bound
        now[0] += 59.0
        assert not writer.put(record)  # still within the minute: no second queue_full line
        now[0] += 2.0
        assert not writer.put(record)  # a minute later: a second one
        assert len(drops) == writer.dropped == 3
    finally:
        release.set()
        assert writer.close(10)
    full = [r for r in delivered if r.getMessage().startswith("telemetry.queue_full")]
    assert len(full) == 2
    assert len(delivered) == 4


def test_logs_output_comes_from_the_environment_too() -> None:
    assert TelemetryConfig().resolve({}).logs_output == "stderr"
    assert TelemetryConfig().resolve({"ASYNCMQ_LOGS_OUTPUT": "stdlib"}).logs_output == "stdlib"
    assert (
        TelemetryConfig(logs_output="stderr").resolve({"ASYNCMQ_LOGS_OUTPUT": "stdlib"}).logs_output
        == "stderr"
    )
    with pytest.raises(TelemetryConfigError, match="stdlib"):
        TelemetryConfig(logs_output="file").resolve({})


def _event_for(name: str, exception: BaseException) -> LifecycleEvent:
    now = time.time()
    fields: dict[str, Any] = {"queue": "eq-q"}
    if name.startswith("job:"):
        fields.update(
            job_id="job-1", task="eq.task", attempt=2, max_attempts=3, priority=5, enqueued_at=now,
            eligible_at=now, worker_id="w-1", group="default", started_at=now, wait_s=0.25,
            finished_at=now, duration_s=0.5, ratelimit_wait_s=0.02, delay_s=1.5, backoff_s=2.0,
            progress=0.5, error_type="ValueError", error_message="bad value", reason="failed",
        )  # fmt: skip
        if name == "job:failed":
            fields["exception"] = exception
    elif name.startswith("worker:"):
        fields.update(worker_id="w-1", group="default", concurrency=4, active=1, reason="shutdown")
    elif name.startswith("backend:"):
        fields.update(old_epoch="a", new_epoch="b")
    return LifecycleEvent(name, now, **fields)


def _pairs(text: str) -> list[tuple[str, Any]]:
    return [
        (key, "<time>" if key == "timestamp" else value)
        for key, value in json.loads(text, object_pairs_hook=list)
    ]


def test_the_precompiled_lines_equal_the_reference_chain_key_for_key(capsys) -> None:
    from opentelemetry import trace

    try:
        raise ValueError("bad value")  # noqa: TRY301 - a real traceback for job.failed
    except ValueError as exc:
        exception = exc
    names = list(EVENT_LOG_LEVELS)
    provider = TracerProvider()
    # No trace adapter: every line carries the ids of the one span current in both runs.
    telemetry.instrument(traces=False, metrics=False, log_format="json", log_level="DEBUG")
    try:
        outputs: list[list[str]] = []
        target = logging.getLogger("asyncmq_otel")
        span = provider.get_tracer("eq").start_span("request")
        for reference in (False, True):
            # Any other handler on the logger turns the precompiled path off: the structlog chain runs.
            extra = logging.NullHandler()
            if reference:
                target.addHandler(extra)
            with (
                structlog.contextvars.bound_contextvars(request_id="req-7", tenant="acme"),
                trace.use_span(span, end_on_exit=False),
            ):
                for name in names:
                    bus.emit(_event_for(name, exception))
            assert telemetry.flush(10)
            target.removeHandler(extra)
            outputs.append(capsys.readouterr().err.splitlines())
        span.end()
    finally:
        telemetry.uninstrument()
        provider.shutdown()
    direct, chain = outputs
    assert len(direct) == len(chain) == len(names)
    for direct_line, chain_line in zip(direct, chain, strict=True):
        assert _pairs(direct_line) == _pairs(chain_line)
        line = json.loads(direct_line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
        assert line["request_id"] == "req-7"
        assert TRACE_ID.fullmatch(line["trace_id"])
    failed = json.loads(direct[names.index("job:failed")])
    assert failed["exception"][0]["exc_type"] == "ValueError"
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_the_writer_outlives_a_handler_that_raises(capsys) -> None:
    delivered: list[str] = []

    def deliver(record: logging.LogRecord) -> None:
        if record.getMessage() == "broken":
            raise RuntimeError("handler bug")
        delivered.append(record.getMessage())

    writer = LogWriter(deliver)
    for message in ("broken", "after"):
        writer.put(logging.LogRecord("asyncmq_otel", logging.INFO, __file__, 0, message, (), None))
    assert writer.close(10)
    assert delivered == ["after"]
    assert "RuntimeError: handler bug" in capsys.readouterr().err


def test_batched_lines_and_plain_records_keep_their_order(capsys) -> None:
    # The adapter's lines are written in batches; a plain stdlib record between them goes through the
    # handler as a record, and must still come out between the same two lines.
    telemetry.instrument(traces=False, metrics=False, log_format="json", log_level="INFO")
    plain = logging.getLogger("asyncmq_otel.order_test")
    for n in range(300):
        bus.emit(LifecycleEvent("queue:paused", time.time(), queue=f"q{n}"))
        if n % 7 == 0:
            plain.warning("between %d", n)
    telemetry.uninstrument()
    order: list[str] = []
    for text in capsys.readouterr().err.splitlines():
        line = json.loads(text)
        order.append(line.get("messaging.destination.name") or line["event"])
    expected: list[str] = []
    for n in range(300):
        expected.append(f"q{n}")
        if n % 7 == 0:
            expected.append(f"between {n}")
    assert order == expected


def test_the_writers_timestamps_are_the_time_stampers_text() -> None:
    import datetime as dt

    from asyncmq_otel.telemetry.log_adapter import _iso_utc

    def reference(created: float) -> str:  # TimeStamper(fmt="iso", utc=True) for a given time
        return dt.datetime.fromtimestamp(created, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")

    second = 1796559369.0
    times = [second, second + 0.9999996, second + 0.0000004, second + 0.0000005, second + 0.5, 1.0000005]
    times += [
        second + micros / 1e6 + nudge for micros in range(0, 3000, 7) for nudge in (0.0, 4.9e-7, 5.1e-7)
    ]
    times += [second + 86_399.9999995, -1.25]  # a carry into the next day; before 1970
    assert [_iso_utc(created) for created in times] == [reference(created) for created in times]


def test_the_writer_json_encoding_equals_json_dumps() -> None:
    """The renderer's serializer keeps one encoder per ``default``: the text must be json.dumps's."""
    from structlog.processors import JSONRenderer

    from asyncmq_otel.telemetry._log_writer import json_dumps

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    line = {"event": "job.completed", "n": 3, "f": 1e-05, "nan": float("nan"), "s": 'é\n"', "o": Opaque()}
    for _ in range(2):  # the second call reuses the encoder
        assert JSONRenderer(serializer=json_dumps)(None, "info", dict(line)) == JSONRenderer()(
            None, "info", line
        )
    assert json_dumps([1, {"a": None}]) == json.dumps([1, {"a": None}])

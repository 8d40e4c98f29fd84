"""``instrument()`` / ``uninstrument()``: idempotency, reversal, precedence, the /metrics server."""

from __future__ import annotations

import json
import logging
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, TraceFlags

from asyncmq_otel import events, telemetry
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry import AsyncMQInstrumentor, LinkAwareSampler, TelemetryConfig
from asyncmq_otel.workers import Worker

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@task("setup-q", name="setup.ok")
async def ok() -> str:
    return "ok"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=ALWAYS_ON)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp, exporter
    tp.shutdown()


def bus_state() -> tuple[list[object], list[object], list[object], int]:
    return (
        list(events.bus._subscriptions),
        list(events.bus._observers),
        list(events.bus._drop_observers),
        events.bus.queue_size,
    )


def logger_state() -> tuple[list[logging.Handler], int, bool]:
    target = logging.getLogger("asyncmq_otel")
    return list(target.handlers), target.level, target.propagate


def fetch(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})  # noqa: S310 - local test server
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - as above
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_second_instrument_warns_and_changes_nothing(provider, capsys) -> None:
    tp, _ = provider
    telemetry.instrument(tracer_provider=tp, metrics_addr="127.0.0.1:0", log_format="json")
    before, url = bus_state(), telemetry.metrics_url()
    telemetry.instrument(tracer_provider=tp, metrics_addr="127.0.0.1:0", propagation="none")
    assert telemetry.flush()  # lines are written by the log writer thread
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert line["event"].startswith("telemetry.already_instrumented")
    assert (line["level"], line["logger"]) == ("warning", "asyncmq_otel.telemetry")
    assert bus_state() == before
    assert telemetry.metrics_url() == url
    config = telemetry.active_config()
    assert config is not None
    assert config.propagation == "child"


def test_uninstrument_removes_exactly_what_instrument_added(provider) -> None:
    tp, _ = provider
    structlog_config = structlog.get_config()
    root_handlers = list(logging.getLogger().handlers)
    before_bus, before_logger = bus_state(), logger_state()
    telemetry.instrument(
        tracer_provider=tp, metrics_addr="127.0.0.1:0", log_format="json", event_queue_size=50
    )
    url = telemetry.metrics_url()
    assert url is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
    assert fetch(url)[0] == 200
    assert bus_state() != before_bus
    assert events.bus.queue_size == 50
    assert logger_state() != before_logger
    port = int(url.rsplit(":", 1)[1].split("/")[0])

    telemetry.uninstrument()
    assert bus_state() == before_bus
    assert logger_state() == before_logger
    assert telemetry.metrics_url() is None
    assert not telemetry.is_instrumented()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert structlog.get_config() == structlog_config
    assert logging.getLogger().handlers == root_handlers
    telemetry.uninstrument()  # a second call is a no-op


def test_a_caller_registry_gets_the_table_and_loses_it_again(provider) -> None:
    from prometheus_client import CollectorRegistry

    tp, _ = provider
    registry = CollectorRegistry()
    telemetry.instrument(tracer_provider=tp, metrics_addr="", prometheus_registry=registry, logs=False)
    names = {family.name for family in registry.collect()}
    assert "asyncmq_telemetry_dropped" in names
    assert "process_cpu_seconds" not in names  # nothing else is added to a caller's registry
    telemetry.uninstrument()
    assert list(registry.collect()) == []


def test_configuration_precedence_argument_then_environment_then_default() -> None:
    assert TelemetryConfig().resolve({}).metrics_addr == "127.0.0.1:9464"
    assert TelemetryConfig().resolve({}).service_name == "asyncmq-worker"
    env = {
        "ASYNCMQ_METRICS_ADDR": "",
        "ASYNCMQ_TRACE_PROPAGATION": "link",
        "ASYNCMQ_SPAN_NAME_STYLE": "{op} {queue} {task}",
        "ASYNCMQ_LOG_FORMAT": "console",
        "OTEL_SERVICE_NAME": "billing",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
    }
    from_env = TelemetryConfig().resolve(env)
    assert (from_env.metrics_addr, from_env.propagation, from_env.span_name_style) == (
        "",
        "link",
        "{op} {queue} {task}",
    )
    assert (from_env.log_format, from_env.service_name, from_env.sampling_ratio) == (
        "console",
        "billing",
        0.25,
    )
    assert (from_env.logs_exporter, from_env.otlp_metrics) == ("otlp", True)
    explicit = TelemetryConfig(
        metrics_addr="127.0.0.1:0",
        propagation="none",
        span_name_style="{op} {queue}",
        log_format="json",
        service_name="explicit",
        sampling_ratio=1.0,
        otlp_metrics=False,
    ).resolve(env)
    assert (explicit.metrics_addr, explicit.propagation, explicit.log_format) == (
        "127.0.0.1:0",
        "none",
        "json",
    )
    assert (explicit.service_name, explicit.sampling_ratio, explicit.otlp_metrics) == ("explicit", 1.0, False)
    resource_env = {"OTEL_RESOURCE_ATTRIBUTES": "team=a,service.name=from-resource"}
    assert TelemetryConfig().resolve(resource_env).service_name == "from-resource"
    assert TelemetryConfig().resolve({"OTEL_TRACES_SAMPLER": "always_off"}).sampling_ratio == 0.0


def test_otel_sdk_disabled_turns_traces_and_otlp_off_but_keeps_the_scrape_sink() -> None:
    config = TelemetryConfig(otlp_metrics=True, logs_exporter="otlp").resolve({"OTEL_SDK_DISABLED": "true"})
    assert (config.traces, config.otlp_metrics, config.logs_exporter, config.metrics) == (
        False,
        False,
        None,
        True,
    )


def test_endpoints_come_from_the_argument_or_the_environment() -> None:
    explicit = TelemetryConfig(otlp_endpoint="http://collector:4318/").resolve({})
    assert explicit.endpoint("traces", {}) == "http://collector:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"}
    assert TelemetryConfig().resolve(env).endpoint("metrics", env) == ""  # the exporter reads it itself
    assert TelemetryConfig().resolve({}).endpoint("traces", {}) is None


@pytest.mark.parametrize(
    ("argument", "value", "hint"),
    [
        ("propagation", "parent", "child"),
        ("span_name_style", "{queue}", "{op} {queue}"),
        ("log_format", "xml", "json"),
        ("queue_sampler", "always", "elected"),
        ("sampling_ratio", 2.0, "within"),
        ("metric_cardinality_limit", 0, ">= 1"),
    ],
)
def test_invalid_values_say_what_to_use(argument: str, value: object, hint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(hint)):
        TelemetryConfig(**{argument: value}).resolve({})


def test_unknown_metrics_addr_format_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        telemetry.instrument(traces=False, logs=False, metrics_addr="localhost")
    assert not telemetry.is_instrumented()
    assert bus_state()[1] == []


def test_json_and_console_renderers_write_one_line_per_event(provider, capsys) -> None:
    tp, _ = provider
    for fmt in ("json", "console"):
        telemetry.instrument(tracer_provider=tp, metrics_addr="", log_format=fmt)
        bus.emit(LifecycleEvent("queue:paused", 0.0, queue="render-q"))
        telemetry.uninstrument()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        if fmt == "json":
            line = json.loads(err[0])
            assert line["event"] == "queue.paused"
            assert line["level"] == "info"
            assert line["logger"] == "asyncmq_otel"
            assert line["messaging.destination.name"] == "render-q"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
        else:
            assert "queue.paused" in err[0]
            assert "messaging.destination.name=render-q" in err[0]


def test_link_aware_sampler_follows_a_sampled_link() -> None:
    sampler = ParentBased(root=LinkAwareSampler(TraceIdRatioBased(0.0)))
    assert sampler.get_description().startswith("ParentBased{root:LinkAware{")
    sampled = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(1, 3, is_remote=True, trace_flags=TraceFlags(0))
    assert sampler.should_sample(None, 7, "process q", links=[Link(sampled)]).decision.is_sampled()
    assert not sampler.should_sample(None, 7, "process q", links=[Link(unsampled)]).decision.is_sampled()
    assert not sampler.should_sample(None, 7, "process q").decision.is_sampled()


def test_instrumentor_is_idempotent_and_reversible(provider, caplog) -> None:
    tp, _ = provider
    instrumentor = AsyncMQInstrumentor()
    assert AsyncMQInstrumentor() is instrumentor
    assert list(instrumentor.instrumentation_dependencies()) == []
    instrumentor.instrument(tracer_provider=tp, metrics_addr="", logs=False)
    assert telemetry.is_instrumented()
    with caplog.at_level(logging.WARNING):
        instrumentor.instrument(tracer_provider=tp, metrics_addr="", logs=False)
    assert "already instrumented" in caplog.text
    instrumentor.uninstrument()
    assert not telemetry.is_instrumented()


@pytest.mark.anyio
async def test_metrics_endpoint_negotiates_openmetrics_with_exemplars(provider, unique_name) -> None:
    tp, _ = provider
    telemetry.instrument(tracer_provider=tp, metrics_addr="127.0.0.1:0", logs=False)
    url = telemetry.metrics_url()
    assert url is not None
    backend = InMemoryBackend()
    await Queue(unique_name, backend=backend).add("setup.ok")
    with anyio.fail_after(10):
        await Worker(unique_name, backend=backend, burst=True).run()

    status, content_type, text = await anyio.to_thread.run_sync(fetch, url)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "# {" not in text
    assert "_created" not in text
    (target,) = [line for line in text.splitlines() if line.startswith("target_info{")]
    for key in ("host_name", "process_pid", "service_instance_id", "service_version"):
        assert f'{key}="' in target
    assert 'service_name="asyncmq-worker"' in target
    assert "process_cpu_seconds_total" in text

    status, content_type, text = await anyio.to_thread.run_sync(fetch, url, OPENMETRICS)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "_created" not in text
    exemplars = re.findall(r'^(\w+)_bucket\{[^}]*\} \S+ # \{trace_id="([0-9a-f]{32})"\}', text, re.MULTILINE)
    assert {name for name, _ in exemplars} == {
        "messaging_process_duration_seconds",
        "asyncmq_job_wait_duration_seconds",
        "asyncmq_job_e2e_duration_seconds",
    }
    (process,) = [s for s in provider[1].get_finished_spans() if s.name == f"process {unique_name}"]
    assert process.context is not None
    assert {trace_id for _, trace_id in exemplars} == {format(process.context.trace_id, "032x")}

    assert await anyio.to_thread.run_sync(fetch, url.replace("/metrics", "/healthz")) == (
        200,
        "text/plain; charset=utf-8",
        "ok\n",
    )
    assert (await anyio.to_thread.run_sync(fetch, url.replace("/metrics", "/nope")))[0] == 404


@pytest.mark.anyio
async def test_no_exemplars_without_a_sampled_span(unique_name) -> None:
    tp = TracerProvider(sampler=ALWAYS_OFF)
    telemetry.instrument(tracer_provider=tp, metrics_addr="127.0.0.1:0", logs=False)
    url = telemetry.metrics_url()
    assert url is not None
    backend = InMemoryBackend()
    await Queue(unique_name, backend=backend).add("setup.ok")
    with anyio.fail_after(10):
        await Worker(unique_name, backend=backend, burst=True).run()
    text = (await anyio.to_thread.run_sync(fetch, url, OPENMETRICS))[2]
    assert "messaging_process_duration_seconds_count" in text
    assert "trace_id" not in text
    tp.shutdown()


def test_healthz_goes_red_on_data_loss_and_on_a_silent_backend(provider, monkeypatch) -> None:
    from asyncmq_otel import events
    from asyncmq_otel.events import LifecycleEvent
    from asyncmq_otel.telemetry import _metrics_adapter

    tp, _ = provider
    clock = [1000.0]
    monkeypatch.setattr(_metrics_adapter.time, "monotonic", lambda: clock[0])
    telemetry.instrument(tracer_provider=tp, metrics_addr="127.0.0.1:0", logs=False)
    try:
        url = telemetry.metrics_url().replace("/metrics", "/healthz")
        assert fetch(url) == (200, "text/plain; charset=utf-8", "ok\n")
        events.bus.emit(
            LifecycleEvent("worker:started", clock[0], queue="hq", worker_id="w", group="default")
        )
        clock[0] += 2 * 5.0 + 5.0 + 1  # past 2 × block_timeout + 5 s without a successful round trip
        status, _, body = fetch(url)
        assert status == 503
        assert "no successful backend round trip" in body
        events.bus.emit(
            LifecycleEvent("worker:heartbeat", clock[0], queue="hq", worker_id="w", group="default")
        )
        assert fetch(url)[0] == 200
        events.bus.emit(
            LifecycleEvent("backend:data_loss", clock[0], queue="hq", old_epoch="a", new_epoch="b")
        )
        status, _, body = fetch(url)
        assert (status, body) == (503, "data loss detected on hq\n")
    finally:
        telemetry.uninstrument()


@pytest.mark.anyio
async def test_an_sdk_provider_installed_as_the_global_is_used_as_is(monkeypatch, unique_name) -> None:
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    application = TracerProvider(sampler=ALWAYS_ON)
    application.add_span_processor(SimpleSpanProcessor(exporter))
    # The application installed its provider as the OTel global before instrument() (set-once, so the
    # session's own global is swapped for this test and restored by monkeypatch).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", application)
    telemetry.instrument(metrics_addr="", logs=False)
    backend = InMemoryBackend()
    job_id = await Queue(unique_name, backend=backend).add("setup.ok")
    with anyio.fail_after(10):
        await Worker(unique_name, backend=backend, burst=True).run()
    telemetry.uninstrument()
    names = {span.name for span in exporter.get_finished_spans()}
    assert {f"send {unique_name}", f"process {unique_name}"} <= names, names
    (process,) = [s for s in exporter.get_finished_spans() if s.name == f"process {unique_name}"]
    assert dict(process.attributes or {})["messaging.message.id"] == job_id
    # Never shut down by uninstrument(): the application's provider still exports.
    application.get_tracer("app").start_span("after-uninstrument").end()
    assert "after-uninstrument" in {span.name for span in exporter.get_finished_spans()}
    application.shutdown()


def _taken_address() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_busy_metrics_address_is_a_config_error_that_says_what_to_do(capsys) -> None:
    from asyncmq_otel.errors import TelemetryConfigError

    sock, address = _taken_address()
    with sock, pytest.raises(TelemetryConfigError) as raised:
        telemetry.instrument(traces=False, metrics_addr=address, log_format="json")
    message = str(raised.value)
    for hint in (address, "metrics_addr=", "ASYNCMQ_METRICS_ADDR", "--metrics-addr", "port 0"):
        assert hint in message
    assert not telemetry.is_instrumented()
    assert bus_state()[1] == []
    assert logger_state()[0] == []
    assert "not flushed" not in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_second_worker_process_on_the_same_metrics_port_exits_2_with_the_sentence() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    telemetry.instrument(traces=False, logs=False, metrics_addr="127.0.0.1:0")  # the first process: us
    url = telemetry.metrics_url()
    assert url is not None
    address = url.removeprefix("http://").removesuffix("/metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCMQ_", "OTEL_"))}
    env["PYTHONPATH"] = str(root)
    second = subprocess.run(
        [sys.executable, "-m", "asyncmq_otel", "worker", "busy-q", "--burst", "--metrics-addr", address],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert second.returncode == 2, second.stderr
    assert f"cannot serve /metrics on {address}: the address is in use" in second.stderr
    for hint in ("--metrics-addr", "ASYNCMQ_METRICS_ADDR", "port 0"):
        assert hint in second.stderr
    assert "not flushed" not in second.stderr
    assert "Traceback" not in second.stderr
    assert "Errno" not in second.stderr


def test_instrument_takes_a_config_and_keyword_overrides(provider) -> None:
    import dataclasses

    tp, _ = provider
    config = TelemetryConfig(tracer_provider=tp, metrics_addr="", logs=False, propagation="link")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.propagation = "none"  # type: ignore[misc]
    telemetry.instrument(config, propagation="none", event_queue_size=77)
    active = telemetry.active_config()
    assert active is not None
    assert (active.propagation, active.event_queue_size, active.metrics_addr) == ("none", 77, "")
    assert active.tracer_provider is tp
    assert config.propagation == "link"  # the caller's config is unchanged


def test_an_unknown_option_is_a_type_error_that_lists_the_options() -> None:
    with pytest.raises(TypeError, match=r"unknown telemetry option\(s\) 'metric_addr'.*metrics_addr"):
        telemetry.instrument(metric_addr="127.0.0.1:0")
    assert not telemetry.is_instrumented()


def test_capture_telemetry_takes_the_same_config() -> None:
    from asyncmq_otel.testing import capture_telemetry

    with capture_telemetry(TelemetryConfig(span_name_style="{op} {queue} {task}"), error_type_limit=3):
        active = telemetry.active_config()
        assert active is not None
        assert (active.span_name_style, active.error_type_limit, active.metrics_addr) == (
            "{op} {queue} {task}",
            3,
            "",
        )
    with pytest.raises(TypeError, match="unknown telemetry option"), capture_telemetry(nope=1):
        pass


def test_the_instrumentor_wires_the_bus_to_the_global_providers_and_opens_no_port(monkeypatch) -> None:
    from opentelemetry import trace

    from asyncmq_otel.telemetry import instrumentation

    monkeypatch.delenv("ASYNCMQ_METRICS_ADDR", raising=False)
    instrumentor = AsyncMQInstrumentor()
    instrumentor.instrument(logs=False)
    try:
        state = instrumentation._state
        assert state is not None
        assert telemetry.metrics_url() is None  # no port unless asked
        assert state.providers.tracer_provider is trace.get_tracer_provider()
        assert state.providers.owned == []  # nothing built, nothing to shut down
    finally:
        instrumentor.uninstrument()
    instrumentor.instrument(logs=False, metrics_addr="127.0.0.1:0")
    try:
        assert telemetry.metrics_url() is not None
    finally:
        instrumentor.uninstrument()

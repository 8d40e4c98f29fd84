"""The demo tells the truth about what it shows: exports that failed, a /metrics page that is gone,
the scenarios it ran, and where to go next; ``--serve`` keeps a live workload up until stopped."""

from __future__ import annotations

import io

import anyio
import pytest
from click.testing import CliRunner

from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.cli import main
from asyncmq_otel.cli.demo import run_demo
from asyncmq_otel.events import LifecycleEvent, bus
from tests.support.redis_server import free_port
from tests.telemetry.otlp_receiver import otlp_receiver

NO_METRICS = ["--metrics-addr", ""]


def test_summary_names_the_pause_the_delays_and_the_rate_limit_then_the_next_steps(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--jobs", "20", *NO_METRICS])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "paused    the queue while each wave was enqueued, then resumed: 1 job(s)" in out
    assert "delayed   2 jobs waited" in out
    assert "limited   the worker starts at most 100 jobs a second" in out
    steps = out[out.index("next steps") :]
    for command in (
        "asyncmq-otel demo --serve",
        "docker compose up -d",
        "asyncmq-otel queues",
        "dlq list demo",
    ):
        assert command in steps


def test_the_metrics_url_says_how_long_it_is_served(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--jobs", "12", "--metrics-addr", "127.0.0.1:0"])
    assert result.exit_code == 0, result.output
    assert "/metrics (while the demo runs; --serve keeps it up)" in result.stdout


def test_traces_that_reach_no_receiver_fail_the_demo(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # the SDK's retries give up sooner
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(main, ["demo", "--jobs", "12", *NO_METRICS, "--otlp-endpoint", endpoint])
    assert result.exit_code == 1, result.output
    assert f"no span reached {endpoint}" in result.stderr
    assert "search the service" not in result.stdout


def test_traces_that_arrive_are_counted_and_the_demo_succeeds(runner: CliRunner) -> None:
    with otlp_receiver() as (endpoint, received):
        result = runner.invoke(main, ["demo", "--jobs", "12", *NO_METRICS, "--otlp-endpoint", endpoint])
        spans = received.spans()
    assert result.exit_code == 0, result.output
    assert spans
    assert f"{len(spans)} spans exported to {endpoint}" in result.stdout
    assert "search the service asyncmq-demo" in result.stdout


def test_serve_is_for_the_combined_role_only(runner: CliRunner) -> None:
    result = runner.invoke(
        main, ["demo", "--serve", "--role", "producer", "--backend", "redis://127.0.0.1:6379/0", *NO_METRICS]
    )
    assert result.exit_code == 2
    assert "--serve runs producer and worker here" in result.stderr


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.timeout(120)
async def test_serve_keeps_enqueueing_waves_until_stopped(anyio_backend: str) -> None:
    pauses: list[str] = []

    def on_paused(event: LifecycleEvent) -> None:
        pauses.append(event.queue or "")

    bus.on("queue:paused", on_paused, inline=True)  # each wave pauses the queue while it is enqueued
    stop = anyio.Event()
    out = io.StringIO()
    outcome: dict[str, object] = {}

    async def demo() -> None:
        outcome["result"] = await run_demo(
            jobs=12, backend=InMemoryBackend(), out=out, progress=False, stop=stop, serve=True, duration=0.1
        )

    async with anyio.create_task_group() as group:
        group.start_soon(demo)
        # --duration is ignored: a second wave starts after the first has settled
        with anyio.fail_after(90):
            while len(pauses) < 2:
                await anyio.sleep(0.05)  # polling a condition under a deadline
        stop.set()
    result = outcome["result"]
    assert getattr(result, "pauses", 0) >= 2
    assert "waves), then resumed" in out.getvalue()

"""``asyncmq-otel demo``: the mixed demo workload (``asyncmq_otel.demo``) from the command line.

``--role both`` (the default) runs producer and worker in this process and ends with a summary;
``--role producer`` enqueues waves of the workload for workers elsewhere (docker-compose);
``--role worker`` serves the demo queue and summarises what it ran.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import anyio.to_thread
import click

from ..demo.app import DEMO_QUEUE
from ..demo.report import SpanCapture, render_trace
from ..demo.run import TraceRenderer, run_demo, run_demo_worker, run_producer
from ..errors import ConfigError
from ..queues import Queue
from ..settings import DEFAULT_METRICS_ADDR, get_settings
from ..worker.worker import Worker
from ._backend import BackendChoice, backend_options, close_backend, open_backend, probe_or_exit
from ._exit import CLIError, ExitCode, translate_errors
from ._options import log_format_option, metrics_addr_option, otlp_endpoint_option
from ._output import Reporter, json_logs, paint
from ._signals import StopSignals
from ._telemetry import TelemetryHandle, start_telemetry

__all__ = ["DEFAULT_METRICS_ADDR", "demo_command", "run_demo"]


# -- the command ---------------------------------------------------------------------------------------
@click.command("demo")
@click.option(
    "--jobs",
    default=80,
    show_default=True,
    type=click.IntRange(min=12),
    help="Jobs to enqueue (per wave as producer).",
)
@click.option(
    "--duration",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this many seconds.",
)
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(min=1), help="Worker concurrency."
)
@click.option(
    "--role",
    type=click.Choice(["both", "producer", "worker"]),
    default="both",
    show_default=True,
    help="Run producer and worker here, or only one of them (the others run elsewhere on a shared backend).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep enqueueing waves and serving /metrics until Ctrl-C (point Prometheus and Grafana at it); "
    "--duration is ignored.",
)
@backend_options
@metrics_addr_option(
    default=DEFAULT_METRICS_ADDR,
    envvar="ASYNCMQ_METRICS_ADDR",
    help_text="Serve /metrics here while the demo runs ('' serves nothing; "
    "a busy default port falls back to a free one).",
)
@otlp_endpoint_option("Send traces to this OTLP/HTTP endpoint, e.g. http://localhost:4318 (Jaeger).")
@log_format_option("Format of the producer/worker roles' log lines [default: auto].")
@click.pass_context
def demo_command(
    ctx: click.Context,
    jobs: int,
    duration: float,
    concurrency: int,
    role: str,
    serve: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
    metrics_addr: str,
    otlp_endpoint: str | None,
    log_format: str | None,
) -> None:
    """Run the mixed demo workload and print a summary (in-memory by default: nothing to set up).

    Exit 0 when every job settled (with --serve: when stopped by Ctrl-C), 1 when some had not when
    --duration ran out or when traces were to be exported and none arrived.
    """
    json_lines = json_logs(log_format) if role != "both" else log_format == "json"
    reporter = Reporter(json_lines=json_lines)
    with translate_errors(backend_url):
        get_settings()
        choice = open_backend(backend_url, prefix)
    if serve and role != "both":
        raise CLIError("--serve runs producer and worker here: use it with --role both", ExitCode.USAGE)
    if role != "both" and not choice.shared:
        raise CLIError(
            f"--role {role} needs a backend other processes share: pass --backend redis://HOST:6379/0 "
            "(memory:// lives inside one process)",
            ExitCode.USAGE,
        )
    source = ctx.get_parameter_source
    options = _DemoOptions(
        jobs=jobs,
        duration=duration,
        concurrency=concurrency,
        role=role,
        serve=serve,
        choice=choice,
        connect_timeout=connect_timeout,
        metrics_addr=metrics_addr,
        metrics_explicit=source("metrics_addr") not in {None, click.core.ParameterSource.DEFAULT},
        otlp_endpoint=otlp_endpoint,
        log_format=log_format,
    )
    with translate_errors(backend_url):
        ok = anyio.run(_main, options, reporter, backend="asyncio")
    ctx.exit(int(ExitCode.OK if ok else ExitCode.CRASH))


@dataclass
class _DemoOptions:
    jobs: int
    duration: float
    concurrency: int
    role: str
    serve: bool
    choice: BackendChoice
    connect_timeout: float
    metrics_addr: str
    metrics_explicit: bool
    otlp_endpoint: str | None
    log_format: str | None


def _service_name(role: str) -> str | None:
    if os.environ.get("OTEL_SERVICE_NAME"):
        return None
    return {"both": "asyncmq-demo", "producer": "asyncmq-producer", "worker": "asyncmq-worker"}[role]


def _telemetry(
    options: _DemoOptions, reporter: Reporter, capture: SpanCapture | None
) -> TelemetryHandle | None:
    kwargs: dict[str, Any] = {
        "otlp_endpoint": options.otlp_endpoint,
        "log_format": options.log_format,
        "service_name": _service_name(options.role),
        "required": options.metrics_explicit or bool(options.otlp_endpoint),
        "logs": options.role != "both",  # with both roles, the summary is the output
        "tracer_provider": capture.provider if capture is not None else None,
    }
    try:
        return start_telemetry(reporter, metrics_addr=options.metrics_addr, **kwargs)
    except CLIError as exc:
        if options.metrics_explicit or not isinstance(exc.__cause__, OSError) or not options.metrics_addr:
            raise
        fallback = options.metrics_addr.rpartition(":")[0] + ":0"
        reporter.say(
            "demo.metrics_port_busy",
            f"{options.metrics_addr} is busy (another demo or worker?); "
            "serving /metrics on a free port instead",
            level="warning",
        )
        return start_telemetry(reporter, metrics_addr=fallback, **kwargs)


def _span_capture(options: _DemoOptions, reporter: Reporter) -> SpanCapture | None:
    """In-memory spans for the trace tree (role ``both`` only: its jobs are bounded by ``--jobs``)."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401, PLC0415 - probe: is the SDK installed?
    except ImportError:
        if options.otlp_endpoint:
            raise CLIError(
                "--otlp-endpoint needs OpenTelemetry: pip install 'asyncmq-otel[otlp]'", ExitCode.USAGE
            ) from None
        return None
    if options.role != "both":
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or "asyncmq-demo"
    try:
        return SpanCapture(name, options.otlp_endpoint)
    except ConfigError as exc:
        raise CLIError(str(exc), ExitCode.USAGE) from exc
    except Exception as exc:  # noqa: BLE001 - the tree is a nicety: fall back to the lifecycle lines
        reporter.say("demo.no_traces", f"no trace tree this time ({exc})", level="warning")
        return None


async def _main(options: _DemoOptions, reporter: Reporter) -> bool:
    choice = options.choice
    try:
        facts = await probe_or_exit(choice, options.connect_timeout)
        capture = _span_capture(options, reporter)
        telemetry = _telemetry(options, reporter, capture)
        try:
            ok = await _run_role(options, reporter, telemetry, capture, facts.describe(choice.prefix))
        finally:
            if telemetry is not None:
                await telemetry.stop()
            if capture is not None:
                await anyio.to_thread.run_sync(capture.shutdown)
        if capture is not None and capture.delivery is not None:
            ok = _report_delivery(capture, reporter) and ok
        if options.role == "both":
            _print_next_steps(sys.stdout, options)
        return ok
    finally:
        await close_backend(choice)


def _report_delivery(capture: SpanCapture, reporter: Reporter) -> bool:
    """Say where the traces went, or that none arrived (then the demo failed at what it was asked)."""
    delivery = capture.delivery
    assert delivery is not None  # noqa: S101 - only called when an OTLP exporter was configured
    service = os.environ.get("OTEL_SERVICE_NAME") or "asyncmq-demo"
    if delivery.delivered and not delivery.failed:
        sys.stdout.write(
            f"\n{delivery.delivered} spans exported to {capture.otlp_endpoint}: "
            f"in Jaeger (http://localhost:16686), search the service {service}\n"
        )
        return True
    if delivery.delivered:
        reporter.say(
            "demo.export_partial",
            f"{delivery.delivered} spans reached {capture.otlp_endpoint}, {delivery.failed} could not be "
            "exported (see the errors above)",
            level="warning",
        )
        return True
    reporter.say(
        "demo.export_failed",
        f"no span reached {capture.otlp_endpoint} ({delivery.failed} could not be exported): is Jaeger or "
        "a collector listening there? `docker compose up -d jaeger` starts one",
        level="error",
    )
    return False


def _print_next_steps(out: TextIO, options: _DemoOptions) -> None:
    """Where to go from here: the live mode, the full stack, the admin commands, your own app."""
    redis = "--backend redis://127.0.0.1:6379/0"
    steps = [
        ("asyncmq-otel demo --serve", "keep waves coming and /metrics up until Ctrl-C, for Prometheus"),
        ("docker compose up -d", "Redis, workers, exporter, Prometheus :9090, Grafana :3000, Jaeger :16686"),
        (f"asyncmq-otel queues {redis}", "depth of every queue by state (with a Redis of your own)"),
        (f"asyncmq-otel dlq list {DEMO_QUEUE} {redis}", "dead-lettered jobs with their error"),
        ("README.md, 'Your own app'", "your tasks, a worker and instrument() in your code"),
    ]
    if options.serve:
        steps = steps[1:]
    width = max(len(command) for command, _ in steps)
    out.write("\n" + paint("next steps", "cyan", out, bold=True) + "\n")
    out.writelines(f"  {command:<{width}}  {what}\n" for command, what in steps)
    out.flush()


class _Stopper:
    """Signal callbacks: end the demo's wait and stop its worker (drain, then at once)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.workers: list[Worker] = []

    def drain(self) -> None:
        self.event.set()
        for worker in self.workers:
            worker.stop()

    def now(self) -> None:
        self.event.set()
        for worker in self.workers:
            worker.stop(now=True)


async def _run_role(
    options: _DemoOptions,
    reporter: Reporter,
    telemetry: TelemetryHandle | None,
    capture: SpanCapture | None,
    backend_details: str,
) -> bool:
    metrics = telemetry.metrics_url if telemetry is not None else None
    otlp = telemetry.otlp_endpoint if telemetry is not None else None
    if metrics and options.role == "both":
        # the default run ends in about a second: say so rather than advertise a page that is gone
        metrics += " (until Ctrl-C)" if options.serve else " (while the demo runs; --serve keeps it up)"
    header = (
        f"asyncmq-otel demo ({options.role}) on {options.choice.masked_url} ({backend_details}) · "
        f"metrics {metrics or 'off'} · otlp {otlp or 'off'}"
    )
    stopper = _Stopper()
    signals = StopSignals(stopper.drain, stopper.now, reporter, drain_note="the summary follows")
    async with anyio.create_task_group() as group:
        group.start_soon(signals.watch)
        if options.role == "both":
            ok = await _both(options, header, capture, stopper)
        elif options.role == "producer":
            reporter.say("demo.producer", header)
            total = await run_producer(
                Queue(DEMO_QUEUE, backend=options.choice.backend),
                jobs=options.jobs,
                duration=options.duration,
                say=lambda text: reporter.say("demo.wave", text),
                stop=stopper.event,
            )
            reporter.say("demo.producer_done", f"producer done: {total} jobs enqueued", enqueued=total)
            ok = True
        else:
            reporter.say("demo.worker", header)
            await run_demo_worker(
                backend=options.choice.backend,
                concurrency=options.concurrency,
                duration=options.duration,
                out=sys.stdout,
                say=lambda text: reporter.say("demo.worker_stop", text),
                worker_ready=stopper.workers.append,
                backend_label=options.choice.masked_url,
            )
            ok = True
        group.cancel_scope.cancel()
    return ok


async def _both(options: _DemoOptions, header: str, capture: SpanCapture | None, stopper: _Stopper) -> bool:
    out = sys.stdout
    out.write(paint(header, "cyan", out) + "\n")
    out.flush()
    renderer: TraceRenderer | None = None
    if capture is not None:
        spans = capture

        def renderer(job_id: str, stream: TextIO) -> list[str]:
            return render_trace(spans.spans(), job_id, stream)

    result = await run_demo(
        jobs=options.jobs,
        backend=options.choice.backend,
        duration=options.duration,
        concurrency=options.concurrency,
        out=out,
        stop=stopper.event,
        worker_ready=stopper.workers.append,
        trace_renderer=renderer,
        backend_label=options.choice.masked_url,
        serve=options.serve,
    )
    return options.serve or result.settled

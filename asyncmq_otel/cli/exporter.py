"""``asyncmq-otel exporter``: serve the queue gauges (depth by state, oldest age, paused) on ``/metrics``.

It runs telemetry's queue sampler against the backend, so dashboards have queue depth even when
no worker runs, and worker liveness per queue (``asyncmq_queue_consumers``: live workers consuming
each queue, from the worker registry). SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import os
import socket
import uuid

import anyio
import click

from ..jobs import check_queue_name
from ..settings import get_settings
from ._backend import BackendChoice, backend_options, close_backend, open_backend, probe_or_exit
from ._banner import Banner
from ._exit import CLIError, ExitCode, translate_errors
from ._options import Seconds, env_option, log_format_option, metrics_addr_option
from ._output import Reporter, json_logs
from ._signals import StopSignals
from ._telemetry import start_telemetry

__all__ = ["exporter_command"]

DEFAULT_EXPORTER_ADDR = "127.0.0.1:9465"


@click.command("exporter")
@backend_options
@metrics_addr_option(
    default=DEFAULT_EXPORTER_ADDR,
    envvar="ASYNCMQ_EXPORTER_ADDR",
    help_text="Serve /metrics and /healthz here (port 0 picks a free port).",
)
@env_option(
    "--interval",
    envvar="ASYNCMQ_QUEUE_SAMPLE_INTERVAL",
    type=Seconds(minimum=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between samples of every queue.",
)
@click.option(
    "--queue",
    "-q",
    "queue_names",
    multiple=True,
    help="Sample only these queues (repeatable) [default: every queue the backend knows].",
)
@log_format_option("Log lines as JSON or for a terminal [default: auto].")
def exporter_command(
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
    metrics_addr: str,
    interval: float,
    queue_names: tuple[str, ...],
    log_format: str | None,
) -> None:
    """Export queue gauges (depth, oldest age, paused, live consumers) on /metrics until SIGTERM/SIGINT."""
    if not metrics_addr:
        raise click.BadParameter("the exporter needs an address to serve on", param_hint="--metrics-addr")
    reporter = Reporter(json_lines=json_logs(log_format))
    with translate_errors(backend_url):
        get_settings()
        choice = open_backend(backend_url, prefix)
    if not choice.shared:
        reporter.say(
            "exporter.memory_backend",
            "memory:// is private to this process: the exporter will only ever see empty queues; "
            "pass --backend redis://HOST:6379/0",
            level="warning",
        )
    with translate_errors(backend_url):
        for name in queue_names:
            check_queue_name(name)
        anyio.run(
            _serve, choice, reporter, metrics_addr, interval, list(queue_names), log_format, connect_timeout
        )


async def _serve(
    choice: BackendChoice,
    reporter: Reporter,
    metrics_addr: str,
    interval: float,
    queue_names: list[str],
    log_format: str | None,
    connect_timeout: float,
) -> None:
    try:
        facts = await probe_or_exit(choice, connect_timeout)
        telemetry = start_telemetry(
            reporter,
            metrics_addr=metrics_addr,
            otlp_endpoint=None,
            log_format=log_format,
            service_name=None if os.environ.get("OTEL_SERVICE_NAME") else "asyncmq-exporter",
            required=True,
            queue_sample_interval=interval,
            traces=False,
        )
        if telemetry is None:  # pragma: no cover - required=True raises instead
            raise CLIError("telemetry is not available", ExitCode.USAGE)
        try:
            Banner(
                role="exporter",
                process_id=uuid.uuid4().hex,
                pid=os.getpid(),
                host=socket.gethostname(),
                backend=choice.masked_url,
                backend_details=facts.describe(choice.prefix),
                queues=queue_names,
                metrics_url=telemetry.metrics_url,
                warnings=facts.warnings,
            ).write(reporter)
            async with anyio.create_task_group() as group:
                stop = group.cancel_scope.cancel
                signals = StopSignals(stop, stop, reporter, single=True)
                group.start_soon(signals.watch)
                await telemetry.run_queue_sampler(choice.backend, queue_names or None)
                # The sampler returns only when telemetry was switched off; nothing left to serve.
                group.cancel_scope.cancel()
            reporter.say("exporter.stopped", "exporter stopped")
        finally:
            await telemetry.stop()
    finally:
        await close_backend(choice)

"""``asyncmq-otel demo``: a producer and a worker on one backend, running the mixed demo workload.

The workload has every lifecycle path an operator should recognise: fast and slow successes,
retries that succeed, retries exhausted into the dead-letter queue, expiry, a cancellation,
delayed jobs, rate-limited bursts, progress reports, and a pause then resume.

``--role both`` (the default) runs producer and worker in this process and ends with a summary;
``--role producer`` enqueues waves of the workload for workers elsewhere (docker-compose);
``--role worker`` serves the demo queue and summarises what it ran.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
import anyio.to_thread
import click

from .._worker import Worker
from ..backends._default import default_backend
from ..backends.base import Backend
from ..errors import BackendUnavailable, ScheduleNotFound
from ..events import LifecycleEvent, bus
from ..queues import Queue
from ..settings import get_settings
from ._backend import BackendChoice, backend_options, close_backend, open_backend, probe_or_exit
from ._demo_report import OUTCOMES, SpanCapture, render_lifecycle, render_trace, summary_lines
from ._exit import CLIError, ExitCode, translate_errors
from ._options import log_format_option, metrics_addr_option, otlp_endpoint_option
from ._output import Reporter, json_logs, paint
from ._signals import StopSignals
from ._telemetry import TelemetryHandle, start_telemetry
from .worker import DEFAULT_METRICS_ADDR

__all__ = [
    "DEMO_QUEUE",
    "DemoResult",
    "demo_command",
    "enqueue_workload",
    "run_demo",
    "run_demo_worker",
    "run_producer",
]

DEMO_QUEUE = "demo"
"""The demo's queue (``asyncmq_otel.demo_app`` declares its tasks on it)."""
DEMO_SCHEDULE = "demo-ticks"
"""The schedule the producer role keeps while it runs (removed when it stops)."""
DEMO_SCHEDULE_EVERY = 2.0
TERMINAL_EVENTS = {"job:completed", "job:failed", "job:expired", "job:cancelled"}
_REFRESH = 0.1  # seconds between redraws of the progress line (a display refresh, not a wait for a result)

TraceRenderer = Callable[[str, TextIO], list[str]]
"""Renders the trace tree of a job id (empty when no spans were recorded)."""


@dataclass
class DemoResult:
    """What the demo saw: terminal outcome per job, waits and durations, the retried jobs' events.

    Attributes:
        enqueued: ids of the jobs the demo enqueued, in order.
        outcomes: terminal outcome by job id (``completed``, ``failed``, ``expired``, ``cancelled``).
        waits: seconds each attempt waited between eligibility and start.
        durations: seconds each attempt ran.
        retried: ids of jobs that were retried at least once.
        timeline: lifecycle events by job id.
        backend_counts: jobs per state as the backend reports them at the end (``None``: not read).
        track_all: record every job's events, not only those of :attr:`enqueued` (the worker role).

    """

    enqueued: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    timeline: dict[str, list[LifecycleEvent]] = field(default_factory=dict)
    backend_counts: dict[str, int] | None = None
    track_all: bool = False

    def on_event(self, event: LifecycleEvent) -> None:
        """Inline bus listener: record outcomes and timings."""
        if event.job_id is None:
            return
        if event.job_id not in self.timeline:
            if not self.track_all or event.queue != DEMO_QUEUE:
                return
            self.timeline[event.job_id] = []
        self.timeline[event.job_id].append(event)
        if event.name == "job:started" and event.wait_s is not None:
            self.waits.append(event.wait_s)
        if event.duration_s is not None and event.name in {"job:completed", "job:failed", "job:retried"}:
            self.durations.append(event.duration_s)
        if event.name == "job:retried" and event.job_id not in self.retried:
            self.retried.append(event.job_id)
        if event.name in TERMINAL_EVENTS:
            self.outcomes[event.job_id] = event.name.split(":", 1)[1]

    def counts(self) -> Counter[str]:
        """Terminal outcomes by name."""
        return Counter(self.outcomes.values())

    @property
    def settled(self) -> bool:
        """Whether every enqueued job reached a terminal outcome."""
        return len(self.outcomes) >= len(self.enqueued)


async def enqueue_workload(queue: Queue, jobs: int, result: DemoResult | None = None) -> list[str]:
    """Enqueue about ``jobs`` jobs of the mixed workload; return their ids."""
    ids: list[str] = []

    def track(job_id: str) -> str:
        ids.append(job_id)
        if result is not None:
            result.enqueued.append(job_id)
            result.timeline[job_id] = []
        return job_id

    scale = max(jobs, 12)
    # An expiring job while the queue is paused: its TTL passes before any worker may claim it.
    await queue.pause()
    track(await queue.add("demo.send_email", ["expired@example.com"], ttl=0.2))
    cancel_me = track(await queue.add("demo.send_email", ["cancelled@example.com"], delay=30))
    for index in range(max(scale // 2, 1)):
        track(await queue.add("demo.send_email", [f"user{index}@example.com"]))
    for index in range(max(scale // 8, 1)):
        track(await queue.add("demo.resize_image", [640 + index, 480]))
    for index in range(max(scale // 10, 1)):
        track(
            await queue.add(
                "demo.flaky_lookup",
                [f"key{index}-{time.monotonic_ns()}", 1 + index % 2],
                retries=3,
                backoff={"type": "exponential", "delay": 0.1, "max": 1.0},
            )
        )
    for index in range(max(scale // 20, 1)):
        track(
            await queue.add(
                "demo.charge_card", [f"4111111111111{index:03d}", 100 + index], retries=1, backoff=0.05
            )
        )
    for index in range(max(scale // 20, 1)):
        track(await queue.add("demo.render_report", [5 + index]))
    for index in range(max(scale // 10, 1)):
        track(await queue.add("demo.send_email", [f"later{index}@example.com"], delay=0.5 + index * 0.1))
    await queue.cancel_job(cancel_me)
    await anyio.sleep(
        0.3
    )  # let the paused expiring job outlive its TTL: the scenario, not a wait for a result
    await queue.resume()
    remaining = jobs - len(ids)
    bulk = [
        {"task_id": "demo.send_email", "args": [f"bulk{index}@example.com"]}
        for index in range(max(remaining, 0))
    ]
    for job_id in await queue.add_bulk(bulk):
        track(job_id)
    return ids


def _register_demo_tasks() -> None:
    """Import the demo's tasks only when a demo worker runs, so other commands never register them."""
    importlib.import_module("asyncmq_otel.demo_app")


def _progress(stream: TextIO, text: str) -> None:
    stream.write(f"\r\x1b[2K  {text}")
    stream.flush()


async def run_demo(
    *,
    jobs: int = 80,
    backend: Backend | None = None,
    duration: float = 60.0,
    concurrency: int = 8,
    rate_limit: int | None = 100,
    out: TextIO | None = None,
    progress: bool | None = None,
    stop: anyio.Event | None = None,
    worker_ready: Callable[[Worker], None] | None = None,
    trace_renderer: TraceRenderer | None = None,
    backend_label: str | None = None,
) -> DemoResult:
    """Run producer and worker together until every demo job has settled (or ``duration`` passes).

    Args:
        jobs: how many jobs to enqueue (at least 12 give every lifecycle path).
        backend: where the jobs live (the default backend when ``None``).
        duration: seconds after which the demo stops waiting; unsettled jobs are reported.
        concurrency: the worker's concurrency.
        rate_limit: job starts per second (``None``: unlimited).
        out: where the progress line and the summary go (stdout by default).
        progress: draw the live progress line (default: only when ``out`` is a TTY).
        stop: set it to end the demo early (the summary is still printed).
        worker_ready: called with the worker before it starts (signal handlers use it).
        trace_renderer: renders the trace tree of one retried job.
        backend_label: how the summary names the backend.

    Returns:
        What the demo saw, with the backend's own counts.

    """
    _register_demo_tasks()
    stream = out or sys.stdout
    chosen = backend or default_backend()
    queue = Queue(DEMO_QUEUE, backend=chosen)
    result = DemoResult()
    bus.on("job:*", result.on_event, inline=True)
    worker = Worker(queue, backend=chosen, concurrency=concurrency, rate_limit=rate_limit, rate_interval=1.0)
    if worker_ready is not None:
        worker_ready(worker)
    halt = stop or anyio.Event()
    started = time.monotonic()
    live = stream.isatty() if progress is None else progress
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            await enqueue_workload(queue, jobs, result)
            with anyio.move_on_after(duration):
                while not result.settled and not halt.is_set():
                    if live:
                        running = worker.context.running() if worker.context is not None else 0
                        _progress(
                            stream,
                            f"{len(result.outcomes)}/{len(result.enqueued)} jobs settled · "
                            f"{running} running · "
                            f"{time.monotonic() - started:.1f}s",
                        )
                    with anyio.move_on_after(_REFRESH):
                        await halt.wait()
            worker.stop(now=True)
        result.backend_counts = await queue.counts()
    finally:
        bus.off("job:*", result.on_event)
    if live:
        _progress(stream, f"{len(result.outcomes)}/{len(result.enqueued)} jobs settled\n")
    _print_summary(stream, result, time.monotonic() - started, backend_label or repr(chosen), trace_renderer)
    return result


async def run_producer(
    queue: Queue,
    *,
    jobs: int,
    duration: float,
    say: Callable[[str], None],
    stop: anyio.Event | None = None,
    poll_interval: float = 0.5,
) -> int:
    """Enqueue waves of the workload until ``duration`` passes; return how many jobs were enqueued.

    After each wave it watches the queue's depth and starts the next wave once the workers have
    taken everything that is due, or after ``poll_interval`` seconds per job, whichever comes first.

    Args:
        queue: the demo queue on a shared backend.
        jobs: jobs per wave.
        duration: seconds after which no new wave starts.
        say: reports each wave.
        stop: set it to stop after the current wave.
        poll_interval: seconds between depth reads.

    Returns:
        How many jobs were enqueued in all.

    """
    _register_demo_tasks()  # metric labels name registered tasks only (telemetry contract §3.6)
    halt = stop or anyio.Event()
    # one schedule fires beside the waves while the producer runs (the dashboards' Schedules row)
    ticks = await queue.upsert_repeatable(
        "demo.send_email", every=DEMO_SCHEDULE_EVERY, kwargs={"to": "ticks@example.com"}, key=DEMO_SCHEDULE
    )
    try:
        return await _waves(queue, jobs, duration, say, halt, poll_interval)
    finally:
        # another producer may have removed it, or Redis be gone: neither may hide how the waves ended
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(5),
            suppress(ScheduleNotFound, BackendUnavailable),
        ):
            await queue.remove_repeatable(ticks)


async def _waves(
    queue: Queue,
    jobs: int,
    duration: float,
    say: Callable[[str], None],
    halt: anyio.Event,
    poll_interval: float,
) -> int:
    total = 0
    wave = 0
    with anyio.move_on_after(duration):
        while not halt.is_set():
            wave += 1
            count = len(await enqueue_workload(queue, jobs))
            total += count
            stats = await queue.stats()
            say(
                f"wave {wave}: enqueued {count} jobs ({total} in all); "
                f"{stats.ready} ready, {stats.active} active"
            )
            deadline = time.monotonic() + max(jobs, 10) * poll_interval
            while not halt.is_set() and time.monotonic() < deadline:
                with anyio.move_on_after(poll_interval):
                    await halt.wait()  # a display refresh between depth reads, not a wait for a result
                stats = await queue.stats()
                if stats.ready == 0 and stats.active == 0:
                    break
    return total


async def run_demo_worker(
    *,
    backend: Backend,
    concurrency: int,
    duration: float,
    out: TextIO,
    say: Callable[[str], None],
    worker_ready: Callable[[Worker], None] | None = None,
    rate_limit: int | None = 100,
    backend_label: str | None = None,
) -> DemoResult:
    """Serve the demo queue until ``duration`` passes or the worker is stopped; summarise what it ran.

    Args:
        backend: the shared backend the producer enqueues into.
        concurrency: the worker's concurrency.
        duration: seconds after which the worker drains and stops.
        out: where the summary goes.
        say: reports the end of ``duration``.
        worker_ready: called with the worker before it starts (signal handlers use it).
        rate_limit: job starts per second (``None``: unlimited).
        backend_label: how the summary names the backend.

    Returns:
        What this worker ran, with the backend's counts of the demo queue at the end.

    """
    _register_demo_tasks()
    result = DemoResult(track_all=True)
    worker = Worker(
        DEMO_QUEUE,
        backend=backend,
        concurrency=concurrency,
        rate_limit=rate_limit,
        rate_interval=1.0,
    )
    if worker_ready is not None:
        worker_ready(worker)
    bus.on("job:*", result.on_event, inline=True)
    started = time.monotonic()
    try:
        async with anyio.create_task_group() as group:

            async def bound() -> None:
                await anyio.sleep(duration)
                say(f"--duration {duration:g}s reached: draining")
                worker.stop()

            group.start_soon(bound)
            await worker.run()
            group.cancel_scope.cancel()
        result.backend_counts = await Queue(DEMO_QUEUE, backend=backend).counts()
    finally:
        bus.off("job:*", result.on_event)
    result.enqueued = list(result.timeline)
    _print_summary(out, result, time.monotonic() - started, backend_label or repr(backend), None)
    return result


def _print_summary(
    stream: TextIO,
    result: DemoResult,
    elapsed: float,
    backend_label: str,
    trace_renderer: TraceRenderer | None,
) -> None:
    counts = result.counts()
    title = paint("asyncmq-otel demo", "cyan", stream, bold=True)
    stream.write(f"\n{title}: {len(result.enqueued)} jobs in {elapsed:.1f}s on {backend_label}\n\n")
    backend = None
    if result.backend_counts is not None:
        backend = {
            state: result.backend_counts.get(state, 0)
            for state in (*OUTCOMES, "waiting", "delayed", "active")
        }
    lines = summary_lines(
        seen={outcome: counts.get(outcome, 0) for outcome in OUTCOMES},
        backend=backend,
        enqueued=len(result.enqueued),
        unsettled=len(result.enqueued) - len(result.outcomes),
        waits=result.waits,
        durations=result.durations,
        stream=stream,
    )
    stream.write("\n".join(lines) + "\n")
    if result.retried:
        job_id = result.retried[0]
        events = result.timeline.get(job_id, [])
        task = next((event.task for event in events if event.task), "?")
        tree = trace_renderer(job_id, stream) if trace_renderer is not None else []
        if tree:
            stream.write(f"\ntrace of retried job {job_id} ({task}):\n")
            stream.write("\n".join(tree) + "\n")
        else:
            stream.write(f"\nlifecycle of retried job {job_id} ({task}):\n")
            stream.write("\n".join(render_lifecycle(events)) + "\n")
    stream.flush()


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
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
    metrics_addr: str,
    otlp_endpoint: str | None,
    log_format: str | None,
) -> None:
    """Run the mixed demo workload and print a summary (in-memory by default: nothing to set up).

    Exit 0 when every job settled, 1 when some had not when --duration ran out.
    """
    json_lines = json_logs(log_format) if role != "both" else log_format == "json"
    reporter = Reporter(json_lines=json_lines)
    with translate_errors(backend_url):
        get_settings()
        choice = open_backend(backend_url, prefix)
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
    except CLIError:
        raise
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
            return await _run_role(options, reporter, telemetry, capture, facts.describe(choice.prefix))
        finally:
            if telemetry is not None:
                await telemetry.stop()
            if capture is not None:
                await anyio.to_thread.run_sync(capture.shutdown)
    finally:
        await close_backend(choice)


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
    header = (
        f"asyncmq-otel demo ({options.role}) on {options.choice.masked_url} ({backend_details}) · "
        f"metrics {metrics or 'off'} · otlp {otlp or 'off'}"
    )
    stopper = _Stopper()
    signals = StopSignals(stopper.drain, stopper.now, reporter, drain_note="the summary follows")
    async with anyio.create_task_group() as group:
        group.start_soon(signals.watch)
        if options.role == "both":
            ok = await _both(options, header, otlp, capture, stopper)
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


async def _both(
    options: _DemoOptions, header: str, otlp: str | None, capture: SpanCapture | None, stopper: _Stopper
) -> bool:
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
    )
    if otlp and result.retried:
        service = os.environ.get("OTEL_SERVICE_NAME") or "asyncmq-demo"
        out.write(f"\nevery trace went to {otlp}: in Jaeger, search the service {service}\n")
    return result.settled

"""The demo's run: a producer and a worker on one backend, running the mixed demo workload.

The workload has every lifecycle path an operator should recognise: fast and slow successes,
retries that succeed, retries exhausted into the dead-letter queue, expiry, a cancellation,
delayed jobs, rate-limited bursts, progress reports, and a pause then resume.

:func:`run_demo` runs producer and worker in this process and ends with a summary (``asyncmq-otel demo``);
:func:`run_producer` enqueues waves of the workload for workers elsewhere (``--role producer``,
docker-compose); :func:`run_demo_worker` serves the demo queue and summarises what it ran.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from .._terminal import paint
from ..backends._default import default_backend
from ..backends.base import Backend
from ..errors import BackendUnavailable, ScheduleNotFound
from ..events import LifecycleEvent, bus
from ..queues import Queue
from ..worker.worker import Worker
from .app import DEMO_QUEUE
from .report import OUTCOMES, render_lifecycle, summary_lines

__all__ = [
    "DEMO_QUEUE",
    "DemoResult",
    "TraceRenderer",
    "enqueue_workload",
    "run_demo",
    "run_demo_worker",
    "run_producer",
]

DEMO_SCHEDULE = "demo-ticks"
"""The schedule the producer role keeps while it runs (removed when it stops)."""
DEMO_SCHEDULE_EVERY = 2.0
DEMO_TICKS = "demo-ticks-local"
"""The schedule ``run_demo`` keeps while it runs, so a single run shows a schedule firing too."""
DEMO_TICKS_EVERY = 0.25
TERMINAL_EVENTS = {"job:completed", "job:failed", "job:expired", "job:cancelled"}
_REFRESH = 0.1  # seconds between redraws of the progress line (a display refresh, not a wait for a result)
_WAVE_GAP = 2.0  # seconds between waves with --serve, so the dashboards show each wave's rise and fall

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
        delayed: jobs enqueued with a ``delay`` (they wait in ``delayed`` until due).
        throttled: job starts that waited for a rate-limit token.
        pauses: how many times the queue was paused (and resumed) while the workload was enqueued.
        ticks: ids of the jobs the demo's schedule fired (they count among :attr:`enqueued`).

    """

    enqueued: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    timeline: dict[str, list[LifecycleEvent]] = field(default_factory=dict)
    backend_counts: dict[str, int] | None = None
    track_all: bool = False
    delayed: int = 0
    throttled: int = 0
    pauses: int = 0
    ticks: list[str] = field(default_factory=list)

    def on_event(self, event: LifecycleEvent) -> None:
        """Inline bus listener: record outcomes and timings."""
        if event.job_id is None:
            return
        if event.job_id not in self.timeline:
            if event.name == "job:enqueued" and event.schedule_key == DEMO_TICKS:
                self.enqueued.append(event.job_id)
                self.ticks.append(event.job_id)
            elif not self.track_all or event.queue != DEMO_QUEUE:
                return
            self.timeline[event.job_id] = []
        self.timeline[event.job_id].append(event)
        if event.name == "job:throttled":
            self.throttled += 1
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
    importlib.import_module("asyncmq_otel.demo.app")


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
    serve: bool = False,
) -> DemoResult:
    """Run producer and worker together until every demo job has settled (or ``duration`` passes).

    With ``serve``, a new wave of the workload follows each settled one until ``stop`` is set
    (Ctrl-C in the CLI), so Prometheus and Grafana can watch a live queue; ``duration`` is ignored.

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
        serve: keep enqueueing waves until ``stop`` is set, then drain gracefully.

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
    # a schedule fires beside the workload: its jobs are ordinary jobs, counted with the others
    ticks = await queue.upsert_repeatable(
        "demo.send_email", every=DEMO_TICKS_EVERY, kwargs={"to": "ticks@example.com"}, key=DEMO_TICKS
    )
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            await _enqueue_wave(queue, jobs, result)
            if serve:
                group.start_soon(_next_waves, queue, jobs, result, halt)
            deadline = time.monotonic() + (math.inf if serve else duration)
            await _watch(result, worker, halt, deadline, stream if live else None, started, serve=serve)
            await _remove_ticks(queue, ticks)
            # ticks fired before the removal are waited for too; with --serve, Ctrl-C drains what runs
            await _watch(result, worker, halt, deadline, stream if live else None, started, serve=False)
            worker.stop(now=not serve)
        result.backend_counts = await queue.counts()
    finally:
        bus.off("job:*", result.on_event)
        await _remove_ticks(queue, ticks)
    if live:
        _progress(stream, f"{len(result.outcomes)}/{len(result.enqueued)} jobs settled\n")
    _print_summary(
        stream, result, time.monotonic() - started, backend_label or repr(chosen), trace_renderer, rate_limit
    )
    return result


async def _watch(
    result: DemoResult,
    worker: Worker,
    halt: anyio.Event,
    deadline: float,
    stream: TextIO | None,
    started: float,
    *,
    serve: bool,
) -> None:
    """Until every job settled (with ``serve``: until ``halt``), redrawing the progress line on ``stream``."""
    with anyio.move_on_after(max(deadline - time.monotonic(), 0)):
        while (serve or not result.settled) and not halt.is_set():
            if stream is not None:
                running = worker.context.running() if worker.context is not None else 0
                _progress(
                    stream,
                    f"{len(result.outcomes)}/{len(result.enqueued)} jobs settled · "
                    f"{running} running · "
                    f"{time.monotonic() - started:.1f}s",
                )
            with anyio.move_on_after(_REFRESH):
                await halt.wait()


async def _remove_ticks(queue: Queue, key: str) -> None:
    """Remove the demo's schedule, even from a cancelled run.

    Found gone (a second call, another producer removed it) or Redis gone: neither may hide how the
    run ended.
    """
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(5),
        suppress(ScheduleNotFound, BackendUnavailable),
    ):
        await queue.remove_repeatable(key)


async def _enqueue_wave(queue: Queue, jobs: int, result: DemoResult) -> None:
    """One wave of the workload, counted: it pauses the queue once and delays a tenth of its jobs."""
    await enqueue_workload(queue, jobs, result)
    result.pauses += 1
    result.delayed += max(max(jobs, 12) // 10, 1)  # the "later" jobs of enqueue_workload


async def _next_waves(queue: Queue, jobs: int, result: DemoResult, halt: anyio.Event) -> None:
    """Enqueue another wave each time the previous one has settled, until ``halt`` is set."""
    while not halt.is_set():
        with anyio.move_on_after(_REFRESH):
            await halt.wait()  # pacing between checks of the previous wave, not a wait for a result
        if result.settled and not halt.is_set():
            with anyio.move_on_after(_WAVE_GAP):
                await halt.wait()
            if not halt.is_set():
                await _enqueue_wave(queue, jobs, result)


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
    _register_demo_tasks()  # metric labels name registered tasks only (bounded cardinality)
    halt = stop or anyio.Event()
    # one schedule fires beside the waves while the producer runs (the dashboards' Schedules row)
    ticks = await queue.upsert_repeatable(
        "demo.send_email", every=DEMO_SCHEDULE_EVERY, kwargs={"to": "ticks@example.com"}, key=DEMO_SCHEDULE
    )
    try:
        return await _waves(queue, jobs, duration, say, halt, poll_interval)
    finally:
        await _remove_ticks(queue, ticks)


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
    _print_summary(out, result, time.monotonic() - started, backend_label or repr(backend), None, rate_limit)
    return result


def _print_summary(
    stream: TextIO,
    result: DemoResult,
    elapsed: float,
    backend_label: str,
    trace_renderer: TraceRenderer | None,
    rate_limit: int | None = None,
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
    happenings = _what_happened(result, counts, rate_limit)
    if happenings:
        stream.write("\n" + "\n".join(happenings) + "\n")
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


def _what_happened(result: DemoResult, counts: Counter[str], rate_limit: int | None) -> list[str]:
    """The workload's scenarios the table does not show: pauses, delays, rate limiting."""
    lines: list[str] = []
    if result.pauses:
        waves = f" ({result.pauses} waves)" if result.pauses > 1 else ""
        lines.append(
            f"  paused    the queue while each wave was enqueued{waves}, then resumed: "
            f"{counts.get('expired', 0)} job(s) outlived a 0.2 s TTL meanwhile and expired unrun"
        )
    if result.delayed:
        lines.append(f"  delayed   {result.delayed} jobs waited 0.5 s or more for their delay before running")
    if result.ticks:
        lines.append(
            f"  scheduled {len(result.ticks)} jobs fired by the schedule {DEMO_TICKS!r} (every "
            f"{DEMO_TICKS_EVERY:g} s) while it ran: ordinary jobs, one per tick"
        )
    if rate_limit is not None:
        lines.append(
            f"  limited   the worker starts at most {rate_limit} jobs a second: "
            f"{result.throttled} starts waited for a token (job:throttled)"
        )
    return lines

"""``asyncmq-otel demo``: a producer and a worker on one backend, running the mixed demo workload.

The workload has every lifecycle path an operator should recognise: fast and slow successes,
retries that succeed, retries exhausted into the dead-letter queue, expiry, a cancellation,
delayed jobs, rate-limited bursts, progress reports, and a pause then resume.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import anyio

from .. import demo_app
from .._worker import Worker
from ..backends._default import default_backend
from ..backends.base import Backend
from ..events import LifecycleEvent, bus
from ..queues import Queue

__all__ = ["DemoResult", "enqueue_workload", "run_demo"]

TERMINAL_EVENTS = {"job:completed", "job:failed", "job:expired", "job:cancelled"}


@dataclass
class DemoResult:
    """What the demo saw: terminal outcome per job, waits and durations, the retried jobs' events."""

    enqueued: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    timeline: dict[str, list[LifecycleEvent]] = field(default_factory=dict)

    def on_event(self, event: LifecycleEvent) -> None:
        """Inline bus listener: record outcomes and timings."""
        if event.job_id is None or event.job_id not in self.timeline:
            return
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
    )  # let the paused expiring job outlive its TTL: this is the scenario, not a wait for a result
    await queue.resume()
    remaining = jobs - len(ids)
    bulk = [
        {"task_id": "demo.send_email", "args": [f"bulk{index}@example.com"]}
        for index in range(max(remaining, 0))
    ]
    for job_id in await queue.add_bulk(bulk):
        track(job_id)
    return ids


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


async def run_demo(
    *,
    jobs: int = 80,
    backend: Backend | None = None,
    duration: float = 60.0,
    concurrency: int = 8,
    rate_limit: int | None = 100,
    out: TextIO | None = None,
) -> DemoResult:
    """Run producer and worker together until every demo job has settled (or ``duration`` passes)."""
    stream = out or sys.stdout
    chosen = backend or default_backend()
    queue = Queue(demo_app.DEMO_QUEUE, backend=chosen)
    result = DemoResult()
    bus.on("job:*", result.on_event, inline=True)
    worker = Worker(queue, backend=chosen, concurrency=concurrency, rate_limit=rate_limit, rate_interval=1.0)
    started = time.monotonic()
    tty = stream.isatty()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.run)
            await enqueue_workload(queue, jobs, result)
            with anyio.move_on_after(duration):
                while len(result.outcomes) < len(result.enqueued):
                    if tty:
                        stream.write(f"\r  {len(result.outcomes)}/{len(result.enqueued)} jobs settled")
                        stream.flush()
                    await anyio.sleep(0.1)  # progress display refresh
            worker.stop(now=True)
    finally:
        bus.off("job:*", result.on_event)
    if tty:
        stream.write("\n")
    _print_summary(stream, result, time.monotonic() - started)
    return result


def _print_summary(stream: TextIO, result: DemoResult, elapsed: float) -> None:
    counts = result.counts()
    stream.write(f"\nasyncmq-otel demo: {len(result.enqueued)} jobs in {elapsed:.1f}s\n")
    stream.write("  outcome      jobs\n")
    stream.writelines(
        f"  {outcome:<10} {counts.get(outcome, 0):>6}\n"
        for outcome in ("completed", "failed", "expired", "cancelled")
    )
    unsettled = len(result.enqueued) - len(result.outcomes)
    if unsettled:
        stream.write(f"  {'unsettled':<10} {unsettled:>6}\n")
    for label, values in (("wait", result.waits), ("duration", result.durations)):
        p50, p95 = _percentile(values, 50) * 1000, _percentile(values, 95) * 1000
        stream.write(f"  {label:<9} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms\n")
    if result.retried:
        job_id = result.retried[0]
        stream.write(f"\nlifecycle of retried job {job_id}:\n")
        for event in result.timeline[job_id]:
            detail = ""
            if event.name == "job:retried":
                detail = f"  backoff {event.backoff_s:.2f}s  {event.error_type}: {event.error_message}"
            elif event.name in {"job:completed", "job:failed"} and event.duration_s is not None:
                detail = f"  after {event.duration_s * 1000:.1f} ms"
            stream.write(f"  attempt {event.attempt}  {event.name:<14}{detail}\n")

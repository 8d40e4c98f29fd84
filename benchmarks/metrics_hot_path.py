"""Micro-benchmark: worker CPU the metrics adapter adds per job (telemetry contract §6, "metrics only").

    python benchmarks/metrics_hot_path.py [--jobs 20000] [--rounds 7] [--exemplars]

Feeds a realistic job through the adapter the way the bus does: ``job:started``, ``job:completed`` and
the completion write (``ack``, timed by messaging.client.operation.duration), with ten tasks on the
served queue, the scrape sink on and no OTLP sink. Prints the best round's CPU time per job
(``time.process_time``), GC off while timed. ``--exemplars`` also looks the attempt's span up for
exemplars, as when traces are on. This is the adapter's share only; ``benchmarks/run.py`` measures
whole workers.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry

from asyncmq_otel.events import EventBus, LifecycleEvent, Operation
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry._metrics_adapter import MetricsAdapter
from asyncmq_otel.telemetry.metrics import MetricSinks

QUEUE = "bench"
TASKS = [f"bench.t{n}" for n in range(10)]

Job = tuple[LifecycleEvent, LifecycleEvent, Operation]


def _noop() -> None:
    """The benchmark's tasks never run."""


def _jobs(count: int) -> list[Job]:
    now = time.time()
    jobs = []
    for i in range(count):
        common: dict[str, Any] = {
            "queue": QUEUE,
            "job_id": f"j{i}",
            "task": TASKS[i % len(TASKS)],
            "attempt": 1,
            "max_attempts": 1,
            "priority": 5,
            "enqueued_at": now - 0.01,
            "eligible_at": now - 0.01,
            "worker_id": "w",
            "group": "default",
        }
        started = LifecycleEvent(
            "job:started", now, started_at=now, wait_s=0.0012, started_monotonic=time.perf_counter(), **common
        )
        completed = LifecycleEvent(
            "job:completed",
            now,
            started_at=now,
            wait_s=0.0012,
            finished_at=now + 0.0004,
            duration_s=0.0004,
            **common,
        )
        jobs.append((started, completed, Operation("ack", QUEUE, duration_s=0.0003)))
    return jobs


def main() -> None:
    """Run the rounds and print µs per job."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--exemplars", action="store_true", help="look up the attempt's span (traces on)")
    args = parser.parse_args()
    for name in TASKS:
        task(QUEUE, name=name)(_noop)
    adapter = MetricsAdapter(
        MetricSinks(registry=CollectorRegistry()), bus=EventBus(), exemplars=args.exemplars
    )
    adapter.handlers["worker:started"](
        LifecycleEvent(
            "worker:started", time.time(), queue=QUEUE, worker_id="w", group="default", concurrency=50
        )
    )
    started, completed = adapter.handlers["job:started"], adapter.handlers["job:completed"]
    finished = adapter.operation_finished
    best = float("inf")
    for _ in range(args.rounds):
        jobs = _jobs(args.jobs)
        gc.collect()
        gc.disable()
        try:
            begin = time.process_time()
            for start, complete, ack in jobs:
                started(start)
                completed(complete)
                finished(ack)
            best = min(best, time.process_time() - begin)
        finally:
            gc.enable()
    print(f"{best / args.jobs * 1e6:.2f} µs per job (best of {args.rounds} rounds of {args.jobs} jobs)")


if __name__ == "__main__":
    main()

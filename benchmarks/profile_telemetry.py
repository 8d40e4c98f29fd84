"""Telemetry cost per job, signal by signal, measured in one process (no worker subprocess, no peers).

    python benchmarks/profile_telemetry.py [--jobs N] [--runs R] [--backend memory|redis]
        [--configs off,all,ratio0,parent_unsampled,metrics,logs,traces,traces_ratio0,send_off,send_on,...]
        [--cprofile CONFIG [--timer wall|cpu]] [--otlp-endpoint URL]

Each configuration drains ``--jobs`` preloaded no-op jobs with one worker at concurrency 50 and
reads the process's CPU time (``time.process_time()``, every thread: the span exporter and log
writer threads share the GIL with the event loop) per job. The configurations run interleaved,
``--runs`` times, and the median is kept, so drift in the machine's load hits all alike; the cost of
a configuration is its CPU per job minus that of ``off`` in the same sitting. ``send_on`` /
``send_off`` time single enqueues instead (the producer's ``send`` span + metric). The CPU is also
split by thread (Linux per-thread clocks): the event loop, the span exporter (batch processor), the
log writer and any other thread, so each signal's off-loop cost shows where it is spent.

Spans still in the batch processor's queue when the last job finishes (fewer than one batch of 512)
are exported after the measured window: use thousands of jobs so that this remainder is small.

``--cprofile CONFIG`` profiles that configuration's drain and prints the functions with the most
own time, per job. Spans go over OTLP/HTTP to a receiver process started here (``--otlp-endpoint``
picks another), logs go to a temporary file at INFO, as in ``run.py``'s overhead workload.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {},
    "all": {"sampling_ratio": 1.0},
    "ratio0": {"sampling_ratio": 0.0},
    # Jobs enqueued under an unsampled producer span; the worker's ratio would sample them.
    "parent_unsampled": {"sampling_ratio": 1.0},
    "metrics": {"traces": False, "logs": False, "sampling_ratio": 1.0},
    "logs": {"traces": False, "metrics": False, "sampling_ratio": 1.0},
    "traces": {"metrics": False, "logs": False, "sampling_ratio": 1.0},
    "traces_ratio0": {"metrics": False, "logs": False, "sampling_ratio": 0.0},
}
# Single enqueues: off, or instrumented as one of CONFIGS.
SEND_CONFIGS = {
    "send_off": None,
    "send_on": "all",
    "send_traces": "traces",
    "send_metrics": "metrics",
    "send_logs": "logs",
}
QUEUE = "prof"
TASK = "prof.noop"

_RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class Receiver:
    """An OTLP/HTTP sink in another process, so export costs land in the measured process only."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None  # noqa: S101 - narrowing
        self.endpoint = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def _instrument(config: str, endpoint: str, log_path: str) -> None:
    import asyncmq_otel

    options = dict(CONFIGS[config])
    asyncmq_otel.instrument(
        service_name="asyncmq-profile",
        otlp_endpoint=endpoint,
        log_format="json",
        log_level="INFO",
        metrics_addr="",
        queue_sampler="off",
        **options,
    )
    # Logs to a file, as the benchmark does (stderr redirected); reopened per run.
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)


def _make_backend(kind: str, url: str) -> Any:
    if kind == "redis":
        from asyncmq_otel.backends.redis import RedisBackend

        return RedisBackend(url, prefix=f"prof-{uuid.uuid4().hex[:8]}")
    from asyncmq_otel.backends.memory import InMemoryBackend

    return InMemoryBackend()


async def _close(backend: Any) -> None:
    for name in ("aclose", "close"):
        method = getattr(backend, name, None)
        if method is not None:
            result = method()
            if asyncio.iscoroutine(result):
                await result
            return


class _Counter:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


_COUNTER: _Counter | None = None
_LOOP_CPU: list[float] = []  # the event-loop thread's share of the last run's CPU per job
_THREAD_CPU: list[dict[str, float]] = []  # the last run's CPU per job by thread group (see _thread_group)


def _thread_group(name: str) -> str:
    """Which column a thread's CPU is reported in."""
    if name == "MainThread":
        return "loop"
    if "Span" in name:
        return "span export"
    if "log-writer" in name:
        return "log writer"
    return "other"


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every live thread of this process, by thread id."""
    out: dict[int, tuple[str, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            out[thread.ident] = (thread.name, time.clock_gettime(time.pthread_getcpuclockid(thread.ident)))
        except (OSError, AttributeError):  # a thread that just ended; or no per-thread clocks here
            continue
    return out


def _thread_split(before: dict[int, tuple[str, float]], jobs: int) -> dict[str, float]:
    """µs per job by thread group between ``before`` and now (threads started meanwhile count from 0)."""
    split: dict[str, float] = {}
    for ident, (name, cpu) in _thread_cpu().items():
        group = _thread_group(name)
        split[group] = split.get(group, 0.0) + (cpu - before.get(ident, (name, 0.0))[1]) * 1e6 / jobs
    return split


def _register() -> None:
    from asyncmq_otel.tasks import task

    @task(QUEUE, name=TASK)
    async def noop() -> None:
        if _COUNTER is not None:
            _COUNTER.hit()


async def _preload(backend: Any, n: int, *, unsampled_parent: bool, endpoint: str) -> None:
    import asyncmq_otel
    from asyncmq_otel.queues import Queue

    queue = Queue(QUEUE, backend=backend)
    if unsampled_parent:
        # Stored traceparents with the sampled flag off: the producer's ratio-0 decision.
        asyncmq_otel.instrument(
            otlp_endpoint=endpoint, sampling_ratio=0.0, metrics=False, logs=False, metrics_addr=""
        )
        try:
            for start in range(0, n, 1000):
                await queue.add_bulk([{"task_id": TASK} for _ in range(min(1000, n - start))])
        finally:
            asyncmq_otel.uninstrument()
        return
    for start in range(0, n, 1000):
        await queue.add_bulk([{"task_id": TASK} for _ in range(min(1000, n - start))])


async def drain_once(
    config: str, args: argparse.Namespace, endpoint: str, log_path: str, profile: cProfile.Profile | None
) -> float:
    """CPU µs per job of one drain of ``args.jobs`` preloaded jobs."""
    global _COUNTER  # noqa: PLW0603 - the task is a plain module-level function
    import asyncmq_otel
    from asyncmq_otel.workers import Worker

    backend = _make_backend(args.backend, args.redis_url)
    await _preload(backend, args.jobs, unsampled_parent=config == "parent_unsampled", endpoint=endpoint)
    _COUNTER = counter = _Counter(args.jobs)
    if config != "off":
        _instrument(config, endpoint, log_path)
    worker = Worker(QUEUE, backend=backend, concurrency=50)
    try:
        threads0 = _thread_cpu()
        cpu0 = time.process_time()
        loop0 = time.thread_time()
        if profile is not None:
            profile.enable()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(counter.done.wait(), max(60.0, args.jobs / 200))
        cpu = time.process_time() - cpu0
        _LOOP_CPU.append((time.thread_time() - loop0) * 1e6 / args.jobs)
        _THREAD_CPU.append(_thread_split(threads0, args.jobs))
        if profile is not None:
            profile.disable()
        worker.stop()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        if config != "off":
            asyncmq_otel.uninstrument()
        await _close(backend)
    return cpu * 1e6 / args.jobs


async def send_once(
    config: str,
    args: argparse.Namespace,
    endpoint: str,
    log_path: str,
    profile: cProfile.Profile | None = None,
) -> float:
    """CPU µs per single enqueue (``Queue.add``), with or without telemetry."""
    import asyncmq_otel
    from asyncmq_otel.queues import Queue

    backend = _make_backend(args.backend, args.redis_url)
    instrumented = SEND_CONFIGS[config]
    if instrumented is not None:
        _instrument(instrumented, endpoint, log_path)
    try:
        queue = Queue(QUEUE, backend=backend)
        for _ in range(100):  # warm-up: first-use caches and connections
            await queue.add(TASK)
        threads0 = _thread_cpu()
        cpu0 = time.process_time()
        loop0 = time.thread_time()
        if profile is not None:
            profile.enable()
        for _ in range(args.jobs):
            await queue.add(TASK)
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu0
        _LOOP_CPU.append((time.thread_time() - loop0) * 1e6 / args.jobs)
        _THREAD_CPU.append(_thread_split(threads0, args.jobs))
    finally:
        if instrumented is not None:
            asyncmq_otel.uninstrument()
        await _close(backend)
    return cpu * 1e6 / args.jobs


async def _profile(args: argparse.Namespace, endpoint: str, log_path: str, saved_stderr: int) -> None:
    """cProfile one configuration (after a warm-up run) and print the top functions."""
    # Wall time charges a GIL wait (another thread's work) to whatever the loop was running; the loop
    # thread's CPU clock does not, at the price of a slower clock read per call.
    profile = cProfile.Profile(time.thread_time) if args.timer == "cpu" else cProfile.Profile()
    if args.cprofile in SEND_CONFIGS:
        await send_once(args.cprofile, args, endpoint, log_path)
        await send_once(args.cprofile, args, endpoint, log_path, profile)
    else:
        await drain_once(args.cprofile, args, endpoint, log_path, None)
        await drain_once(args.cprofile, args, endpoint, log_path, profile)
    os.dup2(saved_stderr, 2)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    restrictions = (args.filter, args.top) if args.filter else (args.top,)
    stats.sort_stats(args.sort).print_stats(*restrictions)
    print(out.getvalue())


async def _measure(
    configs: list[str], args: argparse.Namespace, endpoint: str, log_path: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU µs per job of each configuration, ``args.runs`` times interleaved, after one warm-up each."""
    results: dict[str, list[float]] = {c: [] for c in configs}
    loop_cpu: dict[str, list[float]] = {}
    for warm_up in [True] + [False] * args.runs:
        for config in configs:
            if config in SEND_CONFIGS:
                value = await send_once(config, args, endpoint, log_path)
            else:
                value = await drain_once(config, args, endpoint, log_path, None)
            if not warm_up:
                results[config].append(value)
                loop_cpu.setdefault(config, []).append(_LOOP_CPU[-1])
                for group, cpu in _THREAD_CPU[-1].items():
                    _SPLITS.setdefault(config, {}).setdefault(group, []).append(cpu)
    return results, loop_cpu


_SPLITS: dict[str, dict[str, list[float]]] = {}  # config → thread group → µs per job, per run


async def main_async(args: argparse.Namespace) -> None:
    _register()
    receiver = None
    endpoint = args.otlp_endpoint
    if endpoint is None:
        receiver = Receiver()
        endpoint = receiver.endpoint
    log_path = str(Path(tempfile.mkdtemp(prefix="prof-logs-")) / "telemetry.log")
    saved_stderr = os.dup(2)
    try:
        if args.cprofile:
            await _profile(args, endpoint, log_path, saved_stderr)
            return
        results, loop_cpu = await _measure(args.configs.split(","), args, endpoint, log_path)
    finally:
        os.dup2(saved_stderr, 2)
        if receiver is not None:
            receiver.close()
    med = {c: statistics.median(v) for c, v in results.items() if v}
    print(f"{args.jobs} jobs x {args.runs} runs, backend {args.backend}, load {os.getloadavg()[0]:.2f}")
    print(
        "| configuration | CPU µs/job (median) | added vs off | event-loop thread µs/job "
        "| span export thread | log writer thread | other threads | runs |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for config, value in med.items():
        base = med.get("send_off" if config in SEND_CONFIGS else "off")
        added = "" if base is None else f"{value - base:.1f}"
        runs = ", ".join(f"{v:.0f}" for v in results[config])
        loop = f"{statistics.median(loop_cpu[config]):.1f}" if config in loop_cpu else ""
        split = _SPLITS.get(config, {})
        threads = " | ".join(
            f"{statistics.median(split[group]):.1f}" if group in split else "0"
            for group in ("span export", "log writer", "other")
        )
        print(f"| {config} | {value:.1f} | {added} | {loop} | {threads} | {runs} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backend", choices=["memory", "redis"], default="memory")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--configs", default="off,all,ratio0,parent_unsampled,metrics,logs,traces")
    p.add_argument(
        "--cprofile", choices=[*CONFIGS, *SEND_CONFIGS], help="profile one configuration's drain or enqueues"
    )
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--sort", default="tottime", help="pstats sort key: tottime or cumulative")
    p.add_argument("--filter", help="only functions whose path matches this regular expression")
    p.add_argument(
        "--timer",
        choices=["wall", "cpu"],
        default="wall",
        help="--cprofile clock: wall time, or the event-loop thread's CPU time (no GIL waits)",
    )
    p.add_argument("--otlp-endpoint")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()

"""Shared harness for the peer drivers: workloads, timing, Redis probes and the driver CLI.

Every driver runs inside its peer's own virtualenv, so this module uses the standard library only.
A driver defines a ``Peer`` subclass and calls ``main(factory)``; the same script is then started
twice per drain workload: once as the producer (``bench``), once as the worker process (``worker``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

QUEUE = "bench"
BULK_BATCH = 1_000
SLEEP_S = 0.01
W2_RATE = 200
W2_SECONDS = 10.0

# Job counts of the full run; --quick (scale 0.1) divides them by ten.
N_ENQUEUE = 10_000
N_W3 = 5_000
N_OVERHEAD = 20_000
OVERHEAD_RUNS = 5

WORKLOADS = ("enqueue_single", "W1", "W1r", "enqueue_bulk", "W3", "W2", "overhead")
# The overhead workload's telemetry configurations (the worker side; the driver maps each to its
# library's options): everything on with every attempt sampled, the same at sampling ratio 0, and
# each signal alone (traces with every attempt sampled).
TELEMETRY_CONFIGS = ("off", "full", "ratio0", "metrics", "logs", "traces")
N_PRODUCER = 5_000  # single enqueues per producer-cost run (full run; --quick divides by ten)


# --------------------------------------------------------------------------- Redis probes


class RawRedis:
    """A minimal RESP client for INFO and FLUSHDB.

    It is deliberately not the peer's own client: every venv has a different redis-py (or none we
    may touch), and the probes must cost the same for every peer.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self._sock: socket.socket | None = None
        self._file: Any = None

    def _connect(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), timeout=10)
        self._file = self._sock.makefile("rb")
        if self.db:
            self.command("SELECT", str(self.db))

    def command(self, *args: str) -> Any:
        if self._sock is None:
            self._connect()
        assert self._sock is not None  # noqa: S101 - narrowing for the reader
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected RESP line {line!r}")

    def info(self, *sections: str) -> dict[str, str]:
        text = self.command("INFO", *sections)
        fields = {}
        for raw in text.splitlines():
            if raw and not raw.startswith("#") and ":" in raw:
                key, _, value = raw.partition(":")
                fields[key] = value
        return fields

    def snapshot(self) -> dict[str, float]:
        """Server-wide counters; one INFO call, so the probe's own cost is one read and one command."""
        info = self.info("stats", "cpu", "commandstats")
        calls = 0
        scripts = 0
        for key, value in info.items():
            if not key.startswith("cmdstat_") or key == "cmdstat_info":
                continue  # INFO is this probe's own command
            n = int(value.split(",", 1)[0].removeprefix("calls="))
            calls += n
            if key in {
                "cmdstat_eval",
                "cmdstat_evalsha",
                "cmdstat_eval_ro",
                "cmdstat_evalsha_ro",
                "cmdstat_fcall",
                "cmdstat_fcall_ro",
            }:
                scripts += n
        return {
            "reads": float(info["total_reads_processed"]),
            "commands": float(calls),
            "scripts": float(scripts),
            "cpu_s": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        }

    def flushdb(self) -> None:
        # Only the benchmark's private server is ever flushed (run.py starts it); one DB, not FLUSHALL.
        self.command("FLUSHDB")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def redis_cost(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """Per-job Redis work between two snapshots.

    ``reads_per_job`` counts socket reads Redis processed (one per client round trip; a pipeline
    is one or a few). The closing probe's own read is subtracted. ``commands_per_job`` comes from
    INFO commandstats, which also counts the commands a Lua script runs, so it is the Redis work
    done, not the number of requests sent.
    """
    if jobs <= 0:
        return {}
    return {
        "reads_per_job": round((after["reads"] - before["reads"] - 1) / jobs, 3),
        "commands_per_job": round((after["commands"] - before["commands"]) / jobs, 3),
        "scripts_per_job": round((after["scripts"] - before["scripts"]) / jobs, 3),
        "cpu_us_per_job": round((after["cpu_s"] - before["cpu_s"]) * 1e6 / jobs, 2),
    }


# --------------------------------------------------------------------------- the job handler


class Recorder:
    """Counts jobs run in the worker process and records when they started and finished.

    A lock guards the counters because dramatiq runs handlers on many threads.
    """

    def __init__(
        self, expected: int, sleep_s: float, ready_file: str | None, io_url: str | None = None
    ) -> None:
        self.expected = expected
        self.sleep_s = sleep_s
        self.ready_file = ready_file
        # W1r: the job body makes one Redis round trip of its own (an INCR on a key of this process).
        self.io_url = io_url
        self.io_key = f"bench-io-{os.getpid()}"
        self.count = 0
        self.first_start: float | None = None
        self.last_finish: float | None = None
        self.latencies: list[float] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def begin(self, ts: float) -> bool:
        """Record a job start; False for a warm-up job (negative timestamp), which is not counted."""
        now = time.monotonic()
        if ts < 0:
            if self.ready_file:
                Path(self.ready_file).touch()
            return False
        with self._lock:
            if self.first_start is None:
                self.first_start = now
            self.latencies.append(now - ts)
        return True

    def end(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            self.last_finish = now
            if self.count >= self.expected:
                self.done.set()


_RECORDER: Recorder | None = None


class AsyncRedisIncr:
    """The W1r job body's own Redis client: asyncio streams, one connection per concurrent job.

    Deliberately not the peer's client (each venv has its own redis-py, or none): every peer's job
    pays the same round trip. Connections are opened on first need and reused.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        if self.db:
            db = str(self.db).encode()
            writer.write(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(db), db))
            await reader.readline()
        return reader, writer

    async def incr(self, key: str) -> int:
        conn = self._idle.pop() if self._idle else await self._connect()
        reader, writer = conn
        data = key.encode()
        writer.write(b"*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n" % (len(data), data))
        line = await reader.readline()
        if not line.startswith(b":"):
            writer.close()
            raise RuntimeError(f"INCR answered {line!r}")
        self._idle.append(conn)
        return int(line[1:-2])


_ASYNC_IO: dict[int, AsyncRedisIncr] = {}  # per event loop (a peer could run handlers on several)
_SYNC_IO = threading.local()  # per thread, for thread-based peers


async def _job_io(rec: Recorder) -> None:
    loop_id = id(asyncio.get_running_loop())
    client = _ASYNC_IO.get(loop_id)
    if client is None:
        client = _ASYNC_IO[loop_id] = AsyncRedisIncr(rec.io_url or "")
    await client.incr(rec.io_key)


def _job_io_sync(rec: Recorder) -> None:
    client = getattr(_SYNC_IO, "client", None)
    if client is None:
        client = _SYNC_IO.client = RawRedis(rec.io_url or "")
    client.command("INCR", rec.io_key)


async def handle(ts: float) -> None:
    """The benchmark job: every peer's task calls this with the timestamp it was given."""
    rec = _RECORDER
    if rec is None or not rec.begin(ts):
        return
    if rec.sleep_s:
        await asyncio.sleep(rec.sleep_s)
    if rec.io_url:
        await _job_io(rec)
    rec.end()


def handle_sync(ts: float) -> None:
    """The no-op job for thread-based peers (dramatiq's sync actors); W1r's round trip is a blocking one."""
    rec = _RECORDER
    if rec is None or not rec.begin(ts):
        return
    if rec.io_url:
        _job_io_sync(rec)
    rec.end()


# --------------------------------------------------------------------------- the peer interface


class Unavailable(Exception):
    """The peer's library cannot be imported or set up in this venv."""


class Peer:
    """What a driver implements. ``mode`` is ``noop``, ``sleep`` (W3) or ``redis`` (W1r's job body)."""

    name = "?"
    dists: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    has_bulk = False
    has_telemetry = False

    def __init__(self, url: str) -> None:
        self.url = url

    async def open_producer(self, mode: str) -> None:
        raise NotImplementedError

    async def close_producer(self) -> None:
        return None

    async def enqueue(self, ts: float) -> None:
        raise NotImplementedError

    async def enqueue_bulk(self, stamps: list[float]) -> None:
        raise NotImplementedError

    async def run_worker(self, mode: str, concurrency: int, stop: asyncio.Event) -> None:
        """Start consuming, return once ``stop`` is set and the worker has shut down."""
        raise NotImplementedError

    def telemetry_missing(self) -> str | None:
        """Why the overhead workload cannot run in this venv, or None when it can."""
        return "the peer has no telemetry to measure"

    def setup_telemetry(self, config: str, otlp_endpoint: str | None) -> None:
        raise NotImplementedError

    def teardown_telemetry(self) -> None:
        return None

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in (*self.dists, "redis", "hiredis"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                out[dist] = importlib.metadata.version(dist)
        return out


async def maybe_await(value: object) -> None:
    """Await ``value`` if it is awaitable (some stop/close methods are sync, some async)."""
    if inspect.isawaitable(value):
        await value


# --------------------------------------------------------------------------- worker role


async def _worker_role(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    global _RECORDER  # noqa: PLW0603 - the handler is a plain function registered with each library
    rec = Recorder(
        args.expected,
        SLEEP_S if args.mode == "sleep" else 0.0,
        args.ready_file,
        io_url=args.url if args.mode == "redis" else None,
    )
    _RECORDER = rec
    probe = RawRedis(args.url)
    result: dict[str, Any] = {"expected": args.expected}
    if args.telemetry != "off":
        peer.setup_telemetry(args.telemetry, args.otlp_endpoint)
    stop = asyncio.Event()
    before = probe.snapshot()
    cpu0 = time.process_time()
    task = asyncio.create_task(peer.run_worker(args.mode, args.concurrency, stop))
    deadline = time.monotonic() + args.timeout
    # Polling keeps the handler free of any asyncio-specific signalling (dramatiq calls it from threads).
    while not rec.done.is_set() and not task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    # A short grace lets the acks of the last jobs reach Redis before the closing probe.
    await asyncio.sleep(0.1)
    after = probe.snapshot()
    cpu = time.process_time() - cpu0
    result["timed_out"] = not rec.done.is_set()
    if task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        result["error"] = f"worker stopped: {type(exc).__name__}: {exc}"
    stop.set()
    try:
        await asyncio.wait_for(task, 15)
    except Exception as exc:
        result.setdefault("shutdown_error", f"{type(exc).__name__}: {exc}")
    if args.telemetry != "off":
        with contextlib.suppress(Exception):
            peer.teardown_telemetry()
    result.update(
        count=rec.count,
        first_start=rec.first_start,
        last_finish=rec.last_finish,
        latencies=rec.latencies if args.keep_latencies else [],
        redis=redis_cost(before, after, rec.count),
        python_cpu_us_per_job=round(cpu * 1e6 / rec.count, 1) if rec.count else None,
    )
    return result


async def _producer_role(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """Single enqueues with the producer's telemetry on or off: the cost of one ``send`` (span + metric)."""
    if args.telemetry != "off":
        peer.setup_telemetry(args.telemetry, args.otlp_endpoint)
    await peer.open_producer("noop")
    try:
        for _ in range(100):  # warm-up: connections, first-use caches
            await peer.enqueue(0.0)
        n = args.expected
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            await peer.enqueue(0.0)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await peer.close_producer()
        if args.telemetry != "off":
            with contextlib.suppress(Exception):
                peer.teardown_telemetry()
    return {
        "jobs": n,
        "jobs_per_s": round(n / elapsed, 1),
        "cpu_us_per_enqueue": round(cpu * 1e6 / n, 1),
    }


# --------------------------------------------------------------------------- producer role


def _read_result(out: Path, returncode: int | None) -> dict[str, Any]:
    if not out.exists():
        return {"error": f"worker process exited rc={returncode} without a result"}
    return json.loads(out.read_text())


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    idx = max(0, math.ceil(pct / 100 * len(sorted_values)) - 1)
    return sorted_values[idx]


class Bench:
    """Runs the workloads of one peer from the producer process and collects the figures."""

    def __init__(self, peer: Peer, args: argparse.Namespace) -> None:
        self.peer = peer
        self.args = args
        self.probe = RawRedis(args.url)
        self.scale = args.scale
        self.driver = str(Path(sys.argv[0]).resolve())
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{peer.name}-"))

    def n(self, full: int) -> int:
        return max(1, int(full * self.scale))

    async def _enqueue_many(self, stamps: list[float], *, bulk: bool) -> None:
        if bulk:
            for i in range(0, len(stamps), BULK_BATCH):
                await self.peer.enqueue_bulk(stamps[i : i + BULK_BATCH])
        else:
            for ts in stamps:
                await self.peer.enqueue(ts)

    async def enqueue_workload(self, n: int, *, bulk: bool, keep: bool) -> dict[str, Any]:
        """Enqueue ``n`` jobs (one call each, or batches of BULK_BATCH); ``keep`` leaves them for W1."""
        self.probe.flushdb()
        await self.peer.open_producer("noop")
        try:
            stamps = [0.0] * n
            before = self.probe.snapshot()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            await self._enqueue_many(stamps, bulk=bulk)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            after = self.probe.snapshot()
        finally:
            await self.peer.close_producer()
        out = {
            "jobs": n,
            "seconds": round(elapsed, 4),
            "jobs_per_s": round(n / elapsed, 1),
            "redis": redis_cost(before, after, n),
            "python_cpu_us_per_job": round(cpu * 1e6 / n, 1),
        }
        if bulk:
            out["batch"] = BULK_BATCH
        if not keep:
            self.probe.flushdb()
        return out

    async def spawn_worker(
        self,
        *,
        mode: str,
        concurrency: int,
        expected: int,
        timeout: float,
        out: Path,
        ready: Path | None = None,
        telemetry: str = "off",
        otlp_endpoint: str | None = None,
        latencies: bool = False,
        stderr: Any = None,
    ) -> asyncio.subprocess.Process:
        cmd = [
            sys.executable,
            self.driver,
            "worker",
            "--url",
            self.args.url,
            "--mode",
            mode,
            "--concurrency",
            str(concurrency),
            "--expected",
            str(expected),
            "--timeout",
            str(timeout),
            "--out",
            str(out),
            "--telemetry",
            telemetry,
        ]
        if ready is not None:
            cmd += ["--ready-file", str(ready)]
        if otlp_endpoint:
            cmd += ["--otlp-endpoint", otlp_endpoint]
        if latencies:
            cmd.append("--keep-latencies")
        return await asyncio.create_subprocess_exec(*cmd, stderr=stderr)

    async def wait_worker(
        self, proc: asyncio.subprocess.Process, out: Path, timeout: float
    ) -> dict[str, Any]:
        try:
            await asyncio.wait_for(proc.wait(), timeout + 30)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            proc.kill()  # our own child, by its pid
            await proc.wait()
            return {"error": "worker process did not exit; killed"}
        return _read_result(out, proc.returncode)

    async def drain_workload(
        self,
        name: str,
        n: int,
        *,
        mode: str,
        concurrency: int,
        telemetry: str = "off",
        otlp_endpoint: str | None = None,
        preloaded: bool = False,
    ) -> dict[str, Any]:
        """Enqueue ``n`` jobs (unless ``preloaded``), then one worker process drains them."""
        if not preloaded:
            self.probe.flushdb()
            await self.peer.open_producer(mode)
            try:
                await self._enqueue_many([0.0] * n, bulk=self.peer.has_bulk)
            finally:
                await self.peer.close_producer()
        timeout = max(120.0, n / 25)
        out = self.tmp / f"{name}-{telemetry}-{time.monotonic_ns()}.json"
        log = None
        if telemetry != "off":
            # The telemetry contract measures with logs at INFO going to a file.
            log = (self.tmp / f"{name}-{telemetry}.log").open("ab")
        try:
            proc = await self.spawn_worker(
                mode=mode,
                concurrency=concurrency,
                expected=n,
                timeout=timeout,
                out=out,
                telemetry=telemetry,
                otlp_endpoint=otlp_endpoint,
                stderr=log,
            )
            res = await self.wait_worker(proc, out, timeout)
        finally:
            if log is not None:
                log.close()
        self.probe.flushdb()
        return self._throughput(n, concurrency, res)

    @staticmethod
    def _throughput(n: int, concurrency: int, res: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"jobs": n, "concurrency": concurrency}
        if "error" in res and "count" not in res:
            out["error"] = res["error"]
            return out
        if res.get("error"):
            out["error"] = res["error"]
        if res.get("timed_out"):
            out["error"] = f"timed out: {res['count']} of {n} jobs ran"
            return out
        span = res["last_finish"] - res["first_start"]
        out.update(
            seconds=round(span, 4),
            jobs_per_s=round(res["count"] / span, 1) if span > 0 else None,
            redis=res["redis"],
            python_cpu_us_per_job=res.get("python_cpu_us_per_job"),
        )
        return out

    async def latency_workload(self) -> dict[str, Any]:
        """W2: a steady W2_RATE jobs/s for W2_SECONDS; latency measured inside the task."""
        n = self.n(int(W2_RATE * W2_SECONDS))
        timeout = W2_SECONDS + 60
        self.probe.flushdb()
        out = self.tmp / f"W2-{time.monotonic_ns()}.json"
        ready = self.tmp / "W2.ready"
        ready.unlink(missing_ok=True)
        proc = await self.spawn_worker(
            mode="noop", concurrency=50, expected=n, timeout=timeout, out=out, ready=ready, latencies=True
        )
        await self.peer.open_producer("noop")
        try:
            # Warm-up jobs (negative stamps, not counted) until the worker runs one, so the measured
            # stream starts against a consuming worker, not one still importing its library.
            warm_deadline = time.monotonic() + 60
            while not ready.exists() and time.monotonic() < warm_deadline and proc.returncode is None:
                await self.peer.enqueue(-1.0)
                await asyncio.sleep(0.1)
            if not ready.exists():
                proc.kill()
                await proc.wait()
                return {"error": "worker never ran a warm-up job"}
            await asyncio.sleep(0.5)
            before = self.probe.snapshot()
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i / W2_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.peer.enqueue(time.monotonic())
            send_s = time.monotonic() - t0
        finally:
            await self.peer.close_producer()
        res = await self.wait_worker(proc, out, timeout)
        after = self.probe.snapshot()
        self.probe.flushdb()
        if "count" not in res:
            return {"error": res.get("error", "no result")}
        lat = sorted(res["latencies"])
        result: dict[str, Any] = {
            "jobs": n,
            "rate_target": W2_RATE,
            "rate_sent": round(n / send_s, 1),
            "received": len(lat),
            "redis": redis_cost(before, after, n),
        }
        if res.get("timed_out"):
            result["error"] = f"timed out: {res['count']} of {n} jobs ran"
        if lat:
            result.update(
                {
                    "p50_ms": round(percentile(lat, 50) * 1e3, 3),
                    "p95_ms": round(percentile(lat, 95) * 1e3, 3),
                    "p99_ms": round(percentile(lat, 99) * 1e3, 3),
                    "max_ms": round(lat[-1] * 1e3, 3),
                }
            )
        return result

    async def _producer_cost(self, telemetry: str, n: int, endpoint: str) -> dict[str, Any]:
        """One producer process doing ``n`` single enqueues with its telemetry ``telemetry``."""
        self.probe.flushdb()
        out = self.tmp / f"producer-{telemetry}-{time.monotonic_ns()}.json"
        cmd = [
            sys.executable, self.driver, "producer", "--url", self.args.url, "--out", str(out),
            "--expected", str(n), "--telemetry", telemetry, "--otlp-endpoint", endpoint,
        ]  # fmt: skip
        with (self.tmp / f"producer-{telemetry}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(*cmd, stderr=log)
            res = await self.wait_worker(proc, out, 300)
        self.probe.flushdb()
        return res

    async def overhead_workload(self) -> dict[str, Any]:
        """Telemetry overhead (telemetry contract §6, rev. 2): W1 per configuration, and the producer.

        Every configuration of TELEMETRY_CONFIGS drains the same no-op jobs, interleaved run by run
        so that drift in the machine's load hits all alike; the producer's single enqueues run with
        telemetry off and fully on in the same loop.
        """
        missing = self.peer.telemetry_missing()
        if missing:
            return {"na": missing}
        n = self.n(N_OVERHEAD)
        n_producer = self.n(N_PRODUCER)
        runs = OVERHEAD_RUNS if self.scale >= 1 else 1
        sink = OtlpSink()
        rates: dict[str, list[float]] = {c: [] for c in TELEMETRY_CONFIGS}
        cpu: dict[str, list[float]] = {c: [] for c in TELEMETRY_CONFIGS}
        producer: dict[str, list[float]] = {"off": [], "full": []}
        errors: dict[str, str] = {}
        try:
            for _ in range(runs):
                for config in TELEMETRY_CONFIGS:
                    res = await self.drain_workload(
                        f"overhead-{config}",
                        n,
                        mode="noop",
                        concurrency=50,
                        telemetry=config,
                        otlp_endpoint=sink.endpoint,
                    )
                    if res.get("jobs_per_s"):
                        rates[config].append(res["jobs_per_s"])
                        if res.get("python_cpu_us_per_job") is not None:
                            cpu[config].append(res["python_cpu_us_per_job"])
                    elif "error" in res:
                        errors[config] = res["error"]
                for config, samples in producer.items():
                    res = await self._producer_cost(config, n_producer, sink.endpoint)
                    if "cpu_us_per_enqueue" in res:
                        samples.append(res["cpu_us_per_enqueue"])
                    elif "error" in res:
                        errors[f"producer {config}"] = res["error"]
        finally:
            sink.close()
        return _overhead_summary(n, runs, rates, cpu, producer, sink.requests, errors, n_producer=n_producer)

    async def repeated(self, run_once: Any) -> dict[str, Any]:
        """Run a drain ``--repeat`` times; keep the run with the median rate and list all rates."""
        results = [await run_once(i == 0) for i in range(self.args.repeat)]
        if len(results) == 1:
            return results[0]
        ok = sorted((r for r in results if r.get("jobs_per_s")), key=lambda r: r["jobs_per_s"])
        if not ok:
            return results[0]
        median = dict(ok[len(ok) // 2])
        median["runs_jobs_per_s"] = [r.get("jobs_per_s") for r in results]
        return median

    async def run(self, only: set[str]) -> dict[str, Any]:
        res: dict[str, Any] = {}

        async def step(name: str, coro_fn: Any) -> None:
            if name not in only:
                return
            print(f"[{self.peer.name}] {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                res[name] = await coro_fn()
            except Exception as exc:
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
                with contextlib.suppress(Exception):
                    self.probe.flushdb()
            print(
                f"[{self.peer.name}] {name} done in {time.monotonic() - t0:.1f}s: "
                f"{json.dumps(res[name])[:300]}",
                file=sys.stderr,
                flush=True,
            )

        n = self.n(N_ENQUEUE)
        await step("enqueue_single", lambda: self.enqueue_workload(n, bulk=False, keep="W1" in only))
        if "W1" in only and "error" in res.get("enqueue_single", {}):
            res["W1"] = {"error": "enqueue failed"}
        else:
            await step(
                "W1",
                lambda: self.repeated(
                    lambda first: self.drain_workload(
                        "W1", n, mode="noop", concurrency=50, preloaded=first and "enqueue_single" in only
                    )
                ),
            )
        await step(
            "W1r",
            lambda: self.repeated(lambda _first: self.drain_workload("W1r", n, mode="redis", concurrency=50)),
        )
        if self.peer.has_bulk:
            await step("enqueue_bulk", lambda: self.enqueue_workload(n, bulk=True, keep=False))
        elif "enqueue_bulk" in only:
            res["enqueue_bulk"] = {"na": "no bulk enqueue API"}
        await step(
            "W3",
            lambda: self.repeated(
                lambda _first: self.drain_workload("W3", self.n(N_W3), mode="sleep", concurrency=100)
            ),
        )
        await step("W2", self.latency_workload)
        if self.peer.has_telemetry:
            await step("overhead", self.overhead_workload)
        return res


def _median(values: list[float]) -> float:
    """The median run (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def _overhead_summary(
    n: int,
    runs: int,
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    producer: dict[str, list[float]],
    otlp_requests: int,
    errors: dict[str, str],
    *,
    n_producer: int,
) -> dict[str, Any]:
    """Medians per configuration, and each one against ``off`` of the same sitting.

    ``<config>_us_per_job`` is the wall time added per job in one worker process
    (``1e6 / rate_on - 1e6 / rate_off``); ``<config>_cpu_us_added`` the worker's CPU time added per
    job (all threads), the figure the budget bounds.
    """
    out: dict[str, Any] = {
        "jobs": n,
        "runs": runs,
        "rates": rates,
        "cpu_us_per_job": cpu,
        "otlp_requests": otlp_requests,
    }
    if errors:
        out["error"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    med = {c: _median(v) for c, v in rates.items() if v}
    med_cpu = {c: _median(v) for c, v in cpu.items() if v}
    out["median_jobs_per_s"] = med
    out["median_cpu_us_per_job"] = med_cpu
    for config in TELEMETRY_CONFIGS[1:]:
        if config in med and "off" in med:
            out[f"{config}_vs_off"] = round(med[config] / med["off"], 3)
            out[f"{config}_us_per_job"] = round(1e6 / med[config] - 1e6 / med["off"], 1)
        if config in med_cpu and "off" in med_cpu:
            out[f"{config}_cpu_us_added"] = round(med_cpu[config] - med_cpu["off"], 1)
    if producer["off"] and producer["full"]:
        off, full = _median(producer["off"]), _median(producer["full"])
        out["producer"] = {
            "enqueues": n_producer,
            "cpu_us_per_enqueue": {"off": off, "full": full},
            "runs": producer,
            "added_us_per_enqueue": round(full - off, 1),
        }
    return out


class OtlpSink:
    """Accepts OTLP/HTTP exports in the producer process, so spans leave the worker process.

    It answers every POST with an empty protobuf body, which is a valid empty Export*Response.
    """

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return  # one line per export would drown the run's log

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="benchmark driver (started by benchmarks/run.py)")
    p.add_argument("role", choices=["bench", "worker", "producer"])
    p.add_argument("--url", required=True, help="redis:// URL of the benchmark's private server")
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", default=",".join(WORKLOADS))
    p.add_argument("--mode", choices=["noop", "sleep", "redis"], default="noop")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--expected", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--ready-file")
    p.add_argument("--keep-latencies", action="store_true")
    p.add_argument("--telemetry", choices=TELEMETRY_CONFIGS, default="off")
    p.add_argument("--otlp-endpoint")
    return p.parse_args(argv)


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def main(factory: Any) -> None:
    args = _parse(sys.argv[1:])
    peer_name = getattr(factory, "name", "?")
    if args.role in {"worker", "producer"}:
        try:
            peer = factory(args.url)
            role = _worker_role if args.role == "worker" else _producer_role
            result = asyncio.run(role(peer, args))
        except Exception as exc:
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        _write(args.out, result)
        sys.stdout.flush()
        sys.stderr.flush()
        # Some libraries leave non-daemon threads or pending tasks behind after stop; the result is
        # written, so end the process now rather than wait for them.
        os._exit(0)

    report: dict[str, Any] = {"peer": peer_name, "python": platform.python_version(), "pid": os.getpid()}
    try:
        peer = factory(args.url)
    except Unavailable as exc:
        report.update(available=False, error=str(exc))
        _write(args.out, report)
        return
    report.update(available=True, versions=peer.versions(), notes=list(peer.notes))
    bench = Bench(peer, args)
    try:
        report["workloads"] = asyncio.run(bench.run(set(args.only.split(","))))
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)  # worker results and telemetry logs
    _write(args.out, report)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def import_or_unavailable(what: str) -> Unavailable:
    """The exception a driver raises when its library does not import, with the reason."""
    exc = sys.exc_info()[1]
    return Unavailable(f"{what} does not import: {type(exc).__name__}: {exc}")

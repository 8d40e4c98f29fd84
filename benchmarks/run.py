"""Benchmark asyncmq_otel against the Python job queues on Redis, all in one run on one machine.

    python benchmarks/run.py [--quick] [--only NAME ...]

Each peer gets its own virtualenv under benchmarks/.venvs/<peer> (installed from PyPI with uv; ours
editable from this repository) and runs its driver, benchmarks/peers/<peer>.py, in a subprocess of
that venv. Every peer talks to one private redis-server started here on a free loopback port with
no persistence, so INFO deltas count only the benchmark's own traffic and nothing shared is
flushed. Results: benchmarks/results/<timestamp>.json and latest.md (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers._common import RawRedis

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
OURS = "asyncmq_otel"

# What each peer's venv installs. Unpinned on purpose: the run records the versions it measured.
PEERS: dict[str, list[str]] = {
    "asyncmq": ["asyncmq"],
    "bullmq": ["bullmq"],
    "arq": ["arq"],
    # saq 0.26 imports typing_extensions without declaring it.
    "saq": ["saq[redis]", "typing-extensions"],
    "taskiq-redis": ["taskiq", "taskiq-redis"],
    "dramatiq": ["dramatiq[redis]"],
    OURS: ["-e", f"{REPO}[redis,otlp]"],
}

# (label, workload, field, higher is better, target[, the peers' workload and field]). A "ratio"
# target compares ours with the best peer of the same run (issue 3); "max"/"min" targets are
# absolute (issue 3, reliability §10). The optional last pair reads the peers' figure elsewhere than
# ours: our drain with all telemetry on against the peers' plain W1 (telemetry contract §6, rev. 2).
Comparison = (
    tuple[str, str, str, bool, "tuple[str, float] | None"]
    | tuple[str, str, str, bool, "tuple[str, float] | None", tuple[str, str]]
)
COMPARISONS: list[Any] = [
    ("W1 drain, no-op, c=50 (jobs/s)", "W1", "jobs_per_s", True, ("ratio", 2.0)),
    ("W1r drain, one Redis INCR per job, c=50 (jobs/s)", "W1r", "jobs_per_s", True, None),
    (
        "W1 drain with all telemetry on, every attempt sampled (jobs/s) vs the fastest peer's W1 without",
        "overhead",
        "median_jobs_per_s.full",
        True,
        ("ratio", 1.0),
        ("W1", "jobs_per_s"),
    ),
    ("W3 drain, sleep 10 ms, c=100 (jobs/s)", "W3", "jobs_per_s", True, ("ratio", 1.5)),
    ("W2 pickup p50 (ms)", "W2", "p50_ms", False, None),
    ("W2 pickup p99 (ms)", "W2", "p99_ms", False, ("max", 2.0)),
    ("enqueue, one per call (jobs/s)", "enqueue_single", "jobs_per_s", True, None),
    ("enqueue, bulk (jobs/s)", "enqueue_bulk", "jobs_per_s", True, ("min", 50_000.0)),
    (
        "Redis CPU, enqueue + claim + complete (µs/job)",
        "derived",
        "cpu_us_enqueue_and_drain",
        False,
        ("max", 80.0),
    ),
    ("W1 Redis round trips (reads/job)", "W1", "redis.reads_per_job", False, None),
]


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- environment


def uv_command() -> list[str] | None:
    if shutil.which("uv"):
        return ["uv"]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    for python in ("python3", "python"):
        exe = shutil.which(python)
        probe = (
            subprocess.run([exe, "-m", "uv", "--version"], capture_output=True, check=False) if exe else None
        )
        if probe is not None and probe.returncode == 0:
            return [exe, "-m", "uv"]
    return None


def ensure_venv(peer: str, logf: Any, *, install: bool) -> str | None:
    """Create and fill the peer's venv; return an error message, or None when it is ready."""
    venv = VENVS / peer
    python = venv / "bin" / "python"
    uv = uv_command()
    if not python.exists():
        VENVS.mkdir(parents=True, exist_ok=True)
        cmd = (
            [*uv, "venv", "-q", "--python", sys.executable, str(venv)]
            if uv
            else [sys.executable, "-m", "venv", str(venv)]
        )
        if subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False).returncode:
            return f"could not create the venv ({' '.join(cmd)})"
    elif not install:
        return None
    specs = PEERS[peer]
    cmd = (
        [*uv, "pip", "install", "-q", "--python", str(python), *specs]
        if uv
        else [str(python), "-m", "pip", "install", "-q", *specs]
    )
    rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, check=False, timeout=900).returncode
    if rc:
        return f"install failed (rc={rc}): {' '.join(specs)}"
    return None


class PrivateRedis:
    """A throw-away redis-server on a free loopback port: no persistence, removed at the end."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> str:
        if shutil.which(self.binary) is None:
            raise SystemExit(
                f"{self.binary} not found: install Debian's redis-server or pass --redis-server PATH"
            )
        for _attempt in range(5):
            # Bind port 0 to learn a free port, release it, start on it; retry if someone took it.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--logfile",
                    str(self.dir / "redis.log"),
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    probe = RawRedis(self.url)
                    if probe.command("PING") == "PONG":
                        probe.close()
                        return self.url
                time.sleep(0.05)
            self.stop_process()
        raise RuntimeError(f"could not start {self.binary}; see {self.dir / 'redis.log'}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


def calibrate(probe: RawRedis, n: int = 5_000) -> float:
    """Redis CPU of one sequential PING round trip: the floor that every round trip pays here.

    On small VMs this is dominated by syscalls and wake-ups, so it helps to read the per-job Redis
    CPU of the peers as "round trips x this + the work of the commands".
    """
    before = probe.snapshot()
    for _ in range(n):
        probe.command("PING")
    after = probe.snapshot()
    return round((after["cpu_s"] - before["cpu_s"]) * 1e6 / n, 1)


def machine_info(redis_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    probe = RawRedis(redis_url)
    info["redis_version"] = probe.info("server").get("redis_version")
    info["redis_cpu_us_per_round_trip"] = calibrate(probe)
    probe.close()
    info["redis_mode"] = "private redis-server, loopback, no persistence (--save '' --appendonly no)"
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    info["repo_commit"] = git.stdout.strip() or "no commit"
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, check=False
    )
    info["repo_dirty"] = bool(dirty.stdout.strip())
    return info


# --------------------------------------------------------------------------- running the drivers


def driver_path(peer: str) -> Path:
    return BENCH / "peers" / f"{peer.replace('-', '_')}.py"


def run_driver(peer: str, url: str, args: argparse.Namespace, logf: Any, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{peer}.json"
    cmd = [
        str(VENVS / peer / "bin" / "python"),
        str(driver_path(peer)),
        "bench",
        "--url",
        url,
        "--out",
        str(out),
        "--scale",
        str(args.scale),
        "--repeat",
        str(args.repeat),
        "--only",
        args.workloads,
    ]
    timeout = (2400 if args.scale >= 1 else 600) * max(1, args.repeat)
    # Its own session, so that on a timeout the driver and the worker it spawned go together.
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"available": False, "error": f"driver timed out after {timeout} s"}
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if not out.exists():
        return {"available": False, "error": f"driver exited rc={proc.returncode} without a report"}
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- summary


def field(report: dict[str, Any], workload: str, name: str) -> float | None:
    node: Any = report.get("derived" if workload == "derived" else "workloads", {})
    if workload != "derived":
        node = node.get(workload, {})
    for part in name.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, (int, float)) else None


def derive(report: dict[str, Any]) -> None:
    wl = report.get("workloads", {})
    enq = wl.get("enqueue_single", {}).get("redis", {}).get("cpu_us_per_job")
    drain = wl.get("W1", {}).get("redis", {}).get("cpu_us_per_job")
    if enq is not None and drain is not None and "jobs_per_s" in wl.get("W1", {}):
        report["derived"] = {"cpu_us_enqueue_and_drain": round(enq + drain, 2)}


def compare(peers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against the best other peer of this run, per metric: ratio = ours / best."""
    rows = []
    ours = peers.get(OURS, {})
    for label, workload, name, higher, target, *elsewhere in COMPARISONS:
        peer_workload, peer_name = elsewhere[0] if elsewhere else (workload, name)
        candidates = [
            (p, v)
            for p, rep in peers.items()
            if p != OURS
            if (v := field(rep, peer_workload, peer_name)) is not None and v > 0
        ]
        mine = field(ours, workload, name)
        row: dict[str, Any] = {
            "metric": label,
            "ours": mine,
            "direction": "higher is better" if higher else "lower is better",
        }
        if candidates:
            best_peer, best = (max if higher else min)(candidates, key=lambda pv: pv[1])
            row.update(best_peer=best_peer, best=best)
            if mine is not None:
                row["ratio"] = round(mine / best, 3)
        if target is not None:
            kind, value = target
            row["target"] = {
                "ratio": f">= {value}x the best peer",
                "max": f"<= {value:g}",
                "min": f">= {value:g}",
            }[kind]
            if kind == "ratio" and "ratio" in row:
                row["met"] = row["ratio"] >= value
            elif kind == "max" and mine is not None:
                row["met"] = mine <= value
            elif kind == "min" and mine is not None:
                row["met"] = mine >= value
        rows.append(row)
    return rows


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return str(value)


def cell(report: dict[str, Any], workload: str, name: str, digits: int = 0) -> str:
    wl = report.get("workloads", {}).get(workload)
    if wl is None:
        return "—"
    if "na" in wl:
        return "n/a"
    value = field(report, workload, name)
    if value is None and "error" in wl:
        return "error"
    return fmt(value, digits)


def _md_header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    quick = " (quick, noisy: job counts / 10)" if report["quick"] else ""
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    return [
        f"# Benchmark run {report['started_at']}{quick}",
        "",
        (
            f"- Machine: {m.get('cpu_model', '?')}, {m['nproc']} CPUs, {m.get('memory_gib', '?')} GiB, "
            f"{m['platform']}; load average at start {load}"
        ),
        (
            f"- Redis {m['redis_version']} ({m['redis_mode']}); one PING round trip costs Redis "
            f"{fmt(m.get('redis_cpu_us_per_round_trip'), 1)} µs of CPU here (calibration)"
        ),
        (
            f"- Python {m['python']}; repo at {m['repo_commit']}"
            f"{' (uncommitted changes)' if m['repo_dirty'] else ''}"
        ),
        f"- Command: `{report['command']}`",
    ]


def _md_throughput(peers: dict[str, Any]) -> list[str]:
    lines = [
        "## Throughput and pickup latency",
        "",
        (
            "| peer | version | enqueue 1/call (jobs/s) | enqueue bulk (jobs/s) | W1 no-op c=50 (jobs/s) "
            "| W1r one INCR c=50 (jobs/s) | W3 sleep 10 ms c=100 (jobs/s) | W2 p50 / p95 / p99 (ms) |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, rep in peers.items():
        if not rep.get("available"):
            lines.append(f"| {name} | unavailable: {rep.get('error', '?')} | | | | | | |")
            continue
        dist = {OURS: "asyncmq-otel"}.get(name, name)
        version = rep.get("versions", {}).get(dist, "?")
        w2 = rep["workloads"].get("W2", {})
        if "p99_ms" in w2:
            lat = " / ".join(fmt(w2.get(k), 2) for k in ("p50_ms", "p95_ms", "p99_ms"))
        else:
            lat = "error" if "error" in w2 else "—"
        lines.append(
            f"| {name} | {version} | {cell(rep, 'enqueue_single', 'jobs_per_s')} "
            f"| {cell(rep, 'enqueue_bulk', 'jobs_per_s')} | {cell(rep, 'W1', 'jobs_per_s')} "
            f"| {cell(rep, 'W1r', 'jobs_per_s')} | {cell(rep, 'W3', 'jobs_per_s')} | {lat} |"
        )
    return lines


def _md_cost(peers: dict[str, Any]) -> list[str]:
    lines = [
        (
            "## Cost per job: round trips (Redis reads) · Redis commands (incl. inside Lua) · Redis CPU µs "
            "· Python CPU µs (producer for enqueue, worker process for drains)"
        ),
        "",
        "| peer | enqueue 1/call | enqueue bulk | W1 drain | W1r drain | W3 drain | W2 enqueue + run |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, rep in peers.items():
        if not rep.get("available"):
            continue
        cells = []
        for wl in ("enqueue_single", "enqueue_bulk", "W1", "W1r", "W3", "W2"):
            res = rep["workloads"].get(wl, {})
            r = res.get("redis")
            if not r:
                cells.append("—")
                continue
            py = res.get("python_cpu_us_per_job")
            cells.append(
                f"{r['reads_per_job']:.2f} · {r['commands_per_job']:.1f} · {r['cpu_us_per_job']:.0f}"
                + (f" · {py:.0f}" if py is not None else "")
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _md_comparison(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"## {OURS} against the best peer of this run",
        "",
        "| metric | ours | best peer | ratio ours/best | target | met |",
        "|---|--:|---|--:|---|---|",
    ]
    for row in rows:
        best = f"{row['best_peer']} {fmt(row['best'], 2)}" if "best_peer" in row else "—"
        met = {True: "yes", False: "NO"}.get(row.get("met"), "—")
        lines.append(
            f"| {row['metric']} ({row['direction']}) | {fmt(row['ours'], 2)} | {best} "
            f"| {fmt(row.get('ratio'), 3)} | {row.get('target', '—')} | {met} |"
        )
    return lines


# (label, configuration key, CPU µs added per job target, drain ratio target): telemetry contract §6,
# revision 2. Logs and traces alone have no target of their own; they show where the µs go.
OVERHEAD_ROWS: list[tuple[str, str, float | None, float | None]] = [
    ("off", "off", None, None),
    ("every attempt sampled + OTLP export, metrics, logs at INFO", "full", 50.0, 0.65),
    ("sampling ratio 0, metrics, logs at INFO", "ratio0", 12.0, 0.88),
    ("metrics only", "metrics", 5.0, 0.95),
    ("logs only (INFO, JSON to a file)", "logs", None, None),
    ("traces only (every attempt sampled + OTLP export)", "traces", None, None),
]
PRODUCER_TARGET_US = 30.0  # the send span + metric, per single enqueue (§6, rev. 2)


def _met(value: float | None, target: float | None, *, at_most: bool) -> str:
    if value is None or target is None:
        return ""
    ok = value <= target if at_most else value >= target
    return f"{'≤' if at_most else '≥'} {target:g}: {'yes' if ok else 'NO'}"


def _md_overhead(ov: dict[str, Any]) -> list[str]:
    title = "## Telemetry overhead (telemetry contract §6, rev. 2): W1 drain per configuration"
    if "na" in ov:
        return [title, "", f"Not measured: {ov['na']}."]
    med = ov.get("median_jobs_per_s", {})
    med_cpu = ov.get("median_cpu_us_per_job", {})
    lines = [
        title,
        "",
        (
            f"{ov.get('jobs')} no-op jobs, one worker process at concurrency 50, median of {ov.get('runs')} "
            f"run(s) per configuration, interleaved; {ov.get('otlp_requests', 0)} OTLP requests received. "
            "CPU = the worker process's CPU time per job, all threads (the budget's figure); wall = "
            "1e6 / rate_on − 1e6 / rate_off."
        ),
        "",
        (
            "| configuration | jobs/s | vs off | wall µs/job added | CPU µs/job | CPU µs/job added "
            "| CPU target | ratio target |"
        ),
        "|---|--:|--:|--:|--:|--:|---|---|",
    ]
    for label, key, us_target, ratio_target in OVERHEAD_ROWS:
        off = key == "off"
        ratio = None if off else ov.get(f"{key}_vs_off")
        added = None if off else ov.get(f"{key}_cpu_us_added")
        lines.append(
            f"| {label} | {fmt(med.get(key))} | {'1' if off else fmt(ratio, 3)} "
            f"| {'0' if off else fmt(ov.get(f'{key}_us_per_job'), 1)} | {fmt(med_cpu.get(key), 1)} "
            f"| {'0' if off else fmt(added, 1)} | {_met(added, us_target, at_most=True)} "
            f"| {_met(ratio, ratio_target, at_most=False)} |"
        )
    producer = ov.get("producer")
    if producer:
        cpu = producer["cpu_us_per_enqueue"]
        added = producer["added_us_per_enqueue"]
        lines += [
            "",
            (
                f"Producer, {producer['enqueues']} single enqueues per run: CPU {fmt(cpu['off'], 1)} µs per "
                f"enqueue with telemetry off, {fmt(cpu['full'], 1)} fully on: **{fmt(added, 1)} µs added** "
                f"(send span + metric; {_met(added, PRODUCER_TARGET_US, at_most=True)})."
            ),
        ]
    if ov.get("error"):
        lines += ["", f"Errors: {ov['error']}"]
    return lines


def markdown(report: dict[str, Any]) -> str:
    peers = report["peers"]
    lines = [
        *_md_header(report),
        "",
        *_md_throughput(peers),
        "",
        *_md_cost(peers),
        "",
        *_md_comparison(report["comparison"]),
    ]
    ov = peers.get(OURS, {}).get("workloads", {}).get("overhead")
    if ov:
        lines += ["", *_md_overhead(ov)]
    problems = [
        f"- {name} {wl}: {res['error']}"
        for name, rep in peers.items()
        for wl, res in rep.get("workloads", {}).items()
        if isinstance(res, dict) and res.get("error")
    ]
    if problems:
        lines += ["", "## Errors", "", *problems]
    notes = [f"- {name}: {'; '.join(rep['notes'])}" for name, rep in peers.items() if rep.get("notes")]
    if notes:
        lines += ["", "## Peer settings", "", *notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="job counts / 10: a smoke run, figures are noise")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=list(PEERS), help="run only these peers")
    p.add_argument(
        "--workloads",
        default="enqueue_single,W1,W1r,enqueue_bulk,W3,W2,overhead",
        help="comma-separated subset of the workloads",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="run W1 and W3 this many times and report the median run"
    )
    p.add_argument("--skip-install", action="store_true", help="reuse existing venvs as they are")
    p.add_argument("--redis-server", default="redis-server", help="redis-server binary to start privately")
    args = p.parse_args(argv)
    args.scale = 0.1 if args.quick else 1.0
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    peers = args.only or list(PEERS)
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    logdir = RESULTS / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    redis = PrivateRedis(args.redis_server)
    report: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python benchmarks/run.py " + " ".join(argv),
        "quick": args.quick,
        "scale": args.scale,
        "repeat": args.repeat,
        "workloads": args.workloads.split(","),
        "peers": {},
    }
    try:
        url = redis.start()
        log(f"private redis-server on {url}; logs in {logdir}")
        report["machine"] = machine_info(url)
        probe = RawRedis(url)
        for peer in peers:
            with (logdir / f"{peer}.log").open("w") as logf:
                log(f"== {peer}: preparing {VENVS / peer}")
                error = ensure_venv(peer, logf, install=not args.skip_install)
                if error:
                    log(f"   {error}")
                    report["peers"][peer] = {"available": False, "error": error}
                    continue
                # Each peer starts on an empty server; it is ours alone, so FLUSHALL harms no one.
                probe.command("FLUSHALL")
                log(f"== {peer}: running (load average {os.getloadavg()[0]:.2f})")
                t0 = time.monotonic()
                logf.flush()
                rep = run_driver(peer, url, args, logf, workdir)
            rep["log"] = str((logdir / f"{peer}.log").relative_to(BENCH))
            rep["loadavg_after"] = os.getloadavg()
            derive(rep)
            report["peers"][peer] = rep
            summary = rep.get("error") or ", ".join(
                f"{k}={v.get('jobs_per_s', v.get('p99_ms', v.get('na', v.get('error'))))}"
                for k, v in rep.get("workloads", {}).items()
                if isinstance(v, dict)
            )
            log(f"   {time.monotonic() - t0:.0f}s: {summary}")
        probe.close()
    finally:
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["comparison"] = compare(report["peers"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (RESULTS / "latest.md").write_text(md)
    log("")
    log(md)
    log(f"written: {RESULTS / f'{stamp}.json'} and {RESULTS / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

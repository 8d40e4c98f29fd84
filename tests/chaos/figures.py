"""The reliability figures of reliability.md §15, measured by the suite and written to a JSON file.

With ``ASYNCMQ_RECORD_FIGURES=1`` a test merges what it measured into
``benchmarks/results/reliability.json`` (or the file ``ASYNCMQ_FIGURES_FILE`` names), beside a
description of the machine; without it nothing is written. Samples of one figure from several
tests (SIGKILL recoveries from row 1, the multi-process test and the soak) are kept per source and
summarised together.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["FIGURES_FILE", "percentiles", "record_figure", "recording"]

FIGURES_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability.json"


def recording() -> bool:
    return os.environ.get("ASYNCMQ_RECORD_FIGURES") == "1"


def percentiles(samples: list[float]) -> dict[str, Any]:
    """``n``, ``p50``, ``p95`` and ``max`` of ``samples`` (seconds, rounded to the millisecond)."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "max": round(ordered[-1], 3),
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = "?"
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        redis_version = next((part[2:] for part in out.split() if part.startswith("v=")), out.strip())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": redis_version,
    }


def _path() -> Path:
    return Path(os.environ.get("ASYNCMQ_FIGURES_FILE") or FIGURES_FILE)


def record_figure(name: str, source: str, value: dict[str, Any], samples: list[float] | None = None) -> None:
    """Merge one measurement into the figures file (only with ``ASYNCMQ_RECORD_FIGURES=1``).

    ``samples`` (seconds) are kept per ``source`` and the figure's ``p50``/``p95``/``max`` are
    recomputed over every source's samples.
    """
    if not recording():
        return
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data["machine"] = _machine()
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    scale = " ".join(
        f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("CHAOS_")
    )
    data.setdefault(
        "command",
        f"{scale} ASYNCMQ_RECORD_FIGURES=1 .venv/bin/python -m pytest tests/multiproc tests/chaos".lstrip(),
    )
    figures = data.setdefault("figures", {})
    figure = figures.setdefault(name, {})
    sources = figure.setdefault("sources", {})
    entry = dict(value)
    if samples is not None:
        entry["samples"] = [round(sample, 4) for sample in samples]
        entry.update(percentiles(samples))
    sources[source] = entry
    every = [sample for item in sources.values() for sample in item.get("samples", [])]
    if every:
        figure["all"] = percentiles(every)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

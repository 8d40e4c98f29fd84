"""Real ``asyncmq-otel worker`` subprocesses with the §4 test configuration (reliability.md §13).

:func:`worker_proc` is a factory fixture: ``worker_proc(queue, url, prefix, ...)`` starts
``python -m asyncmq_otel worker QUEUE --app tests.support.chaos_app`` with the test config
(lease 1 s, renew 0.3 s, reaper 0.2 s, loop block limit 2 s, block timeout 0.5 s, max stalls 1,
max interrupts 2), JSON logs in a file, and the ledger and kill points chosen through ``env``.
Every process is SIGCONTed, SIGKILLed and reaped when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.poll import wait_until

__all__ = ["APP", "REPO", "TEST_CONFIG", "WorkerProc", "scrape_metric", "worker_env", "worker_proc"]

REPO = Path(__file__).resolve().parents[2]
APP = "tests.support.chaos_app"

TEST_CONFIG = {
    "ASYNCMQ_LEASE": "1",
    "ASYNCMQ_RENEW_INTERVAL": "0.3",
    "ASYNCMQ_REAPER_INTERVAL": "0.2",
    "ASYNCMQ_LOOP_BLOCK_LIMIT": "2",
    "ASYNCMQ_BLOCK_TIMEOUT": "0.5",
    "ASYNCMQ_MAX_STALLS": "1",
    "ASYNCMQ_MAX_INTERRUPTS": "2",
    "ASYNCMQ_HEARTBEAT_INTERVAL": "1",
    # the invariant checker reads every finished job back, so retention must keep them all
    "ASYNCMQ_KEEP_COMPLETED": "1000000",
    "ASYNCMQ_KEEP_FAILED": "1000000",
}
"""The contract's test config (§4), plus retention large enough for the checker."""


def worker_env(**extra: str) -> dict[str, str]:
    """A subprocess environment: this repository importable, no inherited ASYNCMQ_*/OTEL_*/CHAOS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCMQ_", "OTEL_", "CHAOS_"))}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(TEST_CONFIG)
    env.update(extra)
    return env


class WorkerProc:
    """One worker subprocess: its ``Popen``, its log file and the ways a test hurts it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.killed_at: float | None = None

    def __repr__(self) -> str:
        return f"WorkerProc({self.name}, pid={self.pid}, rc={self.proc.poll()})"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- what it said -------------------------------------------------------------------------------
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else, e.g. a traceback, is skipped)."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def logged(self, needle: str) -> bool:
        return needle in self.text()

    @property
    def banner(self) -> dict[str, Any]:
        found = self.events("worker.started")
        cli = [line for line in found if line.get("logger") == "asyncmq_otel.cli"]
        if not cli:
            raise AssertionError(f"{self.name} printed no banner:\n{self.text()[-3000:]}")
        return cli[0]

    @property
    def worker_id(self) -> str:
        return str(self.banner["process_id"])

    @property
    def metrics_url(self) -> str | None:
        url = self.banner.get("metrics_url")
        return str(url) if url else None

    def started(self) -> bool:
        """Whether the worker runs (its ``worker.started`` job-log line is out); fails if it died."""
        if not self.alive:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
        return any(line.get("logger") == "asyncmq_otel" for line in self.events("worker.started"))

    def wait_started(self, timeout: float = 30.0) -> WorkerProc:
        wait_until(self.started, timeout=timeout, interval=0.05, what=f"{self.name} started")
        return self

    # -- what happens to it ------------------------------------------------------------------------
    def kill9(self) -> float:
        """SIGKILL and reap; return the ``CLOCK_MONOTONIC`` time of the kill."""
        self.killed_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return self.killed_at

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def sigstop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        wait_until(self.is_stopped, timeout=5, what=f"{self.name} stopped")

    def sigcont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def is_stopped(self) -> bool:
        try:
            return bool(psutil.Process(self.pid).status() == psutil.STATUS_STOPPED)
        except psutil.NoSuchProcess:
            return False

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def scrape_metric(url: str, name: str) -> float:
    """The sum of every sample of ``name`` on a Prometheus ``/metrics`` page (0 when absent)."""
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - the worker's own http:// URL
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


StartWorker = Callable[..., WorkerProc]


@pytest.fixture
def worker_proc(tmp_path: Path) -> Iterator[StartWorker]:
    """``start(queue, url, prefix, *, concurrency=10, env=None, metrics=False, shutdown_timeout=None,
    wait=True, extra_args=())``: a running worker subprocess (killed and reaped after the test).
    """
    started: list[WorkerProc] = []
    logs = tmp_path / "worker-logs"
    logs.mkdir(exist_ok=True)

    def start(
        queue: str | list[str],
        url: str,
        prefix: str,
        *,
        concurrency: int = 10,
        env: dict[str, str] | None = None,
        metrics: bool = False,
        shutdown_timeout: float | None = None,
        wait: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> WorkerProc:
        name = f"w{len(started)}"
        log = logs / f"{name}.log"
        queues = [queue] if isinstance(queue, str) else list(queue)
        args = [
            sys.executable,
            "-m",
            "asyncmq_otel",
            "worker",
            *queues,
            "--app",
            APP,
            "--backend",
            url,
            "--prefix",
            prefix,
            "--concurrency",
            str(concurrency),
            "--metrics-addr",
            "127.0.0.1:0" if metrics else "",
            "--log-format",
            "json",
            "--queue-sampler",
            "off",
            *(("--shutdown-timeout", str(shutdown_timeout)) if shutdown_timeout is not None else ()),
            *extra_args,
        ]
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                args, cwd=REPO, env=worker_env(**(env or {})), stdout=handle, stderr=subprocess.STDOUT
            )
        worker = WorkerProc(name, proc, log)
        started.append(worker)
        if wait:
            worker.wait_started()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGCONT)
                    worker.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)

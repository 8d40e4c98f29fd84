"""Subprocesses of the ops tests: the CLI and Prometheus, with their output in files, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.ops._contract import REPO_ROOT

STOP_TIMEOUT = 10.0  # seconds a process gets after SIGTERM before SIGKILL


def cli_env() -> dict[str, str]:
    """A CLI subprocess environment: this checkout importable, no inherited ASYNCMQ_*/OTEL_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ASYNCMQ_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Process:
    """A started process and the file holding its stdout and stderr."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its output."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def assert_running(self) -> None:
        """Fail with its output when it has exited."""
        code = self.proc.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.tail()}"


@dataclass
class Processes:
    """Processes started for one test; :meth:`stop_all` ends every one of them, bounded."""

    directory: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Process:
        """Start ``args`` from the repository root with :func:`cli_env`, output in ``<name>.log``."""
        log = self.directory / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                args, cwd=REPO_ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle
            )
        process = Process(name, proc, log)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM every process still running, then SIGKILL those that outlive ``STOP_TIMEOUT``."""
        for process in self.started:
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait(timeout=STOP_TIMEOUT)

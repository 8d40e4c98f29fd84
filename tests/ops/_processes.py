"""Subprocesses of the ops tests: the CLI and Prometheus, with their output in files, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from tests.ops._contract import REPO_ROOT
from tests.support.poll import eventually
from tests.support.redis_server import free_port
from tests.support.scrape import scrape

Key = TypeVar("Key")

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


@dataclass
class Exporter:
    """A running ``asyncmq-otel exporter`` process, its ``/metrics`` URL and the file holding its output."""

    proc: anyio.abc.Process
    url: str
    log: Path

    async def wait_for(
        self,
        read: Callable[[str], Mapping[Key, float]],
        expected: Mapping[Key, float],
        *,
        timeout: float,
        what: str,
    ) -> str:
        """Scrape until ``read(page)`` holds ``expected`` for its keys and return that page.

        Fails the test with the values last read and the exporter's log when it has not by ``timeout``
        or when the exporter has exited.
        """
        scraped: list[str] = []

        async def reached() -> bool:
            assert self.proc.returncode is None, self.log.read_text(encoding="utf-8", errors="replace")
            try:
                text = await anyio.to_thread.run_sync(scrape, self.url)
            except OSError:
                return False  # not listening yet
            scraped[:] = [text]
            got = read(text)
            return {key: got.get(key) for key in expected} == expected

        try:
            await eventually(reached, timeout=timeout, interval=0.1, what=what)
        except AssertionError:
            got = read(scraped[0]) if scraped else "nothing scraped"
            log = self.log.read_text(encoding="utf-8", errors="replace")
            pytest.fail(f"{what}: expected {expected}\ngot {got}\nexporter log:\n{log}")
        return scraped[0]


@asynccontextmanager
async def running_exporter(directory: Path, redis_url: str, redis_prefix: str) -> AsyncIterator[Exporter]:
    """``asyncmq-otel exporter`` on Redis under ``redis_prefix``, sampling every 0.2 s, as a real process.

    It serves ``/metrics`` on a free 127.0.0.1 port and logs JSON to ``directory/exporter.log``; on exit
    it gets SIGTERM, then SIGKILL when it outlives ``STOP_TIMEOUT``.
    """
    address = f"127.0.0.1:{free_port()}"
    log = directory / "exporter.log"
    with log.open("wb") as handle:
        proc = await anyio.open_process(
            [sys.executable, "-m", "asyncmq_otel", "exporter", "--backend", redis_url, "--prefix", redis_prefix,
             "--metrics-addr", address, "--interval", "0.2", "--log-format", "json"],
            cwd=REPO_ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
        )  # fmt: skip
    try:
        yield Exporter(proc, f"http://{address}/metrics", log)
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()


StartExporter = Callable[[], AbstractAsyncContextManager[Exporter]]  # the ``start_exporter`` fixture

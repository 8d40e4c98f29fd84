"""Fixtures of the CLI tests: a click runner, a closed port, Redis under a unique prefix (asyncio only, with
a backend on it), subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from asyncmq_otel import telemetry
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    free_port,
    redis_prefix,
    redis_url,
)
from tests.support.shared_redis_backend import (  # noqa: F401 - as above
    anyio_backend,
    backend,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_leftover_instrumentation() -> Iterator[None]:
    """Commands uninstrument on the way out; make sure a failing one does not leak into the next test."""
    yield
    telemetry.uninstrument()


@pytest.fixture
def runner() -> CliRunner:
    """Click's runner; stdout and stderr are captured apart (``result.stdout``/``result.stderr``)."""
    return CliRunner()


@pytest.fixture
def closed_url() -> str:
    """A Redis URL on 127.0.0.1 where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this repository importable, no inherited ASYNCMQ_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCMQ_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Start ``python -m asyncmq_otel ARGS`` with stderr in a file; every process is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"stderr-{len(started)}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "asyncmq_otel", *args],
                cwd=REPO,
                env=env or cli_env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

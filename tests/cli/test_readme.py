"""The README's main command, run as a new user would: in a fresh copy of the repository, through uv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _readme_demo_command() -> str:
    """The README line that runs the demo (``python3 -m pip install uv && python3 -m uv run ... demo``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [
        line.strip()
        for line in text.splitlines()
        if re.search(r"uv run --all-extras asyncmq-otel demo\s*$", line)
    ]
    assert lines, "the README no longer shows `python3 -m uv run --all-extras asyncmq-otel demo`"
    return lines[0]


def _fresh_checkout(target: Path) -> None:
    """Tracked and new (not ignored) files, as a clone of this tree would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def test_readme_demo_command_runs_in_a_fresh_checkout(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the repository's files")
    checkout = tmp_path / "asyncmq-otel"
    _fresh_checkout(checkout)
    command = _readme_demo_command()
    assert command.startswith("python3 -m pip install uv && python3 -m uv run --all-extras asyncmq-otel demo")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT"}
        and not key.startswith(("ASYNCMQ_", "OTEL_"))
    }
    # A new user's shell: no project virtualenv on PATH (`uv run` puts ours first).
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    proc = subprocess.run(
        ["bash", "-c", f"{command} --jobs 20"],  # bounded: 20 jobs instead of the default 80
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fired = re.search(r"scheduled (\d+) jobs fired by the schedule", proc.stdout)
    total = str(20 + (int(fired.group(1)) if fired else 0))
    assert f"asyncmq-otel demo: {total} jobs in" in proc.stdout
    totals = re.search(r"^\s+total\s+(\d+)\s+(\d+)\s*$", proc.stdout, re.MULTILINE)
    assert totals is not None, proc.stdout
    assert totals.groups() == (total, total)
    assert "retried job" in proc.stdout
    assert (checkout / ".venv").is_dir()  # uv built the project's own environment

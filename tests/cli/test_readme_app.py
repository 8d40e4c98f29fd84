"""README's "Your own app" and "Testing your tasks", followed as written: its files, its commands, on Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import REPO, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

_BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _write_files(section: str, directory: Path) -> list[str]:
    """Each python block starts with ``# path``: write it there; return the bash blocks' commands."""
    commands: list[str] = []
    for language, body in _BLOCK.findall(section):
        if language == "python":
            first = body.splitlines()[0]
            assert first.startswith("# "), f"a README python block names no file: {first!r}"
            target = directory / first[2:].strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
        else:
            commands.extend(
                line.split("#", 1)[0].strip() for line in body.splitlines() if line.split("#", 1)[0].strip()
            )
    return commands


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_your_own_app_runs_one_traced_job_on_redis(tmp_path: Path) -> None:
    commands = _write_files(_section("Your own app"), tmp_path)
    assert commands == [
        "mkdir -p myapp && touch myapp/__init__.py",
        "export ASYNCMQ_BACKEND=redis://127.0.0.1:6379/0",
        "python3 producer.py",
        "asyncmq-otel worker emails --app myapp.tasks --burst",
    ]
    (tmp_path / "myapp" / "__init__.py").touch()
    env = cli_env(
        ASYNCMQ_BACKEND="redis://127.0.0.1:6379/0", ASYNCMQ_REDIS_PREFIX=f"readme{uuid.uuid4().hex[:8]}"
    )
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"  # the app's directory, as `python3 producer.py` run there has it

    produced = _run([sys.executable, "producer.py"], tmp_path, env)
    assert produced.returncode == 0, produced.stderr
    spans = {span["name"]: span for span in _console_spans(produced.stdout)}
    request, send = spans["POST /signup"], spans["send emails"]
    assert send["context"]["trace_id"] == request["context"]["trace_id"]
    assert send["parent_id"] == request["context"]["span_id"]

    worked = _run([sys.executable, "-m", "asyncmq_otel", *commands[-1].split()[1:]], tmp_path, env)
    assert worked.returncode == 0, worked.stderr
    completed = [
        line
        for line in map(_json_or_none, worked.stderr.splitlines())
        if line and line["event"] == "job.completed"
    ]
    assert len(completed) == 1, worked.stderr
    assert "0x" + completed[0]["trace_id"] == request["context"]["trace_id"]


def test_testing_your_tasks_passes_with_any_backend_setting(tmp_path: Path) -> None:
    _write_files(_section("Your own app"), tmp_path)
    commands = _write_files(_section("Testing your tasks"), tmp_path)
    assert commands == ["python3 -m pip install pytest && python3 -m pytest tests/"]
    (tmp_path / "myapp" / "__init__.py").touch()
    env = cli_env(ASYNCMQ_BACKEND="redis://127.0.0.1:1/0")  # would fail if the tests reached it
    env["PYTHONPATH"] = f"{tmp_path}:{REPO}"
    tested = _run([sys.executable, "-m", "pytest", "tests/", "-q", "-p", "no:cacheprovider"], tmp_path, env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout


def _console_spans(stdout: str) -> list[dict[str, object]]:
    """The JSON documents ConsoleSpanExporter printed, one after another."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, object]] = []
    position = stdout.find("{")
    while position != -1:
        span, end = decoder.raw_decode(stdout, position)
        spans.append(span)
        position = stdout.find("{", end)
    return spans


def _json_or_none(line: str) -> dict[str, str] | None:
    try:
        document = json.loads(line)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None

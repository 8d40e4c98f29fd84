"""The wheel ships what users need: the typed marker, every Lua script and the entry point."""

from __future__ import annotations

import configparser
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # `uv run` tells its children where uv is; otherwise use the one the README installs.
    uv = [os.environ["UV"]] if os.environ.get("UV") else ["python3", "-m", "uv"]
    subprocess.run(
        [*uv, "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("asyncmq_otel-*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.timeout(180)
def test_wheel_holds_py_typed_lua_scripts_and_the_cli_entry_point(wheel):
    names = set(wheel.namelist())
    assert "asyncmq_otel/py.typed" in names
    lua_in_repo = {p.relative_to(ROOT).as_posix() for p in (ROOT / "asyncmq_otel").rglob("*.lua")}
    assert lua_in_repo <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["asyncmq-otel"] == "asyncmq_otel.cli:main"
    assert parser["opentelemetry_instrumentor"]["asyncmq"] == "asyncmq_otel.telemetry:AsyncMQInstrumentor"
    assert not [n for n in names if n.startswith("tests/")]


def test_opentelemetry_requirements_move_together():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    specifiers = {
        r.split("opentelemetry-", 1)[1].split("~=", 1)[1]
        for r in requirements
        if r.startswith("opentelemetry-")
    }
    assert len(specifiers) == 1, specifiers

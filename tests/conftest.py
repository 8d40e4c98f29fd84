"""Shared fixtures: anyio backends, unique names, and an isolated event bus per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from asyncmq_otel import events
from asyncmq_otel.settings import get_settings, reload_settings


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
    """OTel lets a process set its global tracer provider once. Install the capture switch first,
    so a test that calls ``instrument()`` cannot pin the global to its own (then shut down) provider
    and leave later tests' handler spans going nowhere.
    """
    from opentelemetry import trace

    from asyncmq_otel import testing

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(testing._SWITCH)


@pytest.fixture(autouse=True)
def _isolated_state() -> Iterator[None]:
    """Each test starts with default settings, no listeners and no pending events."""
    saved = get_settings()
    reload_settings()
    subscriptions = list(events.bus._subscriptions)
    yield
    reload_settings(saved)
    events.bus._subscriptions[:] = subscriptions
    events.bus._routes.clear()
    events.bus._pending.clear()
    events.bus._current = None
    events.bus._observers.clear()
    events.bus._services.clear()

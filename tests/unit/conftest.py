from __future__ import annotations

from collections.abc import Iterator

import pytest

from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.settings import Settings, override_settings

FAST = {
    "lease": 1.0,
    "renew_interval": 0.3,
    "reaper_interval": 0.2,
    "loop_block_limit": 2.0,
    "block_timeout": 0.5,
    "heartbeat_interval": 0.2,
    "shutdown_timeout": 2.0,
}


@pytest.fixture
def fast_settings() -> Iterator[Settings]:
    """The reliability contract's test configuration (1 s leases, 0.2 s reaper)."""
    with override_settings(**FAST) as config:
        yield config


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
def events() -> list[LifecycleEvent]:
    """Every lifecycle event, captured inline in emission order."""
    captured: list[LifecycleEvent] = []
    bus.on("*", captured.append, inline=True)
    return captured

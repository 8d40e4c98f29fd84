"""Fixtures of the telemetry tests: fast worker settings, a fresh backend, and in-memory capture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace

from asyncmq_otel import telemetry
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.settings import Settings, override_settings
from asyncmq_otel.testing import Captured, capture_telemetry

FAST = {
    "lease": 1.0,
    "renew_interval": 0.3,
    "reaper_interval": 0.2,
    "loop_block_limit": 2.0,
    "block_timeout": 0.2,
    "heartbeat_interval": 0.1,
    "shutdown_timeout": 2.0,
}


@pytest.fixture(autouse=True)
def _no_leftover_instrumentation() -> Iterator[None]:
    """Every test ends uninstrumented, whatever it did, and leaves no span attached to the caller's context."""
    yield
    telemetry.uninstrument()
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.fixture
def fast_settings() -> Iterator[Settings]:
    with override_settings(**FAST) as config:
        yield config


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
def captured() -> Iterator[Captured]:
    with capture_telemetry() as cap:
        yield cap

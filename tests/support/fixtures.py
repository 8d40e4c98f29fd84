"""Fixtures of the worker and core suites: both backends, the fast test timings, captured events.

Each suite's conftest imports them (pytest registers a fixture where it is imported).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from asyncmq_otel.backends.base import Backend
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import Clock, system_clock
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.settings import Settings, override_settings
from tests.support.redis_server import redis_url  # noqa: F401 - the shared-server fixture, used by name
from tests.support.timings import TEST_TIMINGS

FAST = {**TEST_TIMINGS, "heartbeat_interval": 0.2, "shutdown_timeout": 2.0}


@pytest.fixture
def fast_settings() -> Iterator[Settings]:
    """The reliability contract's test configuration (1 s leases, 0.2 s reaper)."""
    with override_settings(**FAST) as config:
        yield config


@pytest.fixture
def memory_clock() -> Clock:
    """The clock of the in-memory ``backend``: the real one here.

    A module whose in-memory tests drive time overrides it with a ``FakeClock`` fixture; a worker on
    that backend then takes the same clock, and nothing waits on real time but shutdown budgets.
    """
    return system_clock


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Backend]:
    """Worker behaviour runs on both backends: the in-memory one, and Redis on the shared server.

    The in-memory one runs on ``memory_clock``. redis-py's async client is asyncio-only, so the Redis
    variant of a trio test is skipped.
    """
    if request.param == "memory":
        yield InMemoryBackend(clock=request.getfixturevalue("memory_clock"))
        return
    if anyio_backend != "asyncio":
        pytest.skip("redis-py's async client runs on asyncio only")
    from asyncmq_otel.backends.redis import RedisBackend
    from tests.support.redis_server import delete_prefix, unique_prefix

    url = request.getfixturevalue("redis_url")
    prefix = unique_prefix()
    redis_backend = RedisBackend(url, prefix=prefix, retry_timeout=5.0)
    try:
        yield redis_backend
    finally:
        await redis_backend.close()
        delete_prefix(url, prefix)


@pytest.fixture
def events() -> list[LifecycleEvent]:
    """Every lifecycle event, captured inline in emission order."""
    captured: list[LifecycleEvent] = []
    bus.on("*", captured.append, inline=True)
    return captured

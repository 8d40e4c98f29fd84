"""Suites every backend must pass; each runs on every kind of backend."""

import pytest

from asyncmq_otel.backends.base import Backend
from asyncmq_otel.clock import FakeClock
from tests.support.poll import eventually

# The params of each suite's backend fixture: the in-memory backend, one Redis, a Redis Cluster.
BACKEND_KINDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
]


async def elapse(backend: Backend, seconds: float) -> None:
    """Let ``seconds`` pass on the backend's clock: a FakeClock's advance, else a poll of ``now()``.

    The suites run the in-memory backend on a FakeClock; Redis' ``TIME`` cannot be faked.
    """
    timer = getattr(backend, "timer", None)
    if isinstance(timer, FakeClock):
        timer.advance(seconds)
        return
    moment = await backend.now() + seconds
    await eventually(lambda: _after(backend, moment), timeout=5 + seconds, what=f"{seconds}s pass")


async def _after(backend: Backend, moment: float) -> bool:
    return await backend.now() >= moment

"""Fixtures of async tests against the shared Redis: asyncio only, one backend under the test's prefix.

A conftest.py registers them by importing them together with ``redis_url`` and ``redis_prefix`` from
:mod:`tests.support.redis_server`, which ``backend`` requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from asyncmq_otel.backends.redis import RedisBackend

__all__ = ["anyio_backend", "backend"]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's async client is asyncio-only."""
    return "asyncio"


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisBackend]:
    """A :class:`RedisBackend` on the shared server under the test's prefix, closed after the test."""
    made = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    yield made
    await made.close()

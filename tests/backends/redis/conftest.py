"""Fixtures of the Redis tests: asyncio only, the shared server under a unique prefix, private servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from asyncmq_otel.backends.redis import RedisBackend
from tests.support.redis_cluster import three_masters  # noqa: F401 - a fixture, registered by import
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    redis_cluster_server,
    redis_prefix,
    redis_server,
    redis_server_factory,
    redis_url,
)


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's async client is asyncio-only (style rule 9)."""
    return "asyncio"


@pytest.fixture
async def make_backend(
    redis_url: str,  # noqa: F811 - the fixture imported above, requested by name
    redis_prefix: str,  # noqa: F811 - as above
) -> AsyncIterator[Callable[..., RedisBackend]]:
    """Build backends on the shared server under this test's prefix; all are closed afterwards."""
    made: list[RedisBackend] = []

    def make(url: str = redis_url, **kwargs: object) -> RedisBackend:
        kwargs.setdefault("prefix", redis_prefix)
        kwargs.setdefault("retry_timeout", 5.0)
        backend = RedisBackend(url, **kwargs)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
async def backend(make_backend: Callable[..., RedisBackend]) -> RedisBackend:
    """One backend on the shared server."""
    return make_backend()

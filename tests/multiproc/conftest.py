"""Fixtures of the multi-process tests: asyncio only, Redis under a unique prefix, worker subprocesses, the ledger."""

from __future__ import annotations

import pytest

from tests.support.ledger import ledger  # noqa: F401 - fixtures are registered by import
from tests.support.redis_server import (  # noqa: F401 - as above
    redis_prefix,
    redis_server,
    redis_server_factory,
    redis_url,
)
from tests.support.worker_proc import worker_proc  # noqa: F401 - as above


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's async client is asyncio-only."""
    return "asyncio"

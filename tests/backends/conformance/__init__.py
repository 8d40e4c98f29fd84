"""Suites every backend must pass; each runs on every kind of backend."""

import pytest

# The params of each suite's backend fixture: the in-memory backend, one Redis, a Redis Cluster.
BACKEND_KINDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
]

"""Fixtures shared with the other in-process suites (tests/support/fixtures.py)."""

from tests.support.fixtures import (  # noqa: F401 - fixtures, by name
    backend,
    events,
    fast_settings,
    memory_clock,
    redis_url,
)

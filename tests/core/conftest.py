"""Fixtures shared with the other in-process suites (tests/support/fixtures.py)."""

from tests.support.fixtures import backend, events, fast_settings, redis_url  # noqa: F401 - fixtures, by name

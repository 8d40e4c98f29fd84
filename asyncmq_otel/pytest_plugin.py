"""The pytest plugin for testing your own tasks (registered through the ``pytest11`` entry point).

Fixtures:
    ``asyncmq_backend``: a fresh in-memory default backend and a clean event bus for the test
    (:func:`asyncmq_otel.testing.isolated_state`), so jobs and listeners never leak between tests.
    ``asyncmq_telemetry``: :func:`asyncmq_otel.testing.capture_telemetry` on top of it: every span,
    metric sample, log line and event the test produced.

Nothing is imported until a fixture is used: installing asyncmq-otel adds no import cost to a test
run that does not ask for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .backends.memory import InMemoryBackend
    from .testing import Captured

__all__ = ["asyncmq_backend", "asyncmq_telemetry"]


@pytest.fixture
def asyncmq_backend() -> Iterator[InMemoryBackend]:
    """A new ``InMemoryBackend`` as the default backend, and a clean event bus, for one test."""
    from .testing import isolated_state  # noqa: PLC0415 - loads only when a test asks for it

    with isolated_state() as backend:
        yield backend


@pytest.fixture
def asyncmq_telemetry(asyncmq_backend: InMemoryBackend) -> Iterator[Captured]:  # noqa: ARG001 - ordering
    """Every span, metric, log line and event of the test, on an isolated backend and bus."""
    from .testing import capture_telemetry  # noqa: PLC0415 - loads only when a test asks for it

    with capture_telemetry() as captured:
        yield captured

"""Wait for a condition with a deadline instead of sleeping for a guessed time."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

from asyncmq_otel.clock import Clock, FakeClock, system_clock


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate!r}")
        await anyio.sleep(interval)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> None:
    """Synchronous form of :func:`eventually` for threads and subprocess tests."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate!r}")
        time.sleep(interval)


async def eventually_on(
    clock: Clock,
    predicate: Callable[[], bool | Awaitable[bool]],
    step: float = 0.05,
    timeout: float = 5.0,
    what: str = "",
) -> None:
    """:func:`eventually`, moving ``clock`` on by ``step`` between polls when it is a FakeClock.

    For a test that runs on both backends: the in-memory one on a FakeClock lets its delays, backoffs
    and rate windows pass only as the test moves the clock; on Redis real time passes by itself. How far
    the fake clock has moved by the time ``predicate`` holds depends on the scheduling, so assert only
    what the backend or the worker guarantees on that clock (lower bounds, window counts).
    """

    async def moved() -> bool:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if not value and isinstance(clock, FakeClock):
            clock.advance(step)
        return bool(value)

    await eventually(moved, timeout=timeout, what=what)


def clock_of(backend: object) -> Clock:
    """The clock a backend (and a worker on it) runs on: an InMemoryBackend's, else the real one."""
    timer = getattr(backend, "timer", None)
    return timer if isinstance(timer, Clock) else system_clock

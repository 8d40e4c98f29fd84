"""Wait for a condition with a deadline instead of sleeping for a guessed time."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio


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

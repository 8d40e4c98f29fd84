"""Writes a running job's progress to the backend: one write at a time, always the latest value.

A handler reports progress faster than a round trip, from the event loop or a worker thread.
Writes started independently can land out of order, and one still in flight when the job settles
is refused (the job is no longer active): the handler's last report (100) was lost and the stored
progress stayed at an earlier value. So the writes go one after another, a value superseded while
a write is in flight is skipped, and the job run waits for the last write before it settles.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

__all__ = ["ProgressWriter"]

_log = logging.getLogger("asyncmq_otel.worker")


class ProgressWriter:
    """Serialises one job's progress writes and keeps only the latest pending value.

    Args:
        write: stores one value (the backend's ``report_progress`` for this job and claim).
        spawn: starts a background task (the worker's handler task group ``start_soon``).

    """

    def __init__(
        self,
        write: Callable[[float], Awaitable[Any]],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], Any],
    ) -> None:
        self._write = write
        self._spawn = spawn
        self._pending: float | None = None
        self._idle: anyio.Event | None = None  # not None while a writer task runs

    def report(self, value: float) -> None:
        """Record ``value``; the writer task stores it (starting one if none runs). Event loop thread only."""
        self._pending = value
        if self._idle is None:
            self._idle = anyio.Event()
            self._spawn(self._drain)

    async def _drain(self) -> None:
        try:
            while self._pending is not None:
                value, self._pending = self._pending, None
                try:
                    await self._write(value)
                except Exception as exc:  # noqa: BLE001 - progress is advisory: it never fails the job
                    _log.warning(
                        "progress write failed (%s: %s); the next report retries", type(exc).__name__, exc
                    )
        finally:
            idle, self._idle = self._idle, None
            if idle is not None:
                idle.set()

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until every reported value has been written."""
        idle = self._idle
        if idle is not None:
            with anyio.move_on_after(timeout):
                await idle.wait()

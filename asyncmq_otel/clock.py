"""Clock: wall time and monotonic time, injectable, real by default.

Everything that reads the time or sleeps until a moment takes a :class:`Clock`, so a test can drive
time explicitly with :class:`FakeClock` instead of waiting for it. Redis scripts still take their
time from ``TIME`` (server time only); a clock only decides how long a process sleeps.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock", "system_clock"]


@runtime_checkable
class Clock(Protocol):
    """Wall time (unix seconds), monotonic time (seconds) and sleeping on the monotonic scale."""

    def time(self) -> float:
        """Unix seconds (may jump: NTP, an operator, a test)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of monotonic time (at once for ``seconds <= 0``)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic()`` has reached ``deadline``."""
        ...


class SystemClock:
    """The real clock: ``time.time``, ``time.monotonic`` and ``anyio.sleep``."""

    def time(self) -> float:
        """Unix seconds."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep`` (a checkpoint even for zero)."""
        await anyio.sleep(max(seconds, 0.0))

    async def sleep_until(self, deadline: float) -> None:
        """Sleep for what is left until ``deadline``."""
        await anyio.sleep(max(deadline - time.monotonic(), 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


system_clock = SystemClock()
"""The process's real clock, the default everywhere a clock is injectable."""


class FakeClock:
    """A clock that only moves when told to: ``advance()`` or ``set_time()``.

    Sleepers wake when :meth:`advance` moves monotonic time past their deadline. Wall time moves
    with it, and can also jump on its own (``set_time``) to model NTP steps or skewed hosts.
    Thread-safe: a backend may read it from its lease-renewer thread.

    Args:
        start: the initial wall time (unix seconds).
        monotonic_start: the initial monotonic reading.

    """

    def __init__(self, start: float = 1_800_000_000.0, monotonic_start: float = 1_000.0) -> None:
        if not (math.isfinite(start) and math.isfinite(monotonic_start)):
            raise ValueError("a FakeClock starts at finite times")
        self._wall = float(start)
        self._mono = float(monotonic_start)
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def __repr__(self) -> str:
        return f"FakeClock(time={self._wall!r}, monotonic={self._mono!r}, sleepers={len(self._sleepers)})"

    def time(self) -> float:
        """The fake wall time."""
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        """The fake monotonic time."""
        with self._lock:
            return self._mono

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock (tests wait for a service to go to sleep)."""
        with self._lock:
            return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` and wake every sleeper whose deadline passed.

        Call it from the event loop's thread (sleepers' events are set here).
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a clock only advances by a finite number of seconds >= 0, not {seconds!r}")
        with self._lock:
            self._wall += seconds
            self._mono += seconds
            due = [event for deadline, event in self._sleepers if deadline <= self._mono]
            self._sleepers = [(d, e) for d, e in self._sleepers if d > self._mono]
        for event in due:
            event.set()

    def set_time(self, wall: float) -> None:
        """Jump the wall clock (monotonic time does not move, as on a real host)."""
        with self._lock:
            self._wall = float(wall)

    async def sleep(self, seconds: float) -> None:
        """Sleep until :meth:`advance` has moved ``seconds`` past now."""
        await self.sleep_until(self.monotonic() + max(seconds, 0.0))

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until monotonic time reaches ``deadline`` (a checkpoint even when it has)."""
        event = anyio.Event()
        with self._lock:
            passed = deadline <= self._mono
            if not passed:
                self._sleepers.append((deadline, event))
        if passed:
            await anyio.lowlevel.checkpoint()
            return
        try:
            await event.wait()
        finally:
            with self._lock:
                self._sleepers = [(d, e) for d, e in self._sleepers if e is not event]

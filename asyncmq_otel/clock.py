"""Clock: wall time and monotonic time, injectable, real by default.

Everything that reads the time or sleeps until a moment takes a :class:`Clock`, so a test can drive
time explicitly with :class:`FakeClock` instead of waiting for it. Redis scripts still take their
time from ``TIME`` (server time only); a clock only decides how long a process sleeps.

:func:`move_on_after` and :func:`fail_after` are anyio's deadline scopes on a clock's scale, and
:func:`wait_in_thread` a thread's timed wait (the lease renewer's), so a FakeClock drives them too.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = [
    "Clock",
    "FakeClock",
    "SystemClock",
    "as_clock",
    "fail_after",
    "move_on_after",
    "system_clock",
    "wait_in_thread",
]


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
    Thread-safe: a backend may read it from its lease-renewer thread, and a thread may wait on it
    (:meth:`wait_in_thread`); advance it from the event loop's thread.

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
        self._moved = threading.Condition(self._lock)  # threads waiting on this clock (lease renewer)
        self._sleepers: list[tuple[float, anyio.Event]] = []
        self._timers: list[tuple[float, Callable[[], None]]] = []  # deadline scopes: see move_on_after

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

    @property
    def timers(self) -> int:
        """How many deadline scopes (:func:`move_on_after`, :func:`fail_after`) are pending on this clock."""
        with self._lock:
            return len(self._timers)

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
            fired = [callback for deadline, callback in self._timers if deadline <= self._mono]
            self._timers = [(d, c) for d, c in self._timers if d > self._mono]
            self._moved.notify_all()
        for event in due:
            event.set()
        for callback in fired:
            callback()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (in the thread of :meth:`advance`) once monotonic time reaches ``deadline``.

        Returns a function that forgets the call if it has not happened yet.
        """
        entry = (deadline, callback)
        with self._lock:
            self._timers.append(entry)

        def forget() -> None:
            with self._lock:
                self._timers = [timer for timer in self._timers if timer is not entry]

        return forget

    def wait_in_thread(self, seconds: float, stop: threading.Event) -> bool:
        """Block a thread until :meth:`advance` has moved ``seconds`` past now, or ``stop`` is set.

        Returns whether ``stop`` was set. ``stop`` is polled (every 20 ms of real time): setting it
        does not notify this clock.
        """
        with self._moved:
            deadline = self._mono + max(seconds, 0.0)
            while self._mono < deadline:
                if stop.is_set():
                    return True
                self._moved.wait(0.02)
        return stop.is_set()

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


def as_clock(clock: Clock | Callable[[], float]) -> Clock:
    """``clock`` itself, or a bare wall-time callable wrapped as a clock (monotonic time and sleeps real)."""
    if isinstance(clock, Clock):
        return clock
    return _WallTimeClock(clock)


class _WallTimeClock(SystemClock):
    """A bare ``() -> unix seconds`` callable (the older ``clock=`` argument) with real sleeps."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall

    def time(self) -> float:
        """What the wrapped callable says."""
        return self._wall()

    def __repr__(self) -> str:
        return f"as_clock({self._wall!r})"


@contextlib.contextmanager
def move_on_after(clock: Clock, seconds: float) -> Iterator[anyio.CancelScope]:
    """``anyio.move_on_after`` on ``clock``'s monotonic scale: a FakeClock's advance ends the scope.

    Any other clock is taken to run at the event loop's pace, so its scope is anyio's own.
    """
    if not isinstance(clock, FakeClock):
        with anyio.move_on_after(seconds) as scope:
            yield scope
        return
    scope = anyio.CancelScope()
    if seconds <= 0:
        scope.cancel()
    forget = clock.call_at(clock.monotonic() + seconds, scope.cancel)
    try:
        with scope:
            yield scope
    finally:
        forget()


@contextlib.contextmanager
def fail_after(clock: Clock, seconds: float) -> Iterator[anyio.CancelScope]:
    """``anyio.fail_after`` on ``clock``'s scale: ``TimeoutError`` once ``seconds`` have passed on it."""
    if not isinstance(clock, FakeClock):
        with anyio.fail_after(seconds) as scope:
            yield scope
        return
    deadline = clock.monotonic() + seconds
    with move_on_after(clock, seconds) as scope:
        yield scope
    if scope.cancelled_caught and clock.monotonic() >= deadline:
        raise TimeoutError


def wait_in_thread(clock: Clock, seconds: float, stop: threading.Event) -> bool:
    """Block a thread for ``seconds`` of ``clock``'s monotonic time, or until ``stop`` is set (returns it)."""
    if isinstance(clock, FakeClock):
        return clock.wait_in_thread(seconds, stop)
    return stop.wait(max(seconds, 0.0))

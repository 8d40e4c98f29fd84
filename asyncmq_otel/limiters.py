"""``RateLimiter``: a token bucket that caps how many jobs start per interval."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from .clock import Clock

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow at most ``rate`` acquisitions per ``interval`` seconds, with bursts up to ``rate``.

    The bucket starts full and refills continuously at ``rate / interval`` tokens a second.
    ``clock`` is a :class:`~asyncmq_otel.clock.Clock` (its monotonic time and sleeps; a worker passes
    its own), or a bare ``() -> seconds`` monotonic callable (waits then sleep in real time).
    """

    def __init__(
        self, rate: int, interval: float = 1.0, *, clock: Clock | Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 1:
            raise ValueError(f"rate must be >= 1, not {rate}")
        if interval <= 0:
            raise ValueError(f"interval must be > 0, not {interval}")
        self.rate = rate
        self.interval = interval
        self._sleep = clock.sleep if isinstance(clock, Clock) else _real_sleep
        self._clock = clock.monotonic if isinstance(clock, Clock) else clock
        self._tokens = float(rate)
        self._updated = self._clock()

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, interval={self.interval})"

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._updated) * self.rate / self.interval)
        self._updated = now

    @property
    def available(self) -> int:
        """Whole tokens available right now."""
        self._refill()
        return int(self._tokens)

    def try_acquire(self) -> bool:
        """Take a token if one is available now."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def take_up_to(self, count: int) -> int:
        """Take as many whole tokens as are available now, at most ``count``; return how many."""
        self._refill()
        taken = max(min(int(self._tokens), count), 0)
        self._tokens -= taken
        return taken

    def give_back(self, count: int) -> None:
        """Return tokens taken for starts that did not happen (the bucket never exceeds ``rate``)."""
        if count > 0:
            self._refill()
            self._tokens = min(float(self.rate), self._tokens + count)

    async def acquire(self) -> float:
        """Wait for a token and take it; return the seconds spent waiting."""
        started = self._clock()
        while not self.try_acquire():
            await self._sleep((1 - self._tokens) * self.interval / self.rate)
        return self._clock() - started


async def _real_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)

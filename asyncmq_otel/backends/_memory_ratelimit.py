"""The shared rate limit of :class:`InMemoryBackend`: the same sliding log of claim times as ``claim.lua``.

Called under the store's lock from ``MemoryJobs.claim``, so taking tokens and claiming are one atomic step.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .base import QueueRateLimit

if TYPE_CHECKING:
    from ._memory_store import MemoryStore

__all__ = ["MemoryRateLimits"]


@dataclass(slots=True)
class _Window:
    """A queue's limit (when set) and the times of its claims still inside the window, oldest first."""

    limit: QueueRateLimit | None = None
    claims: collections.deque[float] = field(default_factory=collections.deque)


class MemoryRateLimits:
    """Limits kept per queue name, each with the log of the claims it counts (cleared with it).

    The :class:`~asyncmq_otel.backends.capabilities.RateLimitStore` capability of ``InMemoryBackend``.
    """

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._lock = store.lock
        self._rate_windows: dict[str, _Window] = {}

    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Allow at most ``limit`` claims of the queue in any window of ``interval`` seconds (1 ms steps)."""
        if limit < 1 or not interval > 0:
            raise ValueError("a rate limit needs limit >= 1 and interval > 0")
        with self._lock:
            self._store.queue(queue)  # the queue exists from now on, as on Redis
            window = self._rate_windows.setdefault(queue, _Window())
            window.limit = QueueRateLimit(limit, max(round(interval * 1000), 1) / 1000.0)

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit and its log of claims; False when it had none."""
        with self._lock:
            window = self._rate_windows.get(queue)
            if window is None or window.limit is None:
                return False
            window.limit = None
            window.claims.clear()  # claims without a limit are not logged: the log would only be stale
            return True

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None``."""
        window = self._rate_windows.get(queue)
        return None if window is None else window.limit

    def free(self, queue: str, now: float) -> tuple[int, _Window] | None:
        """Claims the limit allows now, after trimming the log; ``None`` when the queue has no limit."""
        window = self._rate_windows.get(queue)
        if window is None or window.limit is None:
            return None
        claims, interval = window.claims, window.limit.interval
        while claims and claims[0] <= now - interval:
            claims.popleft()
        return max(window.limit.limit - len(claims), 0), window

    @staticmethod
    def taken(window: _Window, now: float, claimed: int) -> float:
        """Log ``claimed`` claims at ``now``; return the seconds until the oldest leaves the window."""
        window.claims.extend([now] * claimed)
        if not window.claims or window.limit is None:
            return 0.0
        wait = window.claims[0] + window.limit.interval - now
        # whole ms rounded up, as the script answers (from whole µs: float noise must not add a ms)
        return max(math.ceil(round(wait * 1_000_000) / 1000) / 1000.0, 0.001)

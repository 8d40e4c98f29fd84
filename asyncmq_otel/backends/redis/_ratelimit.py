"""Shared rate limit of :class:`RedisBackend`: held in the queue's ``meta`` hash, applied in ``claim.lua``.

Setting and clearing are one script each call (fenced on the queue's epoch, like every transition);
the claims themselves are logged in ``<prefix>:{<queue>}:rate`` under the queue's hash tag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..base import QueueRateLimit
from ._connection import AsyncClient

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["RateLimits"]


class RateLimits:
    """The :class:`~asyncmq_otel.backends.capabilities.RateLimitStore` capability of ``RedisBackend``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.keys = store.keys
        self.connections = store.connections

    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Allow at most ``limit`` claims of the queue in any window of ``interval`` seconds (1 ms steps)."""
        keys = self.keys.queue(queue)
        await self._store.transition(
            keys, "rate_limit", [keys.meta, keys.rate], ["set", limit, max(round(interval * 1000), 1)]
        )

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit and its log of claims; False when it had none."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(keys, "rate_limit", [keys.meta, keys.rate], ["clear", "", ""])
        return bool(int(reply[1]))

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None`` (also for a hand-written value that is not an integer)."""
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - the two values
            return await client.hmget(keys.meta, ["rate_limit", "rate_interval"])

        limit, interval = await self.connections.run(op)
        # what claim.lua's int_field reads: anything else (absent, hand-written) means no limit
        if not (_stored_int(limit) and _stored_int(interval)):
            return None
        return QueueRateLimit(int(limit), int(interval) / 1000.0)


def _stored_int(value: bytes | None) -> bool:
    """Whether ``value`` is a positive integer as the scripts store it (1 to 15 ASCII digits, not 0)."""
    return value is not None and 0 < len(value) <= 15 and value.isdigit() and int(value) > 0  # noqa: PLR2004

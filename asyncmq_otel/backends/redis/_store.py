"""The core every part of :class:`RedisBackend` shares: connections, keys, limits and epochs.

The backend is composed of collaborators by responsibility (jobs, admin, registry, events, schedules,
flows, rate limits); each receives this one object. It holds the epoch-checked script call, so a
queue's data loss is found, reported and recovered from in one place whichever collaborator calls.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import BackendError
from ..base import DataLossCallback
from . import _scripts
from ._connection import AsyncClient, Connections
from ._events import CancelHints
from ._keys import Keys, QueueKeys

__all__ = ["Limits", "Store"]

_log = logging.getLogger("asyncmq_otel.backends.redis")
_MAX_QUEUES = 10_000  # the registry of queue names is read whole; bounded all the same


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes, retention and blocking that the collaborators apply (the backend's arguments or settings)."""

    max_payload_bytes: int
    max_result_bytes: int
    keep_completed: int
    keep_completed_age: float
    keep_failed: int
    keep_failed_age: float
    block_timeout: float


class Store:
    """Connections, keys, limits, the epoch cache and the epoch-checked script call of one backend."""

    def __init__(self, keys: Keys, connections: Connections, limits: Limits) -> None:
        self.keys = keys
        self.connections = connections
        self.limits = limits
        self.origin = uuid.uuid4().hex
        self.hints = CancelHints(connections.settings, keys.control, self.origin)
        self.on_data_loss: DataLossCallback | None = None
        self._epochs: dict[str, str] = {}
        self._epoch_lock = threading.Lock()

    @staticmethod
    def new_epoch() -> str:
        """A random 128-bit epoch."""
        return uuid.uuid4().hex

    def cached_epoch(self, queue: str) -> str | None:
        """The epoch this process last saw for ``queue``."""
        return self._epochs.get(queue)

    def adopt_epoch(self, queue: str, old: str | None, new: str) -> None:
        """Record ``new`` as the queue's epoch; report a data loss when it replaced ``old``.

        The event loop and the renewer thread may find the same loss; only the first reports it.
        ``on_data_loss`` may therefore run in the renewer thread.
        """
        with self._epoch_lock:
            current = self._epochs.get(queue)
            if current not in {old, None}:
                return  # another caller adopted the new epoch already
            self._epochs[queue] = new
        if old is not None and old != new:
            _log.error("backend.data_loss: queue %s lost its data (epoch %s -> %s)", queue, old, new)
            callback = self.on_data_loss
            if callback is not None:
                callback(queue, old, new)

    async def ensure_queue(self, keys: QueueKeys) -> str:
        """The queue's stored epoch, minted (and the queue registered) when it has none."""
        new_epoch = self.new_epoch()

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - a RESP reply
            reply = await _scripts.call(
                client, "ensure_queue", [keys.meta], [new_epoch, _scripts.LAYOUT_VERSION]
            )
            await client.zadd(self.keys.queues, {keys.name: time.time()}, nx=True)
            return reply

        return _scripts.text((await self.connections.run(op))[1])

    async def epoch(self, keys: QueueKeys) -> str:
        """The queue's epoch, from the cache or Redis; starts the cancel-hint reader when one is due."""
        self.hints.ensure_reader()
        epoch = self._epochs.get(keys.name)
        if epoch is None:
            epoch = await self.ensure_queue(keys)
            self.adopt_epoch(keys.name, None, epoch)
        return epoch

    async def transition(
        self,
        keys: QueueKeys,
        name: str,
        script_keys: Sequence[str],
        args: Sequence[Any],
        *,
        retry: bool = True,
    ) -> Any:  # noqa: ANN401 - a RESP reply
        """Call a script with the queue's epoch; on ``EPOCH``, report the loss, adopt the new one, retry."""
        return (await self.transitions(keys, name, [(script_keys, args)], retry=retry))[0]

    async def transitions(
        self,
        keys: QueueKeys,
        name: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        *,
        retry: bool = True,
    ) -> list[Any]:
        """:meth:`transition` for several calls of one script on one queue, pipelined: one reply each.

        When any call answers ``EPOCH``, every call is sent again with the new epoch: the calls must
        replay (by nonce) what they stored on the first pass.
        """
        epoch = await self.epoch(keys)
        for _ in range(2):
            batch = [(name, script_keys, [epoch, *args]) for script_keys, args in calls]

            async def op(client: AsyncClient, batch: list[Any] = batch) -> list[Any]:
                if len(batch) == 1:  # one script call: no pipeline needed
                    return [await _scripts.call(client, *batch[0])]
                return await _scripts.call_many(client, batch)

            replies = await self.connections.run(op, retry=retry)
            if not any(reply[0] == b"EPOCH" for reply in replies):
                return replies
            fresh = await self.ensure_queue(keys)
            self.adopt_epoch(keys.name, epoch, fresh)
            epoch = fresh
        raise BackendError(f"the epoch of queue {keys.name!r} keeps changing; is something flushing Redis?")

    async def queue_names(self) -> list[str]:
        """Every queue registered under the prefix, sorted (a ZSET: the documented ACL has no ``@set``)."""
        members = await self.connections.run(
            lambda client: client.zrange(self.keys.queues, 0, _MAX_QUEUES - 1)
        )
        return sorted(_scripts.text(member) for member in members)

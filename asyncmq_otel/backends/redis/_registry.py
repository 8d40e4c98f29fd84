"""The prefix-wide keys of the Redis backend: the workers registry and the sampler election lock.

Besides the registry of every live worker, each consumed queue has a sorted set of its consumers'
heartbeat deadlines (``<prefix>:{@}:consumers:<queue>``), written by the same heartbeat, so the queue
sampler counts a queue's live consumers in O(log N) (prune the expired, ``ZCARD``) instead of reading
every registration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..base import WorkerInfo
from . import _scripts

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["Registry", "server_of"]


def server_of(url: str) -> tuple[str | None, int | None]:
    """``server.address``/``server.port`` for telemetry; none for a unix socket."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        return None, None
    return parts.hostname, parts.port or 6379


class Registry:
    """Methods over the ``{@}``-tagged global keys, shared by every queue under the prefix."""

    def __init__(self, store: Store) -> None:
        self.keys = store.keys
        self.connections = store.connections
        # worker id -> queues, of the workers heartbeating through this client
        self._consumed: dict[str, list[str]] = {}

    def _consumers_key(self, queue: str) -> str:
        # Under the {@} tag like the registry, so a heartbeat updates both in one slot.
        return f"{self.keys.prefix}:{{@}}:consumers:{queue}"

    # -- telemetry's queue sampler election (one sampler per prefix) ----------------------------------
    async def acquire_sampler_lock(self, owner: str, ttl: float) -> bool:
        """Take the sampler lock when it is free, or extend it when ``owner`` holds it."""
        reply = await self.connections.run(
            lambda client: _scripts.call(
                client, "sampler_lock", [self.keys.sampler_lock], [owner, max(_scripts.ms(ttl), 1)]
            )
        )
        return bool(int(reply[1]))

    async def release_sampler_lock(self, owner: str) -> None:
        """Free the sampler lock if ``owner`` holds it."""
        await self.connections.run(
            lambda client: _scripts.call(client, "sampler_lock", [self.keys.sampler_lock], [owner, 0])
        )

    # -- workers --------------------------------------------------------------------------------------
    async def _workers(self, args: Sequence[Any], queues: Sequence[str] = ()) -> Any:  # noqa: ANN401 - a RESP reply
        keys = [self.keys.workers, self.keys.workers_info, *(self._consumers_key(q) for q in queues)]
        return await self.connections.run(lambda client: _scripts.call(client, "workers", keys, args))

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a live worker; it disappears ``ttl`` seconds after its last heartbeat."""
        await self.heartbeat(info, ttl)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration; ``info.heartbeat_at`` becomes Redis time."""
        reply = await self._workers(
            [
                "beat",
                info.worker_id,
                max(_scripts.ms(ttl), 1),
                json.dumps(info.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str),
            ],
            info.queues,
        )
        self._consumed[info.worker_id] = list(info.queues)
        info.heartbeat_at = int(reply[1]) / 1000.0

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration (and its entries in the per-queue consumer sets)."""
        queues = self._consumed.pop(worker_id, None)
        if queues is None:  # registered through another client: its stored info names its queues
            queues = await self._registered_queues(worker_id)
        await self._workers(["drop", worker_id], queues)

    async def _registered_queues(self, worker_id: str) -> list[str]:
        raw = await self.connections.run(lambda client: client.hget(self.keys.workers_info, worker_id))
        if raw is None:
            return []
        registered = _registration(raw)
        return [] if registered is None else registered[1].queues

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers consuming each of ``queues``: a prune and a ``ZCARD`` per queue, in one round trip."""
        if not queues:
            return {}
        reply = await self._workers(["count"], queues)
        return {queue: int(count) for queue, count in zip(queues, reply[2], strict=True)}

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose registration has not expired."""
        reply = await self._workers(["list"])
        out: list[WorkerInfo] = []
        for item in reply[2]:
            registered = _registration(item)
            if registered is None:
                continue  # a registration written by something else: not a worker we can show
            beat, info = registered
            info.heartbeat_at = int(beat) / 1000.0
            out.append(info)
        return out


def _registration(raw: bytes | str) -> tuple[str, WorkerInfo] | None:
    """A stored ``<heartbeat ms>|<info JSON>`` entry, or ``None`` when it is not one of ours."""
    beat, _, data = _scripts.text(raw).partition("|")
    try:
        return beat, WorkerInfo.from_dict(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return None

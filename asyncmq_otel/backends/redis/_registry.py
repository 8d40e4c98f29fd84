"""The prefix-wide keys of the Redis backend: the workers registry and the sampler election lock."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..base import WorkerInfo
from . import _scripts
from ._connection import Connections
from ._keys import Keys

__all__ = ["RegistryMixin", "server_of"]


def server_of(url: str) -> tuple[str | None, int | None]:
    """``server.address``/``server.port`` for telemetry; none for a unix socket."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        return None, None
    return parts.hostname, parts.port or 6379


def _ms(seconds: float) -> int:
    return max(math.ceil(seconds * 1000), 0)


class RegistryMixin:
    """Methods over the ``{@}``-tagged global keys, shared by every queue under the prefix."""

    connections: Connections
    keys: Keys

    # -- telemetry's queue sampler election (telemetry contract §3.5) ---------------------------------
    async def acquire_sampler_lock(self, owner: str, ttl: float) -> bool:
        """Take the sampler lock when it is free, or extend it when ``owner`` holds it."""
        reply = await self.connections.run(
            lambda client: _scripts.call(
                client, "sampler_lock", [self.keys.sampler_lock], [owner, max(_ms(ttl), 1)]
            )
        )
        return bool(int(reply[1]))

    async def release_sampler_lock(self, owner: str) -> None:
        """Free the sampler lock if ``owner`` holds it."""
        await self.connections.run(
            lambda client: _scripts.call(client, "sampler_lock", [self.keys.sampler_lock], [owner, 0])
        )

    # -- workers --------------------------------------------------------------------------------------
    async def _workers(self, args: Sequence[Any]) -> Any:  # noqa: ANN401 - a RESP reply
        return await self.connections.run(
            lambda client: _scripts.call(client, "workers", [self.keys.workers, self.keys.workers_info], args)
        )

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a live worker; it disappears ``ttl`` seconds after its last heartbeat."""
        await self.heartbeat(info, ttl)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration; ``info.heartbeat_at`` becomes Redis time."""
        reply = await self._workers(
            [
                "beat",
                info.worker_id,
                max(_ms(ttl), 1),
                json.dumps(info.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str),
            ]
        )
        info.heartbeat_at = int(reply[1]) / 1000.0

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        await self._workers(["drop", worker_id])

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose registration has not expired."""
        reply = await self._workers(["list"])
        out: list[WorkerInfo] = []
        for item in reply[2]:
            beat, _, data = _scripts.text(item).partition("|")
            try:
                info = WorkerInfo.from_dict(json.loads(data))
            except (ValueError, KeyError, TypeError):
                continue  # a registration written by something else: not a worker we can show
            info.heartbeat_at = int(beat) / 1000.0
            out.append(info)
        return out

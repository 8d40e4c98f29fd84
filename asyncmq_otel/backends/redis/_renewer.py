"""The synchronous lease renewer: one ``renew`` script call per queue, from the renewer thread.

It owns its own synchronous client, so a handler that blocks the event loop cannot stop the
process's leases from being renewed, and it shares the backend's epoch cache, so a data
loss found here is reported once, like one found by the event loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..base import RenewStatus
from . import _scripts
from ._connection import SyncClient

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["RedisLeaseRenewer"]

_STATUS = {b"OK": RenewStatus.OK, b"LOST": RenewStatus.LOST, b"CANCEL": RenewStatus.CANCEL}


class RedisLeaseRenewer:
    """A :class:`~asyncmq_otel.backends.base.LeaseRenewer` with its own synchronous Redis client."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._client: SyncClient | None = None

    def _get_client(self) -> SyncClient:
        with self._lock:
            if self._client is None:
                self._client = self._store.connections.settings.sync_client()
            return self._client

    def _run(self, op: Any, lease: float) -> Any:  # noqa: ANN401 - a RESP reply
        # retry for at most a third of the lease: the next renewal tick tries again anyway
        return self._store.connections.run_sync(self._get_client(), op, timeout=lease / 3)

    def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend the leases ``{job_id: token}`` by ``lease`` seconds of Redis time."""
        if not leases:
            return {}
        keys = self._store.keys.queue(queue)
        ids = list(leases)
        args: list[str | int] = [math.ceil(lease * 1000)]
        for job_id in ids:
            args += [job_id, leases[job_id]]
        epoch = self._store.cached_epoch(queue) or self._ensure(queue, lease)
        for _ in range(2):
            reply = self._run(
                lambda client, e=epoch: _scripts.call_sync(
                    client, "renew", [keys.meta, keys.leases], [e, *args]
                ),
                lease,
            )
            if reply[0] != b"EPOCH":
                return {job_id: _STATUS[status] for job_id, status in zip(ids, reply[1], strict=True)}
            fresh = self._ensure(queue, lease, fresh=True)
            self._store.adopt_epoch(queue, epoch, fresh)
            epoch = fresh
        # the epoch changed twice in a row: nothing this process holds can still be valid
        return dict.fromkeys(ids, RenewStatus.LOST)

    def _ensure(self, queue: str, lease: float, *, fresh: bool = False) -> str:
        keys = self._store.keys.queue(queue)
        new_epoch = self._store.new_epoch()

        def op(client: SyncClient) -> Any:  # noqa: ANN401 - a RESP reply
            reply = _scripts.call_sync(
                client, "ensure_queue", [keys.meta], [new_epoch, _scripts.LAYOUT_VERSION]
            )
            client.zadd(self._store.keys.queues, {queue: time.time()}, nx=True)
            return reply

        epoch = _scripts.text(self._run(op, lease)[1])
        if not fresh:
            self._store.adopt_epoch(queue, None, epoch)
        return epoch

    def close(self) -> None:
        """Close the renewer's connection."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

"""``RedisBackend``: the distributed backend. Every transition is one Lua script on one slot.

Keys are ``<prefix>:{<queue>}:<name>`` (see ``_keys.py``), so a queue's scripts run unchanged on
Redis Cluster. Each script checks the queue's epoch, validates, and only then writes; transitions
of a claimed job are fenced on its claim token. Time comes from Redis ``TIME`` inside the
scripts. Replies are decoded to the same typed records as ``InMemoryBackend`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ...errors import BackendError
from ...settings import get_settings
from ..base import DataLossCallback
from . import _scripts
from ._admin import AdminMixin
from ._batch import CompleteBatcher
from ._connection import AsyncClient, Connections, ConnectionSettings, mask_url, probe_server
from ._events import CancelHints, EventsMixin
from ._flows import FlowsMixin
from ._jobs import JobsMixin
from ._keys import Keys, QueueKeys
from ._ratelimit import RateLimitMixin
from ._registry import RegistryMixin, server_of
from ._renewer import RedisLeaseRenewer
from ._schedules import SchedulesMixin

__all__ = ["DEFAULT_URL", "RedisBackend"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"

_log = logging.getLogger("asyncmq_otel.backends.redis")


class RedisBackend(
    JobsMixin, AdminMixin, RegistryMixin, EventsMixin, SchedulesMixin, FlowsMixin, RateLimitMixin
):
    """Jobs in Redis (or a Redis Cluster), shared by every worker and producer that uses the prefix.

    Args:
        url: ``redis://[user:password@]host:port/db``, or ``rediss://`` for TLS (verified).
        prefix: the key prefix; separate tenants by prefix and ACL user. Default from settings.
        cluster: use redis-py's cluster client.
        max_payload_bytes: largest envelope accepted (checked here and again in the script).
        max_result_bytes: largest encoded result accepted at completion.
        keep_completed: completed and cancelled jobs kept, by count ...
        keep_completed_age: ... and by age in seconds.
        keep_failed: dead-lettered jobs kept, by count ...
        keep_failed_age: ... and by age in seconds.
        block_timeout: the longest single ``BLPOP`` of :meth:`wait_for_work`.
        socket_timeout: seconds before a command is abandoned and retried.
        connect_timeout: seconds to connect.
        retry_timeout: seconds of retrying transient failures before :class:`BackendUnavailable`.
        ssl_ca_certs: CA bundle for ``rediss://``.
        ssl_certfile: client certificate (mTLS).
        ssl_keyfile: client key (mTLS).
        max_connections: bound of the connection pool.
        client_name: ``CLIENT SETNAME`` of every connection.
        redis_url: the same as ``url`` (AsyncMQ's name for it).

    Defaults not given come from :func:`asyncmq_otel.settings.get_settings`.

    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str | None = None,
        cluster: bool = False,
        max_payload_bytes: int | None = None,
        max_result_bytes: int | None = None,
        keep_completed: int | None = None,
        keep_completed_age: float | None = None,
        keep_failed: int | None = None,
        keep_failed_age: float | None = None,
        block_timeout: float | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 20.0,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        max_connections: int | None = None,
        client_name: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        settings = get_settings()
        if redis_url is not None:  # AsyncMQ's spelling of ``url``
            if url not in {DEFAULT_URL, redis_url}:
                raise TypeError("pass the URL once: as url or as redis_url (AsyncMQ's name)")
            url = redis_url
        self.url = url
        self.keys = Keys(prefix if prefix is not None else settings.redis_prefix)
        self.prefix = self.keys.prefix
        self.cluster = cluster
        self.max_payload_bytes = (
            max_payload_bytes if max_payload_bytes is not None else settings.max_payload_bytes
        )
        self.max_result_bytes = (
            max_result_bytes if max_result_bytes is not None else settings.max_result_bytes
        )
        self.keep_completed = keep_completed if keep_completed is not None else settings.keep_completed
        self.keep_completed_age = (
            keep_completed_age if keep_completed_age is not None else settings.keep_completed_age
        )
        self.keep_failed = keep_failed if keep_failed is not None else settings.keep_failed
        self.keep_failed_age = keep_failed_age if keep_failed_age is not None else settings.keep_failed_age
        self.block_timeout = block_timeout if block_timeout is not None else settings.block_timeout
        self.connections = Connections(
            ConnectionSettings(
                url,
                cluster=cluster,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                block_timeout=self.block_timeout,
                retry_timeout=retry_timeout,
                ssl_ca_certs=ssl_ca_certs,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                max_connections=max_connections,
                client_name=client_name,
            )
        )
        self.on_data_loss: DataLossCallback | None = None
        self.server_address, self.server_port = server_of(url)
        self.origin = uuid.uuid4().hex
        self._epochs: dict[str, str] = {}
        self._epoch_lock = threading.Lock()
        self._hints = CancelHints(self.connections.settings, self.keys.control, self.origin)
        self._completions = CompleteBatcher(self._complete_batch)
        self._reap_clock: float | None = None  # see reap()

    def __repr__(self) -> str:
        return f"RedisBackend({mask_url(self.url)!r}, prefix={self.prefix!r}, cluster={self.cluster})"

    # -- epochs (data loss) ----------------------------------------------------------------------------
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

    async def _ensure_queue(self, keys: QueueKeys) -> str:
        new_epoch = self.new_epoch()

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - a RESP reply
            reply = await _scripts.call(
                client, "ensure_queue", [keys.meta], [new_epoch, _scripts.LAYOUT_VERSION]
            )
            await client.zadd(self.keys.queues, {keys.name: time.time()}, nx=True)
            return reply

        return _scripts.text((await self.connections.run(op))[1])

    async def _epoch(self, keys: QueueKeys) -> str:
        self._hints.ensure_reader()
        epoch = self._epochs.get(keys.name)
        if epoch is None:
            epoch = await self._ensure_queue(keys)
            self.adopt_epoch(keys.name, None, epoch)
        return epoch

    async def _transition(
        self,
        keys: QueueKeys,
        name: str,
        script_keys: Sequence[str],
        args: Sequence[Any],
        *,
        retry: bool = True,
    ) -> Any:  # noqa: ANN401 - a RESP reply
        """Call a script with the queue's epoch; on ``EPOCH``, report the loss, adopt the new one, retry."""
        epoch = await self._epoch(keys)
        for _ in range(2):
            call_args = [epoch, *args]

            async def op(client: AsyncClient, call_args: list[Any] = call_args) -> Any:  # noqa: ANN401 - RESP
                return await _scripts.call(client, name, script_keys, call_args)

            reply = await self.connections.run(op, retry=retry)
            if reply[0] != b"EPOCH":
                return reply
            fresh = await self._ensure_queue(keys)
            self.adopt_epoch(keys.name, epoch, fresh)
            epoch = fresh
        raise BackendError(f"the epoch of queue {keys.name!r} keeps changing; is something flushing Redis?")

    # -- time and lifecycle -------------------------------------------------------------------------
    async def now(self) -> float:
        """Redis ``TIME`` in unix seconds."""
        seconds, micros = await self.connections.run(lambda client: client.time())
        return float(seconds) + float(micros) / 1_000_000

    async def close(self) -> None:
        """Close every connection; the backend reconnects on its next call."""
        await self._hints.aclose()
        await self.connections.aclose()

    async def probe(self) -> dict[str, Any]:
        """Read ``INFO`` for the startup banner and its warnings (version, eviction policy, persistence).

        Raises:
            BackendAuthError: wrong credentials (never retried).
            BackendTLSError: the TLS handshake failed.
            BackendUnavailable: Redis did not answer within ``retry_timeout``.

        """
        return await probe_server(self.connections)

    def lease_renewer(self) -> RedisLeaseRenewer:
        """A synchronous renewal channel with its own connection, for the renewer thread."""
        return RedisLeaseRenewer(self)

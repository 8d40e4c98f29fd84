"""Connections to Redis: pools, the blocking connection, retries with backoff, TLS and typed errors.

redis-py's own retries are switched off everywhere: it would retry an ``AuthenticationError``
(a ``ConnectionError`` subclass) in a tight loop and it cannot tell a TLS failure from a blip.
:meth:`Connections.run` retries instead, with exponential backoff and full jitter, on connection
loss, timeouts, ``BUSY`` and ``LOADING``, until ``retry_timeout`` has passed. Every transition is
idempotent on replay (nonces, settled tokens), so re-sending after a lost reply is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import anyio
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...errors import BackendAuthError, BackendOutOfMemory, BackendTLSError, BackendUnavailable, ConfigError
from ._packing import HiredisPackedConnection

__all__ = [
    "AsyncClient",
    "ConnectionSettings",
    "Connections",
    "SyncClient",
    "is_transient",
    "mask_url",
    "probe_server",
    "raise_translated",
    "translate",
]

T = TypeVar("T")
AsyncClient = Any  # redis.asyncio.Redis or redis.asyncio.RedisCluster: one command surface
SyncClient = Any  # redis.Redis or redis.RedisCluster, for the renewer thread

_BLOCK_MARGIN = 5.0  # the blocking socket waits this much longer than the longest BLPOP


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How to reach Redis and how hard to try.

    Attributes:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS, certificate verified).
        cluster: use redis-py's cluster client (every queue's keys share one slot).
        socket_timeout: seconds before a non-blocking command is abandoned and retried.
        connect_timeout: seconds to establish a connection.
        block_timeout: the longest single ``BLPOP``; the blocking socket allows 5 s more.
        retry_timeout: seconds of retrying before :class:`BackendUnavailable` is raised.
        backoff_base: the first retry waits up to this many seconds ...
        backoff_cap: ... doubling up to this cap (full jitter).
        ssl_ca_certs: CA bundle that verifies the server (``rediss://``).
        ssl_certfile: client certificate for mTLS.
        ssl_keyfile: client key for mTLS.
        max_connections: pool size bound (``None``: redis-py's default).
        client_name: ``CLIENT SETNAME`` for every connection.

    """

    url: str
    cluster: bool = False
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0
    block_timeout: float = 5.0
    retry_timeout: float = 20.0
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    max_connections: int | None = None
    client_name: str | None = None

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in {"redis", "rediss"}:
            raise ConfigError(f"redis URL must start with redis:// or rediss://, not {scheme!r}://")
        if self.block_timeout <= 0:
            raise ConfigError(f"block_timeout must be > 0, not {self.block_timeout}")
        if self.retry_timeout < 0 or self.socket_timeout <= 0 or self.connect_timeout <= 0:
            raise ConfigError("socket_timeout and connect_timeout must be > 0, retry_timeout >= 0")

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme == "rediss"

    def client_kwargs(self, *, blocking: bool = False) -> dict[str, Any]:
        """Keyword arguments shared by the async and sync clients (retries off: we retry)."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.block_timeout + _BLOCK_MARGIN if blocking else self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "decode_responses": False,
        }
        if self.client_name:
            kwargs["client_name"] = self.client_name
        if self.max_connections is not None:
            kwargs["max_connections"] = self.max_connections
        if self.tls:
            # verified and hostname-checked; never a fallback to plaintext
            kwargs["ssl_cert_reqs"] = "required"
            kwargs["ssl_check_hostname"] = True
            if self.ssl_ca_certs:
                kwargs["ssl_ca_certs"] = self.ssl_ca_certs
            if self.ssl_certfile:
                kwargs["ssl_certfile"] = self.ssl_certfile
            if self.ssl_keyfile:
                kwargs["ssl_keyfile"] = self.ssl_keyfile
        return kwargs

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for retry number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return random.uniform(0.0, ceiling)  # noqa: S311 - backoff jitter, not cryptography

    def async_client(self, *, blocking: bool = False) -> AsyncClient:
        """A new asyncio client (its pool connects lazily)."""
        kwargs = self.client_kwargs(blocking=blocking)
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(
                self.url, retry=AsyncRetry(NoBackoff(), 0), **kwargs
            )
        if not self.tls:  # a rediss:// URL picks redis-py's TLS connection class itself
            kwargs["connection_class"] = HiredisPackedConnection
        return redis.asyncio.Redis.from_url(self.url, retry=AsyncRetry(NoBackoff(), 0), **kwargs)

    def pubsub_client(self) -> redis.asyncio.Redis:
        """A plain client for Pub/Sub: on a cluster any node carries every channel, so the URL's node does."""
        kwargs = self.client_kwargs()
        kwargs["socket_timeout"] = None  # a subscriber waits for messages for as long as it lives
        return redis.asyncio.Redis.from_url(self.url, retry=AsyncRetry(NoBackoff(), 0), **kwargs)

    def sync_client(self) -> SyncClient:
        """A synchronous client for the renewer thread (never shared with the event loop)."""
        kwargs = self.client_kwargs()
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(self.url, retry=Retry(NoBackoff(), 0), **kwargs)
        return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **kwargs)


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return True
        text = str(current)
        if "SSL" in text or "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: connection loss, timeouts, ``BUSY``, ``LOADING``, cluster ``TRYAGAIN``."""
    if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
        return False
    if isinstance(exc, (BusyLoadingError, RedisTimeoutError, TryAgainError, OSError)):
        return True
    if isinstance(exc, RedisConnectionError):
        return not _tls_failure(exc)
    if isinstance(exc, ResponseError):
        return str(exc).startswith(("BUSY", "MASTERDOWN", "CLUSTERDOWN"))
    return False


def translate(exc: BaseException, url: str) -> BaseException:
    """Map a redis-py error to the package's typed errors (others pass through unchanged)."""
    where = mask_url(url)
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return BackendAuthError(f"Redis at {where} rejected the credentials ({exc}); check user and password")
    if isinstance(exc, NoPermissionError):
        return BackendAuthError(
            f"Redis at {where} denied a command to this ACL user ({exc}); grant it the commands of the ACL "
            "in the reliability contract (docs/design/reliability.md, security and Redis deployments)"
        )
    if isinstance(exc, OutOfMemoryError) or (isinstance(exc, ResponseError) and str(exc).startswith("OOM")):
        return BackendOutOfMemory(
            f"Redis at {where} is at maxmemory and refused the write ({exc}); nothing was stored"
        )
    if isinstance(exc, RedisConnectionError) and _tls_failure(exc):
        return BackendTLSError(
            f"TLS with Redis at {where} failed ({exc}); check ssl_ca_certs and certificates"
        )
    if is_transient(exc):
        return BackendUnavailable(f"Redis at {where} is unreachable ({exc}); retrying enqueue is safe")
    return exc


def _abandon(client: AsyncClient | None) -> None:
    """Close the sockets of a client whose event loop has ended, without that loop.

    Its transports cannot be closed the asyncio way (the loop is gone), and left alone they and
    redis-py would each warn about an unclosed resource when collected. Best effort, non-cluster
    pools only: the attributes read here are redis-py's and asyncio's own, guarded by getattr.
    """
    pool = getattr(client, "connection_pool", None)
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for connection in connections:
        writer = getattr(connection, "_writer", None)
        transport = getattr(writer, "transport", None)
        sock = getattr(transport, "_sock", None)
        with contextlib.suppress(Exception):  # best effort: never fail the caller over cleanup
            if sock is not None:
                sock.close()
                transport._sock = None  # type: ignore[union-attr]  # noqa: SLF001 - the closed socket is ours
                transport._closing = True  # type: ignore[union-attr]  # noqa: SLF001 - so its writer sees it closed
            connection._writer = connection._reader = None  # noqa: SLF001 - tells redis-py it is closed


def raise_translated(exc: BaseException, url: str) -> NoReturn:
    """Raise the typed form of ``exc`` (chained to it), or ``exc`` itself when it has none."""
    mapped = translate(exc, url)
    if mapped is exc:
        raise exc
    raise mapped from exc


def mask_url(url: str) -> str:
    """The URL with its password (and query) masked, for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}:****@{host}" if ":" in user else f"{name}@{host}"
    query = "?****" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


class Connections:
    """The clients of one backend, created lazily in the running event loop and retried by :meth:`run`.

    redis-py's asyncio connections belong to the loop that opened them, so when the backend is
    used from another loop (a new ``anyio.run``), the clients are simply built again.
    """

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncClient | None = None
        self._blocking: AsyncClient | None = None

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            old_loop, self._loop = self._loop, loop
            if old_loop is not None and old_loop.is_closed():
                for client in (self._client, self._blocking):
                    _abandon(client)
            self._client = None
            self._blocking = None

    @property
    def client(self) -> AsyncClient:
        """The pooled client for scripts and reads."""
        self._check_loop()
        if self._client is None:
            self._client = self.settings.async_client()
        return self._client

    @property
    def blocking(self) -> AsyncClient:
        """The client for ``BLPOP``: its socket timeout exceeds the longest block."""
        self._check_loop()
        if self._blocking is None:
            self._blocking = self.settings.async_client(blocking=True)
        return self._blocking

    async def run(
        self, op: Callable[[AsyncClient], Awaitable[T]], *, blocking: bool = False, retry: bool = True
    ) -> T:
        """Run ``op`` with a client, retrying transient failures with backoff; raise typed errors.

        With ``retry=False`` a transient failure raises at once (the reaper must not replay a reap
        the moment Redis answers again: under the outage grace it waits for the renewers first).
        """
        deadline = time.monotonic() + (self.settings.retry_timeout if retry else 0.0)
        attempt = 0
        while True:
            client = self.blocking if blocking else self.client
            try:
                return await op(client)
            except (redis.RedisError, OSError) as exc:
                attempt += 1
                remaining = deadline - time.monotonic()
                if not is_transient(exc) or remaining <= 0:
                    raise_translated(exc, self.settings.url)
                await anyio.sleep(min(self.settings.backoff(attempt), remaining))

    async def aclose(self) -> None:
        """Close the pools of the current loop; the next call reconnects."""
        clients = [c for c in (self._client, self._blocking) if c is not None]
        self._client = None
        self._blocking = None
        old_loop, self._loop = self._loop, None
        if old_loop is not asyncio.get_running_loop():
            if old_loop is not None and old_loop.is_closed():
                for client in clients:
                    _abandon(client)
            return
        for client in clients:
            await client.aclose()

    def run_sync(
        self, client: SyncClient, op: Callable[[SyncClient], T], *, timeout: float | None = None
    ) -> T:
        """Synchronous :meth:`run` for the renewer thread (``timeout`` bounds the retrying)."""
        limit = self.settings.retry_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        attempt = 0
        while True:
            try:
                return op(client)
            except (redis.RedisError, OSError) as exc:
                attempt += 1
                remaining = deadline - time.monotonic()
                if not is_transient(exc) or remaining <= 0:
                    raise_translated(exc, self.settings.url)
                time.sleep(min(self.settings.backoff(attempt), remaining))


async def probe_server(connections: Connections) -> dict[str, Any]:
    """``INFO server``, ``memory`` and ``persistence`` as the startup banner shows them, with warnings.

    Returns ``version``, ``maxmemory_policy``, ``aof_enabled`` and ``warnings`` (Redis older
    than 7.0, an eviction policy other than ``noeviction``, AOF off). Errors are typed as in
    :meth:`Connections.run`.
    """

    async def op(client: AsyncClient) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for section in ("server", "memory", "persistence"):
            found = await client.info(section)
            if found and all(isinstance(value, dict) for value in found.values()):
                found = next(iter(found.values()))  # a cluster answers per node; the fields agree
            info.update(found)
        return info

    info = await connections.run(op)
    version = str(info.get("redis_version", "0"))
    policy = str(info.get("maxmemory_policy", ""))
    aof = bool(int(info.get("aof_enabled", 0)))
    warnings: list[str] = []
    if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < (7, 0):
        warnings.append(f"Redis {version} is older than 7.0")
    if policy and policy != "noeviction":
        warnings.append(f"maxmemory-policy is {policy}, not noeviction: Redis may evict jobs")
    if not aof:
        warnings.append("appendonly is off: a Redis restart loses recent jobs (the epoch reports it)")
    return {"version": version, "maxmemory_policy": policy, "aof_enabled": aof, "warnings": warnings}

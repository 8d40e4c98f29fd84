"""The ``--backend``/``--prefix``/``--connect-timeout`` options, building the backend, and the startup probe.

Precedence, highest first: the flag, its ``ASYNCMQ_*`` variable (click reads it, ``--help`` shows
it), the settings module (``ASYNCMQ_SETTINGS_MODULE``), the default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from ..backends import from_url
from ..backends._default import memory_backend
from ..backends.base import Backend
from ..errors import BackendUnavailable
from ..settings import get_settings
from ._exit import cli_error_for
from ._options import Seconds, env_option
from ._output import mask_url

__all__ = [
    "BackendChoice",
    "BackendFacts",
    "backend_options",
    "close_backend",
    "open_backend",
    "probe_backend",
    "probe_or_exit",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONNECT_TIMEOUT = 5.0


def backend_options(func: F) -> F:
    """Add ``--backend``, ``--prefix`` and ``--connect-timeout`` to a command."""
    options = [
        env_option(
            "--backend",
            "backend_url",
            envvar="ASYNCMQ_BACKEND",
            metavar="URL",
            help="memory://, redis://[user:password@]host:port/db or rediss://… "
            "[default: settings.backend, memory://]",
        ),
        env_option(
            "--prefix",
            envvar="ASYNCMQ_REDIS_PREFIX",
            metavar="P",
            help="Redis key prefix [default: settings.redis_prefix, asyncmq]",
        ),
        env_option(
            "--connect-timeout",
            envvar="ASYNCMQ_CONNECT_TIMEOUT",
            type=Seconds(minimum=0.1),
            default=DEFAULT_CONNECT_TIMEOUT,
            show_default=True,
            help="Seconds the backend has to answer at startup before the command exits 3.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class BackendChoice:
    """The backend a command uses, and the URL it was built from (for messages; never printed unmasked)."""

    backend: Backend
    url: str
    prefix: str | None = None
    built_from_url: bool = True

    @property
    def shared(self) -> bool:
        """Whether other processes can see this backend (anything but the in-process memory backend)."""
        return urlsplit(self.url).scheme.lower() != "memory"

    @property
    def masked_url(self) -> str:
        """The URL with secrets masked."""
        return mask_url(self.url)


def open_backend(url: str | None, prefix: str | None) -> BackendChoice:
    """Build the backend: ``url`` (flag or ``ASYNCMQ_BACKEND``), else ``settings.backend``.

    A ``memory://`` backend is always a fresh one, private to this process.

    Raises:
        ConfigError: an unknown scheme, or a Redis URL without redis-py installed.

    """
    config = get_settings()
    chosen: Any = url or config.backend
    if not isinstance(chosen, str):
        url_of = str(getattr(chosen, "url", f"{type(chosen).__name__.lower()}://"))
        return BackendChoice(chosen, url_of, getattr(chosen, "prefix", None), built_from_url=False)
    scheme = urlsplit(chosen).scheme.lower()
    if scheme == "memory":
        return BackendChoice(memory_backend(), chosen)
    options: dict[str, Any] = {}
    if scheme in {"redis", "rediss"}:
        options["prefix"] = prefix if prefix is not None else config.redis_prefix
    return BackendChoice(from_url(chosen, **options), chosen, options.get("prefix"))


@dataclass
class BackendFacts:
    """What the startup probe learned, for the banner."""

    kind: str
    round_trip_ms: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Deployment warnings (old Redis, eviction policy, no persistence)."""
        return [str(w) for w in self.details.get("warnings", [])]

    def describe(self, prefix: str | None) -> str:
        """``Redis 7.2.4 · prefix asyncmq · AOF on · noeviction``, or ``in-memory, this process only``."""
        if self.kind != "redis":
            return "in-memory, this process only" if self.kind == "memory" else self.kind
        parts = [f"Redis {self.details.get('version', '?')}"]
        if prefix is not None:
            parts.append(f"prefix {prefix}")
        parts.append("AOF on" if self.details.get("aof_enabled") else "AOF off")
        policy = self.details.get("maxmemory_policy")
        if policy:
            parts.append(str(policy))
        return " · ".join(parts)


async def probe_backend(choice: BackendChoice, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> BackendFacts:
    """One round trip to the backend (Redis: ``INFO``), bounded by ``timeout`` seconds.

    Raises:
        BackendUnavailable: no answer within ``timeout`` (``BackendAuthError``/``BackendTLSError``
            when the backend refused the credentials or the TLS handshake).

    """
    scheme = urlsplit(choice.url).scheme.lower()
    kind = "redis" if scheme in {"redis", "rediss"} else "memory" if scheme == "memory" else "custom"
    target = choice.backend
    if kind == "redis" and choice.built_from_url:
        # A short-lived twin with a retry budget of `timeout`: the real backend keeps its own,
        # longer budget for outages after startup, and this error names the real cause.
        target = from_url(
            choice.url, prefix=choice.prefix, retry_timeout=timeout, connect_timeout=min(timeout, 5.0)
        )
    started = time.perf_counter()
    details: dict[str, Any] = {}
    try:
        with anyio.move_on_after(timeout + 1.0) as scope:
            probe = getattr(target, "probe", None)
            if callable(probe):
                details = dict(await probe())
            else:
                await target.now()
    finally:
        if target is not choice.backend:
            await close_backend(BackendChoice(target, choice.url))
    if scope.cancelled_caught:
        raise BackendUnavailable(f"no answer within {timeout:g}s (--connect-timeout)")
    return BackendFacts(kind, (time.perf_counter() - started) * 1000, details)


async def probe_or_exit(choice: BackendChoice, timeout: float) -> BackendFacts:
    """:func:`probe_backend` for a command: no answer is a ``CLIError`` naming the cause (exit 3)."""
    try:
        return await probe_backend(choice, timeout)
    except BackendUnavailable as exc:
        raise cli_error_for(exc, choice.url) from exc


async def close_backend(choice: BackendChoice) -> None:
    """Close the backend's connections, bounded and shielded (exit paths call it)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
        try:
            await choice.backend.close()
        except Exception:  # noqa: BLE001 - closing is best effort on the way out
            return

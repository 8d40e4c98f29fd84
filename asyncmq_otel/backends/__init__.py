"""Backends: the ``Backend`` port and ``from_url``, which loads an adapter only when its URL asks for it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import Backend

__all__ = ["Backend", "from_url"]


def from_url(url: str, **kwargs: Any) -> Backend:  # noqa: ANN401 - options are the adapter's own
    """Build a backend from a URL: ``memory://``, ``redis://`` or ``rediss://``.

    Keyword arguments go to the backend's constructor. The Redis adapter (and redis-py) is
    imported only for Redis URLs, so the core never needs the ``redis`` extra.

    Raises:
        ConfigError: for any other scheme, or a Redis URL without the ``redis`` extra installed.

    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from .memory import InMemoryBackend  # noqa: PLC0415 - adapters load lazily (style rule 1)

        return InMemoryBackend(**kwargs)
    if scheme in {"redis", "rediss"}:
        try:
            from .redis import RedisBackend  # noqa: PLC0415 - adapters load lazily (style rule 1)
        except ImportError as exc:
            raise ConfigError(
                f"{scheme}:// needs redis-py: pip install 'asyncmq-otel[redis]' ({exc})"
            ) from exc
        backend: Backend = RedisBackend(url, **kwargs)
        return backend
    raise ConfigError(
        f"unknown backend URL scheme {scheme!r} in {url!r}; use memory://, redis:// or rediss://"
    )

"""The process-wide default backend, chosen by ``settings.backend``."""

from __future__ import annotations

import importlib
import threading
from typing import Any, cast

from ..settings import get_settings
from .base import Backend

__all__ = ["default_backend", "memory_backend", "reset_default_backend"]

_lock = threading.Lock()
_by_url: dict[str, Backend] = {}


def default_backend() -> Backend:
    """``settings.backend`` as a backend: an instance as is, a URL built once per URL and reused."""
    configured: Any = get_settings().backend
    if not isinstance(configured, str):
        return cast("Backend", configured)
    with _lock:
        backend = _by_url.get(configured)
        if backend is None:
            if configured == "memory://":
                backend = memory_backend()
            else:
                backends = importlib.import_module("asyncmq_otel.backends")
                backend = cast("Backend", backends.from_url(configured))
            _by_url[configured] = backend
        return backend


def memory_backend() -> Backend:
    """A new in-memory backend with the size limits and retention of the current settings."""
    from .memory import InMemoryBackend  # noqa: PLC0415 - adapters load lazily

    config = get_settings()
    return InMemoryBackend(
        max_payload_bytes=config.max_payload_bytes,
        max_result_bytes=config.max_result_bytes,
        keep_completed=config.keep_completed,
        keep_completed_age=config.keep_completed_age,
        keep_failed=config.keep_failed,
        keep_failed_age=config.keep_failed_age,
    )


def reset_default_backend() -> None:
    """Forget the backends built from URLs (tests use it to start from an empty queue)."""
    with _lock:
        _by_url.clear()

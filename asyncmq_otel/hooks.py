"""Worker lifecycle hooks: ``run_hooks`` (startup, failures propagate) and ``run_hooks_safely`` (shutdown)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Hook", "normalize_hooks", "run_hooks", "run_hooks_safely"]

_log = logging.getLogger("asyncmq_otel.hooks")

Hook = Callable[..., Any]


def normalize_hooks(hooks: Hook | Sequence[Hook] | None) -> list[Hook]:
    """Accept one callable, a list or tuple of callables, or ``None``; return a list."""
    if hooks is None:
        return []
    if callable(hooks):
        return [hooks]
    if isinstance(hooks, (list, tuple)):
        for hook in hooks:
            if not callable(hook):
                raise TypeError(f"hook {hook!r} is not callable")
        return list(hooks)
    raise TypeError(f"hooks must be a callable or a list/tuple of callables, not {type(hooks).__name__}")


async def _call(hook: Hook, backend: object, worker_id: str, queue: str) -> None:
    result = hook(backend=backend, worker_id=worker_id, queue=queue)
    if inspect.isawaitable(result):
        await result


async def run_hooks(
    hooks: Hook | Sequence[Hook] | None, *, backend: object, worker_id: str, queue: str
) -> None:
    """Run hooks in order, sync or async; the first failure propagates (startup must be visible)."""
    for hook in normalize_hooks(hooks):
        await _call(hook, backend, worker_id, queue)


async def run_hooks_safely(
    hooks: Hook | Sequence[Hook] | None, *, backend: object, worker_id: str, queue: str
) -> list[BaseException]:
    """Run every hook in order; log and swallow failures so shutdown always completes.

    Returns the exceptions that were swallowed (cancellation is never swallowed).
    """
    failures: list[BaseException] = []
    for hook in normalize_hooks(hooks):
        try:
            await _call(hook, backend, worker_id, queue)
        except Exception as exc:  # noqa: BLE001 - isolation boundary: one failing hook must not skip the rest
            _log.exception("worker.shutdown_hook_failed: hook %r raised; continuing shutdown", hook)
            failures.append(exc)
    return failures

"""Worker lifecycle hooks: ``run_hooks`` (startup, failures propagate) and ``run_hooks_safely`` (shutdown)."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

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
    if _is_async(hook):
        await hook(backend=backend, worker_id=worker_id, queue=queue)
        return
    # A sync hook runs in a thread, so a blocking one leaves the loop free: signals are handled
    # and the caller's deadline (the shutdown budget) or a stop request can abandon it.
    result = await _in_daemon_thread(
        functools.partial(hook, backend=backend, worker_id=worker_id, queue=queue)
    )
    if inspect.isawaitable(result):
        await result


def _is_async(hook: Hook) -> bool:
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    )


async def _in_daemon_thread(func: Callable[[], Any]) -> Any:  # noqa: ANN401 - whatever the hook returns
    """Run ``func`` in a daemon thread and wait for it; a cancelled wait abandons the thread.

    Not anyio's thread pool: its threads are joined when the interpreter exits, so a hook blocked
    for good would keep the process alive after the worker stopped.
    """
    done = anyio.Event()
    token = anyio.lowlevel.current_token()
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome.append((True, context.run(func)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task, which raises it
            outcome.append((False, exc))
        try:
            anyio.from_thread.run_sync(done.set, token=token)
        except Exception:  # noqa: BLE001 - the loop is gone: nobody waits for this hook any more
            _log.debug("worker.hook_abandoned: %r finished after its worker stopped", func)

    threading.Thread(target=target, name="asyncmq-hook", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if ok:
        return value
    raise value


async def run_hooks(
    hooks: Hook | Sequence[Hook] | None, *, backend: object, worker_id: str, queue: str
) -> None:
    """Run hooks in order, sync ones in a thread; the first failure propagates (startup must be visible)."""
    for hook in normalize_hooks(hooks):
        await _call(hook, backend, worker_id, queue)


async def run_hooks_safely(
    hooks: Hook | Sequence[Hook] | None, *, backend: object, worker_id: str, queue: str
) -> list[BaseException]:
    """Run every hook in order, sync ones in a thread; log and swallow failures so shutdown completes.

    Returns the exceptions that were swallowed (cancellation is never swallowed: a cancelled wait
    for a sync hook abandons its thread).
    """
    failures: list[BaseException] = []
    for hook in normalize_hooks(hooks):
        try:
            await _call(hook, backend, worker_id, queue)
        except Exception as exc:  # noqa: BLE001 - isolation boundary: one failing hook must not skip the rest
            _log.exception("worker.shutdown_hook_failed: hook %r raised; continuing shutdown", hook)
            failures.append(exc)
    return failures

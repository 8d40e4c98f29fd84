"""``Queue.wait_for_result``: wake on the job's settle instead of polling its state.

The waiter subscribes first and reads the job's state second, so a settle between the two is never
missed: either the read sees it, or the subscription delivers its event. Redis: the lifecycle events
that workers publish on ``<prefix>:events``. In-process backends: the process's event bus.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from .backends.base import Backend, StoredJob
from .errors import ConfigError, JobCancelled, JobExpired, JobFailed
from .events import LifecycleEvent, bus
from .jobs import check_job_id
from .settings import get_settings

__all__ = ["SETTLE_EVENTS", "wait_for_result"]

SETTLE_EVENTS = ("job:completed", "job:failed", "job:cancelled", "job:expired")
# A settle announced by nobody (a queued job cancelled by a process without an event relay, a
# Pub/Sub message lost in a reconnect) is found by re-reading the job this often: a backstop.
_RECHECK = 10.0


def _outcome(job_id: str, stored: StoredJob | None) -> tuple[bool, Any]:
    """``(True, result)`` for a completed job; raises for the other terminal states; ``(False, None)``."""
    state = None if stored is None else stored.state
    if stored is None or state not in {"completed", "failed", "cancelled", "expired"}:
        return False, None
    if state == "completed":
        return True, stored.result
    if state == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled")
    if state == "expired":
        raise JobExpired(job_id)
    error = stored.error if isinstance(stored.error, dict) else {}
    raise JobFailed(job_id, str(error.get("type", "")), str(error.get("message", "")), stored.dlq_reason)


async def wait_for_result(
    backend: Backend, queue: str, job_id: str, timeout: float | None = None, *, recheck: float = _RECHECK
) -> Any:  # noqa: ANN401 - whatever the handler returned
    """The job's result once it completes; see :meth:`asyncmq_otel.queues.Queue.wait_for_result`."""
    check_job_id(job_id)
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    with anyio.fail_after(timeout):
        async with _settles(backend, queue, job_id) as settled:
            while True:
                done, result = _outcome(job_id, await backend.get_job(queue, job_id))
                if done:
                    return result
                with anyio.move_on_after(recheck):
                    await settled()


@contextlib.asynccontextmanager
async def _settles(backend: Backend, queue: str, job_id: str) -> AsyncIterator[Any]:
    """Subscribe to the job's settle events; yields an awaitable that returns when one arrives."""
    subscribe = getattr(backend, "subscribe_events", None)
    if subscribe is None:
        async with _bus_settles(queue, job_id) as settled:
            yield settled
        return
    if not get_settings().publish_events:
        raise ConfigError(
            "wait_for_result on Redis wakes on the lifecycle events workers publish, and "
            "settings.publish_events is off (ASYNCMQ_PUBLISH_EVENTS): turn it on for the workers"
        )
    async with await subscribe(SETTLE_EVENTS) as events:

        async def settled() -> None:
            async for event in events:
                if event.get("job_id") == job_id and event.get("queue") == queue:
                    return

        yield settled


@contextlib.asynccontextmanager
async def _bus_settles(queue: str, job_id: str) -> AsyncIterator[Any]:
    """The process bus's settle events for one job (inline: no dispatcher needed)."""
    box = {"event": anyio.Event()}
    loop_thread = threading.get_ident()
    token = anyio.lowlevel.current_token()

    def listener(event: LifecycleEvent) -> None:
        if event.job_id != job_id or event.queue != queue:
            return
        if threading.get_ident() == loop_thread:
            box["event"].set()
        else:  # emitted by a handler's thread: set it on the waiter's loop
            anyio.from_thread.run_sync(box["event"].set, token=token)

    for name in SETTLE_EVENTS:
        bus.on(name, listener, inline=True)

    async def settled() -> None:
        await box["event"].wait()
        box["event"] = anyio.Event()

    try:
        yield settled
    finally:
        for name in SETTLE_EVENTS:
            bus.off(name, listener)

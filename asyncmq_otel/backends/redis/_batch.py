"""Coalescing of concurrent completions: one ``complete`` script call per queue and flush.

Handlers that finish together (a claimed batch of no-op jobs finishes in the same turn of the event
loop) each call ``complete``; instead of one round trip each, their settles are queued and sent
together as one script call, in which every job is still its own fenced transition with its own
reply. Each caller awaits its own reply, so it emits its event only after its own write succeeded.

At most one call per queue is in flight: completions that arrive meanwhile wait for it and go out
together in the next one, so the batch grows with the load and a lone completion leaves at once.
A caller cancelled before its batch is sent is left out of it (nothing is written for it). An
error of the call itself (Redis unreachable after the connection's own retries) reaches every caller
of the batch, which may re-send: a settle that was applied after all replays as ``OK``. A job whose
key is not a job hash fails alone, before anything is written for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..base import SettleReply

__all__ = ["CompleteBatcher", "PendingComplete"]

MAX_BATCH = 200  # jobs per script call: amortises the round trip without holding Redis for long


@dataclass(slots=True)
class PendingComplete:
    """One queued completion and the future its caller awaits."""

    job_id: str
    token: str
    result: str
    want_job: bool
    future: asyncio.Future[SettleReply]
    last_span: str = ""  # a job of a flow: its attempt's traceparent, stored for its children's links


Sender = Callable[[str, list[PendingComplete]], Awaitable[list[SettleReply | Exception]]]
"""Sends a batch as one call; one reply per job, in order (an exception for a job that failed alone)."""


class CompleteBatcher:
    """Queues completions per queue name and sends each queue's pending ones with ``send``."""

    def __init__(self, send: Sender, max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, list[PendingComplete]] = {}
        self._flushing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, queue: str, job_id: str, token: str, result: str, *, want_job: bool, last_span: str = ""
    ) -> SettleReply:
        """Queue one completion and wait for its own reply."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop: whatever the old one held died with it
            self._loop = loop
            self._pending = {}
            self._flushing = set()
            self._tasks = set()
        future: asyncio.Future[SettleReply] = loop.create_future()
        entry = PendingComplete(job_id, token, result, want_job, future, last_span)
        pending = self._pending.get(queue)
        if pending is None:
            self._pending[queue] = [entry]
        else:
            pending.append(entry)
        if queue not in self._flushing:
            self._flushing.add(queue)
            task = loop.create_task(self._flush(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self, queue: str) -> None:
        """Send the queue's pending completions until none is left (runs after their callers queued)."""
        try:
            while True:
                batch = [entry for entry in self._pending.pop(queue, ()) if not entry.future.done()]
                if not batch:
                    return
                for start in range(0, len(batch), self._max_batch):
                    try:
                        await self._send_chunk(queue, batch[start : start + self._max_batch])
                    except BaseException:
                        _cancel(batch[start:])
                        raise
        except BaseException:
            _cancel(self._pending.pop(queue, ()))
            raise
        finally:
            self._flushing.discard(queue)

    async def _send_chunk(self, queue: str, chunk: list[PendingComplete]) -> None:
        """Send one chunk and hand each caller its own reply (or error), or the call's error to all."""
        try:
            replies = await self._send(queue, chunk)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the chunk
            _fail(chunk, exc)
            return
        for entry, reply in zip(chunk, replies, strict=True):
            if entry.future.done():
                continue
            if isinstance(reply, Exception):
                entry.future.set_exception(reply)
            else:
                entry.future.set_result(reply)


def _fail(entries: Iterable[PendingComplete], exc: Exception) -> None:
    """Hand ``exc`` to the callers still waiting."""
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(exc)


def _cancel(entries: Iterable[PendingComplete]) -> None:
    """Cancel the callers of entries that were never sent (the flush itself was cancelled)."""
    for entry in entries:
        entry.future.cancel()

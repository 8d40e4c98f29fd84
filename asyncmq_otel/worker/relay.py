"""Relays a worker's lifecycle events to other processes through a backend that can publish them.

The Redis backend publishes on ``<prefix>:events`` (Pub/Sub), so an exporter, a dashboard or a test
in another process can follow the same ``event_emitter`` names as a listener in the worker.

The job path only appends to a bounded buffer (an inline bus listener); a task of the worker sends
what has accumulated in one pipelined round trip, waiting a few milliseconds after the first event so
that a publish carries many. Pub/Sub is best effort, and so is the relay: a full buffer or a failed
publish drops events (counted as ``signal="event"``) and never slows a job.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

import anyio

from ..backends.capabilities import EventPublisher  # still importable from here, where it was defined
from ..events import EventBus, LifecycleEvent

__all__ = ["EventPublisher", "EventRelay", "event_message", "relay_to"]

_log = logging.getLogger("asyncmq_otel.worker")

_BATCH = 500  # events per publish round trip
_BUFFER = 10_000  # events held while a publish is slow; beyond that the oldest are dropped
# A woken relay waits this long before publishing, so one round trip carries the events of many jobs
# (one publish per event would cost more CPU than the job itself); other processes hear them this late.
_LINGER = 0.025
_OFF_THREAD_LATENCY = 0.25  # events emitted off the event loop's thread wait at most this long
_MAX_RESULT_CHARS = 64 * 1024  # a larger result is left out of the message (``result_omitted``)
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def event_message(event: LifecycleEvent) -> str:
    """The JSON object published for ``event``: its set fields, the same names as in-process."""
    data = event.as_dict()
    data.pop("started_monotonic", None)  # a local clock reading: meaningless elsewhere
    try:
        text = _encode(data)
    except ValueError:  # a circular result: say so rather than lose the event
        data.pop("result", None)
        data["result_omitted"] = True
        return _encode(data)
    if len(text) > _MAX_RESULT_CHARS and "result" in data:
        data.pop("result")
        data["result_omitted"] = True
        text = _encode(data)
    return text


class EventRelay:
    """Buffers one worker's events and publishes them from a task of that worker."""

    def __init__(self, bus: EventBus, worker_id: str, publisher: EventPublisher) -> None:
        self._bus = bus
        self._worker_id = worker_id
        self._publisher = publisher
        self._buffer: collections.deque[LifecycleEvent] = collections.deque()
        self._ready = anyio.Event()
        self._waiting = False  # the run task waits on _ready: the next event on the loop's thread wakes it
        self._loop_thread = threading.get_ident()
        self._failures = 0

    def listen(self, event: LifecycleEvent) -> None:
        """Inline bus listener: keep this worker's events (other workers of the process relay theirs)."""
        if event.worker_id != self._worker_id:
            return
        buffer = self._buffer
        if len(buffer) >= _BUFFER:
            buffer.popleft()
            self._bus.record_drop("event", "queue_full")
        buffer.append(event)
        if self._waiting and threading.get_ident() == self._loop_thread:
            self._waiting = False
            self._ready.set()

    async def run(self) -> None:
        """Publish until cancelled (the worker's services are cancelled at shutdown)."""
        self._loop_thread = threading.get_ident()
        while True:
            if self._failures:  # the backend is failing: back off (its own retries ran already)
                await anyio.sleep(min(0.1 * 2 ** min(self._failures, 5), 2.0))
            if not self._buffer:
                self._ready = anyio.Event()
                self._waiting = True
                with anyio.move_on_after(_OFF_THREAD_LATENCY):
                    await self._ready.wait()
                self._waiting = False
            if 0 < len(self._buffer) < _BATCH:
                await anyio.sleep(_LINGER)  # let more events join this publish
            await self.flush()

    async def flush(self) -> None:
        """Publish what is buffered now (the shutdown tail calls it after ``worker:stopped``)."""
        while self._buffer:
            count = min(len(self._buffer), _BATCH)
            batch = [self._buffer.popleft() for _ in range(count)]
            try:
                await self._publisher.publish_events([event_message(event) for event in batch])
            except anyio.get_cancelled_exc_class():
                # cancelled mid-publish (shutdown): the batch may not have gone out; count it, as the
                # contract's reasons allow, rather than lose it unseen
                self._bus.record_drop("event", "adapter_error", len(batch))
                raise
            except Exception:  # noqa: BLE001 - best effort: a failed publish never reaches a job
                self._bus.record_drop("event", "adapter_error", len(batch))
                self._failures += 1
                if self._failures == 1:
                    _log.warning("worker.event_relay_failed: events not published", exc_info=True)
                return
            self._failures = 0


def relay_to(backend: object) -> EventPublisher | None:
    """``backend`` as an :class:`EventPublisher`, or ``None`` when it cannot publish."""
    return backend if isinstance(backend, EventPublisher) else None

"""Cross-process events on Pub/Sub channels (JSON objects).

Workers publish lifecycle events on ``<prefix>:events`` so another process (the exporter, a
dashboard, a test) can follow them, and :meth:`RedisBackend.cancel` publishes a cancel hint on
``<prefix>:control`` so the owner of a running job stops it at once instead of at its next lease
renewal. (The reliability contract's data model lists one ``events`` channel for both; the hints
moved to their own so a worker's hint reader does not receive every other worker's lifecycle events.)
Pub/Sub is best effort: a hint lost while a subscriber reconnects is covered by ``renew`` answering
``CANCEL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import redis.asyncio
from redis.exceptions import RedisError

from . import _scripts
from ._connection import ConnectionSettings, is_transient, raise_translated
from ._decode import dumps

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; annotations are never evaluated

    from ._store import Store

__all__ = ["CANCEL_HINT", "SCHEDULES_CHANGED", "CancelHints", "Channel", "EventChannel", "EventSubscription"]

CANCEL_HINT = "control:cancel"
SCHEDULES_CHANGED = "control:schedules"
"""Published on the control channel when a schedule is stored, paused, resumed or removed, so every
worker's scheduler re-reads at once instead of at its longest sleep."""
"""The ``name`` of the cancel hint on the control channel (not a lifecycle event)."""

Channel = Literal["events", "control"]
"""``events``: lifecycle events; ``control``: cancel hints."""

_log = logging.getLogger("asyncmq_otel.backends.redis")


class EventSubscription:
    """An async iterator over the JSON events of one channel; use it as an async context manager.

    The subscription is confirmed by Redis before :meth:`RedisBackend.subscribe_events`
    returns, so nothing published afterwards is missed. After a connection loss it subscribes
    again by itself (events published in between are lost, as Pub/Sub does).
    """

    def __init__(
        self, settings: ConnectionSettings, channel: str, names: Collection[str] | None = None
    ) -> None:
        self._settings = settings
        self._channel = channel
        self._names = frozenset(names) if names is not None else None
        self._markers = _markers(self._names)
        self._client: redis.asyncio.Redis | None = None
        self._pubsub: Any = None
        self._closed = False

    async def _subscribe(self) -> None:
        self._client = self._settings.pubsub_client()
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._channel)
        # Redis confirms with a first message: wait for it, so the subscription is live on return
        with anyio.fail_after(self._settings.connect_timeout + self._settings.socket_timeout):
            while True:
                message = await self._pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "subscribe":
                    return

    async def open(self) -> EventSubscription:
        """Subscribe, retrying transient failures like every other call."""
        attempt = 0
        while True:
            try:
                await self._subscribe()
            except (RedisError, OSError) as exc:
                await self._drop()
                attempt += 1
                if not is_transient(exc) or attempt > 5:  # noqa: PLR2004 - a handful of quick tries
                    raise_translated(exc, self._settings.url)
                await anyio.sleep(self._settings.backoff(attempt))
            else:
                return self

    async def _drop(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        with contextlib.suppress(RedisError, OSError):
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        attempt = 0
        while not self._closed:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except (RedisError, OSError) as exc:
                await self._drop()
                attempt += 1
                if not is_transient(exc):
                    raise_translated(exc, self._settings.url)
                await anyio.sleep(self._settings.backoff(attempt))
                continue
            attempt = 0
            if not message or message.get("type") != "message":
                continue
            data = message.get("data")
            markers = self._markers
            if markers is not None and isinstance(data, bytes) and not any(m in data for m in markers):
                continue  # holds no wanted name: not decoded (a hint reader sees every lifecycle event)
            event = _decode(data)
            if event is None or (self._names is not None and event.get("name") not in self._names):
                continue
            return event
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribe and close the connection."""
        self._closed = True
        await self._drop()

    async def __aenter__(self) -> Self:
        if self._pubsub is None:
            await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _markers(names: frozenset[str] | None) -> tuple[bytes, ...] | None:
    """The JSON strings ``"<name>"`` a message must contain to carry one of ``names``, as bytes.

    None (decode every message) unless each name is printable ASCII that JSON encoders write as is:
    without a quote, a backslash or a slash (which some encoders escape).
    """
    if names is None or not names:
        return None
    if not all(name.isascii() and name.isprintable() and not set(name) & {'"', "\\", "/"} for name in names):
        return None
    return tuple(f'"{name}"'.encode() for name in names)


def _decode(data: object) -> dict[str, Any] | None:
    if not isinstance(data, (bytes, str)):
        return None
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class CancelHints:
    """Delivers cancel hints (and schedule changes) from other processes to the registered listeners.

    A reader task subscribes in the event loop that first needs it (listeners then run in that
    loop, as the in-memory backend runs them), and is started again if the loop changes.
    """

    def __init__(self, settings: ConnectionSettings, channel: str, origin: str) -> None:
        self._settings = settings
        self._channel = channel
        self.origin = origin
        self.listeners: list[Callable[[str, str], None]] = []
        self.schedule_watchers: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ensure_reader(self) -> None:
        """Start the reader in the running loop if listeners exist and none runs there."""
        if not self.listeners and not self.schedule_watchers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the backend's next async call starts it
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop = loop
        self._task = loop.create_task(self._read(), name="asyncmq-otel-cancel-hints")

    def notify(self, queue: str, job_id: str) -> None:
        """Call every listener; one that raises is logged and never stops the others."""
        for listener in list(self.listeners):
            try:
                listener(queue, job_id)
            except Exception:  # noqa: BLE001 - isolation boundary: a listener never breaks the reader
                _log.exception(
                    "backend.cancel_listener_failed: listener %r failed for job %s", listener, job_id
                )

    def schedules_changed(self) -> None:
        """Call every schedule watcher; one that raises is logged and never stops the others."""
        for watcher in list(self.schedule_watchers):
            try:
                watcher()
            except Exception:  # noqa: BLE001 - isolation boundary, as for cancel listeners
                _log.exception("backend.schedule_watcher_failed: watcher %r failed", watcher)

    async def _read(self) -> None:
        attempt = 0
        while True:
            subscription = EventSubscription(
                self._settings, self._channel, names=(CANCEL_HINT, SCHEDULES_CHANGED)
            )
            try:
                await subscription.open()
                attempt = 0
                async for event in subscription:
                    if event.get("origin") == self.origin:
                        continue  # this process told its listeners when it cancelled or changed
                    if event.get("name") == SCHEDULES_CHANGED:
                        self.schedules_changed()
                        continue
                    queue, job_id = event.get("queue"), event.get("job_id")
                    if isinstance(queue, str) and isinstance(job_id, str):
                        self.notify(queue, job_id)
            except Exception:  # noqa: BLE001 - isolation boundary: renew's CANCEL still covers a dead reader
                attempt += 1
                _log.warning(
                    "backend.cancel_hints_failed: reading cancel hints failed; retrying", exc_info=True
                )
                await anyio.sleep(self._settings.backoff(min(attempt, 8)) + 0.1)
            finally:
                await subscription.aclose()

    async def aclose(self) -> None:
        """Stop the reader (when it runs in the current loop)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        if self._loop is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task


def schedules_changed_message(queue: str, origin: str) -> Mapping[str, Any]:
    """The control message published after a schedule of ``queue`` changed."""
    return {"name": SCHEDULES_CHANGED, "queue": queue, "origin": origin}


def hint(queue: str, job_id: str, origin: str) -> Mapping[str, Any]:
    """The cancel hint published when a running job's cancellation is requested."""
    return {"name": CANCEL_HINT, "queue": queue, "job_id": job_id, "origin": origin}


class EventChannel:
    """The events channel of :class:`RedisBackend`: cancel listeners, publishing, subscribing."""

    def __init__(self, store: Store) -> None:
        self.keys = store.keys
        self.connections = store.connections
        self._hints = store.hints

    def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(queue, job_id)`` as soon as a running job's cancellation is requested.

        Requests made through this backend call it at once; those of other processes arrive as
        cancel hints on ``<prefix>:control``, read by a task in the event loop of the backend's
        next call (or of this call, when one is running).
        """
        self._hints.listeners.append(listener)
        self._hints.ensure_reader()

    def remove_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        if listener in self._hints.listeners:
            self._hints.listeners.remove(listener)

    async def publish_event(self, event: Mapping[str, Any], *, channel: Channel = "events") -> int:
        """Publish one event (a JSON object); return how many subscribers got it.

        ``channel``: ``events`` (``<prefix>:events``) or ``control`` (``<prefix>:control``, cancel hints).
        """
        data = dumps(dict(event))
        name = self.keys.events if channel == "events" else self.keys.control
        receivers = await self.connections.run(lambda client: client.publish(name, data))
        return int(receivers)

    async def publish_events(self, messages: Sequence[str]) -> None:
        """Publish JSON messages on ``<prefix>:events``, in order, in one round trip.

        Never re-sent after a lost reply (Pub/Sub is at most once: no duplicated events).
        """
        if not messages:
            return
        keys, args = [self.keys.events], list(messages)
        await self.connections.run(lambda client: _scripts.call(client, "publish", keys, args), retry=False)

    async def subscribe_events(
        self, names: Collection[str] | None = None, *, channel: Channel = "events"
    ) -> EventSubscription:
        """Subscribe to ``<prefix>:events`` (or ``control``: the cancel hints); live on return.

        Use it as ``async with await backend.subscribe_events() as events: async for event in events``.
        ``names`` keeps only events whose ``name`` is in it.
        """
        name = self.keys.events if channel == "events" else self.keys.control
        return await EventSubscription(self.connections.settings, name, names).open()

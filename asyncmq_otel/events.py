"""The event bus: every lifecycle transition is emitted here once, and adapters subscribe.

Two kinds of listeners:

* **inline** listeners (the telemetry adapters, or ``inline=True``) run synchronously in the
  emitting task, in registration order, before ``emit`` returns. They must not block.
* **queued** listeners (the default for user code, sync or async) are called by a dispatcher
  task that reads a bounded FIFO; a full FIFO drops the event for queued listeners only.

A listener that raises is logged once per (listener, event name) and counted; it never
changes a job's outcome. Writes to the backend can also be observed (``operation``), which is
how the trace adapter puts the ``send`` span's context into the stored job.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._writes import ObservedWrite, Operation, OperationObserver, TimedWrite
from .jobs import Job

__all__ = [
    "EVENT_NAMES",
    "BusSnapshot",
    "EventBus",
    "EventEmitter",
    "JobListener",
    "LifecycleEvent",
    "Listener",
    "Operation",
    "OperationObserver",
    "Service",
    "bus",
    "event_emitter",
]

_log = logging.getLogger("asyncmq_otel.events")

EVENT_NAMES = (
    "job:enqueued",
    "job:delayed",
    "job:started",
    "job:progress",
    "job:completed",
    "job:retried",
    "job:failed",
    "job:expired",
    "job:cancelled",
    "job:interrupted",
    "job:throttled",
    "job:stalled",
    "job:duplicated",
    "queue:paused",
    "queue:resumed",
    "worker:started",
    "worker:heartbeat",
    "worker:stopped",
    "backend:data_loss",
    "schedule:fired",
)
_FAMILIES = ("job:*", "queue:*", "worker:*", "backend:*", "schedule:*")
_DRAIN_POLL_INTERVAL = 0.01  # drain waiting for another worker's dispatcher (shutdown only)

Signal = Literal["event", "span", "metric", "log"]
DropReason = Literal["queue_full", "adapter_error", "cardinality"]


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle transition. Fields that do not apply are ``None``.

    It also reads like AsyncMQ's event dict (``event["job_id"]``, ``event.get("id")``), so
    listeners written for AsyncMQ keep working.
    """

    name: str
    ts: float
    queue: str | None = None
    job_id: str | None = None
    task: str | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    priority: int | None = None
    enqueued_at: float | None = None
    eligible_at: float | None = None
    worker_id: str | None = None
    group: str | None = None
    started_at: float | None = None
    wait_s: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    ratelimit_wait_s: float | None = None
    delay_s: float | None = None
    backoff_s: float | None = None
    progress: float | None = None
    progress_data: Any = None
    error_type: str | None = None
    error_message: str | None = None
    reason: str | None = None
    concurrency: int | None = None
    active: int | None = None
    trace_context: Mapping[str, str] | None = None
    exception: BaseException | None = None
    result: Any = None
    old_epoch: str | None = None
    new_epoch: str | None = None
    started_monotonic: float | None = None
    server_address: str | None = None
    server_port: int | None = None
    schedule_key: str | None = None  # a job fired by a schedule: its key and due time (unix seconds)
    schedule_due: float | None = None
    flow_id: str | None = None  # a job of a flow (flows.py); parent_spans: its parents' traceparents
    parent_spans: tuple[str, ...] | None = None
    scope: str | None = None  # job:throttled: the limit that held the job, "worker" or "queue"

    @property
    def id(self) -> str | None:
        """AsyncMQ's name for the job id."""
        return self.job_id

    def __getitem__(self, key: str) -> Any:  # noqa: ANN401 - mapping-style access to any field
        if key == "id":
            return self.job_id
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:  # noqa: ANN401 - mapping-style access
        """Mapping-style ``get``."""
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, without ``exception`` (which never leaves the process)."""
        return _set_fields(self)


_EVENT_FIELDS = frozenset(f.name for f in fields(LifecycleEvent))


def _compile_set_fields() -> Callable[[LifecycleEvent], dict[str, Any]]:
    """The body of :meth:`LifecycleEvent.as_dict`, compiled once.

    Straight-line attribute reads cost a fifth of a loop of ``getattr`` over the field names, and the
    worker's event relay serialises every event through it.
    """
    lines = ["def set_fields(event):", "    data = {}"]
    for name in (f.name for f in fields(LifecycleEvent) if f.name != "exception"):
        lines += [f"    value = event.{name}", "    if value is not None:", f"        data[{name!r}] = value"]
    lines.append("    return data")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<asyncmq_otel event fields>", "exec"), namespace)  # noqa: S102 - field names only
    function: Callable[[LifecycleEvent], dict[str, Any]] = namespace["set_fields"]
    return function


_set_fields = _compile_set_fields()


EVENT_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LifecycleEvent))
"""The fields of :class:`LifecycleEvent`, in declaration order."""


class _EventBuilder:
    """A mutable twin of :class:`LifecycleEvent`: the same slots, in the same order, and no checks.

    The frozen dataclass can only be filled through ``object.__setattr__`` or each slot's descriptor,
    a C call per field (34 of them, two events or more per job). An instance of this class is filled
    with plain attribute stores instead, then becomes a ``LifecycleEvent`` by ``__class__`` assignment,
    which CPython allows between classes of identical layout. What listeners receive is an ordinary
    frozen ``LifecycleEvent``; the builder class never escapes this module.
    """

    __slots__ = EVENT_FIELD_NAMES


def _compile(source: list[str], namespace: dict[str, Any], name: str) -> Any:  # noqa: ANN401 - a compiled function
    exec(compile("\n".join(source), f"<asyncmq_otel {name}>", "exec"), namespace)  # noqa: S102 - field names only
    return namespace[name]


def _swap_supported() -> bool:
    """Whether this interpreter lets a builder become a ``LifecycleEvent`` (checked once, at import)."""
    probe = object.__new__(_EventBuilder)
    try:
        probe.__class__ = LifecycleEvent  # type: ignore[assignment] # the point of the probe
    except TypeError:  # pragma: no cover - an interpreter without layout-compatible class assignment
        return False
    return True


_SWAP = _swap_supported()


def _compile_event_builder(
    function: str, params: str, prologue: list[str], values: Mapping[str, str], *, swap: bool = _SWAP
) -> Callable[..., LifecycleEvent]:
    """A function filling every field of a new event.

    ``values`` gives the expression of some fields; the others are ``get(name)`` (``prologue`` binds
    ``get``). Without ``swap`` each field is written through its descriptor (slower, no twin class).
    """
    namespace: dict[str, Any] = {"new": object.__new__, "builder": _EventBuilder, "cls": LifecycleEvent}
    for name in EVENT_FIELD_NAMES:
        namespace[f"set_{name}"] = getattr(LifecycleEvent, name).__set__
    lines = [f"def {function}({params}):", f"    event = new({'builder' if swap else 'cls'})", *prologue]
    for name in EVENT_FIELD_NAMES:
        value = values.get(name, f"get({name!r})")
        lines.append(f"    event.{name} = {value}" if swap else f"    set_{name}(event, {value})")
    if swap:
        lines.append("    event.__class__ = cls")
    lines.append("    return event")
    built: Callable[..., LifecycleEvent] = _compile(lines, namespace, function)
    return built


make_event_unchecked: Callable[[dict[str, Any]], LifecycleEvent] = _compile_event_builder(
    "make_event", "values", ["    get = values.get"], {}
)
"""``make_event`` for trusted callers: keys that are not fields are ignored, absent ones are ``None``."""


def make_event(values: dict[str, Any]) -> LifecycleEvent:
    """``LifecycleEvent(**values)``, faster: the same event, the same ``TypeError`` for an unknown field.

    ``name`` and ``ts`` are required; absent fields are ``None``.
    """
    if not values.keys() <= _EVENT_FIELDS or "name" not in values or "ts" not in values:
        return LifecycleEvent(**values)  # raises the dataclass's own TypeError
    return make_event_unchecked(values)


JOB_FIELD_NAMES = frozenset(
    {"name", "ts", "queue", "job_id", "task", "attempt", "max_attempts", "priority", "enqueued_at",
     "eligible_at", "trace_context", "schedule_key", "schedule_due", "flow_id"}
)  # fmt: skip
"""The fields :func:`make_job_event` takes from the job; the others come from its ``extra`` dict."""

make_job_event: Callable[[str, float, Job, int, dict[str, Any]], LifecycleEvent] = _compile_event_builder(
    "make_job_event",
    "name, ts, job, attempt_number, extra",
    ["    get = extra.get", "    context = job.trace_context"],
    {
        "name": "name",
        "ts": "ts",
        "queue": "job.queue",
        "job_id": "job.id",
        "task": "job.task",
        "attempt": "attempt_number",
        "max_attempts": "job.max_attempts",
        "priority": "job.priority",
        "enqueued_at": "job.enqueued_at",
        "eligible_at": "job.eligible_at",
        "trace_context": "dict(context) if context else None",
        "schedule_key": "job.schedule",
        "schedule_due": "job.schedule_due",
        "flow_id": "job.flow_id",
    },
)
"""An event about ``job`` (the fields every ``job:*`` event carries) plus the other fields from ``extra``.

The job's own fields win over the same keys in ``extra``; other keys of ``extra`` that are not fields
are ignored (callers check them: :func:`asyncmq_otel._lifecycle.job_event`).
"""


Listener = Callable[[LifecycleEvent], Any]
JobListener = Callable[[str, Job, int, "dict[str, Any]"], Any]
"""A listener's fast path for ``job:*`` events: ``(name, job, attempt number, extra fields)``, no event built.

The job and the field dict are the emitter's own: read them, never keep or change them.
"""
Service = Callable[[Any, "list[str]"], Awaitable[None]]
"""A background task run beside each worker: ``await service(backend, queues)``."""


@dataclass(slots=True)
class _Subscription:
    pattern: str
    listener: Listener
    inline: bool
    signal: Signal
    once: bool
    is_async: bool = False
    from_job: JobListener | None = None


Route = tuple[tuple[_Subscription, ...], tuple[_Subscription, ...], tuple[_Subscription, ...]]
"""The inline and the queued subscriptions an event name reaches, and the job fast path.

The third part is the inline subscriptions again when each of them has a ``from_job`` and nothing is
queued (the event itself then need not be built), else empty.
"""


class EventBus:
    """Listeners by pattern, inline delivery, a bounded queue for the rest, and write observers."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._subscriptions: list[_Subscription] = []
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._pending: collections.deque[LifecycleEvent] = collections.deque()
        # The event being delivered and the index of its next queued listener: kept on the bus so a
        # deliverer cancelled mid-event (a stopping worker's dispatcher) leaves the rest to `drain`.
        self._current: tuple[LifecycleEvent, tuple[_Subscription, ...]] | None = None
        self._next_listener = 0
        self.queue_size = queue_size
        self._waiters: list[_Waiter] = []
        self._observers: list[OperationObserver] = []
        self._timed_only = True  # every observer has write_finished (EventBus.write builds no Operation)
        self._drop_observers: list[Callable[[str, str, int], None]] = []
        self._services: list[Service] = []
        self._failed_once: set[tuple[int, str]] = set()
        self._last_full_warning = 0.0
        self.dropped: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- saving and restoring (tests) -----------------------------------------------------------------
    def snapshot(self) -> BusSnapshot:
        """Everything the bus holds now, for :meth:`restore`: listeners, observers, services, pending events.

        A snapshot copies every field of the bus (a field added later is covered too) except the lock
        and the running dispatchers, which are tasks, not state: each removes itself when it stops.
        """
        with self._lock:
            return BusSnapshot(
                {name: copy.copy(value) for name, value in vars(self).items() if name not in _LIVE_FIELDS}
            )

    def restore(self, snapshot: BusSnapshot) -> None:
        """Put the bus back as it was at :meth:`snapshot`; the same snapshot can be restored again.

        Listeners, observers, drop observers and services added since are gone, events queued since are
        dropped, and the drop counts and once-per-listener error logs are those of the snapshot.
        """
        with self._lock:
            for name, value in snapshot.fields.items():
                setattr(self, name, copy.copy(value))

    # -- subscription --------------------------------------------------------------------------------
    def on(
        self,
        pattern: str,
        listener: Listener,
        *,
        inline: bool = False,
        signal: Signal = "event",
        from_job: JobListener | None = None,
    ) -> Listener:
        """Subscribe ``listener`` to an event name, a family wildcard (``job:*``) or ``*``.

        ``from_job`` (inline listeners of ``job:*`` events): the same listener taking the job and the
        emitter's extra fields instead of a :class:`LifecycleEvent`. When every listener an event reaches
        has one, the worker calls them and builds no event (the telemetry contract's overhead rule for
        metrics only); otherwise ``listener`` gets the event as usual.
        """
        self._subscribe(pattern, listener, inline=inline, signal=signal, once=False, from_job=from_job)
        return listener

    def once(self, pattern: str, listener: Listener, *, inline: bool = False) -> Listener:
        """Subscribe ``listener`` for the next matching event only."""
        self._subscribe(pattern, listener, inline=inline, signal="event", once=True)
        return listener

    def off(self, pattern: str, listener: Listener) -> None:
        """Remove a subscription made with :meth:`on` or :meth:`once` (a no-op when absent)."""
        with self._lock:
            self._subscriptions = [
                s for s in self._subscriptions if not (s.pattern == pattern and s.listener == listener)
            ]
            self._routes.clear()

    def listeners(self, pattern: str | None = None) -> list[Listener]:
        """The subscribed listeners, optionally only those of one pattern."""
        return [s.listener for s in self._subscriptions if pattern is None or s.pattern == pattern]

    def _subscribe(
        self,
        pattern: str,
        listener: Listener,
        *,
        inline: bool,
        signal: Signal,
        once: bool,
        from_job: JobListener | None = None,
    ) -> None:
        if pattern != "*" and pattern not in _FAMILIES and pattern not in EVENT_NAMES:
            raise ValueError(
                f"unknown event pattern {pattern!r}; use one of {', '.join(EVENT_NAMES)}, a family "
                "wildcard (job:*, queue:*, worker:*, backend:*, schedule:*) or '*'"
            )
        is_async = inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        if inline and is_async:
            raise TypeError("inline listeners run synchronously in the emitting task; pass a sync function")
        with self._lock:
            self._subscriptions.append(
                _Subscription(pattern, listener, inline, signal, once, is_async, from_job if inline else None)
            )
            self._routes.clear()

    def _route(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None:
            family = name.split(":", 1)[0] + ":*"
            seen: set[int] = set()
            inline: list[_Subscription] = []
            queued: list[_Subscription] = []
            for sub in self._subscriptions:
                if sub.pattern in {name, family, "*"} and id(sub.listener) not in seen:
                    seen.add(id(sub.listener))
                    (inline if sub.inline else queued).append(sub)
            direct = not queued and all(sub.from_job is not None for sub in inline)
            route = (tuple(inline), tuple(queued), tuple(inline) if direct else ())
            self._routes[name] = route
        return route

    # -- emission ------------------------------------------------------------------------------------
    def wants(self, name: str) -> bool:
        """Whether any listener would receive an event called ``name`` (so it is worth building)."""
        return self.route(name) is not None

    def route(self, name: str) -> Route | None:
        """The listeners of events called ``name``, or ``None`` when there are none (nothing to build).

        Hot paths look the route up once, build the event only when it is not ``None`` and pass it to
        :meth:`deliver`; :meth:`emit` does both lookups' work for one event.
        """
        route = self._routes.get(name) or self._route(name)
        return route if route[0] or route[1] else None

    def emit(self, event: LifecycleEvent) -> None:
        """Deliver ``event`` to inline listeners now and queue it for the others. Never awaits."""
        self.deliver(self._route(event.name), event)

    def deliver(self, route: Route, event: LifecycleEvent) -> None:
        """:meth:`emit` along a route from :meth:`route` (looked up for ``event.name`` just before)."""
        inline, queued, _ = route
        for sub in inline:
            if sub.once:
                self._drop_once(sub)
            try:
                sub.listener(event)
            except Exception as exc:  # noqa: BLE001 - isolation boundary: a listener never breaks a job
                self._listener_failed(sub, event.name, exc)
        if queued:
            self._enqueue(event)

    def deliver_job(
        self, route: Route, name: str, job: Job, attempt_number: int, fields: dict[str, Any]
    ) -> None:
        """Deliver a job event through the fast path of a route whose third part is not empty.

        Each listener's ``from_job`` is called instead of building the event (see :meth:`on`).
        """
        for sub in route[2]:
            if sub.once:
                self._drop_once(sub)
            try:
                sub.from_job(name, job, attempt_number, fields)  # type: ignore[misc] # the route holds only these
            except Exception as exc:  # noqa: BLE001 - isolation boundary: a listener never breaks a job
                self._listener_failed(sub, name, exc)

    def _enqueue(self, event: LifecycleEvent) -> None:
        with self._lock:
            full = len(self._pending) >= self.queue_size
            if not full:
                self._pending.append(event)
        if full:
            self.record_drop("event", "queue_full")
            now = time.monotonic()
            if now - self._last_full_warning >= 60.0:  # noqa: PLR2004 - at most one warning a minute
                self._last_full_warning = now
                _log.warning(
                    "telemetry.queue_full: event queue is full (%d); events dropped for queued listeners",
                    self.queue_size,
                )
            return
        self._wake()

    def record_drop(self, signal: str, reason: str, count: int = 1) -> None:
        """Count telemetry that was dropped and tell the drop observers (the metrics adapter)."""
        self.dropped[signal, reason] += count
        for observer in list(self._drop_observers):
            with contextlib.suppress(Exception):
                observer(signal, reason, count)

    def add_drop_observer(self, observer: Callable[[str, str, int], None]) -> None:
        """Call ``observer(signal, reason, count)`` whenever telemetry is dropped."""
        self._drop_observers.append(observer)

    def remove_drop_observer(self, observer: Callable[[str, str, int], None]) -> None:
        """Undo :meth:`add_drop_observer`."""
        with contextlib.suppress(ValueError):
            self._drop_observers.remove(observer)

    def _listener_failed(self, sub: _Subscription, name: str, exc: Exception) -> None:
        key = (id(sub.listener), name)
        if key not in self._failed_once:
            self._failed_once.add(key)
            _log.error(
                "telemetry.adapter_error: listener %r failed on %s (logged once per listener and event)",
                sub.listener,
                name,
                exc_info=exc,
            )
        self.record_drop(sub.signal, "adapter_error")

    def _drop_once(self, sub: _Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)
            self._routes.clear()

    # -- queued delivery -----------------------------------------------------------------------------
    def _wake(self) -> None:
        me = threading.get_ident()
        for waiter in list(self._waiters):
            if waiter.thread == me:
                waiter.event.set()
            else:
                with contextlib.suppress(Exception):
                    anyio.from_thread.run_sync(waiter.event.set, token=waiter.token)

    def pending(self) -> int:
        """Events waiting for queued listeners (not counting one being delivered)."""
        return len(self._pending)

    async def run_dispatcher(self) -> None:
        """Deliver queued events until cancelled. Workers run one; so can a producer-only process.

        Several dispatchers may run at once; only the first delivers, so each listener sees
        events in emission order. A dispatcher cancelled mid-delivery loses nothing: the next
        dispatcher (or :meth:`drain`) carries on with the next listener of the same event.
        """
        waiter = _Waiter(anyio.Event(), threading.get_ident(), anyio.lowlevel.current_token())
        self._waiters.append(waiter)
        try:
            while True:
                waiter.event = anyio.Event()
                if self._waiters and self._waiters[0] is waiter and self._undelivered():
                    await self._deliver_pending()
                    continue
                await waiter.event.wait()
        finally:
            self._waiters.remove(waiter)
            for other in self._waiters:
                if other.thread == waiter.thread:
                    other.event.set()

    async def drain(self, timeout: float = 1.0) -> None:
        """Deliver what is pending, for up to ``timeout`` seconds (used in the shutdown tail).

        While another dispatcher runs (another worker of this process), it is left to deliver:
        one deliverer at a time keeps each listener's events in order.
        """
        with anyio.move_on_after(timeout):
            while self._undelivered():
                if self._waiters:
                    await anyio.sleep(_DRAIN_POLL_INTERVAL)
                else:
                    await self._deliver_pending()

    def _undelivered(self) -> bool:
        return bool(self._pending) or self._current is not None

    def _next_delivery(self) -> tuple[LifecycleEvent, _Subscription] | None:
        """The next (event, queued listener) pair, or None; the cursor moves on before the call."""
        with self._lock:
            while True:
                if self._current is None:
                    if not self._pending:
                        return None
                    event = self._pending.popleft()
                    self._current = (event, self._route(event.name)[1])
                    self._next_listener = 0
                event, subs = self._current
                index = self._next_listener
                if index < len(subs):
                    self._next_listener = index + 1
                    return event, subs[index]
                self._current = None

    async def _deliver_pending(self) -> None:
        while True:
            # A stop takes effect here, between two deliveries, before the cursor moves on.
            await anyio.lowlevel.checkpoint_if_cancelled()
            delivery = self._next_delivery()
            if delivery is None:
                return
            event, sub = delivery
            if sub.once:
                self._drop_once(sub)
            try:
                if sub.is_async:
                    await sub.listener(event)
                else:
                    # Shielded: once the cursor has moved on, this listener must get the event (a
                    # thread call cannot be stopped once started anyway).
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(sub.listener, event)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # noqa: BLE001 - isolation boundary: a listener never breaks a job
                self._listener_failed(sub, event.name, exc)

    # -- services ----------------------------------------------------------------------------------
    def add_service(self, service: Service) -> None:
        """Run ``await service(backend, queues)`` beside every worker started from now on.

        Telemetry uses it for the elected queue sampler; it is cancelled when the worker stops.
        """
        self._services.append(service)

    def remove_service(self, service: Service) -> None:
        """Undo :meth:`add_service` (running copies stop with their worker)."""
        with contextlib.suppress(ValueError):
            self._services.remove(service)

    def services(self) -> list[Service]:
        """The registered services."""
        return list(self._services)

    # -- write observers -----------------------------------------------------------------------------
    def add_observer(self, observer: OperationObserver) -> None:
        """Observe backend writes (see :class:`Operation`)."""
        self._observers.append(observer)
        self._timed_only = all(hasattr(each, "write_finished") for each in self._observers)

    def remove_observer(self, observer: OperationObserver) -> None:
        """Undo :meth:`add_observer`."""
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)
        self._timed_only = all(hasattr(each, "write_finished") for each in self._observers)

    @property
    def observed(self) -> bool:
        """Whether any observer is installed (lets hot paths skip building an :class:`Operation`)."""
        return bool(self._observers)

    @property
    def traced(self) -> bool:
        """Whether a write observer makes spans (the trace adapter): reads only spans need skip otherwise."""
        return any(getattr(observer, "signal", None) == "span" for observer in self._observers)

    def operation(self, operation: Operation) -> ObservedWrite:
        """Run a backend write under the observers: started in order, finished in reverse.

        Use as ``with bus.operation(op):``; ``operation.error`` is set when the write raises.
        """
        return ObservedWrite(self._observer_failed, operation, list(self._observers))

    def write(
        self,
        name: str,
        queue: str,
        jobs: list[Job],
        server: Mapping[str, Any],
        operation: Operation | None = None,
    ) -> ObservedWrite | TimedWrite:
        """:meth:`operation` for a write the caller describes; the :class:`Operation` is built only if needed.

        When every observer has a ``write_finished(name, queue, jobs, duration_s, error, outcome)`` (the
        metrics adapter: it reads nothing else), the write is only timed and no ``Operation`` is made.
        Either way the context manager's value takes the backend's answer in ``outcome``.
        """
        observers = self._observers
        if operation is None:
            if self._timed_only:
                return TimedWrite(self._observer_failed, name, queue, jobs, list(observers))
            operation = Operation(name, queue, jobs, **server)
        return ObservedWrite(self._observer_failed, operation, list(observers))

    def _observer_failed(self, observer: OperationObserver, operation: Operation, exc: Exception) -> None:
        key = (id(observer), operation.name)
        if key not in self._failed_once:
            self._failed_once.add(key)
            _log.error(
                "telemetry.adapter_error: observer %r failed on %s", observer, operation.name, exc_info=exc
            )
        self.record_drop(str(getattr(observer, "signal", "span")), "adapter_error")


_LIVE_FIELDS = frozenset({"_lock", "_waiters"})
"""The fields of an :class:`EventBus` a snapshot leaves alone: its lock, and the dispatchers running now."""


@dataclass(frozen=True, slots=True)
class BusSnapshot:
    """The state of an :class:`EventBus` at one moment (:meth:`EventBus.snapshot`), to restore later."""

    fields: Mapping[str, Any]
    """Each saved field of the bus by attribute name (a copy: the bus's later changes do not reach it)."""


@dataclass(slots=True)
class _Waiter:
    event: anyio.Event
    thread: int
    token: Any


class EventEmitter:
    """AsyncMQ's ``event_emitter``: ``on``, ``off``, ``once`` and a coroutine ``emit(name, data)``."""

    def __init__(self, event_bus: EventBus) -> None:
        self.bus = event_bus

    def on(self, event: str, listener: Listener, *, inline: bool = False) -> Listener:
        """Subscribe to an event, a family wildcard (``job:*``) or ``*``; sync or async listeners."""
        return self.bus.on(event, listener, inline=inline)

    def once(self, event: str, listener: Listener, *, inline: bool = False) -> Listener:
        """Subscribe for the next matching event only."""
        return self.bus.once(event, listener, inline=inline)

    def off(self, event: str, listener: Listener) -> None:
        """Unsubscribe."""
        self.bus.off(event, listener)

    async def emit(self, event: str, data: Mapping[str, Any] | LifecycleEvent | None = None) -> None:
        """Emit an event from a name and an AsyncMQ-style dict; returns once inline listeners ran."""
        if isinstance(data, LifecycleEvent):
            payload = data
        else:
            values = dict(data or {})
            if "id" in values and "job_id" not in values:
                values["job_id"] = values.pop("id")
            known = {k: v for k, v in values.items() if k in _EVENT_FIELDS and k not in {"name", "ts"}}
            payload = LifecycleEvent(name=event, ts=time.time(), **known)
        self.bus.emit(payload)
        await anyio.lowlevel.checkpoint()


bus = EventBus()
event_emitter = EventEmitter(bus)

"""The metrics adapter: lifecycle events and backend writes → the rows of the definition table.

It is an inline bus listener (CPU work only), a write observer (#1, #4, #21, #24) and a drop
observer (#20). Label children are bound once per (queue, task, group) and cached, and at
``worker:started`` every (queue, registered task) served is pre-bound (§3.5), so the job path never
calls ``.labels()`` and ``rate()`` is defined before the first job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from ..errors import BackendUnavailable
from ..jobs import error_type_name, priority_class
from ..settings import get_settings
from ..tasks import TASK_REGISTRY, list_tasks
from .metrics import (
    DROP_REASONS,
    OTHER,
    OUTCOMES,
    PRIORITY_CLASSES,
    SENT_OPERATIONS,
    SIGNALS,
    STALE_OPERATIONS,
    WRITE_OPERATIONS,
    CounterSeries,
    HistogramSeries,
    MetricDef,
    MetricSinks,
)

if TYPE_CHECKING:
    from ..events import EventBus, LifecycleEvent, Operation
    from ._sampler import QueueGauges

__all__ = ["MetricsAdapter"]

_DEFAULT_GROUP = "default"
_STALE_STATUSES = frozenset({"STALE", "GONE"})


class _JobSeries:
    """The pre-bound children of one (queue, task, group)."""

    __slots__ = (
        "attempts",
        "consumed",
        "e2e",
        "errors",
        "group",
        "outcomes",
        "process",
        "queue",
        "task",
        "wait",
    )

    def __init__(self, sinks: MetricSinks, queue: str, task: str, group: str) -> None:
        self.queue = queue
        self.task = task
        self.group = group
        self.consumed = sinks.counter(2, queue, task, group)
        self.process = sinks.histogram(3, queue, task, group, "")
        self.wait = {pc: sinks.histogram(5, queue, task, group, pc) for pc in PRIORITY_CLASSES}
        self.outcomes = {
            outcome: sinks.counter(7, queue, task, group, outcome, "", "") for outcome in OUTCOMES
        }
        self.e2e: dict[str, HistogramSeries] = {}
        self.attempts: dict[str, HistogramSeries] = {}
        # flows: reported by a reaper, not a run, so pre-bound here like the outcomes above
        self.errors: dict[tuple[int, str, str, str], Any] = {
            (7, "failed", "dependency_failed", "dependency_failed"): sinks.counter(
                7, queue, task, group, "failed", "dependency_failed", "dependency_failed"
            )
        }


class _WorkerSeries:
    """The children of one (queue, group) served by a worker in this process."""

    __slots__ = ("active", "concurrency", "group", "heartbeat", "queue", "throttle_wait", "throttled", "up")

    def __init__(self, sinks: MetricSinks, queue: str, group: str) -> None:
        self.queue = queue
        self.group = group
        self.throttled = sinks.counter(11, queue, group)
        self.throttle_wait = sinks.histogram(12, queue, group)
        self.up = sinks.gauge(13, queue, group)
        self.heartbeat = sinks.gauge(14, queue, group)
        self.active = sinks.gauge(15, queue, group)
        self.concurrency = sinks.gauge(16, queue, group)


def _trace_id() -> str | None:
    """The current span's trace id when it is valid and sampled (the exemplar of #3, #5, #6)."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and ctx.trace_flags.sampled:
        return format(ctx.trace_id, "032x")
    return None


class MetricsAdapter:
    """Records the definition table's rows from bus events and backend writes.

    Args:
        sinks: the two sinks.
        bus: the event bus (cardinality drops are recorded on it, so they reach #20 like the others).
        error_type_limit: distinct ``error_type`` values kept per (metric, task); later ones are ``_OTHER``.
        group: the consumer group used when an event carries none.
        warn: how a one-off telemetry warning is logged: ``warn(event_name, fields)``.

    """

    signal = "metric"

    def __init__(
        self,
        sinks: MetricSinks,
        *,
        bus: EventBus,
        error_type_limit: int = 20,
        group: str = _DEFAULT_GROUP,
        warn: Callable[[str, Mapping[str, object]], None] | None = None,
    ) -> None:
        self.sinks = sinks
        self._bus = bus
        self._error_type_limit = error_type_limit
        self._group = group
        self._warn = warn
        self._jobs: dict[tuple[str, str, str], _JobSeries] = {}
        self._workers: dict[tuple[str, str], _WorkerSeries] = {}
        self._error_types: dict[tuple[int, str], set[str]] = {}
        self._inflight: dict[tuple[str | None, str | None, int | None], tuple[_WorkerSeries, float]] = {}
        self._served: set[tuple[str, str]] = set()
        self._lost_queues: set[str] = set()
        self._overflow_warned: set[str] = set()
        self._backend_up: bool | None = None
        self._last_success = time.monotonic()  # the last successful backend round trip (watchdog)
        self._lock = threading.Lock()
        self.handlers: dict[str, Callable[[LifecycleEvent], None]] = {
            "job:started": self._started,
            "job:completed": self._completed,
            "job:retried": self._retried,
            "job:failed": self._failed,
            "job:expired": self._expired,
            "job:cancelled": self._cancelled,
            "job:interrupted": self._interrupted,
            "job:throttled": self._throttled,
            "job:stalled": self._stalled,
            "worker:started": self._worker_started,
            "worker:heartbeat": self._worker_heartbeat,
            "worker:stopped": self._worker_stopped,
            "backend:data_loss": self._data_loss,
        }
        for signal in SIGNALS:
            for reason in DROP_REASONS:
                sinks.counter(20, signal, reason)
        sinks.set_observer(10, self._running_max_age)

    def attach_queue_gauges(self, gauges: QueueGauges | None) -> None:
        """Export #17–#19, #25 and #27 from ``gauges`` (the sampler's cache); ``None`` stops them."""
        self.sinks.set_observer(17, None if gauges is None else gauges.depth)
        self.sinks.set_observer(18, None if gauges is None else gauges.oldest_age)
        self.sinks.set_observer(19, None if gauges is None else gauges.paused)
        self.sinks.set_observer(25, None if gauges is None else gauges.consumers)
        self.sinks.set_observer(27, None if gauges is None else gauges.blocked_oldest_age)

    # -- label helpers ----------------------------------------------------------------------------------
    def _job(self, event: LifecycleEvent) -> _JobSeries:
        task = event.task if event.task in TASK_REGISTRY else OTHER
        key = (event.queue or OTHER, task, event.group or self._group)
        series = self._jobs.get(key)
        if series is None:
            series = _JobSeries(self.sinks, *key)
            self._jobs[key] = series
        return series

    def _worker(self, event: LifecycleEvent) -> _WorkerSeries:
        key = (event.queue or OTHER, event.group or self._group)
        series = self._workers.get(key)
        if series is None:
            series = _WorkerSeries(self.sinks, *key)
            self._workers[key] = series
        return series

    def _error_type(self, number: int, task: str, error_type: str) -> str:
        """Top-N per (metric, task): the first ``error_type_limit`` values are kept, later ones ``_OTHER``."""
        if not error_type:
            return ""
        seen = self._error_types.setdefault((number, task), set())
        if error_type in seen:
            return error_type
        if len(seen) >= self._error_type_limit:
            return OTHER
        seen.add(error_type)
        return error_type

    def _outcome(self, js: _JobSeries, outcome: str, error_type: str = "", reason: str = "") -> CounterSeries:
        if not error_type and not reason:
            return js.outcomes[outcome]
        error_type = self._error_type(7, js.task, error_type)
        key = (7, outcome, error_type, reason)
        series = js.errors.get(key)
        if series is None:
            series = self.sinks.counter(7, js.queue, js.task, js.group, outcome, error_type, reason)
            js.errors[key] = series
        return series

    def _process(self, js: _JobSeries, error_type: str) -> HistogramSeries:
        if not error_type:
            return js.process
        error_type = self._error_type(3, js.task, error_type)
        key = (3, "", error_type, "")
        series = js.errors.get(key)
        if series is None:
            series = self.sinks.histogram(3, js.queue, js.task, js.group, error_type)
            js.errors[key] = series
        return series

    # -- job events ------------------------------------------------------------------------------------
    def _started(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        js.consumed.inc()
        if event.wait_s is not None:
            cls = priority_class(event.priority if event.priority is not None else 5)
            js.wait[cls].observe(max(event.wait_s, 0.0), _trace_id())
        ws = self._worker(event)
        ws.active.add(1)
        started = event.started_monotonic if event.started_monotonic is not None else time.perf_counter()
        self._inflight[event.queue, event.job_id, event.attempt] = (ws, started)

    def _end_attempt(self, event: LifecycleEvent) -> None:
        entry = self._inflight.pop((event.queue, event.job_id, event.attempt), None)
        if entry is not None:
            entry[0].active.add(-1)

    def _ran(self, js: _JobSeries, event: LifecycleEvent, error_type: str, trace_id: str | None) -> None:
        if event.duration_s is not None:
            self._process(js, error_type).observe(max(event.duration_s, 0.0), trace_id)

    def _terminal(
        self, js: _JobSeries, event: LifecycleEvent, outcome: str, runs: int, trace_id: str | None
    ) -> None:
        e2e = js.e2e.get(outcome)
        if e2e is None:
            e2e = js.e2e[outcome] = self.sinks.histogram(6, js.queue, js.task, outcome)
        attempts = js.attempts.get(outcome)
        if attempts is None:
            attempts = js.attempts[outcome] = self.sinks.histogram(8, js.queue, js.task, outcome)
        if event.enqueued_at:
            finished = event.finished_at if event.finished_at is not None else event.ts
            e2e.observe(max(finished - event.enqueued_at, 0.0), trace_id)
        attempts.observe(float(max(runs, 0)))

    def _completed(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        trace_id = _trace_id()
        self._ran(js, event, "", trace_id)
        js.outcomes["completed"].inc()
        self._terminal(js, event, "completed", event.attempt or 0, trace_id)
        self._end_attempt(event)

    def _retried(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        error_type = event.error_type or (error_type_name(event.exception) if event.exception else "")
        self._ran(js, event, error_type, _trace_id())
        self._outcome(js, "retried", error_type).inc()
        self._end_attempt(event)

    def _failed(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        reason = event.reason or "failed"
        error_type = event.error_type or (error_type_name(event.exception) if event.exception else reason)
        trace_id = _trace_id()
        if reason in {"failed", "interrupted"}:  # after a run
            self._ran(js, event, error_type, trace_id)
            runs = event.attempt or 0
        elif reason in {"worker_lost", "dependency_failed"}:  # by the reaper: no pickup of this delivery
            runs = event.attempt or 0
        else:  # unknown_task, malformed_payload: at pickup, nothing ran
            js.consumed.inc()
            runs = _runs_before_pickup(event)
        self._outcome(js, "failed", error_type, reason).inc()
        self._terminal(js, event, "failed", runs, trace_id)
        self._end_attempt(event)

    def _expired(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        js.consumed.inc()
        self._outcome(js, "expired", "", "expired").inc()
        self._terminal(js, event, "expired", _runs_before_pickup(event), _trace_id())

    def _cancelled(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        trace_id = _trace_id()
        if event.reason == "running":
            self._ran(js, event, "", trace_id)
            runs = event.attempt or 0
        else:
            js.consumed.inc()
            runs = _runs_before_pickup(event)
        js.outcomes["cancelled"].inc()
        self._terminal(js, event, "cancelled", runs, trace_id)
        self._end_attempt(event)

    def _interrupted(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        self._ran(js, event, "", _trace_id())
        js.outcomes["interrupted"].inc()
        self._end_attempt(event)

    def _throttled(self, event: LifecycleEvent) -> None:
        ws = self._worker(event)
        ws.throttled.inc()
        ws.throttle_wait.observe(max(event.ratelimit_wait_s or 0.0, 0.0))

    def _stalled(self, event: LifecycleEvent) -> None:
        task = event.task if event.task in TASK_REGISTRY else OTHER
        self.sinks.counter(9, event.queue or OTHER, task).inc()

    # -- worker and backend events ----------------------------------------------------------------------
    def _worker_started(self, event: LifecycleEvent) -> None:
        queue = event.queue or OTHER
        group = event.group or self._group
        for task in list_tasks():
            self._jobs.setdefault((queue, task, group), _JobSeries(self.sinks, queue, task, group))
            self.sinks.counter(9, queue, task)
        ws = self._worker(event)
        ws.up.set(1)
        ws.heartbeat.set(event.ts)  # registering the worker was its first heartbeat write
        if event.concurrency is not None:
            ws.concurrency.set(event.concurrency)
        self._served.add((queue, group))
        self.sinks.counter(22, queue)
        if queue not in self._lost_queues:
            self.sinks.gauge(23, queue).set(0)
        self._set_backend_up(up=True)

    def _worker_heartbeat(self, event: LifecycleEvent) -> None:
        ws = self._worker(event)
        ws.heartbeat.set(event.ts)
        if event.concurrency is not None:
            ws.concurrency.set(event.concurrency)
        self._set_backend_up(up=True)

    def _worker_stopped(self, event: LifecycleEvent) -> None:
        ws = self._worker(event)
        ws.up.set(0)
        self._served.discard((ws.queue, ws.group))

    def _data_loss(self, event: LifecycleEvent) -> None:
        queue = event.queue or OTHER
        self.sinks.counter(22, queue).inc()
        self.sinks.gauge(23, queue).set(1)
        self._lost_queues.add(queue)

    def _running_max_age(self) -> Iterable[tuple[tuple[str, ...], float]]:
        now = time.perf_counter()
        ages: dict[tuple[str, str], float] = dict.fromkeys(list(self._served), 0.0)
        for ws, started in list(self._inflight.values()):
            key = (ws.queue, ws.group)
            ages[key] = max(ages.get(key, 0.0), now - started)
        return ages.items()

    def health(self) -> tuple[bool, str]:
        """The liveness watchdog behind ``/healthz`` (reliability contract §6).

        Unhealthy once a queue's data was lost (until restart), while the backend is down, or when a
        worker runs here and its last successful round trip is older than ``2 × block_timeout + 5 s``
        (or two heartbeats), so a stuck client never looks idle and healthy.
        """
        if self._lost_queues:
            return False, f"data loss detected on {', '.join(sorted(self._lost_queues))}"
        if self._backend_up is False:
            return False, "backend unreachable"
        if self._served:
            config = get_settings()
            limit = max(2 * config.block_timeout + 5.0, 2 * config.heartbeat_interval)
            age = time.monotonic() - self._last_success
            if age > limit:
                return False, f"no successful backend round trip for {age:.1f}s (limit {limit:.1f}s)"
        return True, "ok"

    def _set_backend_up(self, *, up: bool) -> None:
        if up:
            self._last_success = time.monotonic()
        if self._backend_up is not up:
            self._backend_up = up
            self.sinks.gauge(21).set(1 if up else 0)

    def backend_result(self, ok: bool) -> None:
        """Told by the queue sampler whether its round trip succeeded."""
        self._set_backend_up(up=ok)

    # -- write observer -----------------------------------------------------------------------------------
    def operation_started(self, operation: Operation) -> None:
        """Nothing to do before a write (durations come from the bus)."""

    def operation_finished(self, operation: Operation) -> None:
        """Record #4 (write duration), #1 (jobs sent), #24 (stale writes) and backend availability."""
        name = operation.name
        queue = operation.queue or OTHER
        error = operation.error
        error_type = "" if error is None else error_type_name(error)
        if name in WRITE_OPERATIONS and operation.duration_s is not None:
            label = self._error_type(4, "", error_type)
            self.sinks.histogram(4, queue, name, label).observe(max(operation.duration_s, 0.0))
        if name in SENT_OPERATIONS:
            for job in operation.jobs:
                task = job.task if job.task in TASK_REGISTRY else OTHER
                sent = "schedule" if name == "schedule" or job.delay_until is not None else "send"
                label = self._error_type(1, task, error_type)
                self.sinks.counter(1, queue, task, sent, label).inc()
        if name in STALE_OPERATIONS and operation.outcome in _STALE_STATUSES:
            self.sinks.counter(24, queue, name).inc()
        if error is None:
            self._set_backend_up(up=True)
        elif isinstance(error, BackendUnavailable):
            self._set_backend_up(up=False)

    # -- drops -----------------------------------------------------------------------------------------
    def on_drop(self, signal: str, reason: str, count: int) -> None:
        """Drop observer of the bus: counts #20."""
        if signal in SIGNALS and reason in DROP_REASONS:
            self.sinks.counter(20, signal, reason).inc(count)

    def on_overflow(self, row: MetricDef) -> None:
        """A record landed in ``row``'s overflow series: count it, warn once per metric."""
        self._bus.record_drop("metric", "cardinality")
        if row.name not in self._overflow_warned:
            self._overflow_warned.add(row.name)
            if self._warn is not None:
                self._warn(
                    "telemetry.cardinality_overflow",
                    {"metric": row.prometheus_name, "limit": self.sinks._bindings[row.number].limit},  # noqa: SLF001
                )


def _runs_before_pickup(event: LifecycleEvent) -> int:
    """Handler runs of a job settled at pickup: the claim counted an attempt that never ran."""
    if event.attempt is None:
        return 0
    return max(event.attempt - 1, 0) if event.worker_id else event.attempt

"""The metrics adapter: lifecycle events and backend writes → the rows of the definition table.

It is an inline bus listener (CPU work only), a write observer (messages sent, operation duration,
backend up, stale writes rejected) and a drop observer (telemetry dropped). Label children are bound
once per (queue, task, group) and cached. At ``worker:started`` the pairs that can meet are pre-bound:
the served queue × the tasks declared for it (labels name only what the code declares), and any other
pair the moment its first job is seen. So the job path never calls ``.labels()``, ``rate()`` is
defined before the first job, and no phantom series crowd out real ones.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from ..errors import BackendUnavailable
from ..events import make_job_event
from ..jobs import error_type_name, priority_class
from ..settings import get_settings
from ..tasks import TASK_REGISTRY, list_tasks
from ._schedule_metrics import declared_schedule_keys, schedule_labels
from .metrics import (
    ATTEMPT_OUTCOMES,
    DROP_REASONS,
    OTHER,
    OUTCOME_REASONS,
    PRIORITY_CLASSES,
    SENT_OPERATIONS,
    SIGNALS,
    STALE_OPERATIONS,
    THROTTLE_SCOPES,
    WRITE_OPERATIONS,
    CounterSeries,
    HistogramSeries,
    MetricDef,
    MetricSinks,
)

if TYPE_CHECKING:
    from ..events import EventBus, JobListener, LifecycleEvent, Operation
    from ..jobs import Job
    from ._sampler import QueueGauges

__all__ = ["MetricsAdapter"]

_DEFAULT_GROUP = "default"
_DEFAULT_PRIORITY = 5  # priority_class "normal": most jobs, so it skips the call
_STALE_STATUSES = frozenset({"STALE", "GONE"})
_WRITE_OPERATIONS = frozenset(WRITE_OPERATIONS)
_SENT_OPERATIONS = frozenset(SENT_OPERATIONS)
_STALE_OPERATIONS = frozenset(STALE_OPERATIONS)
# The metrics whose error_type label keeps the recently seen values only (by OTel name).
_SENT_MESSAGES = "messaging.client.sent.messages"
_OPERATION_DURATION = "messaging.client.operation.duration"
_JOB_ERRORS = "asyncmq.job.errors"
_FAILED_REASONS = frozenset(reason for outcome, reason in OUTCOME_REASONS if outcome == "failed")


class _JobSeries:
    """The pre-bound children of one (queue, task, group)."""

    __slots__ = (
        "completed",
        "consumed",
        "errors",
        "group",
        "outcomes",
        "process",
        "queue",
        "task",
        "terminal",
        "wait",
        "worker",
    )

    def __init__(self, sinks: MetricSinks, queue: str, task: str, group: str) -> None:
        self.queue = queue
        self.task = task
        self.group = group
        self.consumed = sinks.counter("messaging.client.consumed.messages", queue, task, group, "process")
        self.process = {
            outcome: sinks.histogram("messaging.process.duration", queue, task, group, "process", outcome)
            for outcome in ATTEMPT_OUTCOMES
        }
        self.wait = {
            pc: sinks.histogram("asyncmq.job.wait.duration", queue, task, group, pc)
            for pc in PRIORITY_CLASSES
        }
        # Every pair asyncmq.job.outcomes can record, so the first failure after a start counts from 0.
        self.outcomes = {
            (outcome, reason): sinks.counter("asyncmq.job.outcomes", queue, task, group, outcome, reason)
            for outcome, reason in OUTCOME_REASONS
        }
        self.completed = self.outcomes["completed", ""]
        self.terminal: dict[str, tuple[HistogramSeries, HistogramSeries]] = {}  # e2e, attempts
        self.worker: _WorkerSeries | None = None  # the (queue, group) series its attempts run under
        self.errors: dict[tuple[str, str], CounterSeries] = {}


class _RecentErrorTypes:
    """The ``limit`` most recently seen ``error_type`` values per (metric, task), least recent evicted.

    A new incident on a long-lived worker must show under its own name (a recent error type keeps its
    label); ``evict`` is told which value left so its series can be removed from the scrape sink.
    """

    __slots__ = ("_evict", "_limit", "_seen")

    def __init__(self, limit: int, evict: Callable[[str, str, str], None]) -> None:
        self._limit = limit
        self._evict = evict
        self._seen: dict[tuple[str, str], OrderedDict[str, None]] = {}

    def use(self, metric: str, task: str, error_type: str) -> str:
        """The label value of ``error_type`` on ``metric`` (an OTel name) of ``task``, now the most recent."""
        if not error_type:
            return ""
        if self._limit <= 0:
            return OTHER
        seen = self._seen.get((metric, task))
        if seen is None:
            seen = self._seen[metric, task] = OrderedDict()
        elif error_type in seen:
            seen.move_to_end(error_type)
            return error_type
        if len(seen) >= self._limit:
            evicted, _ = seen.popitem(last=False)
            self._evict(metric, task, evicted)
        seen[error_type] = None
        return error_type


class _WorkerSeries:
    """The children of one (queue, group) served by a worker in this process."""

    __slots__ = ("active", "concurrency", "group", "heartbeat", "queue", "throttle_wait", "throttled", "up")

    def __init__(self, sinks: MetricSinks, queue: str, group: str) -> None:
        self.queue = queue
        self.group = group
        # both scopes from the start, so a throttle rate reads 0 rather than no data
        self.throttled = {
            scope: sinks.counter("asyncmq.ratelimit.throttled", queue, group, scope)
            for scope in THROTTLE_SCOPES
        }
        self.throttle_wait = {
            scope: sinks.histogram("asyncmq.ratelimit.wait", queue, group, scope) for scope in THROTTLE_SCOPES
        }
        self.up = sinks.gauge("asyncmq.worker.up", queue, group)
        self.heartbeat = sinks.gauge("asyncmq.worker.heartbeat.timestamp", queue, group)
        self.active = sinks.gauge("asyncmq.worker.jobs.active", queue, group)
        self.concurrency = sinks.gauge("asyncmq.worker.concurrency", queue, group)


def _no_trace_id() -> None:
    """No exemplar: traces are off."""


def _trace_id() -> str | None:
    """The current span's trace id when it is valid and sampled (the exemplar of the durations)."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and ctx.trace_flags.sampled:
        return format(ctx.trace_id, "032x")
    return None


class MetricsAdapter:
    """Records the definition table's rows from bus events and backend writes.

    Args:
        sinks: the two sinks.
        bus: the event bus (cardinality drops are recorded on it, so they reach
            asyncmq.telemetry.dropped like the others).
        error_type_limit: ``error_type`` values kept per (metric, task), the most recently seen ones;
            the series of an evicted value are removed from the scrape sink.
        group: the consumer group used when an event carries none.
        warn: how a one-off telemetry warning is logged: ``warn(event_name, fields)``.
        exemplars: attach the sampled attempt's trace id to the process, wait and e2e durations (off
            when traces are off).

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
        exemplars: bool = True,
    ) -> None:
        self.sinks = sinks
        # Without the trace adapter no attempt span is ever current, so looking one up is wasted work.
        self._trace_id = _trace_id if exemplars else _no_trace_id
        self._bus = bus
        self._group = group
        self._warn = warn
        self._jobs: dict[tuple[str, str, str], _JobSeries] = {}
        # The same series by the event's own (queue, task, group), registered tasks only: one lookup
        # per event on the hot path instead of a registry check and a key rebuilt from it.
        self._by_event: dict[tuple[str | None, str | None, str | None], _JobSeries] = {}
        self._stalled: dict[tuple[str, str], CounterSeries] = {}
        self._workers: dict[tuple[str, str], _WorkerSeries] = {}
        self._worker_by_event: dict[tuple[str | None, str | None], _WorkerSeries] = {}
        self._error_types = _RecentErrorTypes(error_type_limit, self._evict_error_type)
        # Per running attempt: its worker series, start (monotonic), exemplar trace id and job series.
        self._inflight: dict[
            tuple[str | None, str | None, int | None], tuple[_WorkerSeries, float, str | None, _JobSeries]
        ] = {}
        # operation duration of the writes that succeeded, by (queue, operation): one lookup per write.
        self._writes: dict[tuple[str | None, str], HistogramSeries] = {}
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
            "job:stalled": self._stalled_job,
            "worker:started": self._worker_started,
            "worker:heartbeat": self._worker_heartbeat,
            "worker:stopped": self._worker_stopped,
            "backend:data_loss": self._data_loss,
            "schedule:fired": self._schedule_fired,
        }
        # The same for the attempt's two events, from the job and the worker's fields (EventBus.on's
        # from_job): with metrics alone no event is built (the telemetry contract's overhead rule).
        self.job_handlers: dict[str, JobListener] = {
            "job:started": self._started_job,
            "job:completed": self._completed_job,
        }
        for signal in SIGNALS:
            for reason in DROP_REASONS:
                sinks.counter("asyncmq.telemetry.dropped", signal, reason)
        sinks.set_observer("asyncmq.job.running.max_age", self._running_max_age)

    def attach_queue_gauges(self, gauges: QueueGauges | None) -> None:
        """Export the sampler's queue and schedule gauges from ``gauges`` (its cache); ``None`` stops them.

        Queue depth, oldest age, paused, consumers and blocked oldest age; schedule next run and interval.
        """
        self.sinks.set_observer("asyncmq.queue.depth", None if gauges is None else gauges.depth)
        self.sinks.set_observer("asyncmq.queue.oldest_age", None if gauges is None else gauges.oldest_age)
        self.sinks.set_observer("asyncmq.queue.paused", None if gauges is None else gauges.paused)
        self.sinks.set_observer("asyncmq.queue.consumers", None if gauges is None else gauges.consumers)
        schedules = None if gauges is None else gauges.schedules
        self.sinks.set_observer(
            "asyncmq.schedule.next_run.timestamp", None if schedules is None else schedules.next_run
        )
        self.sinks.set_observer(
            "asyncmq.schedule.interval", None if schedules is None else schedules.intervals
        )
        self.sinks.set_observer(
            "asyncmq.queue.blocked.oldest_age", None if gauges is None else gauges.blocked_oldest_age
        )

    # -- label helpers ----------------------------------------------------------------------------------
    def _pair(self, queue: str, task: str, group: str) -> _JobSeries:
        """The series of a (queue, task) pair that can meet, bound (at 0) the first time it is seen."""
        key = (queue, task, group)
        series = self._jobs.get(key)
        if series is None:
            series = self._jobs[key] = _JobSeries(self.sinks, queue, task, group)
            if (queue, task) not in self._stalled:
                self._stalled[queue, task] = self.sinks.counter("asyncmq.job.stalled", queue, task)
        return series

    def _job(self, event: LifecycleEvent) -> _JobSeries:
        return self._series(event.queue, event.task, event.group)

    def _series(self, queue: str | None, task: str | None, group: str | None) -> _JobSeries:
        raw = (queue, task, group)
        series = self._by_event.get(raw)
        if series is not None:
            return series
        registered = task in TASK_REGISTRY
        label = task if registered and task is not None else OTHER
        series = self._pair(queue or OTHER, label, group or self._group)
        if registered:  # unknown names stay off this cache, which would otherwise grow with them
            self._by_event[raw] = series
        return series

    def _worker(self, event: LifecycleEvent) -> _WorkerSeries:
        return self._worker_series(event.queue, event.group)

    def _worker_series(self, queue: str | None, group: str | None) -> _WorkerSeries:
        raw = (queue, group)
        series = self._worker_by_event.get(raw)
        if series is None:
            key = (queue or OTHER, group or self._group)
            series = self._workers.get(key)
            if series is None:
                series = self._workers[key] = _WorkerSeries(self.sinks, *key)
            self._worker_by_event[raw] = series
        return series

    def _evict_error_type(self, metric: str, task: str, error_type: str) -> None:
        """An ``error_type`` left the recent set of (``metric``, ``task``): remove its series."""
        if metric == _OPERATION_DURATION:  # no task label: its recent set is per metric
            self.sinks.remove(metric, error_type=error_type)
            return
        self.sinks.remove(metric, asyncmq_task_name=task, error_type=error_type)
        if metric == _JOB_ERRORS:
            for js in self._jobs.values():
                if js.task == task:
                    for key in [key for key in js.errors if key[0] == error_type]:
                        del js.errors[key]

    def _count_error(self, js: _JobSeries, error_type: str, outcome: str) -> None:
        """asyncmq.job.errors: an attempt that raised (or failed without raising), by recent error type."""
        label = self._error_types.use(_JOB_ERRORS, js.task, error_type)
        series = js.errors.get((label, outcome))
        if series is None:
            series = js.errors[label, outcome] = self.sinks.counter(
                _JOB_ERRORS, js.queue, js.task, label, outcome
            )
        series.inc()

    # -- job events ------------------------------------------------------------------------------------
    def _started(self, event: LifecycleEvent) -> None:
        self._start(
            event.queue,
            event.task,
            event.group,
            event.job_id,
            event.attempt,
            event.priority,
            event.wait_s,
            event.started_monotonic,
        )

    def _started_job(self, _name: str, job: Job, attempt: int, fields: dict[str, Any]) -> None:
        """``job:started`` without its event (the bus's fast path): the same records as :meth:`_started`."""
        # _start, inlined: one call less on every attempt (the equivalence test keeps the two alike)
        get = fields.get
        queue, task, group = job.queue, job.task, get("group")
        js = self._by_event.get((queue, task, group)) or self._series(queue, task, group)
        js.consumed.inc()
        trace_id = self._trace_id()
        wait = get("wait_s")
        if wait is not None:
            priority = job.priority
            cls = "normal" if priority == _DEFAULT_PRIORITY or priority is None else priority_class(priority)
            js.wait[cls].observe(wait if wait > 0.0 else 0.0, trace_id)  # noqa: FURB136 - hot path: no call
        ws = js.worker
        if ws is None:
            ws = js.worker = self._worker_series(queue, group)
        ws.active.add(1)
        started = get("started_monotonic")
        self._inflight[queue, job.id, attempt] = (
            ws,
            started if started is not None else time.perf_counter(),
            trace_id,
            js,
        )

    def _start(  # the fields of job:started the metrics read
        self,
        queue: str | None,
        task: str | None,
        group: str | None,
        job_id: str | None,
        attempt: int | None,
        priority: int | None,
        wait: float | None,
        started_monotonic: float | None,
    ) -> None:
        js = self._by_event.get((queue, task, group)) or self._series(queue, task, group)
        js.consumed.inc()
        # The attempt's span, if sampled, is current now: its trace id serves every exemplar of the attempt.
        trace_id = self._trace_id()
        if wait is not None:
            cls = "normal" if priority is None or priority == _DEFAULT_PRIORITY else priority_class(priority)
            js.wait[cls].observe(wait if wait > 0.0 else 0.0, trace_id)  # noqa: FURB136 - hot path: no call
        ws = js.worker
        if ws is None:
            ws = js.worker = self._worker_series(queue, group)
        ws.active.add(1)
        started = started_monotonic if started_monotonic is not None else time.perf_counter()
        self._inflight[queue, job_id, attempt] = (ws, started, trace_id, js)

    def _end_attempt(self, event: LifecycleEvent) -> tuple[_JobSeries, str | None]:
        """The attempt leaves the in-flight set: its series and its exemplar trace id, as at its start."""
        entry = self._inflight.pop((event.queue, event.job_id, event.attempt), None)
        if entry is None:  # nothing ran here: a pickup settle, the reaper's worker_lost, another process
            return self._job(event), self._trace_id()
        entry[0].active.add(-1)
        return entry[3], entry[2]

    @staticmethod
    def _ran(js: _JobSeries, event: LifecycleEvent, outcome: str, trace_id: str | None) -> None:
        duration = event.duration_s
        if duration is not None:
            js.process[outcome].observe(duration if duration > 0.0 else 0.0, trace_id)  # noqa: FURB136 - as above

    def _terminal(
        self, js: _JobSeries, event: LifecycleEvent, outcome: str, runs: int, trace_id: str | None
    ) -> None:
        e2e, attempts = js.terminal.get(outcome) or self._bind_terminal(js, outcome)
        if event.enqueued_at:
            finished = event.finished_at if event.finished_at is not None else event.ts
            e2e.observe(max(finished - event.enqueued_at, 0.0), trace_id)
        attempts.observe(float(runs) if runs > 0 else 0.0)

    def _bind_terminal(self, js: _JobSeries, outcome: str) -> tuple[HistogramSeries, HistogramSeries]:
        """The end-to-end and attempts histograms of ``outcome``, bound once per series."""
        bound = js.terminal[outcome] = (
            self.sinks.histogram("asyncmq.job.e2e.duration", js.queue, js.task, outcome),
            self.sinks.histogram("asyncmq.job.attempts", js.queue, js.task, outcome),
        )
        return bound

    def _completed(self, event: LifecycleEvent) -> None:
        js, trace_id = self._end_attempt(event)
        duration = event.duration_s
        if duration is not None:  # _ran, inlined: the most frequent outcome
            js.process["completed"].observe(duration if duration > 0.0 else 0.0, trace_id)  # noqa: FURB136
        js.completed.inc()
        self._terminal(js, event, "completed", event.attempt or 0, trace_id)

    def _completed_job(self, name: str, job: Job, attempt: int, fields: dict[str, Any]) -> None:
        """``job:completed`` without its event (the bus's fast path): the records of :meth:`_completed`."""
        queue = job.queue
        entry = self._inflight.pop((queue, job.id, attempt), None)
        if entry is None:  # not started here (see _end_attempt): the event path covers it
            self._completed(make_job_event(name, time.time(), job, attempt, fields))
            return
        entry[0].active.add(-1)
        js, trace_id = entry[3], entry[2]
        get = fields.get
        duration = get("duration_s")
        if duration is not None:
            js.process["completed"].observe(duration if duration > 0.0 else 0.0, trace_id)  # noqa: FURB136
        js.completed.inc()
        bound = js.terminal.get("completed") or self._bind_terminal(js, "completed")
        enqueued = job.enqueued_at
        if enqueued:
            finished = get("finished_at")
            if finished is None:
                finished = time.time()
            e2e = finished - enqueued
            bound[0].observe(e2e if e2e > 0.0 else 0.0, trace_id)  # noqa: FURB136 - as above
        bound[1].observe(float(attempt) if attempt > 0 else 0.0)

    def _retried(self, event: LifecycleEvent) -> None:
        js, trace_id = self._end_attempt(event)
        error_type = event.error_type or (error_type_name(event.exception) if event.exception else "")
        self._ran(js, event, "retried", trace_id)
        js.outcomes["retried", ""].inc()
        self._count_error(js, error_type or OTHER, "retried")

    def _failed(self, event: LifecycleEvent) -> None:
        js, trace_id = self._end_attempt(event)
        reason = event.reason if event.reason in _FAILED_REASONS else "failed"
        error_type = event.error_type or (error_type_name(event.exception) if event.exception else reason)
        if reason in {"failed", "interrupted"}:  # after a run
            self._ran(js, event, "failed", trace_id)
            runs = event.attempt or 0
        elif reason in {"worker_lost", "dependency_failed"}:  # by the reaper: no pickup of this delivery
            runs = event.attempt or 0
        else:  # unknown_task, malformed_payload: at pickup, nothing ran
            js.consumed.inc()
            runs = _runs_before_pickup(event)
        js.outcomes["failed", reason].inc()
        self._count_error(js, error_type, "failed")
        self._terminal(js, event, "failed", runs, trace_id)

    def _expired(self, event: LifecycleEvent) -> None:
        js = self._job(event)
        js.consumed.inc()
        js.outcomes["expired", "expired"].inc()
        self._terminal(js, event, "expired", _runs_before_pickup(event), self._trace_id())

    def _cancelled(self, event: LifecycleEvent) -> None:
        js, trace_id = self._end_attempt(event)
        if event.reason == "running":
            self._ran(js, event, "cancelled", trace_id)
            runs = event.attempt or 0
        else:
            js.consumed.inc()
            runs = _runs_before_pickup(event)
        js.outcomes["cancelled", ""].inc()
        self._terminal(js, event, "cancelled", runs, trace_id)

    def _interrupted(self, event: LifecycleEvent) -> None:
        js, trace_id = self._end_attempt(event)
        self._ran(js, event, "interrupted", trace_id)
        js.outcomes["interrupted", ""].inc()

    def _throttled(self, event: LifecycleEvent) -> None:
        ws = self._worker(event)
        scope = "queue" if event.scope == "queue" else "worker"  # bounded: an unknown scope is the worker's
        ws.throttled[scope].inc()
        ws.throttle_wait[scope].observe(max(event.ratelimit_wait_s or 0.0, 0.0))

    def _stalled_job(self, event: LifecycleEvent) -> None:
        queue = event.queue or OTHER
        task = event.task if event.task in TASK_REGISTRY else OTHER
        series = self._stalled.get((queue, task))
        if series is None:
            series = self._stalled[queue, task] = self.sinks.counter("asyncmq.job.stalled", queue, task)
        series.inc()

    # -- worker and backend events ----------------------------------------------------------------------
    def _worker_started(self, event: LifecycleEvent) -> None:
        queue = event.queue or OTHER
        group = event.group or self._group
        # Only the pairs that can meet: the tasks declared for this queue (labels name only what the code
        # declares); a job of another task binds its pair when it is first seen.
        for task in list_tasks(queue):
            self._pair(queue, task, group)
        ws = self._worker(event)
        ws.up.set(1)
        ws.heartbeat.set(event.ts)  # registering the worker was its first heartbeat write
        if event.concurrency is not None:
            ws.concurrency.set(event.concurrency)
        self._served.add((queue, group))
        self.sinks.counter("asyncmq.backend.data_loss", queue)
        for key in declared_schedule_keys(queue):  # a declared schedule's first fire counts from 0
            self.sinks.counter("asyncmq.schedule.fired", queue, schedule_labels(key))
        if queue not in self._lost_queues:
            self.sinks.gauge("asyncmq.backend.data_loss.detected", queue).set(0)
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

    def _schedule_fired(self, event: LifecycleEvent) -> None:
        queue, label = event.queue or OTHER, schedule_labels(event.schedule_key)
        self.sinks.counter("asyncmq.schedule.fired", queue, label).inc()
        if event.enqueued_at and event.schedule_due is not None:
            self.sinks.histogram("asyncmq.schedule.lag", queue, label).observe(
                max(event.enqueued_at - event.schedule_due, 0.0)
            )

    def _data_loss(self, event: LifecycleEvent) -> None:
        queue = event.queue or OTHER
        self.sinks.counter("asyncmq.backend.data_loss", queue).inc()
        self.sinks.gauge("asyncmq.backend.data_loss.detected", queue).set(1)
        self._lost_queues.add(queue)

    def _running_max_age(self) -> Iterable[tuple[tuple[str, ...], float]]:
        now = time.perf_counter()
        ages: dict[tuple[str, str], float] = dict.fromkeys(list(self._served), 0.0)
        for ws, started, *_ in list(self._inflight.values()):
            key = (ws.queue, ws.group)
            ages[key] = max(ages.get(key, 0.0), now - started)
        return ages.items()

    def health(self) -> tuple[bool, str]:
        """The liveness watchdog behind ``/healthz``.

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
            self.sinks.gauge("asyncmq.backend.up").set(1 if up else 0)

    def backend_result(self, ok: bool) -> None:
        """Told by the queue sampler whether its round trip succeeded."""
        self._set_backend_up(up=ok)

    # -- write observer -----------------------------------------------------------------------------------
    def operation_started(self, operation: Operation) -> None:
        """Nothing to do before a write (durations come from the bus)."""

    def operation_finished(self, operation: Operation) -> None:
        """Record the write's duration, the jobs it sent, a stale write rejected and backend availability."""
        self.write_finished(
            operation.name,
            operation.queue,
            operation.jobs,
            operation.duration_s,
            operation.error,
            operation.outcome,
        )

    def write_finished(  # the parts of an Operation the metrics read (EventBus.write builds none)
        self,
        name: str,
        queue: str,
        jobs: list[Job],
        duration: float | None,
        error: BaseException | None,
        outcome: str | None,
    ) -> None:
        """:meth:`operation_finished` without the :class:`Operation`."""
        queue = queue or OTHER
        error_type = "" if error is None else error_type_name(error)
        if duration is not None and name in _WRITE_OPERATIONS:
            if error is None:
                series = self._writes.get((queue, name))
                if series is None:
                    series = self._writes[queue, name] = self.sinks.histogram(
                        _OPERATION_DURATION, queue, name, ""
                    )
            else:
                label = self._error_types.use(_OPERATION_DURATION, "", error_type)
                series = self.sinks.histogram(_OPERATION_DURATION, queue, name, label)
            series.observe(duration if duration > 0.0 else 0.0)  # noqa: FURB136 - hot path: no call
        if name in _SENT_OPERATIONS:
            for job in jobs:
                task = job.task if job.task in TASK_REGISTRY else OTHER
                sent = "schedule" if name == "schedule" or job.delay_until is not None else "send"
                label = self._error_types.use(_SENT_MESSAGES, task, error_type)
                self.sinks.counter(_SENT_MESSAGES, queue, task, sent, label).inc()
        if outcome in _STALE_STATUSES and name in _STALE_OPERATIONS:
            self.sinks.counter("asyncmq.stale_writes.rejected", queue, name).inc()
        if error is None:
            self._last_success = time.monotonic()
            if self._backend_up is not True:
                self._set_backend_up(up=True)
        elif isinstance(error, BackendUnavailable):
            self._set_backend_up(up=False)

    # -- drops -----------------------------------------------------------------------------------------
    def on_drop(self, signal: str, reason: str, count: int) -> None:
        """Drop observer of the bus: counts asyncmq.telemetry.dropped."""
        if signal in SIGNALS and reason in DROP_REASONS:
            self.sinks.counter("asyncmq.telemetry.dropped", signal, reason).inc(count)

    def on_overflow(self, row: MetricDef) -> None:
        """A record landed in ``row``'s overflow series: count it, warn once per metric."""
        self._bus.record_drop("metric", "cardinality")
        if row.name not in self._overflow_warned:
            self._overflow_warned.add(row.name)
            if self._warn is not None:
                self._warn(
                    "telemetry.cardinality_overflow",
                    {"metric": row.prometheus_name, "limit": self.sinks._bindings[row.name].limit},  # noqa: SLF001
                )


def _runs_before_pickup(event: LifecycleEvent) -> int:
    """Handler runs of a job settled at pickup: the claim counted an attempt that never ran."""
    if event.attempt is None:
        return 0
    return max(event.attempt - 1, 0) if event.worker_id else event.attempt

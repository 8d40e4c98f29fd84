"""Metrics: the one definition table of the telemetry contract and its two sinks.

Each :class:`MetricDef` row yields a ``prometheus_client`` collector (the scrape sink, on its own
``CollectorRegistry``) and, when OTLP metrics are on, an OpenTelemetry instrument (the OTLP sink).
The Prometheus name of every row is the standard OTel→Prometheus translation of its OTel name, and
the label keys are its attribute keys with ``.`` replaced by ``_``; both are checked when the row is
defined, so the two sinks cannot drift. The dashboards (``dashboards/panel_catalogue.py``) import
the names from here.

Code names a metric by its OTel name (``sinks.counter("asyncmq.job.outcomes", ...)``); a row's
number is its id in the contract's table only. The hot path records through :class:`CounterSeries`,
:class:`HistogramSeries` and :class:`GaugeSeries`: one label set bound in both sinks once, then
reused. In one process the scrape sink keeps plain accumulators (``_accumulators``) that a collector
reads at scrape time; with the scrape sink alone the bound series is that accumulator itself, so a
record costs one call. Binding past ``metric_cardinality_limit`` label sets yields the overflow series
of that metric, whose every label but ``messaging_system`` is ``_OTHER``, and each record on it is
counted as dropped telemetry.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import _accumulators, _multiprocess
from ._accumulators import CounterValue, GaugeValue, HistogramValue

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

__all__ = [
    "B_ATT",
    "B_E2E",
    "B_OP",
    "B_PROC",
    "B_WAIT",
    "METRICS",
    "METRICS_BY_NAME",
    "METRICS_BY_NUMBER",
    "OTHER",
    "CounterSeries",
    "GaugeSeries",
    "HistogramSeries",
    "InstrumentKind",
    "MetricDef",
    "MetricSinks",
    "ObserveFn",
    "label_key",
    "translate_name",
]

OTHER: Final = "_OTHER"
"""The label value of the overflow series and of values past a top-N limit."""

# -- buckets --------------------------------------------------------------------------------------
# Rev. 2 starts at 0.1 ms: semconv's 5 ms floor hid every loopback Redis round trip and pickup.
B_OP: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
B_PROC: Final = (*B_OP, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
B_WAIT: Final = B_PROC  # the same boundaries (the contract lists them separately)
B_E2E: Final = (*B_WAIT, 7200.0, 21600.0, 86400.0)
B_ATT: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0, 21.0)

# -- label keys, in attribute form --------------------------------------------------------------------
SYSTEM: Final = "messaging.system"
QUEUE: Final = "messaging.destination.name"
TASK: Final = "asyncmq.task.name"
GROUP: Final = "messaging.consumer.group.name"
OPERATION: Final = "messaging.operation.name"
ERROR_TYPE: Final = "error.type"
OUTCOME: Final = "outcome"
REASON: Final = "reason"
STATE: Final = "state"
PRIORITY_CLASS: Final = "priority_class"
SIGNAL: Final = "signal"
SCHEDULE: Final = "schedule"
SCOPE: Final = "scope"
_LABEL_KEYS: Final = frozenset(
    {
        QUEUE,
        TASK,
        GROUP,
        OPERATION,
        ERROR_TYPE,
        OUTCOME,
        REASON,
        STATE,
        PRIORITY_CLASS,
        SIGNAL,
        SCHEDULE,
        SCOPE,
    }
)

SENT_OPERATIONS: Final = ("send", "schedule")
WRITE_OPERATIONS: Final = (
    "send", "schedule", "ack", "retry", "dead_letter", "expire", "cancel", "requeue", "pause", "resume",
)  # fmt: skip
STALE_OPERATIONS: Final = ("ack", "retry", "dead_letter", "cancel", "requeue")
PROCESS_OPERATIONS: Final = ("process",)
OUTCOMES: Final = ("completed", "retried", "interrupted", "failed", "expired", "cancelled")
ATTEMPT_OUTCOMES: Final = ("completed", "retried", "interrupted", "failed", "cancelled")
ERROR_OUTCOMES: Final = ("retried", "failed")
TERMINAL_OUTCOMES: Final = ("completed", "failed", "expired", "cancelled")
DLQ_REASONS: Final = (
    "failed", "expired", "unknown_task", "malformed_payload", "worker_lost", "interrupted",
    "dependency_failed",
)  # fmt: skip
OUTCOME_REASONS: Final = (
    ("completed", ""), ("retried", ""), ("interrupted", ""), ("cancelled", ""), ("expired", "expired"),
    ("failed", "failed"), ("failed", "worker_lost"), ("failed", "interrupted"), ("failed", "unknown_task"),
    ("failed", "malformed_payload"), ("failed", "dependency_failed"),
)  # fmt: skip
"""Every (outcome, reason) pair of asyncmq.job.outcomes: pre-initialised, so a first increment shows."""
STATES: Final = ("ready", "scheduled", "active", "dead", "blocked")
PRIORITY_CLASSES: Final = ("high", "normal", "low")
SIGNALS: Final = ("event", "span", "metric", "log")
DROP_REASONS: Final = ("queue_full", "adapter_error", "cardinality")
THROTTLE_SCOPES: Final = ("worker", "queue")  # the worker's own rate_limit, the queue's shared limit


class InstrumentKind(str, Enum):
    """The OTel instrument of a row; the Prometheus type follows from it."""

    COUNTER = "Counter"
    HISTOGRAM = "Histogram"
    GAUGE = "Gauge"
    UP_DOWN_COUNTER = "UpDownCounter"
    OBSERVABLE_GAUGE = "ObservableGauge"


def label_key(attribute: str) -> str:
    """The Prometheus label key of an attribute key (``.`` → ``_``)."""
    return attribute.replace(".", "_")


def translate_name(name: str, kind: InstrumentKind, unit: str) -> str:
    """The standard OTel→Prometheus name translation used by this project.

    ``.`` becomes ``_``; unit ``s`` adds ``_seconds``; ``{…}`` units add nothing; counters get ``_total``.
    """
    out = name.replace(".", "_")
    if unit == "s":
        out += "_seconds"
    elif not (unit.startswith("{") and unit.endswith("}")):
        raise ValueError(f"unit {unit!r} is not allowed: use 's' or an annotation such as '{{job}}'")
    if kind is InstrumentKind.COUNTER:
        out += "_total"
    return out


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One row of the definition table.

    Attributes:
        number: the row's id in the contract's definition table (code names a metric by ``name``).
        name: the OTel instrument name.
        kind: the OTel instrument.
        unit: ``s`` or an annotation such as ``{job}``.
        prometheus_name: the exposed name; must equal the translation of ``name``.
        labels: attribute keys of the row, in order (``messaging.system`` is added unless
            ``system_label`` is off).
        description: the help text of both sinks.
        buckets: histogram boundaries.
        values: the closed value set of the labels that have one.
        exemplars: whether the scrape sink attaches the attempt's trace id as an exemplar.
        system_label: whether the constant ``messaging_system="asyncmq"`` label is present.

    """

    number: int
    name: str
    kind: InstrumentKind
    unit: str
    prometheus_name: str
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exemplars: bool = False
    system_label: bool = True

    def __post_init__(self) -> None:
        unknown = [key for key in self.labels if key not in _LABEL_KEYS]
        if unknown:
            raise ValueError(
                f"metric {self.name}: label keys {unknown} are not allowed; bounded keys only: "
                f"{sorted(_LABEL_KEYS)}"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {self.name}: duplicate label keys {self.labels}")
        for key in self.values:
            if key not in self.labels:
                raise ValueError(
                    f"metric {self.name}: a value set is given for {key!r}, which is not a label"
                )
        translated = translate_name(self.name, self.kind, self.unit)
        if translated != self.prometheus_name:
            raise ValueError(
                f"metric {self.name}: Prometheus name {self.prometheus_name!r} differs from its translation "
                f"{translated!r}"
            )
        if (self.kind is InstrumentKind.HISTOGRAM) != (self.buckets is not None):
            raise ValueError(f"metric {self.name}: buckets are given for histograms and only for them")

    @property
    def attribute_keys(self) -> tuple[str, ...]:
        """Attribute keys of the OTel sink, ``messaging.system`` first when present."""
        return ((SYSTEM,) if self.system_label else ()) + self.labels

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Label keys of the scrape sink, ``messaging_system`` first when present."""
        return tuple(label_key(key) for key in self.attribute_keys)

    @property
    def prometheus_type(self) -> str:
        """``counter``, ``histogram`` or ``gauge``."""
        if self.kind is InstrumentKind.COUNTER:
            return "counter"
        return "histogram" if self.kind is InstrumentKind.HISTOGRAM else "gauge"


def _row(
    number: int,
    name: str,
    kind: InstrumentKind,
    unit: str,
    prometheus_name: str,
    labels: tuple[str, ...],
    description: str,
    buckets: tuple[float, ...] | None = None,
    values: Mapping[str, tuple[str, ...]] | None = None,
    *,
    exemplars: bool = False,
    system_label: bool = True,
) -> MetricDef:
    return MetricDef(
        number, name, kind, unit, prometheus_name, labels, description, buckets, dict(values or {}),
        exemplars, system_label,
    )  # fmt: skip


_C, _H, _G = InstrumentKind.COUNTER, InstrumentKind.HISTOGRAM, InstrumentKind.GAUGE
_UDC, _OG = InstrumentKind.UP_DOWN_COUNTER, InstrumentKind.OBSERVABLE_GAUGE
_Q, _T, _GR = QUEUE, TASK, GROUP

METRICS: Final = (
    _row(1, "messaging.client.sent.messages", _C, "{message}", "messaging_client_sent_messages_total",
         (_Q, _T, OPERATION, ERROR_TYPE), "Jobs sent by producers (one per job; failed stores included).",
         values={OPERATION: SENT_OPERATIONS}),
    _row(2, "messaging.client.consumed.messages", _C, "{message}", "messaging_client_consumed_messages_total",
         (_Q, _T, _GR, OPERATION), "Jobs delivered to a worker: at job start, or at a pickup settle.", None,
         {OPERATION: PROCESS_OPERATIONS}),
    _row(3, "messaging.process.duration", _H, "s", "messaging_process_duration_seconds",
         (_Q, _T, _GR, OPERATION, OUTCOME), "Duration of each attempt that ran (the process span).", B_PROC,
         {OPERATION: PROCESS_OPERATIONS, OUTCOME: ATTEMPT_OUTCOMES}, exemplars=True),
    _row(4, "messaging.client.operation.duration", _H, "s", "messaging_client_operation_duration_seconds",
         (_Q, OPERATION, ERROR_TYPE), "Backend round trip of each lifecycle write.", B_OP,
         {OPERATION: WRITE_OPERATIONS}),
    _row(5, "asyncmq.job.wait.duration", _H, "s", "asyncmq_job_wait_duration_seconds",
         (_Q, _T, _GR, PRIORITY_CLASS), "Time from eligible to started per attempt (no delays, no backoff).",
         B_WAIT, {PRIORITY_CLASS: PRIORITY_CLASSES}, exemplars=True),
    _row(6, "asyncmq.job.e2e.duration", _H, "s", "asyncmq_job_e2e_duration_seconds",
         (_Q, _T, OUTCOME), "Time from first enqueue to the terminal outcome, retries and delays included.",
         B_E2E, {OUTCOME: TERMINAL_OUTCOMES}, exemplars=True),
    _row(7, "asyncmq.job.outcomes", _C, "{job}", "asyncmq_job_outcomes_total",
         (_Q, _T, _GR, OUTCOME, REASON), "Outcome of every attempt or settle.", None,
         {OUTCOME: OUTCOMES, REASON: ("", *DLQ_REASONS)}),
    _row(8, "asyncmq.job.attempts", _H, "{attempt}", "asyncmq_job_attempts",
         (_Q, _T, OUTCOME), "Handler runs started per finished job.", B_ATT, {OUTCOME: TERMINAL_OUTCOMES}),
    _row(9, "asyncmq.job.stalled", _C, "{job}", "asyncmq_job_stalled_total",
         (_Q, _T), "Jobs whose lease expired and were redelivered."),
    _row(10, "asyncmq.job.running.max_age", _OG, "s", "asyncmq_job_running_max_age_seconds",
         (_Q, _GR), "Age of this worker's oldest in-flight attempt (0 when idle)."),
    _row(11, "asyncmq.ratelimit.throttled", _C, "{job}", "asyncmq_ratelimit_throttled_total",
         (_Q, _GR, SCOPE), "Jobs held by a rate limit for more than 1 ms, by the limit's scope.", None,
         {SCOPE: THROTTLE_SCOPES}),
    _row(12, "asyncmq.ratelimit.wait", _H, "s", "asyncmq_ratelimit_wait_seconds",
         (_Q, _GR, SCOPE), "Time jobs spent waiting for a rate limit, by the limit's scope.", B_WAIT,
         {SCOPE: THROTTLE_SCOPES}),
    _row(13, "asyncmq.worker.up", _G, "{worker}", "asyncmq_worker_up",
         (_Q, _GR), "1 while the worker serves the queue, 0 once it stopped."),
    _row(14, "asyncmq.worker.heartbeat.timestamp", _G, "s", "asyncmq_worker_heartbeat_timestamp_seconds",
         (_Q, _GR), "Unix time of the worker's last successful heartbeat write."),
    _row(15, "asyncmq.worker.jobs.active", _UDC, "{job}", "asyncmq_worker_jobs_active",
         (_Q, _GR), "Attempts running in this worker."),
    _row(16, "asyncmq.worker.concurrency", _G, "{job}", "asyncmq_worker_concurrency",
         (_Q, _GR), "Concurrency limit that applies to the queue."),
    _row(17, "asyncmq.queue.depth", _OG, "{job}", "asyncmq_queue_depth",
         (_Q, STATE), "Jobs in each state, from the queue sampler.", None, {STATE: STATES}),
    _row(18, "asyncmq.queue.oldest_age", _OG, "s", "asyncmq_queue_oldest_age_seconds",
         (_Q,), "Age of the oldest ready job since it became eligible (0 when none)."),
    _row(19, "asyncmq.queue.paused", _OG, "{queue}", "asyncmq_queue_paused",
         (_Q,), "1 when the queue is paused, else 0."),
    _row(20, "asyncmq.telemetry.dropped", _C, "{item}", "asyncmq_telemetry_dropped_total",
         (SIGNAL, REASON), "Telemetry dropped by signal and reason.", None,
         {SIGNAL: SIGNALS, REASON: DROP_REASONS}, system_label=False),
    _row(21, "asyncmq.backend.up", _G, "{backend}", "asyncmq_backend_up",
         (), "1 while the backend answers, 0 during an outage."),
    _row(22, "asyncmq.backend.data_loss", _C, "{event}", "asyncmq_backend_data_loss_total",
         (_Q,), "Times the queue's dataset was found lost."),
    _row(23, "asyncmq.backend.data_loss.detected", _G, "{event}", "asyncmq_backend_data_loss_detected",
         (_Q,), "1 once a data loss was detected in this process, else 0."),
    _row(24, "asyncmq.stale_writes.rejected", _C, "{write}", "asyncmq_stale_writes_rejected_total",
         (_Q, OPERATION), "Settles rejected because the lease was lost (STALE) or the job was gone.", None,
         {OPERATION: STALE_OPERATIONS}),
    # Worker liveness seen from the registry, per queue, from the queue sampler like the queue gauges
    # (asyncmq_worker_up would count workers twice once the exporter reported it too).
    _row(25, "asyncmq.queue.consumers", _OG, "{worker}", "asyncmq_queue_consumers",
         (_Q,), "Live workers consuming the queue, from the worker registry (queue sampler)."),
    _row(26, "asyncmq.job.errors", _C, "{attempt}", "asyncmq_job_errors_total",
         (_Q, _T, ERROR_TYPE, OUTCOME),
         "Attempts that raised (or failed without an exception), by error type.", None,
         {OUTCOME: ERROR_OUTCOMES}),
    # Schedules (periodic jobs), numbered after the contract's asyncmq.job.errors.
    _row(27, "asyncmq.schedule.fired", _C, "{job}", "asyncmq_schedule_fired_total",
         (_Q, SCHEDULE), "Jobs fired by schedules: one per tick fired (each catch-up tick counts)."),
    _row(28, "asyncmq.schedule.lag", _H, "s", "asyncmq_schedule_lag_seconds",
         (_Q, SCHEDULE), "Fire time minus due time of each fired tick (backend clock).", B_WAIT),
    _row(29, "asyncmq.schedule.next_run.timestamp", _OG, "s", "asyncmq_schedule_next_run_timestamp_seconds",
         (_Q, SCHEDULE), "Unix time of each active schedule's next run, from the queue sampler."),
    _row(30, "asyncmq.schedule.interval", _OG, "s", "asyncmq_schedule_interval_seconds",
         (_Q, SCHEDULE), "Seconds between a schedule's ticks (cron: its next two), from the queue sampler."),
    # Flows: how long the longest-blocked job has waited for its parents.
    _row(31, "asyncmq.queue.blocked.oldest_age", _OG, "s", "asyncmq_queue_blocked_oldest_age_seconds",
         (_Q,), "Age of the job blocked longest on its parents (0 when none), from the queue sampler."),
)  # fmt: skip
"""The definition table: both sinks are built from these rows and nothing else."""

METRICS_BY_NUMBER: Final = {row.number: row for row in METRICS}
_VALUES: Final[Mapping[InstrumentKind, type[CounterValue]]] = {
    _C: CounterValue, _G: GaugeValue, _UDC: GaugeValue,
}  # fmt: skip
METRICS_BY_NAME: Final = {row.name: row for row in METRICS}

ObserveFn = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
"""Callback of an observable row: ``(label values without messaging_system, value)`` pairs."""


# -- series: one label set, bound in both sinks -------------------------------------------------------
class CounterSeries(Protocol):
    """A bound counter: ``inc()``."""

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        ...


class HistogramSeries(Protocol):
    """A bound histogram: ``observe()``, with an optional trace id exemplar."""

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Record ``value``; ``trace_id`` becomes the scrape sink's exemplar where the row has exemplars."""
        ...


class GaugeSeries(Protocol):
    """A bound gauge (``set``) or up-down counter (``add``)."""

    def set(self, value: float) -> None:
        """Set the gauge."""
        ...

    def add(self, amount: float = 1.0) -> None:
        """Move the up-down counter by ``amount``."""
        ...


# With the scrape sink alone, a bound series is its accumulator itself (one call per record). These
# wrappers serve the other cases: the OTLP sink too, an overflow series (each record is counted as
# dropped), or multi-process mode (prometheus_client's children).
class _Series:
    __slots__ = ("_attrs", "_otel", "_overflow", "_prom")

    def __init__(
        self,
        prom: Any,  # noqa: ANN401 - an accumulator, or a prometheus_client child in multi-process mode
        otel: Any,  # noqa: ANN401 - an OTel instrument of any of four classes
        attrs: Mapping[str, str],
        overflow: Callable[[], None] | None,
    ) -> None:
        self._prom = prom
        self._otel = otel
        self._attrs = attrs
        self._overflow = overflow


def _add(self: _Series, amount: float = 1.0) -> None:
    """Add ``amount`` in both sinks (negative to subtract, on an up-down counter)."""
    if self._overflow is not None:
        self._overflow()
    if self._prom is not None:
        self._prom.inc(amount)
    if self._otel is not None:
        self._otel.add(amount, self._attrs)


class _Counter(_Series):
    __slots__ = ()

    inc = _add


class _Histogram(_Series):
    __slots__ = ()

    def observe(self, value: float, trace_id: str | None = None) -> None:
        if self._overflow is not None:
            self._overflow()
        if self._prom is not None:
            self._prom.observe(value, trace_id)
        if self._otel is not None:
            self._otel.record(value, self._attrs)


class _Gauge(_Series):
    __slots__ = ()

    def set(self, value: float) -> None:
        if self._overflow is not None:
            self._overflow()
        if self._prom is not None:
            self._prom.set(value)
        if self._otel is not None:
            self._otel.set(value, self._attrs)

    add = _add  # the up-down counter's operation


class _SharedFileHistogram:
    """A multi-process histogram child: its files hold no exemplars, so the trace id is dropped."""

    __slots__ = ("_child",)

    def __init__(self, child: Any) -> None:  # noqa: ANN401 - a prometheus_client histogram child
        self._child = child

    def observe(self, value: float, _trace_id: str | None = None) -> None:
        self._child.observe(value)


_WRAPPERS: Final[Mapping[InstrumentKind, type[_Series]]] = {
    InstrumentKind.COUNTER: _Counter,
    InstrumentKind.HISTOGRAM: _Histogram,
    InstrumentKind.GAUGE: _Gauge,
    InstrumentKind.UP_DOWN_COUNTER: _Gauge,
}


class _FilteredCollector(Collector):
    """Yields the table's collectors without their ``_created`` samples."""

    def __init__(self, sinks: MetricSinks) -> None:
        self._sinks = sinks

    def collect(self) -> Iterable[Metric]:
        for family in self._sinks.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class _Bindings:
    """The bound series of one row, capped at the cardinality limit."""

    __slots__ = ("_lock", "_overflow", "_overflow_warned", "limit", "row", "series")

    def __init__(self, row: MetricDef, limit: int) -> None:
        self.row = row
        self.limit = limit
        self.series: dict[tuple[str, ...], Any] = {}  # an accumulator, or a _Series wrapper
        self._overflow: Any = None
        self._overflow_warned = False
        self._lock = threading.Lock()


def _limit(row: MetricDef, limit: int) -> int:
    """Rows whose labels all have closed value sets (telemetry dropped, backend up) need no cap."""
    if all(key in row.values for key in row.labels):
        size = 1
        for key in row.labels:
            size *= len(row.values[key])
        return max(limit, size)
    return limit


class MetricSinks:
    """The definition table realised in the scrape sink and, optionally, the OTLP sink.

    Args:
        registry: the ``CollectorRegistry`` of the scrape sink, or ``None`` for no scrape sink.
        meter_provider: the provider of the OTLP sink, or ``None`` for no OTLP sink.
        cardinality_limit: label sets per metric before records go to the overflow series.
        histogram_buckets: bucket overrides by OTel name.
        on_overflow: called once per record that lands in an overflow series, with the row.
        version: instrumentation scope version of the OTel meter.

    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None,
        meter_provider: MeterProvider | None = None,
        cardinality_limit: int = 2000,
        histogram_buckets: Mapping[str, Sequence[float]] | None = None,
        on_overflow: Callable[[MetricDef], None] | None = None,
        version: str | None = None,
    ) -> None:
        overrides = dict(histogram_buckets or {})
        unknown = [name for name in overrides if name not in METRICS_BY_NAME]
        if unknown:
            raise ValueError(
                f"histogram_buckets names unknown metrics {unknown}; use the OTel names of the metrics table"
            )
        self.buckets = {
            row.name: tuple(float(b) for b in overrides.get(row.name, row.buckets or ()))
            for row in METRICS
            if row.kind is InstrumentKind.HISTOGRAM
        }
        self._on_overflow = on_overflow
        self._observers: dict[str, ObserveFn] = {}
        self._bindings = {row.name: _Bindings(row, _limit(row, cardinality_limit)) for row in METRICS}
        self.registry = registry
        self._prom: dict[str, Any] = {}
        self._collector: _FilteredCollector | None = None
        # Multi-process mode: observable rows become plain gauges, refreshed every second.
        self.multiprocess = registry is not None and _multiprocess.enabled()
        self._refresher: _multiprocess.ObservableRefresher | None = None
        # One process: plain accumulators read at scrape time (the job path's cost budget). Several:
        # prometheus_client's children, the only ones that write the shared multi-process files.
        self._accumulate = registry is not None and not self.multiprocess
        if registry is not None:
            if self.multiprocess:
                self._prom = {row.name: self._make_prom(row) for row in METRICS}
            self._collector = _FilteredCollector(self)
            registry.register(self._collector)
        self._otel: dict[str, Any] = {}
        if meter_provider is not None:
            meter = meter_provider.get_meter("asyncmq_otel", version)
            self._otel = {row.name: self._make_otel(meter, row) for row in METRICS}
        if self.multiprocess:
            self._refresher = _multiprocess.ObservableRefresher(
                [
                    (
                        self._prom[row.name],
                        row.label_keys,
                        functools.partial(self._observe, row, otel=False),
                    )
                    for row in METRICS
                    if row.kind is _OG
                ]
            )

    # -- construction -------------------------------------------------------------------------------
    def _make_prom(self, row: MetricDef) -> Any:  # noqa: ANN401 - one of three prometheus_client classes
        name_help_labels = (row.prometheus_name, row.description, row.label_keys)
        if row.kind is InstrumentKind.COUNTER:
            return PromCounter(*name_help_labels, registry=None)
        unit = "seconds" if row.unit == "s" else ""
        if row.kind is InstrumentKind.HISTOGRAM:
            buckets = self.buckets[row.name]
            return PromHistogram(*name_help_labels, registry=None, unit=unit, buckets=buckets)
        mode = _multiprocess.gauge_mode(row.name)
        return PromGauge(*name_help_labels, registry=None, unit=unit, multiprocess_mode=mode)

    def _make_otel(self, meter: Meter, row: MetricDef) -> Any:  # noqa: ANN401 - one of five OTel instruments
        name, unit, description = row.name, row.unit, row.description
        if row.kind is InstrumentKind.COUNTER:
            return meter.create_counter(name, unit, description)
        if row.kind is InstrumentKind.HISTOGRAM:
            advice = self.buckets[row.name]
            return meter.create_histogram(name, unit, description, explicit_bucket_boundaries_advisory=advice)
        if row.kind is InstrumentKind.UP_DOWN_COUNTER:
            return meter.create_up_down_counter(name, unit, description)
        if row.kind is InstrumentKind.GAUGE:
            return meter.create_gauge(name, unit, description)
        return meter.create_observable_gauge(name, [self._otel_callback(row)], unit, description)

    def _otel_callback(self, row: MetricDef) -> Callable[[CallbackOptions], Iterable[Observation]]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415 - only with the OTLP sink

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attributes) for attributes, value in self._observe(row, otel=True)]

        return callback

    # -- binding --------------------------------------------------------------------------------------
    @property
    def otlp(self) -> bool:
        """Whether the OTLP sink is on."""
        return bool(self._otel)

    def _bind(self, name: str, values: tuple[str, ...]) -> Any:  # noqa: ANN401 - one of the series types
        try:
            bindings = self._bindings[name]
        except KeyError:
            raise ValueError(f"no metric is named {name!r}; use an OTel name of the metrics table") from None
        series = bindings.series.get(values)
        if series is not None:
            return series
        with bindings._lock:  # noqa: SLF001 - the bindings record is private to this class
            series = bindings.series.get(values)
            if series is not None:
                return series
            row = bindings.row
            if len(values) != len(row.labels):
                raise ValueError(f"metric {row.name} takes labels {row.labels}, got values {values}")
            if len(bindings.series) >= bindings.limit:
                overflow = bindings._overflow  # noqa: SLF001 - as above
                if overflow is None:
                    overflow = self._make_series(row, (OTHER,) * len(values), overflow=True)
                    bindings._overflow = overflow  # noqa: SLF001 - as above
                return overflow
            series = self._make_series(row, values, overflow=False)
            bindings.series[values] = series
            return series

    def _make_series(self, row: MetricDef, values: tuple[str, ...], *, overflow: bool) -> Any:  # noqa: ANN401
        full = (("asyncmq",) if row.system_label else ()) + values
        otel = self._otel.get(row.name)
        value: Any = None
        if self._accumulate:
            value = HistogramValue(self.buckets[row.name]) if row.kind is _H else _VALUES[row.kind]()
            if otel is None and not overflow:
                return value  # the hot path: one call per record
        elif (prom := self._prom.get(row.name)) is not None:
            value = prom.labels(*full) if full else prom
            if row.kind is _H:
                value = _SharedFileHistogram(value)
        attrs = {
            key: label
            for key, label in zip(row.attribute_keys, full, strict=True)
            if not (key == ERROR_TYPE and label == "")
        }
        callback = None
        if overflow and self._on_overflow is not None:
            on_overflow = self._on_overflow

            def callback() -> None:
                on_overflow(row)

        return _WRAPPERS[row.kind](value, otel, attrs, callback)

    def counter(self, name: str, *values: str) -> CounterSeries:
        """The bound series of the counter with OTel name ``name`` for ``values`` (its labels in order)."""
        return self._bind(name, values)  # type: ignore[no-any-return]

    def histogram(self, name: str, *values: str) -> HistogramSeries:
        """The bound series of the histogram named ``name``."""
        return self._bind(name, values)  # type: ignore[no-any-return]

    def gauge(self, name: str, *values: str) -> GaugeSeries:
        """The bound series of the gauge or up-down counter named ``name``."""
        return self._bind(name, values)  # type: ignore[no-any-return]

    def remove(self, name: str, **match: str) -> int:
        """Unbind every series of metric ``name`` whose labels equal ``match`` (attribute keys with ``_``).

        The scrape sink stops exposing them; the OTLP sink cannot forget a cumulative series, so its
        instruments are left alone. Returns how many series were removed.
        """
        bindings = self._bindings[name]
        row = bindings.row
        index = {label_key(key): i for i, key in enumerate(row.labels)}
        unknown = set(match) - set(index)
        if unknown:
            raise ValueError(f"metric {row.name} has no labels {sorted(unknown)}")
        prom = self._prom.get(name)
        removed = 0
        with bindings._lock:  # noqa: SLF001 - the bindings record is private to this class
            for values in [v for v in bindings.series if all(v[index[k]] == m for k, m in match.items())]:
                del bindings.series[values]
                if prom is not None and not self._accumulate:
                    full = (("asyncmq",) if row.system_label else ()) + values
                    prom.remove(*full)
                removed += 1
        return removed

    def bound(self, name: str) -> int:
        """Label sets bound so far for the metric named ``name`` (the overflow series excluded)."""
        return len(self._bindings[name].series)

    # -- observable rows ------------------------------------------------------------------------------
    def set_observer(self, name: str, observe: ObserveFn | None) -> None:
        """Install the callback of the observable metric named ``name`` (``None`` removes it)."""
        row = METRICS_BY_NAME.get(name)
        if row is None or row.kind is not _OG:
            raise ValueError(f"{name!r} is not an observable metric of the metrics table")
        if observe is None:
            self._observers.pop(name, None)
        else:
            self._observers[name] = observe

    def _observe(self, row: MetricDef, *, otel: bool) -> Iterator[tuple[dict[str, str], float]]:
        observe = self._observers.get(row.name)
        if observe is None:
            return
        seen: dict[tuple[str, ...], float] = {}
        limit = self._bindings[row.name].limit
        for values, value in observe():
            key = values if (values in seen or len(seen) < limit) else (OTHER,) * len(values)
            seen[key] = max(seen.get(key, value), value)
        keys = row.attribute_keys if otel else row.label_keys
        prefix = ("asyncmq",) if row.system_label else ()
        for values, value in seen.items():
            yield dict(zip(keys, prefix + values, strict=True)), value

    # -- scrape sink ------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """The scrape sink's metric families, observable rows included (``_created`` still present)."""
        for row in METRICS:
            prom = self._prom.get(row.name)
            if prom is not None:
                yield from prom.collect()
            elif self._accumulate and row.kind is not _OG:
                yield self._accumulated(row)
            elif row.kind is _OG and self.registry is not None:
                family = GaugeMetricFamily(
                    row.prometheus_name, row.description, labels=row.label_keys,
                    unit="seconds" if row.unit == "s" else "",
                )  # fmt: skip
                for labels, value in self._observe(row, otel=False):
                    family.add_metric([labels[key] for key in row.label_keys], value)
                yield family

    def _accumulated(self, row: MetricDef) -> Metric:
        bindings = self._bindings[row.name]
        prefix = ("asyncmq",) if row.system_label else ()
        # A copy: the event loop may bind a new series while the scrape thread reads.
        bound = list(bindings.series.items())
        overflow = bindings._overflow  # noqa: SLF001 - the bindings record is private to this class
        if overflow is not None:
            bound.append(((OTHER,) * len(row.labels), overflow))
        return _accumulators.families(
            row.prometheus_type,
            row.prometheus_name,
            row.description,
            row.label_keys,
            "seconds" if row.unit == "s" else "",
            [
                (prefix + values, series._prom if isinstance(series, _Series) else series)  # noqa: SLF001
                for values, series in bound
            ],
        )

    def close(self) -> None:
        """Unregister the scrape sink's collector (OTel instruments die with their provider)."""
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self.registry is not None and self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None

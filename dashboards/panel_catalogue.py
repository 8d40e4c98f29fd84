"""The panel catalogue of the asyncmq_otel Grafana dashboards: every panel, its PromQL and its unit.

The panels follow the telemetry contract's table (§7) row by row; ``generate.py`` turns these specs
into dashboard JSON. Metric names come from the definition table in ``asyncmq_otel.telemetry.metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from grafana_foundation_sdk.models import units

from asyncmq_otel.telemetry.metrics import METRICS as METRIC_TABLE

__all__ = [
    "DASHBOARDS",
    "EXTERNAL_METRICS",
    "METRICS",
    "METRIC_TABLE",
    "RATE_INTERVAL",
    "DashboardSpec",
    "Format",
    "Kind",
    "PanelSpec",
    "Query",
    "RowSpec",
    "promql",
]

# ---------------------------------------------------------------------------------------------------------
# Metric names: panels take them from here, and here takes them from the definition table of the telemetry
# contract (§3.4) in asyncmq_otel.telemetry.metrics, the same rows both sinks are built from. Keys are the
# OTel names, values the Prometheus names, so a panel cannot query a metric the library does not export.
# ---------------------------------------------------------------------------------------------------------
EXTERNAL_METRICS: Final[Mapping[str, str]] = {
    # Not ours: prometheus_client's process collector and Prometheus' own per-target series.
    "process.cpu.seconds": "process_cpu_seconds_total",
    "process.resident_memory": "process_resident_memory_bytes",
    "scrape.duration": "scrape_duration_seconds",
    "scrape.samples_scraped": "scrape_samples_scraped",
}
METRICS: Final[Mapping[str, str]] = {
    **{row.name: row.prometheus_name for row in METRIC_TABLE},
    **EXTERNAL_METRICS,
}


# Contract shorthands (§7): <QT>/<Q> are the queue/task matchers, $ri the rate window.
_QT: Final = 'messaging_destination_name=~"$queue",asyncmq_task_name=~"$task"'
_Q: Final = 'messaging_destination_name=~"$queue"'
RATE_INTERVAL: Final = "$__rate_interval"

Kind = Literal["stat", "timeseries", "heatmap", "table"]
Format = Literal["time_series", "table", "heatmap"]


def promql(template: str) -> str:
    """Expand a query written in the contract's notation, taking metric names from ``METRICS``.

    ``%(otel.name)s`` becomes the Prometheus name, so an unknown metric fails with ``KeyError`` here
    instead of producing a panel that can never show data.
    """
    expanded = template.replace("<QT>", _QT).replace("<Q>", _Q).replace("$ri", RATE_INTERVAL)
    return expanded % METRICS


@dataclass(frozen=True)
class Query:
    """One panel target."""

    expr: str
    legend: str = ""
    exemplar: bool = False
    unit: str | None = None  # overrides the panel unit for this query's series only
    fmt: Format = "time_series"

    @property
    def instant(self) -> bool:
        """Tables show the current value; every other panel plots a range."""
        return self.fmt == "table"


@dataclass(frozen=True)
class PanelSpec:
    """One row of the contract table, plus how Grafana should draw it."""

    title: str
    kind: Kind
    unit: str
    queries: tuple[Query, ...]
    description: str
    exemplars: bool = False  # a ✦ panel of the contract
    error_link: bool = False  # links its series to failed spans in Jaeger
    slow_link: bool = False  # links its series to slow spans in Jaeger
    stacked: bool = False
    ratio: bool = False  # 0-1 axis
    fixed_windows: frozenset[str] = frozenset()  # range windows the contract fixes instead of $ri
    thresholds: tuple[tuple[float, str], ...] = ()  # (value, colour) steps above the green base
    width: int = 0  # grid columns out of 24; 0 picks the kind's default
    height: int = 0


@dataclass(frozen=True)
class RowSpec:
    """A dashboard row: a contract row title and its panels."""

    title: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True)
class DashboardSpec:
    """One generated dashboard file."""

    uid: str
    title: str
    description: str
    rows: tuple[RowSpec, ...]

    @property
    def filename(self) -> str:
        """File name under dashboards/, derived from the uid so links and files never disagree."""
        return f"{self.uid}.json"


def _q(
    template: str,
    legend: str = "",
    *,
    exemplar: bool = False,
    unit: str | None = None,
    fmt: Format = "time_series",
) -> Query:
    """A target whose expression is written in the contract's notation (see ``promql``)."""
    return Query(promql(template), legend, exemplar=exemplar, unit=unit, fmt=fmt)


def _quantiles(
    template: str, legend: str, quantiles: Sequence[str], *, exemplar: bool = False
) -> tuple[Query, ...]:
    """One target per quantile for the contract's "pXX/pYY" panels; ``{q}`` and ``{p}`` mark the spots.

    Exemplars belong to the histogram, not the quantile, so only the p95 target fetches them.
    """
    return tuple(
        _q(
            template.replace("{q}", q),
            legend.replace("{p}", f"p{round(float(q) * 100)}"),
            exemplar=exemplar and q == "0.95",
        )
        for q in quantiles
    )


_BY_QT: Final = "{{messaging_destination_name}} {{asyncmq_task_name}}"
_BY_Q: Final = "{{messaging_destination_name}}"

OVERVIEW_ROW: Final = RowSpec(
    "Overview",
    (
        PanelSpec(
            "Completed/s",
            "stat",
            units.OpsPerSecond,
            (_q('sum(rate(%(asyncmq.job.outcomes)s{outcome="completed",<QT>}[$ri]))'),),
            "Jobs completed per second across the selected queues and tasks.",
        ),
        PanelSpec(
            "Terminal failure ratio",
            "stat",
            units.PercentUnit,
            (
                _q(
                    'sum(rate(%(asyncmq.job.outcomes)s{outcome=~"failed|expired",<QT>}[$ri])) / '
                    "clamp_min(sum(rate("
                    '%(asyncmq.job.outcomes)s{outcome=~"completed|failed|expired",<QT>}[$ri])), 1e-9)'
                ),
            ),
            "Share of finished jobs that ended in the dead-letter queue (failed or expired).",
            error_link=True,
            ratio=True,
            thresholds=((0.05, "red"),),
        ),
        PanelSpec(
            "Wait p95",
            "stat",
            units.Seconds,
            (
                _q(
                    "histogram_quantile(0.95, sum by (le) "
                    "(rate(%(asyncmq.job.wait.duration)s_bucket{<QT>}[$ri])))"
                ),
            ),
            "95th percentile of the time attempts waited between becoming runnable and starting.",
            thresholds=((60.0, "red"),),
        ),
        PanelSpec(
            "Process p95",
            "stat",
            units.Seconds,
            (
                _q(
                    "histogram_quantile(0.95, sum by (le) "
                    "(rate(%(messaging.process.duration)s_bucket{<QT>}[$ri])))"
                ),
            ),
            "95th percentile of handler run time per attempt.",
        ),
        PanelSpec(
            "Ready / DLQ depth",
            "stat",
            units.Short,
            (
                _q(
                    'sum(max by (messaging_destination_name) (%(asyncmq.queue.depth)s{state="ready",<Q>}))',
                    "ready",
                ),
                _q(
                    'sum(max by (messaging_destination_name) (%(asyncmq.queue.depth)s{state="dead",<Q>}))',
                    "dead",
                ),
            ),
            "Jobs ready to run and jobs in the dead-letter queue, from the queue sampler.",
        ),
        PanelSpec(
            "Oldest ready job",
            "stat",
            units.Seconds,
            (_q("max(%(asyncmq.queue.oldest_age)s{<Q>})"),),
            "How long the oldest ready job has been runnable without starting.",
            thresholds=((300.0, "red"),),
        ),
        PanelSpec(
            "Workers up",
            "stat",
            units.Short,
            (_q("sum(max by (job, instance) (%(asyncmq.worker.up)s{<Q>}))"),),
            "Worker processes serving the selected queues and not shutting down.",
        ),
        PanelSpec(
            "Utilisation",
            "stat",
            units.PercentUnit,
            (
                _q(
                    "sum(%(asyncmq.worker.jobs.active)s{<Q>}) / "
                    "clamp_min(sum(%(asyncmq.worker.concurrency)s{<Q>}), 1)"
                ),
            ),
            "In-flight jobs as a share of the workers' concurrency limits.",
            ratio=True,
            thresholds=((0.9, "orange"),),
        ),
    ),
)

RED_ROW: Final = RowSpec(
    "RED",
    (
        PanelSpec(
            "Outcomes/s by queue \u00d7 task",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name, asyncmq_task_name, outcome) "
                    "(rate(%(asyncmq.job.outcomes)s{<QT>}[$ri]))",
                    f"{_BY_QT} {{{{outcome}}}}",
                ),
            ),
            "Attempt outcomes per second: completed, retried, failed, expired, cancelled, interrupted.",
            stacked=True,
        ),
        PanelSpec(
            "Enqueued/s",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name, asyncmq_task_name, messaging_operation_name) "
                    "(rate(%(messaging.client.sent.messages)s{<QT>}[$ri]))",
                    f"{_BY_QT} {{{{messaging_operation_name}}}}",
                ),
            ),
            "Jobs stored by producers per second: send (runnable now) and schedule (delayed).",
        ),
        PanelSpec(
            "Error ratio by task",
            "timeseries",
            units.PercentUnit,
            (
                _q(
                    "sum by (messaging_destination_name, asyncmq_task_name) "
                    '(rate(%(asyncmq.job.outcomes)s{outcome=~"failed|expired",<QT>}[$ri])) / '
                    "clamp_min(sum by (messaging_destination_name, asyncmq_task_name) "
                    '(rate(%(asyncmq.job.outcomes)s{outcome=~"completed|failed|expired",<QT>}[$ri])), 1e-9)',
                    _BY_QT,
                ),
            ),
            "Share of finished jobs dead-lettered, per queue and task; a series links to its failed spans.",
            error_link=True,
            ratio=True,
        ),
        PanelSpec(
            "Process p50/p95/p99",
            "timeseries",
            units.Seconds,
            _quantiles(
                "histogram_quantile({q}, sum by (le, messaging_destination_name, asyncmq_task_name) "
                "(rate(%(messaging.process.duration)s_bucket{<QT>}[$ri])))",
                f"{{p}} {_BY_QT}",
                ("0.5", "0.95", "0.99"),
                exemplar=True,
            ),
            "Handler run time per queue and task. Exemplar dots open the attempt's trace in Jaeger.",
            exemplars=True,
            slow_link=True,
        ),
        PanelSpec(
            "Process heatmap",
            "heatmap",
            units.Seconds,
            (
                _q(
                    "sum by (le) (rate(%(messaging.process.duration)s_bucket{<QT>}[$ri]))",
                    "{{le}}",
                    fmt="heatmap",
                ),
            ),
            "Distribution of handler run times over time.",
            width=24,
        ),
    ),
)

SATURATION_ROW: Final = RowSpec(
    "Saturation",
    (
        PanelSpec(
            "Wait p50/p95/p99",
            "timeseries",
            units.Seconds,
            _quantiles(
                "histogram_quantile({q}, sum by (le, messaging_destination_name) "
                "(rate(%(asyncmq.job.wait.duration)s_bucket{<QT>}[$ri])))",
                f"{{p}} {_BY_Q}",
                ("0.5", "0.95", "0.99"),
                exemplar=True,
            ),
            "Runnable-to-started time per queue (delays and backoff excluded). Exemplar dots open traces.",
            exemplars=True,
        ),
        PanelSpec(
            "Wait heatmap",
            "heatmap",
            units.Seconds,
            (
                _q(
                    "sum by (le) (rate(%(asyncmq.job.wait.duration)s_bucket{<QT>}[$ri]))",
                    "{{le}}",
                    fmt="heatmap",
                ),
            ),
            "Distribution of queue wait times over time.",
        ),
        PanelSpec(
            "Depth by state",
            "timeseries",
            units.Short,
            (
                _q(
                    "max by (messaging_destination_name, state) (%(asyncmq.queue.depth)s{<Q>})",
                    f"{_BY_Q} {{{{state}}}}",
                ),
            ),
            "Jobs per queue and state (ready, scheduled, active, dead), from the queue sampler.",
        ),
        PanelSpec(
            "Oldest ready job age",
            "timeseries",
            units.Seconds,
            (_q("max by (messaging_destination_name) (%(asyncmq.queue.oldest_age)s{<Q>})", _BY_Q),),
            "How long the oldest ready job of each queue has been waiting.",
            thresholds=((300.0, "red"),),
        ),
        PanelSpec(
            "Net backlog growth",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name) "
                    '(rate(%(messaging.client.sent.messages)s{error_type="",<Q>}[5m])) - '
                    "sum by (messaging_destination_name) "
                    '(rate(%(asyncmq.job.outcomes)s{outcome!~"retried|interrupted",<Q>}[5m]))',
                    _BY_Q,
                ),
            ),
            "Jobs stored minus jobs finished per second, over 5 minutes; above zero the backlog grows.",
            fixed_windows=frozenset({"5m"}),
        ),
        PanelSpec(
            "Time to drain",
            "timeseries",
            units.Seconds,
            (
                _q(
                    'max by (messaging_destination_name) (%(asyncmq.queue.depth)s{state="ready",<Q>}) / '
                    "clamp_min(sum by (messaging_destination_name) "
                    '(rate(%(asyncmq.job.outcomes)s{outcome="completed",<Q>}[10m])), 1e-9)',
                    _BY_Q,
                ),
            ),
            "Ready jobs divided by the completion rate of the last 10 minutes.",
            fixed_windows=frozenset({"10m"}),
        ),
        PanelSpec(
            "Utilisation by queue",
            "timeseries",
            units.PercentUnit,
            (
                _q(
                    "sum by (messaging_destination_name) (%(asyncmq.worker.jobs.active)s{<Q>}) / clamp_min("
                    "sum by (messaging_destination_name) (%(asyncmq.worker.concurrency)s{<Q>}), 1)",
                    _BY_Q,
                ),
            ),
            "In-flight jobs as a share of the concurrency serving each queue.",
            ratio=True,
            thresholds=((0.9, "orange"),),
        ),
        PanelSpec(
            "Throttled/s and throttle wait p95",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name) (rate(%(asyncmq.ratelimit.throttled)s{<Q>}[$ri]))",
                    f"throttled/s {_BY_Q}",
                ),
                _q(
                    "histogram_quantile(0.95, sum by (le, messaging_destination_name) "
                    "(rate(%(asyncmq.ratelimit.wait)s_bucket{<Q>}[$ri])))",
                    f"wait p95 {_BY_Q}",
                    unit=units.Seconds,
                ),
            ),
            "Jobs held by the rate limiter per second, and the 95th percentile of the hold.",
        ),
        PanelSpec(
            "Paused queues",
            "timeseries",
            units.BoolYesNo,
            (_q("max by (messaging_destination_name) (%(asyncmq.queue.paused)s{<Q>})", _BY_Q),),
            "1 while a queue is paused: workers claim nothing from it.",
            width=12,
        ),
        # An extension to the contract's panel table (issue 6): liveness per queue from the registry.
        PanelSpec(
            "Consumers per queue",
            "timeseries",
            units.Short,
            (_q("max by (messaging_destination_name) (%(asyncmq.queue.consumers)s{<Q>})", _BY_Q),),
            "Live workers consuming each queue (heartbeat younger than its expiry), from the worker "
            "registry; 0 with ready jobs means nobody will run them.",
            thresholds=((0.0, "red"), (1.0, "green")),
            width=12,
        ),
    ),
)

RELIABILITY_ROW: Final = RowSpec(
    "Reliability",
    (
        PanelSpec(
            "Retries/s",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name, asyncmq_task_name) "
                    '(rate(%(asyncmq.job.outcomes)s{outcome="retried",<QT>}[$ri]))',
                    _BY_QT,
                ),
            ),
            "Attempts that raised and were scheduled for another try, per second.",
            error_link=True,
        ),
        PanelSpec(
            "Attempts per finished job p50/p95",
            "timeseries",
            units.Short,
            _quantiles(
                "histogram_quantile({q}, sum by (le, asyncmq_task_name) "
                "(rate(%(asyncmq.job.attempts)s_bucket{<QT>}[$ri])))",
                "{p} {{asyncmq_task_name}}",
                ("0.5", "0.95"),
            ),
            "Handler runs a job needed before its terminal outcome.",
        ),
        PanelSpec(
            "DLQ inflow by reason",
            "timeseries",
            units.Short,
            (
                _q(
                    "sum by (messaging_destination_name, reason) "
                    '(increase(%(asyncmq.job.outcomes)s{outcome=~"failed|expired",<QT>}[$ri]))',
                    f"{_BY_Q} {{{{reason}}}}",
                ),
            ),
            "Jobs moved to the dead-letter queue per rate interval, by DLQ reason.",
            error_link=True,
        ),
        PanelSpec(
            "Stalled jobs",
            "timeseries",
            units.Short,
            (
                _q(
                    "sum by (messaging_destination_name) (increase(%(asyncmq.job.stalled)s{<QT>}[$ri]))",
                    _BY_Q,
                ),
            ),
            "Jobs whose lease expired and that the reaper redelivered.",
        ),
        PanelSpec(
            "Top error types",
            "table",
            units.Short,
            (
                _q(
                    "topk(10, sum by (asyncmq_task_name, error_type) "
                    "(increase(%(asyncmq.job.errors)s{<QT>}[$__range])))",
                    fmt="table",
                ),
            ),
            "The ten most frequent error types of failed attempts (retried or dead-lettered) over the "
            "dashboard's time range.",
            error_link=True,
            fixed_windows=frozenset({"$__range"}),
        ),
        PanelSpec(
            "End-to-end p95 by outcome",
            "timeseries",
            units.Seconds,
            (
                _q(
                    "histogram_quantile(0.95, sum by (le, outcome) "
                    "(rate(%(asyncmq.job.e2e.duration)s_bucket{<QT>}[$ri])))",
                    "{{outcome}}",
                    exemplar=True,
                ),
            ),
            "First enqueue to terminal outcome, retries and delays included. Exemplar dots open traces.",
            exemplars=True,
        ),
    ),
)

_BY_QS: Final = "{{messaging_destination_name}} {{schedule}}"

SCHEDULES_ROW: Final = RowSpec(
    "Schedules",
    (
        PanelSpec(
            "Schedule fires/s",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    "sum by (messaging_destination_name, schedule) "
                    "(rate(%(asyncmq.schedule.fired)s{<Q>}[$ri]))",
                    _BY_QS,
                ),
            ),
            "Jobs fired by each schedule (periodic job) per second; a catch-up fires several at once.",
        ),
        PanelSpec(
            "Schedule lag p95",
            "timeseries",
            units.Seconds,
            (
                _q(
                    "histogram_quantile(0.95, sum by (le, messaging_destination_name, schedule) "
                    "(rate(%(asyncmq.schedule.lag)s_bucket{<Q>}[$ri])))",
                    _BY_QS,
                ),
            ),
            "How late ticks fire: fire time minus due time (backend clock). High after an outage.",
        ),
        PanelSpec(
            "Next run in",
            "table",
            units.Seconds,
            (
                _q(
                    "max by (messaging_destination_name, schedule) "
                    "(%(asyncmq.schedule.next_run.timestamp)s{<Q>}) - time()",
                    fmt="table",
                ),
            ),
            "Seconds until each active schedule's next run; negative means it is late (nobody fires it).",
            thresholds=((0.0, "red"),),
        ),
    ),
)


FLOWS_ROW: Final = RowSpec(
    "Flows",
    (
        PanelSpec(
            "Blocked jobs",
            "timeseries",
            units.Short,
            (
                _q(
                    'max by (messaging_destination_name) (%(asyncmq.queue.depth)s{state="blocked",<Q>})',
                    _BY_Q,
                ),
            ),
            "Jobs waiting for their parents (depends_on, flows), per queue.",
            width=8,
        ),
        PanelSpec(
            "Longest-blocked job",
            "timeseries",
            units.Seconds,
            (
                _q(
                    "max by (messaging_destination_name) (%(asyncmq.queue.blocked.oldest_age)s{<Q>})",
                    _BY_Q,
                ),
            ),
            "How long the job blocked longest has waited for its parents; it grows when a parent "
            "does not run (its queue has no worker, is paused, or the parent hangs).",
            thresholds=((3600.0, "orange"),),
            width=8,
        ),
        PanelSpec(
            "Dependency failures",
            "timeseries",
            units.Short,
            (
                _q(
                    "sum by (messaging_destination_name, asyncmq_task_name) "
                    '(increase(%(asyncmq.job.outcomes)s{outcome="failed",reason="dependency_failed",<QT>}[$ri]))',
                    _BY_QT,
                ),
            ),
            "Jobs dead-lettered because a parent was dead-lettered or cancelled; retrying the parent "
            "from the DLQ blocks them again.",
            error_link=True,
            width=8,
        ),
    ),
)

WORKERS_ROW: Final = RowSpec(
    "Workers",
    (
        PanelSpec(
            "Heartbeat age",
            "table",
            units.Seconds,
            (
                _q(
                    "time() - max by (job, instance, messaging_consumer_group_name) "
                    "(%(asyncmq.worker.heartbeat.timestamp)s{<Q>})",
                    fmt="table",
                ),
            ),
            "Seconds since each worker last wrote its heartbeat.",
            thresholds=((60.0, "red"),),
        ),
        PanelSpec(
            "In-flight by worker",
            "timeseries",
            units.Short,
            (_q("sum by (instance) (%(asyncmq.worker.jobs.active)s{<Q>})", "{{instance}}"),),
            "Attempts running in each worker process.",
        ),
        PanelSpec(
            "Longest-running job",
            "timeseries",
            units.Seconds,
            (
                _q(
                    "max by (instance, messaging_destination_name) (%(asyncmq.job.running.max_age)s{<Q>})",
                    f"{{{{instance}}}} {_BY_Q}",
                ),
            ),
            "Age of the oldest in-flight attempt per worker and queue; 0 when idle.",
            thresholds=((1800.0, "red"),),
        ),
        PanelSpec(
            "CPU and RSS",
            "timeseries",
            units.PercentUnit,
            (
                _q('sum by (instance) (rate(%(process.cpu.seconds)s{job=~"$job"}[$ri]))', "cpu {{instance}}"),
                _q('%(process.resident_memory)s{job=~"$job"}', "rss {{instance}}", unit=units.BytesIEC),
            ),
            "CPU in cores (100% is one core) and resident memory per process.",
        ),
    ),
)

TELEMETRY_ROW: Final = RowSpec(
    "Telemetry health",
    (
        PanelSpec(
            "Dropped telemetry/s",
            "timeseries",
            units.OpsPerSecond,
            (
                _q(
                    'sum by (signal, reason) (rate(%(asyncmq.telemetry.dropped)s{job=~"$job"}[$ri]))',
                    "{{signal}} {{reason}}",
                ),
            ),
            "Events, spans, metric records and log lines dropped, by signal and reason; 0 when healthy.",
        ),
        PanelSpec(
            "Scrape duration and size",
            "timeseries",
            units.Seconds,
            (
                _q('%(scrape.duration)s{job=~"$job"}', "duration {{instance}}"),
                _q('%(scrape.samples_scraped)s{job=~"$job"}', "samples {{instance}}", unit=units.Short),
            ),
            "How long Prometheus takes to scrape each process, and how many samples it gets.",
        ),
    ),
)

DASHBOARDS: Final[tuple[DashboardSpec, ...]] = (
    DashboardSpec(
        "asyncmq-overview",
        "AsyncMQ / Overview",
        "Throughput, failures, latency and capacity at a glance.",
        (OVERVIEW_ROW, RED_ROW),
    ),
    DashboardSpec(
        "asyncmq-queue-detail",
        "AsyncMQ / Queue and task detail",
        "Backlog, wait, rate limiting, retries, dead letters, schedules and flows per queue and task.",
        (SATURATION_ROW, RELIABILITY_ROW, SCHEDULES_ROW, FLOWS_ROW),
    ),
    DashboardSpec(
        "asyncmq-workers",
        "AsyncMQ / Workers",
        "Liveness, load and resource use of each worker process.",
        (WORKERS_ROW,),
    ),
    DashboardSpec(
        "asyncmq-telemetry-health",
        "AsyncMQ / Telemetry health",
        "Whether the telemetry pipeline itself is losing data.",
        (TELEMETRY_ROW,),
    ),
)

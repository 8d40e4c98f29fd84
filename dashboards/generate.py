"""Build the asyncmq_otel Grafana dashboards from code (telemetry contract §7).

``python dashboards/generate.py`` writes ``dashboards/*.json``; ``--check`` regenerates them in memory
and exits 1 when a committed file differs, is missing, or is no longer generated. The panels, their
PromQL and their units follow the contract table row by row; ``panel_queries()`` lists every panel
query for the live test that runs them against a real Prometheus.
"""

# The SDK's builder methods take their one boolean argument positionally (`.multi(True)`).
# ruff: noqa: FBT003

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote, urlencode

with warnings.catch_warnings():
    # The SDK warns at import time that the classic dashboard schema is superseded by v2. We build the
    # classic schema on purpose: Grafana 12 file provisioning loads it without feature toggles.
    warnings.filterwarnings("ignore", message="Prefer using dashboardv2", category=DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builder
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common, units
    from grafana_foundation_sdk.models import dashboard as dash_model
    from grafana_foundation_sdk.models import prometheus as prometheus_model

from asyncmq_otel.telemetry.metrics import METRICS as METRIC_TABLE

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

# Fixed identities shared with dashboards/provisioning and the alert rules' dashboard_url.
PROMETHEUS_DATASOURCE_UID: Final = "asyncmq-prometheus"
JAEGER_DATASOURCE_UID: Final = "asyncmq-jaeger"
# Jaeger links are opened by the viewer's browser, so this is the address docker-compose publishes.
JAEGER_UI_URL: Final = "http://localhost:16686"
# The worker's OTel service.name when none is configured (telemetry contract §5).
WORKER_SERVICE_NAME: Final = "asyncmq-worker"
# "Slowest spans" links search for process spans at least this long.
SLOW_SPAN_MIN_DURATION: Final = "1s"
DASHBOARD_TAG: Final = "asyncmq"
OUTPUT_DIR: Final = Path(__file__).resolve().parent

# Contract shorthands (§7): <QT>/<Q> are the queue/task matchers, $ri the rate window.
_QT: Final = 'messaging_destination_name=~"$queue",asyncmq_task_name=~"$task"'
_Q: Final = 'messaging_destination_name=~"$queue"'
RATE_INTERVAL: Final = "$__rate_interval"
_DS: Final = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

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


@dataclass(frozen=True)
class PanelQuery:
    """A panel query as the live test needs it: where it comes from and how to run it."""

    dashboard_uid: str
    row: str
    panel: str
    ref_id: str
    expr: str
    instant: bool
    exemplar: bool = False  # the target asks Prometheus for exemplars (trace ids)


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
                    "topk(10, sum by (asyncmq_task_name, error_type) (increase(%(asyncmq.job.outcomes)s"
                    '{outcome=~"retried|failed",error_type!="",<QT>}[$__range])))',
                    fmt="table",
                ),
            ),
            "The ten most frequent exception types over the dashboard's time range.",
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
        "Backlog, wait, rate limiting, retries and dead letters per queue and task.",
        (SATURATION_ROW, RELIABILITY_ROW),
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


def _jaeger_search(params: Mapping[str, str], *, operation: str | None = None) -> str:
    """A Jaeger UI search URL over the panel's time range.

    Grafana variables must reach Grafana unencoded, so they are appended after the encoded fixed part.
    Jaeger wants microseconds; Grafana's ``${__from}``/``${__to}`` are milliseconds.
    """
    query = urlencode({"service": WORKER_SERVICE_NAME, **params, "lookback": "custom", "limit": "20"})
    if operation is not None:
        query += "&operation=" + quote("process ", safe="") + operation
    return f"{JAEGER_UI_URL}/search?{query}&start=${{__from}}000&end=${{__to}}000"


_ERROR_TAGS: Final = json.dumps({"error": "true"}, separators=(",", ":"))
_SERIES_QUEUE: Final = "${__field.labels.messaging_destination_name}"


_Links = list[cogbuilder.Builder[dash_model.DashboardLink]]


def _links(spec: PanelSpec) -> tuple[_Links, _Links]:
    """Panel links (whole panel) and data links (per series) into Jaeger."""
    panel_links: _Links = []
    data_links: _Links = []
    has_queue = any("messaging_destination_name" in q.legend for q in spec.queries)
    if spec.error_link:
        panel_links.append(
            dash.DashboardLink("Failed spans in Jaeger")
            .type(dash_model.DashboardLinkType.LINK)
            .url(_jaeger_search({"tags": _ERROR_TAGS}))
            .target_blank(True)
        )
        if has_queue:
            data_links.append(
                dash.DashboardLink("Failed process spans of this queue in Jaeger")
                .url(_jaeger_search({"tags": _ERROR_TAGS}, operation=_SERIES_QUEUE))
                .target_blank(True)
            )
    if spec.slow_link and has_queue:
        data_links.append(
            dash.DashboardLink("Slower process spans of this queue in Jaeger")
            .url(_jaeger_search({}, operation=_SERIES_QUEUE) + "&minDuration=${__value.raw}s")
            .target_blank(True)
        )
    return panel_links, data_links


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    target = (
        prometheus.Dataquery()
        .datasource(_DS)
        .ref_id(ref_id)
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .format(prometheus_model.PromQueryFormat(query.fmt))
        .exemplar(query.exemplar)
    )
    return target.instant() if query.instant else target.range()


def _thresholds(spec: PanelSpec) -> dash.ThresholdsConfig:
    steps = [dash_model.Threshold(value=None, color="green")]
    steps += [dash_model.Threshold(value=value, color=colour) for value, colour in spec.thresholds]
    return dash.ThresholdsConfig().mode(dash_model.ThresholdsMode.ABSOLUTE).steps(steps)


_PanelBuilder = stat.Panel | timeseries.Panel | heatmap.Panel | table.Panel
_REF_IDS: Final = "ABCDEFGH"


def _visualisation(spec: PanelSpec) -> _PanelBuilder:
    """The panel type with the options that make its contract row readable."""
    if spec.kind == "stat":
        return (
            stat.Panel()
            .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common.BigValueGraphMode.AREA)
        )
    if spec.kind == "heatmap":
        # The query already returns per-bucket rates; Grafana must not re-bucket them.
        return heatmap.Panel().calculate(False).y_axis(heatmap.YAxisConfig().unit(spec.unit))
    if spec.kind == "table":
        # An instant table query also returns a Time column, which says nothing here.
        organize = dash_model.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {"Time": True}}
        )
        return table.Panel().with_transformation(organize)
    legend = (
        common_builder.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    tooltip = (
        common_builder.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )
    panel = timeseries.Panel().legend(legend).tooltip(tooltip)
    if spec.stacked:
        panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(
            60
        )
    return panel


def _panel(spec: PanelSpec, panel_id: int) -> _PanelBuilder:
    builder = (
        _visualisation(spec)
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(_DS)
        .unit(spec.unit)
        .thresholds(_thresholds(spec))
        .height(spec.height or (4 if spec.kind == "stat" else 8))
        .span(spec.width or (6 if spec.kind == "stat" else 12))
    )
    if spec.ratio:
        builder = builder.min(0).max(1)
    for ref_id, query in zip(_REF_IDS, spec.queries, strict=False):
        builder = builder.with_target(_target(query, ref_id))
        if query.unit is not None:
            builder = builder.override_by_query(
                ref_id, [dash_model.DynamicConfigValue(id_val="unit", value=query.unit)]
            )
    panel_links, data_links = _links(spec)
    if panel_links:
        builder = builder.links(panel_links)
    if data_links:
        builder = builder.data_links(data_links)
    return builder


def _variables() -> list[cogbuilder.Builder[dash_model.VariableModel]]:
    """datasource, job, queue, task and group, in the order the contract lists them (§7)."""
    datasource = (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(dash_model.VariableOption(selected=True, text="Prometheus", value=PROMETHEUS_DATASOURCE_UID))
    )

    def query_variable(name: str, label: str, query: str, *, all_value: str | None) -> dash.QueryVariable:
        variable = (
            dash.QueryVariable(name)
            .label(label)
            .datasource(_DS)
            .query(query)
            .definition(query)
            .refresh(dash_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .current(dash_model.VariableOption(selected=True, text="All", value="$__all"))
        )
        return variable.all_value(all_value) if all_value is not None else variable

    # Every asyncmq process exports the pre-initialised dropped counter, so its jobs are exactly ours;
    # "All" expands to that list rather than `.*`, which would pull in every other process' CPU and RSS.
    job = query_variable(
        "job", "Job", promql("label_values(%(asyncmq.telemetry.dropped)s, job)"), all_value=None
    )
    # Queues known to the sampler or to a worker: a queue with jobs and no consumer must still be listed.
    # `.*` for "All" also matches series of queues or tasks that appeared after the variable was loaded.
    queue = query_variable(
        "queue",
        "Queue",
        promql(
            'label_values({__name__=~"%(asyncmq.queue.depth)s|%(asyncmq.worker.up)s"}, '
            "messaging_destination_name)"
        ),
        all_value=".*",
    )
    task = query_variable(
        "task",
        "Task",
        promql("label_values(%(asyncmq.job.outcomes)s{<Q>}, asyncmq_task_name)"),
        all_value=".*",
    )
    group = query_variable(
        "group",
        "Worker group",
        promql("label_values(%(asyncmq.worker.up)s{<Q>}, messaging_consumer_group_name)"),
        all_value=".*",
    )
    return [datasource, job, queue, task, group]


def _dashboard_links() -> _Links:
    """Links shown on every dashboard: the sibling dashboards and the Jaeger searches (§7)."""
    return [
        dash.DashboardLink("AsyncMQ dashboards")
        .type(dash_model.DashboardLinkType.DASHBOARDS)
        .tags([DASHBOARD_TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True),
        dash.DashboardLink("Jaeger: slowest process spans")
        .type(dash_model.DashboardLinkType.LINK)
        .icon("external link")
        .url(_jaeger_search({"minDuration": SLOW_SPAN_MIN_DURATION}))
        .target_blank(True),
        dash.DashboardLink("Jaeger: failed spans")
        .type(dash_model.DashboardLinkType.LINK)
        .icon("external link")
        .url(_jaeger_search({"tags": _ERROR_TAGS}))
        .target_blank(True),
    ]


def build_dashboard(spec: DashboardSpec) -> dash_model.Dashboard:
    """The classic-schema dashboard model for one spec."""
    builder = (
        dash.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags([DASHBOARD_TAG])
        .timezone("browser")
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(dash_model.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
        .links(_dashboard_links())
    )
    panel_id = 0
    for row in spec.rows:
        panel_id += 1
        builder = builder.with_row(dash.Row(row.title).id(panel_id).collapsed(False))
        for panel in row.panels:
            panel_id += 1
            builder = builder.with_panel(_panel(panel, panel_id))
    model = builder.build()
    # The SDK files every link under the controls menu; unset, Grafana shows them above the panels.
    for link in model.links or []:
        link.placement = None  # type: ignore[assignment]
    for built in model.panels or []:
        for link in getattr(built, "links", None) or []:
            link.placement = None
    return model


def render_dashboards() -> dict[str, str]:
    """Every dashboard file name mapped to its JSON text (sorted keys, so the output is deterministic)."""
    return {
        spec.filename: json.dumps(
            build_dashboard(spec), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False
        )
        + "\n"
        for spec in DASHBOARDS
    }


def panel_queries() -> list[PanelQuery]:
    """Every panel query of every dashboard, in dashboard order, for tests that run them."""
    return [
        PanelQuery(spec.uid, row.title, panel.title, ref_id, query.expr, query.instant, query.exemplar)
        for spec in DASHBOARDS
        for row in spec.rows
        for panel in row.panels
        for ref_id, query in zip(_REF_IDS, panel.queries, strict=False)
    ]


# "All" for every template variable: what the live test substitutes by default.
ALL_VALUES: Final[Mapping[str, str]] = {"job": ".*", "queue": ".*", "task": ".*", "group": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def render_query(
    expr: str,
    *,
    variables: Mapping[str, str] = ALL_VALUES,
    rate_interval: str = "1m",
    time_range: str = "1h",
) -> str:
    """Substitute Grafana's variables the way Grafana would, so Prometheus can run the query directly.

    ``rate_interval`` stands in for ``$__rate_interval`` (Grafana computes it as at least four scrape
    intervals) and ``time_range`` for ``$__range``. An unknown variable raises ``KeyError``.
    """
    values = {**variables, "__rate_interval": rate_interval, "__range": time_range}

    def substitute(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(substitute, expr)


def check(rendered: Mapping[str, str], directory: Path = OUTPUT_DIR) -> list[str]:
    """Problems that make the committed dashboards differ from what the code generates."""
    problems: list[str] = []
    for name, text in rendered.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing; run `python dashboards/generate.py`")
            continue
        committed = path.read_text(encoding="utf-8")
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(),
                text.splitlines(),
                f"{name} (committed)",
                f"{name} (generated)",
                lineterm="",
            )
            problems.append("\n".join(list(diff)[:40]))
    problems.extend(
        f"{path.name}: no longer generated; delete it"
        for path in sorted(directory.glob("*.json"))
        if path.name not in rendered
    )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` report drift and return 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--dir", type=Path, default=OUTPUT_DIR, help="where the dashboard JSON lives")
    args = parser.parse_args(argv)
    rendered = render_dashboards()
    if args.check:
        problems = check(rendered, args.dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("dashboards are out of date: run `python dashboards/generate.py`", file=sys.stderr)
            return 1
        return 0
    for name, text in rendered.items():
        (args.dir / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

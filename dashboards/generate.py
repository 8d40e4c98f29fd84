"""Build the asyncmq_otel Grafana dashboards from code (telemetry contract §7).

``python dashboards/generate.py`` writes ``dashboards/*.json``; ``--check`` regenerates them in memory
and exits 1 when a committed file differs, is missing, or is no longer generated. The panels, their
PromQL and their units (``panel_catalogue.py``) follow the contract table row by row; this module
draws them; ``panel_queries()`` lists every panel query for the live test that runs them against a
real Prometheus.
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
from typing import Final
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
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dash_model
    from grafana_foundation_sdk.models import prometheus as prometheus_model


# The panel catalogue sits beside this script, which runs by path (and is loaded by path in tests).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from panel_catalogue import (  # noqa: E402 - needs the path above
    DASHBOARDS,
    EXTERNAL_METRICS,
    METRIC_TABLE,
    METRICS,
    DashboardSpec,
    PanelSpec,
    Query,
    promql,
)

__all__ = [
    "DASHBOARDS",
    "EXTERNAL_METRICS",
    "METRICS",
    "METRIC_TABLE",
    "PanelQuery",
    "build_dashboard",
    "check",
    "main",
    "panel_queries",
    "promql",
    "render_dashboards",
    "render_query",
    "used_variables",
]

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

_DS: Final = common.DataSourceRef(type_val="prometheus", uid="${datasource}")


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


_VARIABLE_ORDER: Final = ("job", "queue", "task")
# A variable whose own query reads another one keeps that one on the dashboard too ($task lists the
# tasks of the selected queues).
_VARIABLE_NEEDS: Final[Mapping[str, tuple[str, ...]]] = {"task": ("queue",)}


def used_variables(spec: DashboardSpec) -> list[str]:
    """The template variables the panels of ``spec`` read, in the contract's order (§7).

    A variable no query reads only misleads: selecting a value changes nothing. So each dashboard
    declares the ones its queries use (``$group`` is read by none, and so exists on none).
    """
    exprs = [query.expr for row in spec.rows for panel in row.panels for query in panel.queries]
    used = {name for expr in exprs for match in _VARIABLE.finditer(expr) for name in match.groups() if name}
    for name in list(used):
        used.update(_VARIABLE_NEEDS.get(name, ()))
    return [name for name in _VARIABLE_ORDER if name in used]


def _variables(spec: DashboardSpec) -> list[cogbuilder.Builder[dash_model.VariableModel]]:
    """datasource, then those of job, queue and task that the dashboard's queries read (§7)."""
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
    variables = {"job": job, "queue": queue, "task": task}
    return [datasource, *(variables[name] for name in used_variables(spec))]


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
        .variables(_variables(spec))
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
ALL_VALUES: Final[Mapping[str, str]] = {"job": ".*", "queue": ".*", "task": ".*"}
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

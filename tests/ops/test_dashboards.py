"""The generated Grafana dashboards: drift, the contract's panels (§7), and lint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.ops import _contract, _promql
from tests.ops._contract import REPO_ROOT

pytestmark = pytest.mark.ops

DASHBOARD_DIR = REPO_ROOT / "dashboards"
# Series the dashboards may read beyond the contract's own metrics (§3.4): prometheus_client's process
# collector and Prometheus' per-target scrape series.
EXTERNAL_METRICS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
}
VARIABLES = ["datasource", "job", "queue", "task"]
VARIABLE_LABELS = {"queue": "messaging_destination_name", "task": "asyncmq_task_name", "job": "job"}


def committed_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every visualisation panel (rows excluded)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def all_panels() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, panel) for name, dashboard in committed_dashboards().items() for panel in panels(dashboard)
    ]


def contract_by_title() -> dict[str, _contract.ContractPanel]:
    return {panel.title: panel for panel in _contract.dashboard_panels()}


def histograms() -> set[str]:
    return {name for name in _contract.metric_names().values() if not name.endswith("_total")}


# --- drift ---------------------------------------------------------------------------------------------


def test_committed_json_matches_the_generator(dashboards_generator: ModuleType) -> None:
    problems = dashboards_generator.check(dashboards_generator.render_dashboards(), DASHBOARD_DIR)
    assert problems == [], "\n".join(problems)


def test_check_command_passes_on_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(DASHBOARD_DIR / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_command_fails_on_an_edited_missing_or_stale_file(tmp_path: Path) -> None:
    for path in DASHBOARD_DIR.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    edited = tmp_path / "asyncmq-overview.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("Completed/s", "Done/s"), encoding="utf-8")
    (tmp_path / "asyncmq-workers.json").unlink()
    (tmp_path / "old.json").write_text("{}", encoding="utf-8")

    result = subprocess.run(
        [sys.executable, str(DASHBOARD_DIR / "generate.py"), "--check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "Done/s" in result.stderr
    assert "asyncmq-workers.json: missing" in result.stderr
    assert "old.json: no longer generated" in result.stderr


def test_output_is_deterministic_with_sorted_keys(dashboards_generator: ModuleType) -> None:
    first = dashboards_generator.render_dashboards()
    assert first == dashboards_generator.render_dashboards()
    for text in first.values():
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- the contract's panels (§7) ------------------------------------------------------------------------


def test_every_contract_panel_is_generated_with_its_exact_promql(dashboards_generator: ModuleType) -> None:
    generated: dict[str, tuple[str, set[str]]] = {}
    for spec in dashboards_generator.DASHBOARDS:
        for row in spec.rows:
            for panel in row.panels:
                assert panel.title not in generated, f"panel title {panel.title!r} used twice"
                generated[panel.title] = (row.title, {query.expr for query in panel.queries})

    expected = contract_by_title()
    assert set(generated) == set(expected)
    for title, contract_panel in expected.items():
        row, exprs = generated[title]
        assert row == contract_panel.row, title
        assert exprs == contract_panel.exprs, title


def test_panel_kinds_units_and_exemplars_follow_the_contract_notes() -> None:
    expected = contract_by_title()
    for _, panel in all_panels():
        contract_panel = expected[panel["title"]]
        defaults = panel["fieldConfig"]["defaults"]
        note = contract_panel.note
        if note.startswith("table"):
            assert panel["type"] == "table", panel["title"]
        if note in {"s", "table, s"}:
            assert defaults["unit"] == "s", panel["title"]
        if note == "0–1":
            assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1), panel[
                "title"
            ]
        if note == "jobs/s":
            assert defaults["unit"] == "ops", panel["title"]
        if note == "stacked":
            assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
        exemplar_targets = [target for target in panel["targets"] if target["exemplar"]]
        assert bool(exemplar_targets) == contract_panel.exemplars, panel["title"]


def test_all_contract_rows_and_dashboards_exist() -> None:
    dashboards = committed_dashboards()
    assert set(dashboards) == {
        "asyncmq-overview.json",
        "asyncmq-queue-detail.json",
        "asyncmq-workers.json",
        "asyncmq-telemetry-health.json",
    }
    rows = [
        panel["title"]
        for dashboard in dashboards.values()
        for panel in dashboard["panels"]
        if panel["type"] == "row"
    ]
    assert sorted(rows) == sorted({panel.row for panel in _contract.dashboard_panels()})


# --- lint ----------------------------------------------------------------------------------------------


def test_every_panel_has_a_unit_and_the_templated_datasource() -> None:
    for name, panel in all_panels():
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']} has no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_rate_windows_are_the_rate_interval_except_the_contracts_fixed_windows() -> None:
    """$__rate_interval everywhere, but for the windows the contract fixes (5m, 10m, $__range)."""
    expected = contract_by_title()
    for _, panel in all_panels():
        allowed = {"$__rate_interval"}
        for expr in expected[panel["title"]].exprs:
            allowed |= _promql.range_windows(expr)
        for target in panel["targets"]:
            windows = _promql.range_windows(target["expr"])
            assert windows <= allowed, f"{panel['title']}: {windows - allowed}"


def test_counters_are_only_read_through_rate_or_increase() -> None:
    for _, panel in all_panels():
        for target in panel["targets"]:
            assert _promql.raw_counter_reads(target["expr"]) == set(), panel["title"]


def test_panels_only_query_metrics_of_the_contract() -> None:
    known = set(_contract.metric_names().values()) | EXTERNAL_METRICS
    for _, panel in all_panels():
        for target in panel["targets"]:
            used = {_promql.base_metric(name, histograms()) for name in _promql.metric_names(target["expr"])}
            assert used, panel["title"]
            assert used <= known, f"{panel['title']}: {used - known}"


def test_metric_name_block_agrees_with_the_contract(dashboards_generator: ModuleType) -> None:
    contract = _contract.metric_names()
    ours = {key: value for key, value in dashboards_generator.METRICS.items() if key in contract}
    assert ours == contract
    assert set(dashboards_generator.METRICS.values()) - set(contract.values()) == EXTERNAL_METRICS


def _variables_read(dashboard: dict[str, Any]) -> set[str]:
    """Variables that the panels' queries and the variables' own queries read."""
    texts = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    texts += [variable.get("query", "") for variable in dashboard["templating"]["list"]]
    return {name for text in texts for name in re.findall(r"\$\{?(\w+)", text) if not name.startswith("__")}


def test_template_variables_are_datasource_and_the_ones_the_queries_read() -> None:
    """Issue 11: `$group` and most `$job` variables were read by no query, so selecting them did nothing."""
    known = set(_contract.metric_names().values())
    for name, dashboard in committed_dashboards().items():
        variables = dashboard["templating"]["list"]
        names = [variable["name"] for variable in variables]
        assert names[0] == "datasource", name
        assert names[1:] == [v for v in VARIABLES if v in _variables_read(dashboard) and v != "datasource"], (
            name
        )
        assert set(names[1:]) == _variables_read(dashboard) - {"datasource"}, name
        datasource = variables[0]
        assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
        for variable in variables[1:]:
            assert variable["type"] == "query"
            assert variable["datasource"]["uid"] == "${datasource}"
            match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"])
            assert match is not None, variable["query"]
            selector, label = match.groups()
            assert label == VARIABLE_LABELS[variable["name"]]
            names = _promql.metric_names(selector)
            for regex in re.findall(r'__name__=~"([^"]*)"', selector):
                names |= set(regex.split("|"))
            assert names, variable["query"]
            assert names <= known, variable["query"]


def test_datasource_variable_defaults_to_the_provisioned_prometheus(dashboards_generator: ModuleType) -> None:
    provisioning = (DASHBOARD_DIR / "provisioning" / "datasources" / "datasources.yaml").read_text(
        encoding="utf-8"
    )
    uids = re.findall(r"^\s+uid: (\S+)$", provisioning, re.MULTILINE)
    assert dashboards_generator.PROMETHEUS_DATASOURCE_UID in uids
    for dashboard in committed_dashboards().values():
        assert (
            dashboard["templating"]["list"][0]["current"]["value"]
            == dashboards_generator.PROMETHEUS_DATASOURCE_UID
        )


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    for name, dashboard in committed_dashboards().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, panel["title"])
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, (name, panel["title"])
            cells |= area


# --- links to Jaeger -----------------------------------------------------------------------------------


def _links(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return [*panel.get("links", []), *panel["fieldConfig"]["defaults"].get("links", [])]


def test_error_panels_link_to_failed_spans_in_jaeger(dashboards_generator: ModuleType) -> None:
    error_query = re.compile(
        r'outcome=~"failed|outcome="retried"|outcome=~"retried\|failed"|asyncmq_job_errors_total'
    )
    error_panels = [
        panel for _, panel in all_panels() if any(error_query.search(t["expr"]) for t in panel["targets"])
    ]
    assert {panel["title"] for panel in error_panels} >= {
        "Terminal failure ratio",
        "Error ratio by task",
        "Top error types",
    }
    for panel in error_panels:
        urls = [link["url"] for link in _links(panel)]
        assert any(
            url.startswith(dashboards_generator.JAEGER_UI_URL + "/search?")
            and "%22error%22%3A%22true%22" in url
            for url in urls
        ), panel["title"]


def test_dashboards_link_to_jaeger_searches_for_slow_and_failed_process_spans(
    dashboards_generator: ModuleType,
) -> None:
    for name, dashboard in committed_dashboards().items():
        urls = [link.get("url", "") for link in dashboard["links"]]
        jaeger = [url for url in urls if url.startswith(dashboards_generator.JAEGER_UI_URL + "/search?")]
        assert any("minDuration=" in url for url in jaeger), name
        assert any("%22error%22%3A%22true%22" in url for url in jaeger), name
        for url in jaeger:
            assert f"service={dashboards_generator.WORKER_SERVICE_NAME}" in url
            # Jaeger takes microseconds; Grafana's time variables are milliseconds.
            assert url.endswith("&start=${__from}000&end=${__to}000")
        assert any(
            link["type"] == "dashboards" and link["tags"] == ["asyncmq"] for link in dashboard["links"]
        ), name


def test_exemplar_panels_rely_on_the_provisioned_trace_id_destination(
    dashboards_generator: ModuleType,
) -> None:
    provisioning = (DASHBOARD_DIR / "provisioning" / "datasources" / "datasources.yaml").read_text(
        encoding="utf-8"
    )
    destinations = re.search(r"exemplarTraceIdDestinations:\n((?:\s+[- ] .*\n)+)", provisioning)
    assert destinations is not None
    block = destinations.group(1)
    assert re.search(r"- name: trace_id\n", block)
    assert f"datasourceUid: {dashboards_generator.JAEGER_DATASOURCE_UID}\n" in block
    assert re.search(rf"^\s+uid: {dashboards_generator.JAEGER_DATASOURCE_UID}$", provisioning, re.MULTILINE)
    assert re.search(r"^\s+type: jaeger$", provisioning, re.MULTILINE)


# --- the expressions through promtool, and the live-test helper -----------------------------------------


def test_promtool_accepts_every_panel_expression(
    dashboards_generator: ModuleType, promtool: str, tmp_path: Path
) -> None:
    queries = dashboards_generator.panel_queries()
    rules = [
        {"record": f"asyncmq_dashboard:query_{index}", "expr": dashboards_generator.render_query(query.expr)}
        for index, query in enumerate(queries)
    ]
    # JSON is YAML, which is all promtool needs.
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")

    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_panel_queries_cover_every_target_and_render_without_variables(
    dashboards_generator: ModuleType,
) -> None:
    queries = dashboards_generator.panel_queries()
    targets = [(panel["title"], target["expr"]) for _, panel in all_panels() for target in panel["targets"]]
    assert sorted((query.panel, query.expr) for query in queries) == sorted(targets)
    for query in queries:
        rendered = dashboards_generator.render_query(query.expr, rate_interval="4s", time_range="5m")
        assert "$" not in rendered, rendered
    assert [query.instant for query in queries if query.panel in {"Top error types", "Heartbeat age"}] == [
        True,
        True,
    ]


def test_render_query_substitutes_selected_values_and_rejects_unknown_variables(
    dashboards_generator: ModuleType,
) -> None:
    rendered = dashboards_generator.render_query(
        'rate(x{messaging_destination_name=~"$queue",job=~"${job}"}[$__rate_interval])',
        variables={"queue": "orders", "job": "asyncmq", "task": ".*"},
        rate_interval="4s",
    )
    assert rendered == 'rate(x{messaging_destination_name=~"orders",job=~"asyncmq"}[4s])'
    with pytest.raises(KeyError):
        dashboards_generator.render_query('x{a=~"$unknown"}')

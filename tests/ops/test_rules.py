"""The generated Prometheus rules: drift, the contract's alerts (§8), promtool and test coverage."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.ops import _contract, _promql
from tests.ops._contract import REPO_ROOT

pytestmark = pytest.mark.ops

PROMETHEUS_DIR = REPO_ROOT / "exporters" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "asyncmq.rules.yml"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GENERATOR = REPO_ROOT / "exporters" / "generate_rules.py"
# Series the rules may read beyond the contract's own metrics: Prometheus' `up` and, on the OTLP path,
# the OTel SDK's span processor counter (telemetry contract §6).
EXTERNAL_METRICS = {"up", "otel_sdk_processor_span_processed_total"}


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, check=False, cwd=cwd)


# --- drift ---------------------------------------------------------------------------------------------


def test_committed_rules_match_the_generator(rules_generator: ModuleType) -> None:
    assert RULES.read_text(encoding="utf-8") == rules_generator.render_rules()


def test_check_command_passes_on_the_committed_file_and_fails_on_an_edited_copy(tmp_path: Path) -> None:
    result = run(sys.executable, "-W", "error", GENERATOR, "--check")
    assert result.returncode == 0, result.stderr

    edited = tmp_path / "asyncmq.rules.yml"
    edited.write_text(RULES.read_text(encoding="utf-8").replace("> 300", "> 301"), encoding="utf-8")
    result = run(sys.executable, GENERATOR, "--check", "--output", edited)
    assert result.returncode == 1
    assert "> 301" in result.stderr
    assert "out of date" in result.stderr


def test_thresholds_are_configuration(rules_generator: ModuleType, tmp_path: Path) -> None:
    output = tmp_path / "custom.rules.yml"
    result = run(
        sys.executable,
        GENERATOR,
        "--set",
        "oldest_age_seconds=600",
        "--set",
        "worker_job=workers",
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text(encoding="utf-8")
    assert "(asyncmq_queue_oldest_age_seconds) > 600\n" in text
    assert 'up{job="workers"} == 0' in text

    with pytest.raises(ValueError, match="not in slo_windows"):
        rules_generator.Config(slo_windows=("5m", "1h"))
    result = run(sys.executable, GENERATOR, "--set", "no_such_knob=1", "--output", output)
    assert result.returncode == 2
    assert "NAME one of" in result.stderr


def test_a_non_integral_slo_bucket_is_matched_literally(rules_generator: ModuleType) -> None:
    assert rules_generator.le_matcher(60) == "60(\\\\.0)?"
    assert rules_generator.le_matcher(2.5) == "2\\\\.5"


# --- the contract (§8) ---------------------------------------------------------------------------------


def test_alerts_are_the_contracts_alert_table(rules_generator: ModuleType) -> None:
    generated = [
        (rule.alert, rule.severity, rule.duration, rule.expr)
        for rule in rules_generator.alert_rules(rules_generator.Config())
    ]
    expected = [(alert.name, alert.severity, alert.duration, alert.expr) for alert in _contract.alerts()]
    assert generated == expected


def test_recording_rules_are_the_contracts_wait_slo_rules(rules_generator: ModuleType) -> None:
    generated = {rule.record: rule.expr for rule in rules_generator.recording_rules(rules_generator.Config())}
    assert generated == _contract.recording_rules()


def test_rules_only_read_metrics_of_the_contract(rules_generator: ModuleType) -> None:
    contract = _contract.metric_names()
    histograms = {name for name in contract.values() if not name.endswith("_total")}
    config = rules_generator.Config()
    records = {rule.record for rule in rules_generator.recording_rules(config)}
    known = set(contract.values()) | EXTERNAL_METRICS | records
    for rule in [*rules_generator.recording_rules(config), *rules_generator.alert_rules(config)]:
        used = {_promql.base_metric(name, histograms) for name in _promql.metric_names(rule.expr)}
        assert used <= known, f"{rule}: {used - known}"
        assert _promql.raw_counter_reads(rule.expr) == set(), rule
    ours = {key: value for key, value in rules_generator.METRICS.items() if key in contract}
    assert ours == {key: contract[key] for key in ours}


def test_every_alert_carries_severity_summary_description_runbook_and_dashboard(
    rules_generator: ModuleType, dashboards_generator: ModuleType
) -> None:
    document = rules_generator.rules_document(rules_generator.Config())
    alerts = [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) == len(_contract.alerts())
    runbook = (PROMETHEUS_DIR / "runbooks.md").read_text(encoding="utf-8")
    anchors = {heading.lower() for heading in re.findall(r"^## (\S+)$", runbook, re.MULTILINE)}
    dashboards = {
        spec.uid: dashboards_generator.used_variables(spec) for spec in dashboards_generator.DASHBOARDS
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
        assert all(annotations.values())
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (REPO_ROOT / path).is_file(), annotations["runbook_url"]
        assert anchor == alert["alert"].lower()
        assert anchor in anchors, f"runbooks.md has no section for {alert['alert']}"
        url = urlsplit(annotations["dashboard_url"])
        assert url.path.removeprefix("/d/") in dashboards, annotations["dashboard_url"]
        # Every variable the link sets exists on that dashboard, where a query reads it.
        for variable, _value in parse_qsl(url.query):
            assert variable.removeprefix("var-") in dashboards[url.path.removeprefix("/d/")], alert["alert"]


# --- promtool --------------------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"SUCCESS: {len(_contract.alerts()) + len(_contract.recording_rules())} rules found" in result.stdout
    )


def test_promtool_test_rules(promtool: str) -> None:
    assert UNIT_TESTS
    result = run(promtool, "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_promtool_test_rules_fails_when_a_threshold_moves(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: a rule file with another threshold must not pass them."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    test = PROMETHEUS_DIR / "tests" / "queue_alerts.test.yml"
    (tmp_path / "tests" / test.name).write_text(test.read_text(encoding="utf-8"), encoding="utf-8")
    generated = run(
        sys.executable,
        GENERATOR,
        "--set",
        "hung_job_seconds=2500",
        "--output",
        tmp_path / "rules" / RULES.name,
    )
    assert generated.returncode == 0, generated.stderr

    result = run(promtool, "test", "rules", Path("tests") / test.name, cwd=tmp_path)

    assert result.returncode == 1
    assert "AsyncMQHungJob" in result.stdout + result.stderr


def _alert_cases() -> dict[str, set[str]]:
    """alertname -> kinds of cases in the unit tests: "firing" (alerts expected) and/or "silent"."""
    cases: dict[str, set[str]] = {}
    for test in UNIT_TESTS:
        for name, empty in re.findall(
            r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", test.read_text(encoding="utf-8")
        ):
            cases.setdefault(name, set()).add("silent" if empty else "firing")
    return cases


def _recording_cases() -> dict[str, set[str]]:
    """record name -> "recorded" (a sample with a non-zero bad ratio) and/or "quiet" (zero or none)."""
    cases: dict[str, set[str]] = {}
    block = re.compile(
        r"- expr: '?([^'\n]+)'?\n\s+eval_time: \S+\n\s+exp_samples:( \[\])?\n((?:\s+- labels: .*\n\s+value: .*\n)*)"
    )
    for test in UNIT_TESTS:
        for expr, empty, samples in block.findall(test.read_text(encoding="utf-8")):
            names = {name for name in _promql.metric_names(expr) if name.startswith("asyncmq:")}
            values = [float(value) for value in re.findall(r"value: (\S+)", samples)]
            kind = "recorded" if not empty and any(values) else "quiet"
            for name in names:
                cases.setdefault(name, set()).add(kind)
    return cases


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = _alert_cases()
    for alert in _contract.alerts():
        assert cases.get(alert.name) == {"firing", "silent"}, alert.name


def test_every_recording_rule_has_a_recording_and_a_quiet_unit_test() -> None:
    cases = _recording_cases()
    for record in _contract.recording_rules():
        assert cases.get(record) == {"recorded", "quiet"}, record


def test_unit_tests_load_the_generated_rule_file() -> None:
    for test in UNIT_TESTS:
        assert "rule_files:\n  - ../rules/asyncmq.rules.yml\n" in test.read_text(encoding="utf-8"), test.name


def test_rules_document_is_what_the_file_holds(rules_generator: ModuleType) -> None:
    """The YAML writer keeps every string intact (checked on the values that need quoting)."""
    text = RULES.read_text(encoding="utf-8")
    document = rules_generator.rules_document(rules_generator.Config())
    for group in document["groups"]:
        for rule in group["rules"]:
            assert f"\n          {rule['expr']}\n" in text
            for value in rule.get("annotations", {}).values():
                assert json.dumps(value, ensure_ascii=False) in text


# --- first events (§8 rev. 2) ----------------------------------------------------------------------------

FIRST_EVENT_TESTS = PROMETHEUS_DIR / "tests" / "first_event.test.yml"
_CASE = re.compile(r"^  - name: (\S+) first event\b.*?(?=^  - name: |\Z)", re.MULTILINE | re.DOTALL)
_SERIES = re.compile(r"- series: '([a-z_:]+)\{([^}]*)\}'\n\s+values: \"([^\"]+)\"")
# Its 0.05/s volume floor needs dozens of finished jobs in the window, so when it fires does not depend on
# whether the first of them was counted; its case still starts from the pre-initialised zero.
_FIRES_ON_VOLUME = {"AsyncMQFailureRatioHigh"}


def _counting_alerts(rules_generator: ModuleType) -> set[str]:
    """Alerts that count events: they read increase()/rate() of a counter, directly or via a recording rule."""
    config = rules_generator.Config()
    return {
        rule.alert
        for rule in rules_generator.alert_rules(config)
        if re.search(r"\b(increase|rate)\(", rule.expr) or "asyncmq:" in rule.expr
    }


def _first_event_cases() -> dict[str, str]:
    text = FIRST_EVENT_TESTS.read_text(encoding="utf-8")
    return {match.group(1): match.group(0) for match in _CASE.finditer(text)}


def test_every_counting_alert_has_a_first_event_case(rules_generator: ModuleType) -> None:
    counting = _counting_alerts(rules_generator)
    assert {"AsyncMQDeadLetterInflow", "AsyncMQJobsExpiring", "AsyncMQJobsStalled"} <= counting
    cases = _first_event_cases()
    assert set(cases) == counting
    for alert, case in cases.items():
        kinds = {
            "silent" if empty else "firing"
            for name, empty in re.findall(r"alertname: (\S+)\n\s+exp_alerts:( \[\])?", case)
            if name == alert
        }
        assert kinds == {"firing", "silent"}, alert
        # Every series exists at 0 before the first event, as the process pre-initialises it.
        for _name, _labels, values in _SERIES.findall(case):
            assert values.startswith("0x"), (alert, values)


def test_first_event_series_are_the_ones_a_worker_pre_initialises() -> None:
    """The cases' zeros are not an assumption: a worker exports exactly these series at 0 on start."""
    from asyncmq_otel.events import LifecycleEvent, bus
    from asyncmq_otel.tasks import TASK_REGISTRY, task
    from asyncmq_otel.testing import capture_telemetry

    task("orders", name="shop.charge")(lambda: None)
    try:
        with capture_telemetry() as captured:
            started = LifecycleEvent(
                "worker:started", 0.0, queue="orders", worker_id="w", group="default", concurrency=1, active=0
            )
            bus.emit(started)
            exported = {
                (sample.name, tuple(sorted(sample.labels.items())))
                for sample in captured.metrics
                if sample.sink == "prometheus" and sample.value == 0
            }
    finally:
        TASK_REGISTRY.pop("shop.charge", None)
    for alert, case in _first_event_cases().items():
        for name, labels, _values in _SERIES.findall(case):
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            pairs = {key: value for key, value in pairs.items() if key not in {"job", "instance"}}
            assert (name, tuple(sorted(pairs.items()))) in exported, f"{alert}: {name}{{{labels}}}"


def test_a_series_born_at_its_first_event_leaves_the_alert_silent(promtool: str, tmp_path: Path) -> None:
    """Rev. 1's shape: the (failed, failed) series was created by the first failure, at 1, so increase()
    saw nothing and AsyncMQDeadLetterInflow stayed silent. The first-event cases catch exactly that."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text(encoding="utf-8"), encoding="utf-8")
    text = FIRST_EVENT_TESTS.read_text(encoding="utf-8")
    header = text[: text.index("tests:\n") + len("tests:\n")]
    for alert, case in _first_event_cases().items():
        # "0x5 1..." (pre-initialised) becomes "_x6 1..." (absent until the first event, born at 1).
        born_late = re.sub(r'values: "0x5 ', 'values: "_x6 ', case)
        assert born_late != case, alert
        path = tmp_path / "tests" / "born_late.test.yml"
        path.write_text(header + born_late, encoding="utf-8")
        result = run(promtool, "test", "rules", Path("tests") / path.name, cwd=tmp_path)
        if alert in _FIRES_ON_VOLUME:
            assert result.returncode == 0, result.stdout + result.stderr
            continue
        assert result.returncode == 1, alert
        assert alert in result.stdout + result.stderr
    dead_letter = _first_event_cases()["AsyncMQDeadLetterInflow"]
    path.write_text(header + re.sub(r'values: "0x5 ', 'values: "_x6 ', dead_letter), encoding="utf-8")
    result = run(promtool, "test", "rules", Path("tests") / path.name, cwd=tmp_path)
    assert "got:[]" in result.stdout + result.stderr


def test_links_are_relative_by_default_and_absolute_when_asked(tmp_path: Path) -> None:
    output = tmp_path / "absolute.rules.yml"
    result = run(
        sys.executable,
        GENERATOR,
        "--grafana-url",
        "https://grafana.example.com/",
        "--runbook-base-url",
        "https://github.com/acme/asyncmq_otel/blob/main",
        "--output",
        output,
    )
    assert result.returncode == 0, result.stderr
    text = output.read_text(encoding="utf-8")
    assert (
        'runbook_url: "https://github.com/acme/asyncmq_otel/blob/main/exporters/prometheus/runbooks.md'
        '#asyncmqdeadletterinflow"'
    ) in text
    assert 'dashboard_url: "https://grafana.example.com/d/asyncmq-overview"' in text
    relative = RULES.read_text(encoding="utf-8")
    assert 'runbook_url: "exporters/prometheus/runbooks.md#asyncmqdeadletterinflow"' in relative
    assert 'dashboard_url: "/d/asyncmq-overview"' in relative
    assert "http" not in "".join(re.findall(r"(?:runbook|dashboard)_url: .*", relative))

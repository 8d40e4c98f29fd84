"""One source of metric names: the dashboards and the alert rules read them from the definition table.

``asyncmq_otel.telemetry.metrics.METRICS`` builds both sinks; the generators take their Prometheus names
from it, so a panel or a rule cannot read a metric the library does not export.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from asyncmq_otel.telemetry import metrics
from tests.ops import _promql

pytestmark = pytest.mark.ops

TABLE = {row.name: row.prometheus_name for row in metrics.METRICS}
HISTOGRAMS = {row.prometheus_name for row in metrics.METRICS if row.prometheus_type == "histogram"}


def test_generators_use_the_definition_table_itself(
    dashboards_generator: ModuleType, rules_generator: ModuleType
) -> None:
    for generator in (dashboards_generator, rules_generator):
        assert generator.METRIC_TABLE is metrics.METRICS, generator.__name__
        assert dict(generator.METRICS) == {**TABLE, **generator.EXTERNAL_METRICS}, generator.__name__
        # Series of other exporters never shadow a row of ours, by OTel or by Prometheus name.
        assert not set(generator.EXTERNAL_METRICS) & set(TABLE), generator.__name__
        assert not set(generator.EXTERNAL_METRICS.values()) & set(TABLE.values()), generator.__name__


def test_an_unknown_metric_fails_generation(
    dashboards_generator: ModuleType, rules_generator: ModuleType
) -> None:
    with pytest.raises(KeyError, match=r"asyncmq\.job\.no_such_metric"):
        dashboards_generator.promql("rate(%(asyncmq.job.no_such_metric)s[$ri])")
    with pytest.raises(KeyError, match=r"asyncmq\.job\.no_such_metric"):
        rules_generator._m("%(asyncmq.job.no_such_metric)s > 0")


def test_every_panel_and_rule_reads_a_metric_of_the_table_or_an_external_series(
    dashboards_generator: ModuleType, rules_generator: ModuleType
) -> None:
    exported = set(TABLE.values())
    panel_known = exported | set(dashboards_generator.EXTERNAL_METRICS.values())
    for query in dashboards_generator.panel_queries():
        used = {_promql.base_metric(name, HISTOGRAMS) for name in _promql.metric_names(query.expr)}
        assert used, query.panel
        assert used <= panel_known, f"{query.panel}: {used - panel_known}"

    config = rules_generator.Config()
    records = {rule.record for rule in rules_generator.recording_rules(config)}
    rule_known = exported | set(rules_generator.EXTERNAL_METRICS.values()) | records
    for rule in [*rules_generator.recording_rules(config), *rules_generator.alert_rules(config)]:
        used = {_promql.base_metric(name, HISTOGRAMS) for name in _promql.metric_names(rule.expr)}
        assert used, rule
        assert used <= rule_known, f"{rule}: {used - rule_known}"

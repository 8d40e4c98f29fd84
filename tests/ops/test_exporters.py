"""exporters/: the Prometheus configuration through promtool, and the OpenTelemetry Collector configuration."""

from __future__ import annotations

import subprocess
from types import ModuleType

import pytest

from tests.ops._contract import REPO_ROOT

pytestmark = pytest.mark.ops

PROMETHEUS_CONFIG = REPO_ROOT / "exporters" / "prometheus" / "prometheus.yml"
COLLECTOR_CONFIG = REPO_ROOT / "exporters" / "otel-collector" / "config.yaml"


def test_promtool_check_config(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files were found and checked too, not silently matched by an empty glob.
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "asyncmq.rules.yml" in result.stdout


def test_scrape_jobs_are_the_workers_the_producer_and_the_exporter(rules_generator: ModuleType) -> None:
    config = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    jobs = [
        line.split(":", 1)[1].strip()
        for line in config.splitlines()
        if line.strip().startswith("- job_name:")
    ]
    # The heartbeat alert watches up{job=<worker_job>}: the worker scrape job must carry that name.
    assert jobs == [rules_generator.Config().worker_job, "asyncmq-producer", "asyncmq-exporter"]


def test_collector_receives_otlp_and_sends_traces_to_jaeger_and_metrics_to_prometheus() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the collector configuration")
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text(encoding="utf-8"))
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined"
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    (traces_exporter,) = pipelines["traces"]["exporters"]
    assert traces_exporter.split("/")[0] in {"otlp", "otlphttp"}
    assert "jaeger" in config["exporters"][traces_exporter]["endpoint"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    prometheus = config["exporters"]["prometheus"]
    assert prometheus["enable_open_metrics"] is True, "exemplars need OpenMetrics"
    assert prometheus["resource_to_telemetry_conversion"]["enabled"] is False, (
        "target_info, as on the scrape path"
    )
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]

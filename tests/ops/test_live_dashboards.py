"""Every dashboard panel against live data: a real Prometheus scraping a real worker under the demo workload.

Telemetry contract §7: every panel query MUST return data against a real Prometheus scraping a worker
under the demo workload (§9: scrape interval 1 s, each query polled until non-empty, 20 s deadline).

The test starts Debian's ``prometheus`` on a free loopback port with its own configuration and storage
directory, a real ``asyncmq-otel worker`` serving the demo tasks, and the demo producer
(``asyncmq-otel demo --role producer``), both against the shared Redis under a unique prefix and both
scraped. ``demo --role both`` does not fit here: it ends as soon as its one batch has settled (about 3 s),
and a batch big enough to outlast the queries runs its lifecycle paths one after another instead of
mixed. The producer role sends the mixed workload (successes, retries, terminal failures, expiry,
cancellation, delays, pause and resume) in waves until ``--duration``, so every path keeps happening
while the queries run, and the worker's ``--rate-limit 20`` makes the limiter hold part of every wave.

Each panel query of ``dashboards/generate.py`` runs through ``/api/v1/query`` twice: with the variables
as a dashboard opens ("All") and with one concrete value each, so a misspelt label key in a matcher
(which ``.*`` would match anyway) fails too. "Data" means at least one series whose value is a number:
a NaN (a quantile of an empty histogram) draws nothing on a panel. The exemplar targets must also
return trace-id exemplars, and every generated alert and recording rule must evaluate without error.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.ops import _promql
from tests.ops._contract import REPO_ROOT
from tests.ops._processes import Process, Processes
from tests.support.poll import wait_until
from tests.support.redis_server import free_port

pytestmark = [pytest.mark.ops, pytest.mark.redis]

PROMETHEUS = "/usr/bin/prometheus"
RULES = REPO_ROOT / "exporters" / "prometheus" / "rules" / "asyncmq.rules.yml"
DEMO_QUEUE = "demo"
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): about 4 s on a
# 1 s scrape for a short time range, more for a longer one. 10 s keeps a quiet second between two waves
# from emptying a quantile panel while still proving the queries work on a short window.
RATE_INTERVAL = "10s"
TIME_RANGE = "5m"
PANEL_DEADLINE = 20.0  # seconds each panel query gets to return data (§9)
STARTUP_DEADLINE = 45.0  # Prometheus ready and both targets scraped: three processes start on shared cores
POLL_INTERVAL = 0.5
# Jobs per producer wave: at least 12 give every lifecycle path; 40 exceed the worker's rate limit of
# 20/s, so the limiter holds about half of each wave.
WAVE_JOBS = "40"
WORKER_RATE_LIMIT = "20"
TRACE_ID = re.compile(r"[0-9a-f]{32}")


class _PrometheusAPI:
    """The HTTP API of the test's Prometheus."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our loopback Prometheus
                body: dict[str, Any] = json.loads(reply.read())
        except urllib.error.HTTPError as error:  # a bad query answers 400 with a JSON error
            body = json.loads(error.read() or b"{}")
            body.setdefault("error", str(error))
        return body

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as reply:  # noqa: S310 - as above
                return bool(reply.status == 200)
        except OSError:
            return False

    def targets_up(self, expected: int) -> bool:
        targets = self.get("/api/v1/targets", state="active").get("data", {}).get("activeTargets", [])
        return len(targets) == expected and all(target["health"] == "up" for target in targets)


def _prometheus_config(targets: list[str], job: str) -> str:
    # JSON is YAML, which is all Prometheus needs.
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        },
        indent=2,
    )


@dataclass
class _Check:
    """One query to poll until it returns data, and what it returned last."""

    label: str
    expr: str
    exemplars: bool = False
    last: str = "not queried yet"

    def passes(self, api: _PrometheusAPI) -> bool:
        if self.exemplars:
            now = time.time()
            reply = api.get(
                "/api/v1/query_exemplars", query=self.expr, start=f"{now - 300:.3f}", end=f"{now:.3f}"
            )
            self.last = json.dumps(reply)[:400]
            trace_ids = [
                exemplar["labels"].get("trace_id", "")
                for series in reply.get("data") or []
                for exemplar in series.get("exemplars", [])
            ]
            return any(TRACE_ID.fullmatch(trace_id) for trace_id in trace_ids)
        reply = api.get("/api/v1/query", query=self.expr)
        self.last = json.dumps(reply)[:400]
        if reply.get("status") != "success":
            return False
        data = reply["data"]
        samples = data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        return any(not math.isnan(float(sample["value"][1])) for sample in samples)


def _panel_checks(generator: ModuleType, selections: Mapping[str, Mapping[str, str]]) -> list[_Check]:
    checks = []
    for query in generator.panel_queries():
        where = f"{query.dashboard_uid} / {query.row} / {query.panel} [{query.ref_id}]"
        for selection, variables in selections.items():
            expr = generator.render_query(
                query.expr, variables=variables, rate_interval=RATE_INTERVAL, time_range=TIME_RANGE
            )
            checks.append(_Check(f"{where} with {selection}", expr))
            if query.exemplar:
                checks.append(_Check(f"{where} with {selection}: exemplars", expr, exemplars=True))
    return checks


def _poll(
    api: _PrometheusAPI, checks: list[_Check], processes: list[Process], deadline: float
) -> list[_Check]:
    """Poll every check until it passes or ``deadline`` seconds pass; return those that never passed."""
    pending = list(checks)
    end = time.monotonic() + deadline

    def round_done() -> bool:
        for process in processes:
            process.assert_running()
        pending[:] = [check for check in pending if not check.passes(api)]
        return not pending or time.monotonic() > end

    wait_until(round_done, timeout=deadline + 30, interval=POLL_INTERVAL, what="panel queries polled")
    return pending


def _series_hint(api: _PrometheusAPI, expr: str) -> str:
    """The label sets the query's metrics do have, to tell a missing series from a mislabelled one."""
    keys = "job, messaging_destination_name, asyncmq_task_name"
    found = []
    for name in sorted(_promql.metric_names(expr)):
        reply = api.get("/api/v1/query", query=f"group by ({keys}) ({name})")
        series = [sample["metric"] for sample in (reply.get("data") or {}).get("result", [])]
        found.append(f"{name}: {series[:5] or 'no series'}")
    return "series present: " + "; ".join(found)


def _rules_unhealthy(api: _PrometheusAPI) -> list[str]:
    """Rules Prometheus has not evaluated yet or whose last evaluation failed."""
    groups = api.get("/api/v1/rules").get("data", {}).get("groups", [])
    rules = [rule for group in groups for rule in group["rules"]]
    if not rules:
        return ["no rule loaded"]
    return [
        f"{rule['name']}: {rule['health']} {rule.get('lastError', '')}".strip()
        for rule in rules
        if rule["health"] != "ok"
    ]


@contextlib.contextmanager
def _live_stack(
    tmp_path: Path, url: str, prefix: str, job: str
) -> Iterator[tuple[_PrometheusAPI, list[Process]]]:
    """Prometheus, a demo worker and the demo producer; every process is stopped on the way out."""
    processes = Processes(tmp_path)
    try:
        worker_port, producer_port, prometheus_port = free_port(), free_port(), free_port()
        backend = ["--backend", url, "--prefix", prefix, "--log-format", "json"]
        worker = processes.start(
            "worker",
            [sys.executable, "-m", "asyncmq_otel", "worker", DEMO_QUEUE, "--app", "asyncmq_otel.demo.app",
             *backend, "--metrics-addr", f"127.0.0.1:{worker_port}", "--concurrency", "8",
             "--rate-limit", WORKER_RATE_LIMIT],
        )  # fmt: skip
        producer = processes.start(
            "producer",
            [sys.executable, "-m", "asyncmq_otel", "demo", "--role", "producer", *backend,
             "--metrics-addr", f"127.0.0.1:{producer_port}", "--jobs", WAVE_JOBS, "--duration", "150"],
        )  # fmt: skip
        config = tmp_path / "prometheus.yml"
        config.write_text(
            _prometheus_config([f"127.0.0.1:{worker_port}", f"127.0.0.1:{producer_port}"], job),
            encoding="utf-8",
        )
        prometheus = processes.start(
            "prometheus",
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}", "--enable-feature=exemplar-storage",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        )  # fmt: skip
        api = _PrometheusAPI(prometheus_port)
        running = [worker, producer, prometheus]

        def up() -> bool:
            for process in running:
                process.assert_running()
            return api.ready() and api.targets_up(2)

        try:
            wait_until(up, timeout=STARTUP_DEADLINE, interval=POLL_INTERVAL, what="Prometheus scraping both")
        except AssertionError as error:
            targets = json.dumps(api.get("/api/v1/targets")) if api.ready() else "Prometheus not ready"
            logs = "\n".join(f"--- {process.name}:\n{process.tail()}" for process in running)
            raise AssertionError(f"{error}\ntargets: {targets}\n{logs}") from None
        yield api, running
    finally:
        processes.stop_all()


@pytest.mark.timeout(150)
def test_every_panel_query_returns_data_from_a_live_worker(
    dashboards_generator: ModuleType,
    rules_generator: ModuleType,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    if not Path(PROMETHEUS).is_file():
        pytest.fail(f"{PROMETHEUS} not found: install Debian's `prometheus` package (scripts/test does)")
    job = rules_generator.Config().worker_job  # the scrape job the alert rules expect
    selections = {
        "All": dashboards_generator.ALL_VALUES,
        # demo.flaky_lookup retries, then completes: it has data on every task-filtered panel.
        "one value each": {"job": job, "queue": DEMO_QUEUE, "task": "demo.flaky_lookup"},
    }
    checks = _panel_checks(dashboards_generator, selections)
    assert checks

    with _live_stack(tmp_path, redis_url, redis_prefix, job) as (api, processes):
        failed = _poll(api, checks, processes, PANEL_DEADLINE)
        problems = [
            f"- {check.label}\n    {check.expr}\n    last reply: {check.last}\n    {_series_hint(api, check.expr)}"
            for check in failed
        ]
        unhealthy: list[str] = []

        def rules_ok() -> bool:
            unhealthy[:] = _rules_unhealthy(api)
            return not unhealthy

        with contextlib.suppress(AssertionError):
            wait_until(rules_ok, timeout=PANEL_DEADLINE, interval=POLL_INTERVAL)

    message = []
    if problems:
        message.append(f"{len(failed)} of {len(checks)} panel queries returned no data:")
        message += problems
    if unhealthy:
        message.append("rules failing against live data:")
        message += [f"- {rule}" for rule in unhealthy]
    assert not message, "\n".join(message)

"""Generate the Prometheus alerting and recording rules of the telemetry contract (§8).

``python exporters/generate_rules.py`` writes ``exporters/prometheus/rules/asyncmq.rules.yml`` from the
defaults below; ``--check`` exits 1 when the committed file differs. Every number is a knob:
``--set oldest_age_seconds=600 --output my.rules.yml`` renders a variant for your own deployment.
"""

# A script run by path, not a module of an importable package.

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from asyncmq_otel.telemetry.metrics import METRICS as METRIC_TABLE

# ---------------------------------------------------------------------------------------------------------
# Metric names: the rules take them from here, and here takes them from the definition table of the
# telemetry contract (§3.4) in asyncmq_otel.telemetry.metrics, like dashboards/generate.py. Keys are the
# OTel names, values the Prometheus names, so no rule can read a metric the library does not export.
# ---------------------------------------------------------------------------------------------------------
EXTERNAL_METRICS: Final[Mapping[str, str]] = {
    # Not ours: Prometheus' per-target health, and the OTel SDK's span processor counter (OTLP path).
    "up": "up",
    "otel.sdk.processor.span.processed": "otel_sdk_processor_span_processed_total",
}
METRICS: Final[Mapping[str, str]] = {
    **{row.name: row.prometheus_name for row in METRIC_TABLE},
    **EXTERNAL_METRICS,
}

RULES_PATH: Final = Path(__file__).resolve().parent / "prometheus" / "rules" / "asyncmq.rules.yml"
# Where the runbook sections live, relative to the repository root; each alert links to its own anchor.
RUNBOOK_PATH: Final = "exporters/prometheus/runbooks.md"

# Dashboards the alerts link to (uids of dashboards/generate.py).
OVERVIEW: Final = "asyncmq-overview"
QUEUE_DETAIL: Final = "asyncmq-queue-detail"
WORKERS: Final = "asyncmq-workers"
TELEMETRY_HEALTH: Final = "asyncmq-telemetry-health"

Severity = Literal["critical", "warning"]

_B: Final = "messaging_destination_name"
_BT: Final = "messaging_destination_name, asyncmq_task_name"
_QUEUE: Final = "{{ $labels.messaging_destination_name }}"
_TASK: Final = "{{ $labels.asyncmq_task_name }}"
_SCHEDULE: Final = "{{ $labels.schedule }}"
_INSTANCE: Final = "{{ $labels.instance }}"
_JOB: Final = "{{ $labels.job }}"


@dataclass(frozen=True)
class Config:
    """Every number of §8 with its contract default; durations use Prometheus syntax."""

    worker_job: str = "asyncmq"
    # Prefixes that make the links absolute; empty keeps them relative to Grafana and to the repository.
    grafana_url: str = ""
    runbook_base_url: str = ""
    # Wait SLO: `slo_target` of attempts start within `slo_wait_seconds`.
    slo_wait_seconds: float = 60
    slo_target: float = 0.99
    slo_windows: tuple[str, ...] = ("5m", "30m", "1h", "6h")
    fast_burn_factor: float = 14.4
    fast_burn_windows: tuple[str, str] = ("1h", "5m")
    fast_burn_for: str = "2m"
    slow_burn_factor: float = 6
    slow_burn_windows: tuple[str, str] = ("6h", "30m")
    slow_burn_for: str = "15m"
    oldest_age_seconds: float = 300
    oldest_age_for: str = "5m"
    backlog_window: str = "15m"
    backlog_min_ready: float = 100
    backlog_for: str = "15m"
    failure_window: str = "10m"
    failure_ratio: float = 0.05
    failure_min_rate: float = 0.05
    failure_for: str = "10m"
    dead_letter_window: str = "15m"
    expiring_window: str = "15m"
    expiring_for: str = "5m"
    no_consumers_for: str = "5m"
    unobserved_for: str = "5m"
    heartbeat_max_age_seconds: float = 60
    heartbeat_for: str = "2m"
    saturation_ratio: float = 0.9
    saturation_for: str = "15m"
    paused_for: str = "30m"
    retry_storm_window: str = "5m"
    retry_storm_ratio: float = 0.2
    retry_storm_for: str = "10m"
    stalled_window: str = "10m"
    hung_job_seconds: float = 1800
    hung_job_for: str = "5m"
    backend_down_for: str = "2m"
    telemetry_window: str = "5m"
    telemetry_for: str = "10m"
    schedule_late_intervals: float = 2
    schedule_late_for: str = "2m"
    blocked_age_seconds: float = 3600  # flows: a job waiting this long for its parents
    blocked_for: str = "10m"

    def __post_init__(self) -> None:
        """Refuse a configuration whose burn-rate alerts would read a recording rule nobody writes."""
        missing = {*self.fast_burn_windows, *self.slow_burn_windows} - set(self.slo_windows)
        if missing:
            raise ValueError(f"burn-rate windows {sorted(missing)} are not in slo_windows; add them there")
        if not 0 < self.slo_target < 1:
            raise ValueError(f"slo_target must be between 0 and 1 (exclusive), not {self.slo_target}")


@dataclass(frozen=True)
class RecordingRule:
    """A ``record:`` rule."""

    record: str
    expr: str


@dataclass(frozen=True)
class AlertRule:
    """An ``alert:`` rule with the labels and annotations every alert carries."""

    alert: str
    severity: Severity
    duration: str  # `for`; "0m" fires on the first evaluation
    expr: str
    summary: str
    description: str
    dashboard: str  # dashboard uid
    dashboard_vars: str = ""  # query string selecting the alert's series on that dashboard


def _num(value: float) -> str:
    """Numbers as the contract writes them: 300, 0.05, 14.4."""
    return f"{value:g}"


def _m(template: str) -> str:
    """Expand ``%(otel.name)s`` metric references; an unknown metric raises ``KeyError``."""
    return template % METRICS


def le_matcher(seconds: float) -> str:
    """The PromQL string body matching one bucket bound in both sinks.

    The client library writes ``60.0`` and the OTLP translation ``60``, so an integral bound accepts
    both; the regex backslash is doubled because PromQL strings unescape once.
    """
    if float(seconds).is_integer():
        return f"{int(seconds)}(\\\\.0)?"
    return re.escape(_num(seconds)).replace("\\", "\\\\")


def wait_slo_rule_name(window: str) -> str:
    """The recording rule holding the share of slow-starting attempts over ``window``."""
    return f"asyncmq:wait_slo_bad:ratio_rate{window}"


def recording_rules(config: Config) -> list[RecordingRule]:
    """Bad-event ratios of the wait SLO; an idle queue gives NaN, which never fires."""
    bucket = f'le=~"{le_matcher(config.slo_wait_seconds)}"'
    return [
        RecordingRule(
            wait_slo_rule_name(window),
            _m(
                f"1 - sum by ({_B}) (rate(%(asyncmq.job.wait.duration)s_bucket{{{bucket}}}[{window}])) / "
                f"sum by ({_B}) (rate(%(asyncmq.job.wait.duration)s_count[{window}]))"
            ),
        )
        for window in config.slo_windows
    ]


def alert_rules(config: Config) -> list[AlertRule]:
    """The alert table of §8, in its order."""
    c = config
    budget = _num(round(1 - c.slo_target, 10))
    queue_detail = f"var-queue={_QUEUE}"
    rules: list[AlertRule] = []
    add = rules.append

    add(
        AlertRule(
            "AsyncMQOldestJobTooOld",
            "critical",
            c.oldest_age_for,
            _m(f"max by ({_B}) (%(asyncmq.queue.oldest_age)s) > {_num(c.oldest_age_seconds)}"),
            f"Queue {_QUEUE}: the oldest ready job has waited too long",
            f"The oldest ready job on queue {_QUEUE} has been runnable for "
            "{{ $value | humanizeDuration }} "
            f"without starting (threshold {_num(c.oldest_age_seconds)}s). Workers are missing, saturated or "
            "stuck.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQBacklogGrowing",
            "warning",
            c.backlog_for,
            _m(
                f"max by ({_B}) "
                f'(deriv(%(asyncmq.queue.depth)s{{state="ready"}}[{c.backlog_window}])) > 0 and '
                f'max by ({_B}) (%(asyncmq.queue.depth)s{{state="ready"}}) > {_num(c.backlog_min_ready)}'
            ),
            f"Queue {_QUEUE}: the backlog keeps growing",
            f"Ready jobs on queue {_QUEUE} grow by {{{{ $value | humanize }}}}/s over {c.backlog_window} and "
            f"more than {_num(c.backlog_min_ready)} are waiting: producers outpace the workers.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    burns: tuple[tuple[str, Severity, float, tuple[str, str], str], ...] = (
        ("AsyncMQWaitSLOFastBurn", "critical", c.fast_burn_factor, c.fast_burn_windows, c.fast_burn_for),
        ("AsyncMQWaitSLOSlowBurn", "warning", c.slow_burn_factor, c.slow_burn_windows, c.slow_burn_for),
    )
    for name, severity, factor, (long_window, short_window), duration in burns:
        threshold = f"{_num(factor)} * {budget}"
        add(
            AlertRule(
                name,
                severity,
                duration,
                f"{wait_slo_rule_name(long_window)} > {threshold} and "
                f"{wait_slo_rule_name(short_window)} > {threshold}",
                f"Queue {_QUEUE}: the wait SLO error budget burns {_num(factor)}x too fast",
                f"{{{{ $value | humanizePercentage }}}} of attempts on queue {_QUEUE} waited more than "
                f"{_num(c.slo_wait_seconds)}s to start over the last {long_window}; the SLO allows "
                f"{_num(float(budget) * 100)}%.",
                QUEUE_DETAIL,
                queue_detail,
            )
        )
    outcomes = "%(asyncmq.job.outcomes)s"
    terminal = f'sum by ({_BT}) (rate({outcomes}{{outcome=~"completed|failed|expired"}}[{c.failure_window}]))'
    add(
        AlertRule(
            "AsyncMQFailureRatioHigh",
            "warning",
            c.failure_for,
            _m(
                f'sum by ({_BT}) (rate({outcomes}{{outcome=~"failed|expired"}}[{c.failure_window}]))'
                f" / {terminal} > {_num(c.failure_ratio)} and {terminal} > {_num(c.failure_min_rate)}"
            ),
            f"Task {_TASK} on queue {_QUEUE}: many jobs fail",
            f"{{{{ $value | humanizePercentage }}}} of finished {_TASK} jobs on queue {_QUEUE} failed or "
            f"expired over {c.failure_window} (threshold {_num(c.failure_ratio * 100)}%).",
            QUEUE_DETAIL,
            f"{queue_detail}&var-task={_TASK}",
        )
    )
    # Expiries have an alert of their own (AsyncMQJobsExpiring). Every (outcome, reason) series is
    # pre-initialised at 0 by the workers, so increase() sees the first dead-letter after a start.
    add(
        AlertRule(
            "AsyncMQDeadLetterInflow",
            "warning",
            "0m",
            _m(
                f"sum by ({_BT}, reason) (increase(%(asyncmq.job.outcomes)s"
                f'{{outcome="failed"}}[{c.dead_letter_window}])) > 0'
            ),
            f"Task {_TASK} on queue {_QUEUE}: jobs reach the dead-letter queue",
            f"{{{{ $value | humanize }}}} {_TASK} jobs on queue {_QUEUE} were dead-lettered with reason "
            f"{{{{ $labels.reason }}}} in the last {c.dead_letter_window}.",
            QUEUE_DETAIL,
            f"{queue_detail}&var-task={_TASK}",
        )
    )
    add(
        AlertRule(
            "AsyncMQJobsExpiring",
            "warning",
            c.expiring_for,
            _m(
                f"sum by ({_BT}) (increase(%(asyncmq.job.outcomes)s"
                f'{{outcome="expired"}}[{c.expiring_window}])) > 0'
            ),
            f"Task {_TASK} on queue {_QUEUE}: jobs expire before they start",
            f"{{{{ $value | humanize }}}} {_TASK} jobs on queue {_QUEUE} passed their TTL before a worker "
            f"picked them up in the last {c.expiring_window} and went to the dead-letter queue.",
            QUEUE_DETAIL,
            f"{queue_detail}&var-task={_TASK}",
        )
    )
    # The depth and the consumer count come from a sampler that outlives the workers (the exporter):
    # when every worker is dead, the elected in-worker sampler is dead too and only the exporter reports.
    add(
        AlertRule(
            "AsyncMQNoConsumers",
            "critical",
            c.no_consumers_for,
            _m(
                f'max by ({_B}) (%(asyncmq.queue.depth)s{{state="ready"}}) > 0 and on ({_B}) '
                f"max by ({_B}) (%(asyncmq.queue.consumers)s) == 0"
            ),
            f"Queue {_QUEUE}: jobs are waiting and no worker serves the queue",
            f"Queue {_QUEUE} holds {{{{ $value }}}} ready jobs and no live worker consumes from it.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQQueuesUnobserved",
            "critical",
            c.unobserved_for,
            _m("absent(%(asyncmq.queue.depth)s)"),
            "No process samples the queues",
            "No asyncmq_queue_depth series reaches Prometheus: neither the exporter nor a live worker "
            "samples the queues, so queue alerts such as AsyncMQNoConsumers cannot fire. Run "
            "`asyncmq-otel exporter` and check that Prometheus scrapes it.",
            OVERVIEW,
        )
    )
    add(
        AlertRule(
            "AsyncMQWorkerHeartbeatMissing",
            "warning",
            c.heartbeat_for,
            _m(
                f"(time() - %(asyncmq.worker.heartbeat.timestamp)s > {_num(c.heartbeat_max_age_seconds)} "
                f"unless on (job, instance, {_B}) %(asyncmq.worker.up)s == 0) or "
                f'%(up)s{{job="{c.worker_job}"}} == 0'
            ),
            f"Worker {_INSTANCE}: no heartbeat",
            f"Worker {_INSTANCE} of job {_JOB} has not written a heartbeat for more than "
            f"{_num(c.heartbeat_max_age_seconds)}s, or Prometheus cannot scrape it, while it is not shutting "
            "down. Its jobs will be redelivered once their leases expire.",
            WORKERS,
            f"var-job={_JOB}",
        )
    )
    add(
        AlertRule(
            "AsyncMQWorkersSaturated",
            "warning",
            c.saturation_for,
            _m(
                f"sum by ({_B}) (%(asyncmq.worker.jobs.active)s) / "
                f"sum by ({_B}) (%(asyncmq.worker.concurrency)s) > {_num(c.saturation_ratio)} and on ({_B}) "
                f'max by ({_B}) (%(asyncmq.queue.depth)s{{state="ready"}}) > 0'
            ),
            f"Queue {_QUEUE}: workers are saturated",
            f"Workers serving queue {_QUEUE} use {{{{ $value | humanizePercentage }}}} of their concurrency "
            "while jobs are waiting. Add workers or raise concurrency.",
            WORKERS,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQQueuePausedTooLong",
            "warning",
            c.paused_for,
            _m(f"max by ({_B}) (%(asyncmq.queue.paused)s) == 1"),
            f"Queue {_QUEUE}: paused for more than {c.paused_for}",
            f"Queue {_QUEUE} has been paused for more than {c.paused_for}; no job on it is processed.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQRetryStorm",
            "warning",
            c.retry_storm_for,
            _m(
                f"sum by ({_BT}) "
                f'(rate(%(asyncmq.job.outcomes)s{{outcome="retried"}}[{c.retry_storm_window}])) / '
                f"sum by ({_BT}) (rate(%(messaging.client.consumed.messages)s[{c.retry_storm_window}])) > "
                f"{_num(c.retry_storm_ratio)}"
            ),
            f"Task {_TASK} on queue {_QUEUE}: retry storm",
            f"{{{{ $value | humanizePercentage }}}} of {_TASK} deliveries on queue {_QUEUE} ended in a retry "
            f"over {c.retry_storm_window} (threshold {_num(c.retry_storm_ratio * 100)}%).",
            QUEUE_DETAIL,
            f"{queue_detail}&var-task={_TASK}",
        )
    )
    add(
        AlertRule(
            "AsyncMQJobsStalled",
            "warning",
            "0m",
            _m(f"sum by ({_BT}) (increase(%(asyncmq.job.stalled)s[{c.stalled_window}])) > 0"),
            f"Task {_TASK} on queue {_QUEUE}: jobs stalled",
            f"{{{{ $value | humanize }}}} {_TASK} jobs on queue {_QUEUE} lost their lease in the last "
            f"{c.stalled_window} and were redelivered: a worker died or its event loop was blocked.",
            QUEUE_DETAIL,
            f"{queue_detail}&var-task={_TASK}",
        )
    )
    add(
        AlertRule(
            "AsyncMQHungJob",
            "warning",
            c.hung_job_for,
            _m(f"max by ({_B}) (%(asyncmq.job.running.max_age)s) > {_num(c.hung_job_seconds)}"),
            f"Queue {_QUEUE}: a job has been running too long",
            f"An attempt on queue {_QUEUE} has been running for {{{{ $value | humanizeDuration }}}} "
            f"(threshold {_num(c.hung_job_seconds)}s).",
            WORKERS,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQBackendDown",
            "critical",
            c.backend_down_for,
            _m("max by (job, instance) (%(asyncmq.backend.up)s) == 0"),
            f"{_INSTANCE}: Redis unreachable",
            f"Process {_INSTANCE} of job {_JOB} cannot reach its Redis backend; no job is claimed or "
            "settled.",
            WORKERS,
            f"var-job={_JOB}",
        )
    )
    add(
        AlertRule(
            "AsyncMQBackendDataLoss",
            "critical",
            "0m",
            _m(f"max by ({_B}) (%(asyncmq.backend.data_loss.detected)s) == 1"),
            f"Queue {_QUEUE}: Redis lost the queue's data",
            f"A script on queue {_QUEUE} found a new dataset epoch: Redis restarted without its data, and "
            "jobs stored before then may be gone.",
            OVERVIEW,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQScheduleLate",
            "warning",
            c.schedule_late_for,
            # a stale sample is exported as 0 in multi-process mode: never read it as "late since 1970"
            _m(
                f"time() - max by ({_B}, schedule) (%(asyncmq.schedule.next_run.timestamp)s > 0) > "
                f"{_num(c.schedule_late_intervals)} * max by ({_B}, schedule) (%(asyncmq.schedule.interval)s)"
            ),
            f"Schedule {_SCHEDULE} on queue {_QUEUE}: not firing",
            f"The next run of schedule {_SCHEDULE} on queue {_QUEUE} is "
            "{{ $value | humanizeDuration }} "
            f"in the past, more than {_num(c.schedule_late_intervals)} of its intervals: no worker of the "
            "queue is firing it.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    add(
        AlertRule(
            "AsyncMQTelemetryDropping",
            "warning",
            c.telemetry_for,
            _m(
                f"sum by (job, instance, signal, reason) "
                f"(rate(%(asyncmq.telemetry.dropped)s[{c.telemetry_window}])) > 0 or "
                f"sum by (job, instance) (rate(%(otel.sdk.processor.span.processed)s"
                f'{{error_type="queue_full"}}[{c.telemetry_window}])) > 0'
            ),
            f"{_INSTANCE}: telemetry is being dropped",
            f"Process {_INSTANCE} of job {_JOB} drops telemetry"
            "{{ if $labels.signal }} ({{ $labels.signal }}: {{ $labels.reason }}){{ end }}; "
            "dashboards, traces and logs are incomplete.",
            TELEMETRY_HEALTH,
            f"var-job={_JOB}",
        )
    )
    add(
        AlertRule(
            "AsyncMQJobsBlockedTooLong",
            "warning",
            c.blocked_for,
            _m(f"max by ({_B}) (%(asyncmq.queue.blocked.oldest_age)s) > {_num(c.blocked_age_seconds)}"),
            f"Queue {_QUEUE}: a job has waited too long for its parents",
            f"A job on queue {_QUEUE} has been blocked on its parents for "
            "{{ $value | humanizeDuration }} "
            f"(threshold {_num(c.blocked_age_seconds)}s). A parent is not running: its queue has no "
            "worker, is paused or backed up, or the parent is stuck.",
            QUEUE_DETAIL,
            queue_detail,
        )
    )
    return rules


def rules_document(config: Config) -> dict[str, object]:
    """The rule file as data, in the shape Prometheus loads."""
    alerts = []
    base = config.runbook_base_url.rstrip("/")
    runbook = f"{base}/{RUNBOOK_PATH}" if base else RUNBOOK_PATH
    for rule in alert_rules(config):
        entry: dict[str, object] = {"alert": rule.alert, "expr": rule.expr}
        if rule.duration != "0m":
            entry["for"] = rule.duration
        dashboard_url = f"{config.grafana_url.rstrip('/')}/d/{rule.dashboard}"
        if rule.dashboard_vars:
            dashboard_url += f"?{rule.dashboard_vars}"
        entry["labels"] = {"severity": rule.severity}
        entry["annotations"] = {
            "summary": rule.summary,
            "description": rule.description,
            "runbook_url": f"{runbook}#{rule.alert.lower()}",
            "dashboard_url": dashboard_url,
        }
        alerts.append(entry)
    recordings = [{"record": rule.record, "expr": rule.expr} for rule in recording_rules(config)]
    # Recording rules first: Prometheus evaluates groups independently, but promtool and readers go in order.
    return {
        "groups": [
            {"name": "asyncmq-wait-slo", "rules": recordings},
            {"name": "asyncmq-alerts", "rules": alerts},
        ]
    }


_PLAIN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_:.-]*")
_YAML_WORDS: Final = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})


def _scalar(key: str, value: str, indent: str) -> list[str]:
    if key == "expr":
        # A literal block keeps PromQL free of YAML escaping, so it reads exactly as in the contract.
        return [f"{indent}{key}: |-", f"{indent}  {value}"]
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return [f"{indent}{key}: {value}"]
    # JSON strings are valid YAML double-quoted scalars.
    return [f"{indent}{key}: {json.dumps(value, ensure_ascii=False)}"]


def _yaml(node: Mapping[str, object], indent: str = "") -> list[str]:
    """YAML for the nested mappings, lists of mappings and strings a rule file is made of."""
    lines: list[str] = []
    for key, value in node.items():
        if isinstance(value, str):
            lines += _scalar(key, value, indent)
        elif isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines += _yaml(value, indent + "  ")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            for item in value:
                body = _yaml(item, indent + "    ")
                lines.append(f"{indent}  - {body[0].lstrip()}")
                lines += body[1:]
        else:
            raise TypeError(f"{key}: cannot render {type(value).__name__} in a rule file")
    return lines


def render_rules(config: Config | None = None) -> str:
    """The rule file text for ``config`` (the contract defaults when omitted)."""
    header = [
        "# Generated by exporters/generate_rules.py from the telemetry contract (§8). Do not edit:",
        "# change the generator or its configuration, then run `python exporters/generate_rules.py`.",
    ]
    return "\n".join([*header, *_yaml(rules_document(config or Config()))]) + "\n"


def _parse_override(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    fields = {field.name: field for field in dataclasses.fields(Config)}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of: {', '.join(fields)}")
    # Annotations are strings here (postponed evaluation), which is all the dispatch needs.
    kind = str(fields[name].type)
    if kind.startswith("tuple"):
        return name, tuple(part.strip() for part in raw.split(","))
    if kind == "float":
        try:
            return name, float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a number, not {raw!r}") from None
    return name, raw


def main(argv: Sequence[str] | None = None) -> int:
    """Write the rule file, or with ``--check`` report drift and return 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed rule file differs")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], type=_parse_override, metavar="NAME=VALUE"
    )
    parser.add_argument("--output", type=Path, default=RULES_PATH, help="where to write the rules")
    parser.add_argument(
        "--grafana-url",
        default="",
        help="Grafana's address (e.g. https://grafana.example.com): dashboard links become absolute",
    )
    parser.add_argument(
        "--runbook-base-url",
        default="",
        help="where the repository is browsed (e.g. https://github.com/ORG/REPO/blob/main): runbook links "
        f"become absolute, BASE/{RUNBOOK_PATH}#alert",
    )
    args = parser.parse_args(argv)
    links = {"grafana_url": args.grafana_url, "runbook_base_url": args.runbook_base_url}
    try:
        config = Config(**{**{k: v for k, v in links.items() if v}, **dict(args.overrides)})
    except ValueError as error:
        parser.error(str(error))
    text = render_rules(config)
    if args.check:
        committed = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(), text.splitlines(), "committed", "generated", lineterm=""
            )
            sys.stderr.write("\n".join(list(diff)[:60]) + "\n")
            sys.stderr.write(f"{args.output} is out of date: run `python exporters/generate_rules.py`\n")
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

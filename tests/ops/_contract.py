"""Read the telemetry contract's tables (metrics §3.4, dashboard §7, alerts §8) as data.

The ops tests compare the generated dashboards and rules with these tables, so a contract change that
the generators do not follow fails the build instead of drifting silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The contract ships with the repository (docs/design), so a fresh checkout tests against it;
# test_contract_copy_is_current compares it with the steering copy in ../shared when one is there.
CONTRACT_PATH = REPO_ROOT / "docs" / "design" / "telemetry.md"
SHARED_CONTRACT_DIR = REPO_ROOT.parent / "shared" / "design"

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE = re.compile(r"`([^`]*)`")


@dataclass(frozen=True)
class ContractPanel:
    """One row of §7: the panel cell as written, and its queries with the shorthands expanded."""

    row: str
    cell: str
    title: str  # the cell without its "(unit)" note and ✦ marker
    note: str  # the parenthesised note, e.g. "s", "0–1", "table, s"
    exemplars: bool
    exprs: frozenset[str]


@dataclass(frozen=True)
class ContractAlert:
    """One row of the §8 alert table."""

    name: str
    severity: str
    duration: str
    expr: str


@cache
def text() -> str:
    """The contract, or a failure that says where it was expected."""
    if not CONTRACT_PATH.is_file():
        pytest.fail(f"telemetry contract not found at {CONTRACT_PATH}; the ops tests check against it")
    return CONTRACT_PATH.read_text(encoding="utf-8")


def _section(heading: str) -> str:
    """The body of the section whose heading starts with ``heading`` (e.g. "## 7.")."""
    level = heading.split(" ", 1)[0]
    match = re.search(rf"^{re.escape(heading)}.*?$(.*?)(?=^{level} |\Z)", text(), re.MULTILINE | re.DOTALL)
    if match is None:
        pytest.fail(f"section {heading!r} missing from {CONTRACT_PATH}")
    return match.group(1)


def _table(body: str) -> list[list[str]]:
    """Data rows of the first markdown table in ``body``, cells stripped, header and rule skipped."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in _CELL_SPLIT.split(row.strip().strip("|"))] for row in rows[2:]]


def _unescape(cell: str) -> str:
    return cell.replace("\\|", "|")


# A panel beyond §7 that an issue asked for (an issue wins over the design file; the README's telemetry
# section describes it): issue 6's worker liveness per queue, from asyncmq.queue.consumers (in the
# table since rev. 2).
EXTENSION_PANELS = (
    (
        "Saturation",
        "Consumers per queue",
        "`max by (messaging_destination_name) (asyncmq_queue_consumers{⟨Q⟩})`",
    ),
)


def metric_names() -> dict[str, str]:
    """§3.4: OTel name -> Prometheus name."""
    return {_CODE.findall(row[1])[0]: _CODE.findall(row[4])[0] for row in _table(_section("### 3.4"))}


def _expand_dashboard(expr: str) -> str:
    return (
        _unescape(expr)
        .replace("⟨QT⟩", 'messaging_destination_name=~"$queue",asyncmq_task_name=~"$task"')
        .replace("⟨Q⟩", 'messaging_destination_name=~"$queue"')
        .replace("$ri", "$__rate_interval")
    )


def _panel_exprs(title: str, cell: str) -> frozenset[str]:
    """Every query a §7 row asks for: its PromQL plus the "same with" and quantile variants.

    Quantiles come from "(also 0.5, 0.99)" and from the panel name ("Attempts per finished job p50/p95"
    lists only the p95 query).
    """
    exprs: list[str] = []
    for segment in _CODE.findall(cell):
        expanded = _expand_dashboard(segment)
        matcher = re.fullmatch(r'(\w+)="[^"]*"', expanded)
        if matcher is None:
            exprs.append(expanded)
        else:
            # "same with `state="dead"`": the previous query with that matcher swapped in.
            exprs.append(re.sub(rf'{matcher.group(1)}="[^"]*"', expanded, exprs[-1], count=1))
    also = re.search(r"\(also ([0-9., ]+)\)", cell)
    quantiles = {q.strip() for q in also.group(1).split(",")} if also else set()
    quantiles |= {f"{int(p) / 100:g}" for p in re.findall(r"\bp(\d\d)\b", title)}
    exprs += [
        expr.replace("histogram_quantile(0.95,", f"histogram_quantile({q},", 1)
        for expr in list(exprs)
        if "histogram_quantile(0.95," in expr
        for q in quantiles
    ]
    return frozenset(exprs)


def dashboard_panels() -> list[ContractPanel]:
    """§7's panel table."""
    panels = []
    for row, cell, promql in [*_table(_section("## 7.")), *EXTENSION_PANELS]:
        exemplars = "✦" in cell
        bare = cell.replace("✦", "").strip()
        note_match = re.search(r"\s*\(([^)]*)\)$", bare)
        note = note_match.group(1) if note_match else ""
        title = bare[: note_match.start()] if note_match else bare
        panels.append(ContractPanel(row, cell, title, note, exemplars, _panel_exprs(title, promql)))
    return panels


def _expand_alert(expr: str) -> str:
    return (
        _unescape(expr)
        .replace("⟨BT⟩", "messaging_destination_name, asyncmq_task_name")
        .replace("⟨B⟩", "messaging_destination_name")
    )


def alerts() -> list[ContractAlert]:
    """§8's alert table, in order."""
    return [
        ContractAlert(_CODE.findall(name)[0], severity, duration, _expand_alert(_CODE.findall(expr)[0]))
        for name, severity, duration, expr in _table(_section("## 8."))
    ]


def recording_rules() -> dict[str, str]:
    """§8's wait-SLO recording rules: name -> expression, one per window W."""
    body = _section("## 8.")
    windows_match = re.search(r"W ∈ \{([^}]*)\}", body)
    template = next((code for code in _CODE.findall(body) if code.startswith("asyncmq:wait_slo_bad")), None)
    if windows_match is None or template is None:
        pytest.fail("§8 no longer describes the wait-SLO recording rules the way this test reads them")
    name, expr = (part.strip() for part in template.split(" = ", 1))
    rules = {}
    for window in (w.strip() for w in windows_match.group(1).split(",")):
        rules[name.replace("rateW", f"rate{window}")] = _expand_alert(expr).replace("[W]", f"[{window}]")
    return rules

"""Code names a metric by its OTel name, never by its row number in the contract's table.

Every call of a ``MetricSinks`` lookup (``counter``, ``histogram``, ``gauge``, ``remove``, ``bound``,
``set_observer``) on something called ``sinks`` is read with ``ast``. Its first argument must not be an
integer (a row id only makes sense with the design files open); where it is a string, literal or a
module constant, it must be a metric of the table of the kind the method binds. Tests are checked for
row numbers only: some pass a wrong name on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

from asyncmq_otel.telemetry.metrics import METRICS_BY_NAME, InstrumentKind

ROOT = Path(__file__).resolve().parents[2]
CODE = ("asyncmq_otel", "benchmarks", "dashboards", "exporters", "scripts")
LOOKUPS: dict[str, set[InstrumentKind] | None] = {  # None: any kind
    "counter": {InstrumentKind.COUNTER},
    "histogram": {InstrumentKind.HISTOGRAM},
    "gauge": {InstrumentKind.GAUGE, InstrumentKind.UP_DOWN_COUNTER},
    "set_observer": {InstrumentKind.OBSERVABLE_GAUGE},
    "remove": None,
    "bound": None,
}


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "..."`` assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(value := getattr(node.value, "value", None), str):
            found.update({t.id: value for t in node.targets if isinstance(t, ast.Name)})
    return found


def _lookups(path: Path) -> list[tuple[str, int, str, object]]:
    """``(method, line, argument source, argument value or None)`` of each lookup on a ``sinks``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _string_constants(tree)
    calls: list[tuple[str, int, str, object]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        method, receiver = node.func.attr, ast.unparse(node.func.value)
        if method not in LOOKUPS or not (receiver == "sinks" or receiver.endswith(".sinks")):
            continue
        arg = node.args[0]
        value: object = None
        if isinstance(arg, ast.Constant):
            value = arg.value
        elif isinstance(arg, ast.Name):
            value = constants.get(arg.id)
        calls.append((method, node.lineno, ast.unparse(arg), value))
    return calls


def _files(*tops: str) -> list[Path]:
    return sorted(path for top in tops if (ROOT / top).is_dir() for path in (ROOT / top).rglob("*.py"))


def test_code_looks_metrics_up_by_their_otel_name_of_the_right_kind() -> None:
    offenders: list[str] = []
    named: set[str] = set()
    for path in _files(*CODE):
        for method, line, source, value in _lookups(path):
            where = f"{path.relative_to(ROOT).as_posix()}:{line} {method}({source}, ...)"
            if isinstance(value, int):
                offenders.append(f"{where}: a row number; pass the metric's OTel name")
            elif isinstance(value, str):
                row = METRICS_BY_NAME.get(value)
                kinds = LOOKUPS[method]
                if row is None:
                    offenders.append(f"{where}: no metric of the table is named {value!r}")
                elif kinds is not None and row.kind not in kinds:
                    offenders.append(f"{where}: {value} is a {row.kind.value}")
                else:
                    named.add(value)
    assert offenders == []
    # Every metric of the table is recorded somewhere, so the scan saw the lookups it is meant to check.
    assert named == set(METRICS_BY_NAME)


def test_tests_pass_no_row_numbers_either() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()}:{line} {method}({source}, ...)"
        for path in _files("tests")
        for method, line, source, value in _lookups(path)
        if isinstance(value, int)
    ]
    assert offenders == []

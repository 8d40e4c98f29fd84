"""The module map of the style guide (``docs/design/style.md``, "Module map"), enforced on the import graph.

``MAP`` is that table's "May import" column, one entry per row: the modules the row holds and what
they may import besides each other. An import inside a function or under ``if TYPE_CHECKING:`` counts
too (a type a row may not name is a dependency all the same), and so does ``importlib.import_module``
of a literal name; what a row may import only ``lazily`` it may import only there, never at module
level. ``NEVER`` is the layering the table itself must keep: the core knows no engine and no adapter,
no row below ``cli/`` imports it, the engine knows no telemetry, the adapters do not know each other.
So a failure here is fixed in the code, not by widening a row.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "asyncmq_otel"
EVERYTHING = "*"


@dataclass(frozen=True)
class Row:
    holds: frozenset[str]  # module names under asyncmq_otel: a package holds its modules; `*` globs
    may_import: frozenset[str]
    lazily: frozenset[str]


def _row(holds: str, may_import: str = "", lazily: str = "") -> Row:
    return Row(frozenset(holds.split()), frozenset(may_import.split()), frozenset(lazily.split()))


# the rows of the table from errors.py to flows.py
CORE = (
    "errors _exit_status _terminal _stored _version jobs schedules events _writes _lifecycle"
    " limiters hooks settings clock tasks queues _dependencies _repeatables _results flows"
)
QUEUES_MAY_IMPORT = (
    "jobs errors tasks schedules events _lifecycle settings backends.base backends.capabilities backends"
)
MAP: dict[str, Row] = {
    "facade": _row("__init__", EVERYTHING),
    "errors": _row("errors"),
    "leaves": _row("_exit_status _terminal _stored _version"),
    "jobs": _row("jobs", "errors"),
    "schedules": _row("schedules", "jobs errors"),
    "events": _row("events _writes _lifecycle", "jobs clock"),
    "settings": _row("limiters hooks settings clock", "errors backends.base"),
    "tasks": _row("tasks", "jobs errors schedules settings _dependencies backends.base", lazily="queues"),
    "queues": _row("queues _dependencies _repeatables _results", QUEUES_MAY_IMPORT),
    "flows": _row("flows", "queues _dependencies _repeatables _results " + QUEUES_MAY_IMPORT),
    "workers": _row("workers", "worker"),
    "worker": _row("worker", CORE + " backends.base backends.capabilities backends", lazily="sandbox"),
    "sandbox": _row("sandbox", "jobs tasks errors settings _exit_status"),
    "backends": _row(
        "backends backends._default", "backends.base settings errors", lazily="backends.memory backends.redis"
    ),
    "backends.base": _row("backends.base", "jobs errors", lazily="backends.capabilities"),
    "backends.capabilities": _row("backends.capabilities", "backends.base jobs errors schedules"),
    "backends.memory": _row(
        "backends.memory backends._memory_*", "backends.base jobs errors schedules clock _stored"
    ),
    "backends.redis": _row("backends.redis", "backends.base jobs errors schedules settings _stored"),
    "telemetry": _row(
        "telemetry logs",
        "events jobs backends.base backends.capabilities tasks schedules settings errors _version",
    ),
    "demo": _row("demo", CORE + " backends backends.base worker telemetry"),
    "testing": _row("testing pytest_plugin", CORE + " telemetry backends backends.memory"),
    "cli": _row("cli __main__", EVERYTHING),
}

_ENGINE_AND_ADAPTERS = {"workers", "worker", "sandbox", "telemetry", "cli", "demo", "testing"}
_ADAPTERS = {"backends.memory", "backends.redis"}
_CORE_ROWS = ("errors", "leaves", "jobs", "schedules", "events", "settings", "tasks", "queues", "flows")
NEVER: dict[str, set[str]] = {
    **dict.fromkeys(_CORE_ROWS, _ENGINE_AND_ADAPTERS | _ADAPTERS),
    "worker": {"workers", "telemetry", "cli", "demo", "testing"} | _ADAPTERS,
    "sandbox": _ENGINE_AND_ADAPTERS - {"sandbox"} | _ADAPTERS | {"backends", "queues", "flows"},
    "backends.base": _ENGINE_AND_ADAPTERS | _ADAPTERS | {"backends", "queues", "flows"},
    "backends.capabilities": _ENGINE_AND_ADAPTERS | _ADAPTERS | {"backends", "queues", "flows"},
    "backends.memory": _ENGINE_AND_ADAPTERS | {"backends.redis", "queues", "flows"},
    "backends.redis": _ENGINE_AND_ADAPTERS | {"backends.memory", "queues", "flows"},
    "telemetry": _ENGINE_AND_ADAPTERS - {"telemetry"} | _ADAPTERS | {"queues", "flows"},
    "demo": {"cli", "testing"},
    "testing": {"cli", "demo", "worker", "workers", "backends.redis"},
}


def _module_name(path: Path) -> str:
    """``queues``, ``worker.claim_loop``, ``backends.redis`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _holds(pattern: str, module: str) -> bool:
    return module == pattern or module.startswith(pattern + ".") or fnmatch.fnmatchcase(module, pattern)


def row_of(module: str) -> str | None:
    """The row of the map holding ``module``: the one whose pattern names it most closely."""
    found = [
        (len(pattern), name) for name, row in MAP.items() for pattern in row.holds if _holds(pattern, module)
    ]
    return max(found)[1] if found else None


def _names(entry: str, target: str) -> bool:
    """Whether the "May import" entry ``entry`` names ``target``: a package names only its own row's modules."""
    return entry in {EVERYTHING, target} or (_holds(entry, target) and row_of(entry) == row_of(target))


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _targets(node: ast.AST, package: str) -> list[str]:
    """The package's modules one statement or call imports (``package``: where relative imports start)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = [part for part in package.split(".") if part]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        elif node.module and node.module.split(".")[0] == "asyncmq_otel":
            target = node.module.removeprefix("asyncmq_otel").removeprefix(".")
        else:
            return []
        # `from ..backends import base` imports the module backends.base, `from .jobs import Job` jobs
        submodules = [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
        return [name if name in MODULES else target for name in submodules]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "asyncmq_otel"]
    if (
        isinstance(node, ast.Call)
        and ast.unparse(node.func).endswith("import_module")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and str(node.args[0].value).split(".")[0] == "asyncmq_otel"
    ):
        return [str(node.args[0].value)]
    return []


def _short(name: str) -> str:
    """``asyncmq_otel.jobs`` -> ``jobs``; the package itself is its ``__init__``."""
    return name.removeprefix("asyncmq_otel").removeprefix(".") or "__init__"


@cache
def imports_of(module: str) -> dict[str, bool]:
    """The package's modules ``module`` imports, each with whether every import of it is deferred.

    Deferred: inside a function or under ``if TYPE_CHECKING:`` (nothing loads it when ``module`` loads).
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = "" if package == "__init__" else package
    found: dict[str, bool] = {}

    def visit(node: ast.AST, *, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for target in map(_short, _targets(child, package)):
                found[target] = found.get(target, True) and inner
            if isinstance(child, ast.If) and _is_type_checking(child):
                visit(ast.Module(body=child.body, type_ignores=[]), deferred=True)
                visit(ast.Module(body=child.orelse, type_ignores=[]), deferred=inner)
            else:
                visit(child, deferred=inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), deferred=False)
    return found


def offences(module: str, imports: dict[str, bool]) -> list[str]:
    """Each import of ``module`` (target -> deferred) that its row's "May import" does not allow."""
    layer = row_of(module)
    assert layer is not None, f"{module} is in no row of the module map"
    row = MAP[layer]
    found = []
    for target, deferred in sorted(imports.items()):
        if row_of(target) == layer or any(_names(entry, target) for entry in row.may_import):
            continue
        if any(_names(entry, target) for entry in row.lazily):
            if not deferred:
                found.append(f"{module} ({layer}) imports {target} at module level; the map allows it lazily")
            continue
        found.append(f"{module} ({layer}) imports {target} ({row_of(target)})")
    return found


def test_each_module_imports_only_what_its_row_may_import():
    assert [offence for module in MODULES for offence in offences(module, imports_of(module))] == []


def test_every_module_is_in_a_row_and_every_name_of_the_map_exists():
    """A new or renamed module must not fall out of the check, nor the map keep names the code lost."""
    assert [module for module in MODULES if row_of(module) is None] == []
    named = {pattern for row in MAP.values() for pattern in row.holds | row.may_import | row.lazily}
    assert [p for p in sorted(named - {EVERYTHING}) if not any(_holds(p, m) for m in MODULES)] == []
    assert row_of("backends._memory_flows") == "backends.memory"
    assert row_of("backends.redis._scripts") == "backends.redis"
    assert row_of("backends._default") == "backends"
    assert row_of("worker.supervisor") == "worker"  # --processes is the engine's; cli/ holds commands only
    assert row_of("logs") == "telemetry"


def test_the_map_keeps_the_layering():
    """No row is widened past its layer: the core never reaches the engine or an adapter, and so on."""
    crossings = [
        f"{name} may import {entry} ({row_of(entry)})"
        for name, never in NEVER.items()
        for entry in sorted(MAP[name].may_import | MAP[name].lazily)
        if entry == EVERYTHING or row_of(entry) in never
    ]
    assert crossings == []
    assert MAP["jobs"].may_import == {"errors"}
    assert MAP["events"].may_import == {"jobs", "clock"}  # and its own _writes, _lifecycle


def test_the_check_finds_a_forbidden_import_and_a_lazy_one_made_eager():
    assert offences("jobs", {"worker.attempt": True}) == ["jobs (jobs) imports worker.attempt (worker)"]
    assert offences("backends._memory_flows", {"backends.redis._jobs": True}) == [
        "backends._memory_flows (backends.memory) imports backends.redis._jobs (backends.redis)"
    ]
    assert offences("demo.run", {"cli._exit": False}) == ["demo.run (demo) imports cli._exit (cli)"]
    assert offences("tasks", {"queues": True}) == []
    assert offences("tasks", {"queues": False}) == [
        "tasks (tasks) imports queues at module level; the map allows it lazily"
    ]
    # `backends` names the package's own row (from_url, the default backend), not the adapters below it
    assert offences("queues", {"backends": False, "backends._default": False}) == []
    assert offences("queues", {"backends.memory": True}) != []


def test_imports_are_read_with_their_place():
    """Relative imports resolve, submodules are told from names, and deferred imports are told apart."""
    assert imports_of("worker.attempt")["sandbox"] is True  # importlib.import_module inside a method
    assert (
        imports_of("backends.base")["backends.capabilities"] is True
    )  # `from . import capabilities`, lazily
    assert imports_of("tasks")["queues"] is True
    assert imports_of("queues")["_repeatables"] is False  # `from . import _repeatables, _results`
    assert imports_of("telemetry.instrumentation")["events"] is False  # `from .. import events`
    assert imports_of("tasks")["settings"] is False
    assert imports_of("backends._default")["backends.memory"] is True

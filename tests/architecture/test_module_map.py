"""The module map of the style guide, as an import graph: each layer imports only what is below it.

The map: the core (jobs, tasks, queues, events, settings, hooks, limiters, errors) knows no engine and
no adapter; the worker engine (``worker/``) stands on the core, ``backends.base`` and the sandbox; the
sandbox on the core alone; backends on ``backends.base`` and the core's data model; telemetry reaches the
core through its events, its data model and ``backends.base``, never the engine; ``cli/`` is on top and
nothing below imports it. Imports inside ``if TYPE_CHECKING:`` count too: a type a layer may not name is
a dependency all the same.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "asyncmq_otel"

# layer -> the layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "core": {"worker", "sandbox", "telemetry", "cli", "backends.memory", "backends.redis", "demo"},
    "backends.base": {"worker", "sandbox", "telemetry", "cli", "backends.memory", "backends.redis", "queues"},
    "backends.memory": {"worker", "sandbox", "telemetry", "cli", "backends.redis", "queues"},
    "backends.redis": {"worker", "sandbox", "telemetry", "cli", "backends.memory", "queues"},
    "sandbox": {"worker", "telemetry", "cli", "backends", "queues"},
    "worker": {"telemetry", "cli", "backends.memory", "backends.redis"},
    "telemetry": {"worker", "sandbox", "cli", "queues", "backends.memory", "backends.redis"},
}
# Modules of the package root that wire layers together rather than sit in one.
FACADES = {"__init__", "__main__", "workers", "testing", "pytest_plugin", "logs"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    """``worker``, ``sandbox``, ``telemetry``, ``cli``, ``demo``, ``backends.<x>``, ``queues``, ``core``."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in FACADES:
        return None
    if parts[0] == "backends":
        if len(parts) == 1 or parts[1] in {"__init__", "_default"}:
            return "backends"
        return "backends." + parts[1].removeprefix("_") if parts[1] != "capabilities" else "backends.base"
    if parts[0] in {"worker", "sandbox", "telemetry", "cli", "demo"}:
        return parts[0]
    return "queues" if parts[0] == "queues" else "core"


@cache
def _imports(path: Path) -> frozenset[str]:
    """The package's modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                found.update(f"{target}.{a.name}" for a in node.names) if node.module is None else found.add(
                    target
                )
            elif node.module and node.module.startswith("asyncmq_otel"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("asyncmq_otel"))
    return frozenset(found)


def _is_under(layer: str, forbidden: str) -> bool:
    return layer == forbidden or layer.startswith(forbidden + ".")


def test_each_layer_imports_only_what_the_module_map_allows():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(_module_name(path))
        if layer is None:
            continue
        rules = FORBIDDEN.get(layer, set()) | (FORBIDDEN["core"] if layer == "queues" else set())
        for target in _imports(path):
            target_layer = _layer(target)
            if (
                target_layer is not None
                and target_layer != layer
                and any(_is_under(target_layer, f) for f in rules)
            ):
                offenders.append(f"{_module_name(path)} ({layer}) imports {target} ({target_layer})")
    assert offenders == []


def test_the_map_reads_the_modules_it_names():
    """A rename that takes a module out of its layer must not silently take it out of the check."""
    layers = {_layer(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert {
        "core",
        "queues",
        "worker",
        "sandbox",
        "telemetry",
        "cli",
        "backends.base",
        "backends.redis",
    } <= layers
    assert _layer("asyncmq_otel.worker.claim_loop") == "worker"
    # --processes: the supervisor is part of the engine (no CLI, no telemetry); cli/ holds commands only
    assert (PACKAGE / "worker" / "supervisor.py").is_file()
    assert _layer("asyncmq_otel.worker.supervisor") == "worker"
    assert _layer("asyncmq_otel.backends._default") == "backends"
    assert _layer("asyncmq_otel.backends.redis._scripts") == "backends.redis"

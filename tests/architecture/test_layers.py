"""The module map of the style guide, enforced: core modules never import adapters' libraries."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "asyncmq_otel"
ADAPTER_LIBRARIES = {"redis", "opentelemetry", "prometheus_client", "click"}
# Adapters may import their library; everything else is core.
ADAPTER_PREFIXES = ("backends/redis/", "telemetry/", "cli/", "demo/", "testing.py", "logs.py")
BANNED_EVERYWHERE = {"pickle", "marshal", "shelve"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_core_modules_never_import_adapter_libraries():
    offenders = [
        f"{path.relative_to(PACKAGE).as_posix()} imports {name}"
        for path in _modules()
        if not path.relative_to(PACKAGE).as_posix().startswith(ADAPTER_PREFIXES)
        for name in _imports(path)
        if name.split(".")[0] in ADAPTER_LIBRARIES
    ]
    assert offenders == []


def test_nothing_imports_pickle_marshal_or_shelve():
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in _modules()
        for name in _imports(path)
        if name.split(".")[0] in BANNED_EVERYWHERE
    ]
    assert offenders == []


def test_no_module_grows_past_800_lines():
    long = {
        path.relative_to(PACKAGE).as_posix(): n
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > 800
    }
    assert long == {}


def test_the_core_never_sets_environment_variables():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
            if (
                isinstance(target, ast.Subscript)
                and isinstance(target.value, ast.Attribute)
                and target.value.attr == "environ"
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []

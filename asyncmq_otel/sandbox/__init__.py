"""The sandbox: run a handler in a warm child process, killed with everything below it at the deadline.

``pool`` holds the parent side (:class:`SandboxPool`, :func:`run_handler`, :func:`shutdown_sandbox`);
``child`` is the child's entry point (``python -m asyncmq_otel.sandbox.child``). The pool loads on first
use, so a child process, which imports this package too, does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import ProgressCallback as ProgressCallback
    from .pool import SandboxPool as SandboxPool
    from .pool import SandboxTaskError as SandboxTaskError
    from .pool import run_handler as run_handler
    from .pool import shutdown_sandbox as shutdown_sandbox

__all__ = ["ProgressCallback", "SandboxPool", "SandboxTaskError", "run_handler", "shutdown_sandbox"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - any public name of the pool
    if name in __all__:
        return getattr(importlib.import_module(".pool", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

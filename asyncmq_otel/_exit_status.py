"""How a child process ended, in words: shared by the sandbox and the worker supervisor."""

from __future__ import annotations

import signal

__all__ = ["describe_exit"]


def describe_exit(returncode: int | None) -> str:
    """``"exited with code 3"``, ``"was killed by SIGKILL"`` (or by a number the enum lacks), or no answer."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:  # real-time signals have no name in the enum
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"

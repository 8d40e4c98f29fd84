"""Process exit codes, and how a child process ended in words.

Shared by the command line, the sandbox and the worker supervisor.
"""

from __future__ import annotations

import signal
from enum import IntEnum

__all__ = ["ExitCode", "describe_exit"]


class ExitCode(IntEnum):
    """The process exit codes of every ``asyncmq-otel`` command."""

    OK = 0
    """Clean drain, ``--burst`` finished, ``--check`` healthy, or an admin command that succeeded."""
    CRASH = 1
    """An unexpected exception, a failed requeue at shutdown, or ``--check`` unhealthy."""
    USAGE = 2
    """Bad arguments (an admin command's queue that does not exist too), an ``--app`` module that cannot
    be imported, or an invalid setting."""
    BACKEND_UNREACHABLE = 3
    """The backend cannot be reached at startup (connection, AUTH or TLS failure)."""


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

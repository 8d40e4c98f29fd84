"""The ``asyncmq-otel`` command line (also ``python -m asyncmq_otel``).

Commands: ``worker``, ``enqueue``, ``queues``, ``queue``, ``job``, ``dlq``, ``workers``,
``schedules``, ``exporter`` and ``demo``. Every option that has an ``ASYNCMQ_*`` variable shows it in
``--help``; precedence is flag > variable > settings module (``ASYNCMQ_SETTINGS_MODULE``) > default.
Exit codes are listed in :class:`asyncmq_otel.cli._exit.ExitCode`.

A command's module is imported only when that command runs, so ``--help`` and the admin commands
do not pay for the worker, the demo or the telemetry SDKs.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import TextIO

import click

from .._version import __version__
from ..settings import SettingsWarning
from ._exit import ExitCode

__all__ = ["COMMANDS", "ExitCode", "main", "put_cwd_on_path", "show_settings_warnings_plainly"]

_EPILOG = """\b
Exit codes: 0 ok (clean drain, --burst done, --check healthy), 1 crash (or a failed requeue,
--check unhealthy), 2 usage or import error, 3 backend unreachable at startup.
Start here: asyncmq-otel demo"""

COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("demo", "demo_command", "Run the mixed demo workload and print a summary."),
    "dlq": ("admin", "dlq", "List, retry or purge dead-lettered jobs."),
    "enqueue": ("admin", "enqueue", "Add a job for TASK and print its id."),
    "exporter": ("exporter", "exporter_command", "Export queue gauges on /metrics until SIGTERM/SIGINT."),
    "job": ("admin", "job", "Show, cancel or retry one job."),
    # rate_limits adds `queue rate-limit` to admin's `queue` group (admin.py is at the size limit)
    "queue": ("rate_limits", "queue", "Pause, resume, drain, clean or rate-limit one queue."),
    "queues": (
        "admin",
        "queues",
        "List queues: depth by state, oldest waiting job's age, paused, rate limit, workers.",
    ),
    "schedules": ("schedules", "schedules", "List, pause, resume or remove periodic jobs."),
    "worker": ("worker", "worker_command", "Run a worker on one or more QUEUES."),
    "workers": (
        "admin",
        "workers",
        "Live workers: id, host, pid, queues, concurrency, in-flight jobs, heartbeat age.",
    ),
}
"""Command name -> (module of this package, attribute, the one line ``--help`` shows: the first line
of the command's help without its parentheses; a test keeps the two equal)."""


def put_cwd_on_path() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does.

    The ``asyncmq-otel`` script does not, so ``--app myapp.tasks`` and
    ``ASYNCMQ_SETTINGS_MODULE=myapp.settings`` would not import from the project directory.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def show_settings_warnings_plainly() -> None:
    """Print a :class:`SettingsWarning` (a misspelt setting) as one ``warning: ...`` line on stderr.

    Python's own format would show a line of this package's code, which says nothing to the user.
    """
    previous = warnings.showwarning
    if getattr(previous, "plain_settings_warnings", False):
        return

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, SettingsWarning):
            click.echo(f"warning: {message}", err=True)
            return
        previous(message, category, filename, lineno, file, line)

    show.plain_settings_warnings = True  # type: ignore[attr-defined]
    warnings.showwarning = show


class _LazyGroup(click.Group):
    """A group whose commands are imported when they run (or when their own ``--help`` is asked for)."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 - click's signature
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: ARG002 - as above
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        module = importlib.import_module(f"{__name__}.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # the one-line summaries come from COMMANDS: listing them must not import every command
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=_EPILOG,
)
@click.version_option(__version__, prog_name="asyncmq-otel")
def main() -> None:
    """asyncmq-otel: an observability-first async job queue."""
    put_cwd_on_path()
    show_settings_warnings_plainly()

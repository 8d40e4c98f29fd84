"""The ``asyncmq-otel`` command line (also ``python -m asyncmq_otel``).

Commands: ``worker``, ``enqueue``, ``queues``, ``queue``, ``job``, ``dlq``, ``workers``,
``schedules``, ``exporter`` and ``demo``. Every option that has an ``ASYNCMQ_*`` variable shows it
in ``--help``; precedence is flag > variable > settings module (``ASYNCMQ_SETTINGS_MODULE``) > default.
Exit codes are listed in :class:`asyncmq_otel.cli._exit.ExitCode`.
"""

from __future__ import annotations

import click

from .._version import __version__
from ._exit import ExitCode
from .admin import dlq, enqueue, job, queue, queues, workers
from .demo import demo_command
from .exporter import exporter_command
from .schedules import schedules
from .worker import worker_command

__all__ = ["ExitCode", "main"]

_EPILOG = """\b
Exit codes: 0 ok (clean drain, --burst done, --check healthy), 1 crash (or a failed requeue,
--check unhealthy), 2 usage or import error, 3 backend unreachable at startup.
Start here: asyncmq-otel demo"""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=_EPILOG,
)
@click.version_option(__version__, prog_name="asyncmq-otel")
def main() -> None:
    """asyncmq-otel: an observability-first async job queue."""


for _command in (
    worker_command,
    enqueue,
    queues,
    queue,
    job,
    dlq,
    workers,
    schedules,
    exporter_command,
    demo_command,
):
    main.add_command(_command)

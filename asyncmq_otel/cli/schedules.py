"""``asyncmq-otel schedules list|pause|resume|remove``: the periodic jobs stored in the backend.

Schedules are declared in code (``@task(cron=...)``, ``Queue.upsert_repeatable``); these commands
inspect them and pause, resume or remove one without a deploy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ..errors import ScheduleNotFound
from ..queues import Queue
from ._backend import BackendChoice, backend_options
from ._exit import CLIError, ExitCode
from ._output import format_age, format_table
from .admin import _echo_json_or_empty, _json_option, _run

__all__ = ["schedules"]


@click.group("schedules")
def schedules() -> None:
    """List, pause, resume or remove periodic jobs."""


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))
    delta = float(value) - time.time()
    return f"{stamp} ({'in ' + format_age(delta) if delta >= 0 else format_age(-delta) + ' ago'})"


@schedules.command("list")
@click.option("--queue", "-q", "queue_name", help="Only this queue (default: every queue).")
@_json_option
@backend_options
def schedules_list(
    queue_name: str | None, as_json: bool, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Show every schedule: key, task, when, next and last run, last job, paused."""

    async def action(choice: BackendChoice) -> list[dict[str, Any]]:
        names = [queue_name] if queue_name else sorted(await choice.backend.list_queues())
        rows: list[dict[str, Any]] = []
        for name in names:
            rows.extend(await Queue(name, backend=choice.backend).list_repeatables())
        return rows

    rows = _run(backend_url, prefix, connect_timeout, action)
    if _echo_json_or_empty(
        rows, as_json, "no schedules: declare one with @task(..., cron=...) or Queue.upsert_repeatable()"
    ):
        return
    headers = ["QUEUE", "KEY", "TASK", "WHEN", "NEXT RUN", "LAST RUN", "LAST JOB", "PAUSED"]
    table = [
        [
            row["queue"],
            row["key"],
            row["task"],
            f"every {row['every']:g}s" if row["every"] is not None else f"{row['cron']} {row['timezone']}",
            "-" if row["paused"] else _when(row["next_run"]),
            _when(row["last_run"]),
            row["last_job_id"] or "-",
            "yes" if row["paused"] else "no",
        ]
        for row in rows
    ]
    for line in format_table(headers, table):
        click.echo(line)


def _change_command(
    verb: str, change: Callable[[Queue, str], Awaitable[None]], summary: str, done: str
) -> None:
    """Add ``schedules VERB KEY -q QUEUE``, which calls ``change`` and then prints ``done``."""

    @schedules.command(verb, help=summary)
    @click.argument("key")
    @click.option("--queue", "-q", "queue_name", required=True, help="The schedule's queue.")
    @backend_options
    def command(
        key: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
    ) -> None:
        async def action(choice: BackendChoice) -> None:
            try:
                await change(Queue(queue_name, backend=choice.backend), key)
            except ScheduleNotFound as exc:
                raise CLIError(
                    f"{exc}: see `asyncmq-otel schedules list --queue {queue_name}`", ExitCode.USAGE
                ) from exc

        _run(backend_url, prefix, connect_timeout, action)
        click.echo(done.format(key=key, queue=queue_name))


for _verb, _change, _summary, _done in (
    (
        "pause",
        Queue.pause_repeatable,
        "Stop schedule KEY from firing (until resumed).",
        "schedule {key} paused: resume it with `asyncmq-otel schedules resume {key} -q {queue}`",
    ),
    (
        "resume",
        Queue.resume_repeatable,
        "Fire schedule KEY again from its next tick (ticks while paused are skipped).",
        "schedule {key} resumed",
    ),
    (
        "remove",
        Queue.remove_repeatable,
        "Delete schedule KEY (jobs it fired stay; a declared one comes back at the next worker start).",
        "schedule {key} removed",
    ),
):
    _change_command(_verb, _change, _summary, _done)

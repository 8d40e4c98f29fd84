"""``asyncmq-otel schedules list|pause|resume|remove``: the periodic jobs stored in the backend.

Schedules are declared in code (``@task(cron=...)``, ``Queue.upsert_repeatable``); these commands
inspect them and pause, resume or remove one without a deploy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def _queue_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--queue", "-q", "queue_name", required=True, help="The schedule's queue.")(func)


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


def _change(
    verb: str, key: str, queue_name: str, backend_url: str | None, prefix: str | None, timeout: float
) -> None:
    async def action(choice: BackendChoice) -> None:
        queue = Queue(queue_name, backend=choice.backend)
        change = {
            "pause": queue.pause_repeatable,
            "resume": queue.resume_repeatable,
            "remove": queue.remove_repeatable,
        }[verb]
        try:
            await change(key)
        except ScheduleNotFound as exc:
            raise CLIError(
                f"{exc}: see `asyncmq-otel schedules list --queue {queue_name}`", ExitCode.USAGE
            ) from exc

    _run(backend_url, prefix, timeout, action)


@schedules.command("pause")
@click.argument("key")
@_queue_option
@backend_options
def schedules_pause(
    key: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Stop schedule KEY from firing (until resumed)."""
    _change("pause", key, queue_name, backend_url, prefix, connect_timeout)
    click.echo(f"schedule {key} paused: resume it with `asyncmq-otel schedules resume {key} -q {queue_name}`")


@schedules.command("resume")
@click.argument("key")
@_queue_option
@backend_options
def schedules_resume(
    key: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Fire schedule KEY again from its next tick (ticks while paused are skipped)."""
    _change("resume", key, queue_name, backend_url, prefix, connect_timeout)
    click.echo(f"schedule {key} resumed")


@schedules.command("remove")
@click.argument("key")
@_queue_option
@backend_options
def schedules_remove(
    key: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Delete schedule KEY (jobs it fired stay; a declared one comes back at the next worker start)."""
    _change("remove", key, queue_name, backend_url, prefix, connect_timeout)
    click.echo(f"schedule {key} removed")

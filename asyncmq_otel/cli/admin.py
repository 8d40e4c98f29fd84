"""Admin commands: ``enqueue``, ``queues``, ``queue ...``, ``job ...``, ``dlq ...`` and ``workers``.

Each one builds the backend from ``--backend`` (or ``ASYNCMQ_BACKEND``, or the settings), checks
that it answers within ``--connect-timeout`` (else exit 3), does one thing and exits. Tables are
plain columns; ``--json`` prints the same data for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click

from ..backends.base import WorkerInfo
from ..jobs import JobState
from ..queues import Queue
from ..settings import get_settings
from ._backend import BackendChoice, backend_options, close_backend, open_backend, probe_or_exit
from ._exit import CLIError, ExitCode, translate_errors
from ._output import format_age, format_table, paint

__all__ = ["dlq", "enqueue", "job", "queue", "queues", "workers"]

T = TypeVar("T")
_PAGE = 500
_FINISHED_STATES = [
    JobState.COMPLETED.value,
    JobState.FAILED.value,
    JobState.EXPIRED.value,
    JobState.CANCELLED.value,
]


def _run(
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
    action: Callable[[BackendChoice], Awaitable[T]],
) -> T:
    """Build the backend, check that it answers (exit 3 if not), run ``action``, close the backend."""

    async def main(choice: BackendChoice) -> T:
        try:
            await probe_or_exit(choice, connect_timeout)
            return await action(choice)
        finally:
            await close_backend(choice)

    with translate_errors(backend_url):
        get_settings()
        choice = open_backend(backend_url, prefix)
        if not choice.shared:
            raise CLIError(
                "memory:// lives inside one process, so a separate command cannot see its jobs: pass "
                "--backend redis://HOST:6379/0 (or set ASYNCMQ_BACKEND) to reach your workers' backend",
                ExitCode.USAGE,
            )
        return anyio.run(main, choice, backend="asyncio")


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def _yes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(func)


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _confirm(yes: bool, what: str) -> None:
    """Go on when ``--yes`` was given or the user confirms on a terminal; otherwise exit 2."""
    if yes:
        return
    if sys.stdin.isatty():
        click.confirm(f"{what}. Continue?", abort=True)
        return
    raise CLIError(f"{what}: pass --yes to confirm (there is no terminal to ask)", ExitCode.USAGE)


def _json_of(kind: type, example: str) -> Callable[[click.Context, click.Parameter, str], Any]:
    """A click callback parsing a JSON value of ``kind`` (``list`` for --args, ``dict`` for --kwargs)."""

    def parse(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:  # noqa: ANN401 - parsed JSON
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"{value!r} is not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(parsed, kind):
            raise click.BadParameter(f"expected a JSON {kind.__name__}, e.g. {example}; got {value!r}")
        return parsed

    return parse


# -- enqueue -------------------------------------------------------------------------------------------
@click.command("enqueue")
@click.argument("task_id", metavar="TASK")
@click.option(
    "--queue", "-q", "queue_name", default="default", show_default=True, help="Queue to add the job to."
)
@click.option(
    "--args",
    "args",
    default="[]",
    metavar="JSON",
    callback=_json_of(list, "'[1, \"two\"]'"),
    help="Positional arguments, a JSON array.",
)
@click.option(
    "--kwargs",
    "kwargs",
    default="{}",
    metavar="JSON",
    callback=_json_of(dict, '\'{"key": "value"}\''),
    help="Keyword arguments, a JSON object.",
)
@click.option("--delay", type=click.FloatRange(min=0), help="Seconds before the job may run.")
@click.option("--priority", type=int, default=5, show_default=True, help="Lower runs first.")
@click.option("--job-id", help="Idempotency key: a second enqueue with this id returns the same job.")
@click.option(
    "--retries", type=click.IntRange(min=0), default=0, show_default=True, help="Retries after a failure."
)
@click.option(
    "--ttl", type=click.FloatRange(min=0, min_open=True), help="Seconds after which an unstarted job expires."
)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds an attempt may run.")
@backend_options
def enqueue(
    task_id: str,
    queue_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    delay: float | None,
    priority: int,
    job_id: str | None,
    retries: int,
    ttl: float | None,
    timeout: float | None,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Add a job for TASK and print its id."""

    async def action(choice: BackendChoice) -> str:
        return await Queue(queue_name, backend=choice.backend).add(
            task_id,
            args,
            kwargs,
            retries=retries,
            ttl=ttl,
            priority=priority,
            delay=delay,
            job_id=job_id,
            timeout=timeout,
        )

    click.echo(_run(backend_url, prefix, connect_timeout, action))


# -- queues --------------------------------------------------------------------------------------------
@click.command("queues")
@_json_option
@backend_options
def queues(as_json: bool, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """List queues: depth by state, oldest waiting job's age, paused, workers."""

    async def action(choice: BackendChoice) -> list[dict[str, Any]]:
        backend = choice.backend
        live = await backend.list_workers()
        rows = []
        for name in sorted(await backend.list_queues()):
            counts = await backend.counts(name)
            stats = await backend.queue_stats(name)
            rows.append(
                {
                    "queue": name,
                    **{state.value: counts.get(state.value, 0) for state in JobState},
                    "dlq": stats.dead,
                    "oldest_waiting_s": stats.oldest_ready_age,
                    "paused": stats.paused,
                    "workers": sum(1 for info in live if name in info.queues),
                }
            )
        return rows

    rows = _run(backend_url, prefix, connect_timeout, action)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no queues yet: enqueue a job (asyncmq-otel enqueue TASK --queue NAME) to create one")
        return
    headers = [
        "QUEUE",
        "WAITING",
        "DELAYED",
        "ACTIVE",
        "BLOCKED",
        "COMPLETED",
        "DLQ",
        "CANCELLED",
        "OLDEST",
        "PAUSED",
        "WORKERS",
    ]
    table = [
        [
            row["queue"],
            row["waiting"],
            row["delayed"],
            row["active"],
            row["blocked"],
            row["completed"],
            row["dlq"],
            row["cancelled"],
            format_age(row["oldest_waiting_s"]) if row["waiting"] else "-",
            "yes" if row["paused"] else "no",
            row["workers"],
        ]
        for row in rows
    ]
    for line in format_table(headers, table):
        click.echo(line)


# -- queue ---------------------------------------------------------------------------------------------
@click.group("queue")
def queue() -> None:
    """Pause, resume, drain or clean one queue."""


@queue.command("pause")
@click.argument("name")
@backend_options
def queue_pause(name: str, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """Stop workers from claiming jobs of NAME (running jobs finish; enqueueing goes on)."""

    async def action(choice: BackendChoice) -> None:
        await Queue(name, backend=choice.backend).pause()

    _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"queue {name} paused: resume it with `asyncmq-otel queue resume {name}`")


@queue.command("resume")
@click.argument("name")
@backend_options
def queue_resume(name: str, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """Let workers claim jobs of NAME again."""

    async def action(choice: BackendChoice) -> None:
        await Queue(name, backend=choice.backend).resume()

    _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"queue {name} resumed")


@queue.command("drain")
@click.argument("name")
@_yes_option
@backend_options
def queue_drain(
    name: str, yes: bool, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Cancel every waiting and delayed job of NAME (running jobs finish)."""
    _confirm(yes, f"every waiting and delayed job of queue {name} will be cancelled")

    async def action(choice: BackendChoice) -> int:
        target = Queue(name, backend=choice.backend)
        cancelled = 0
        for state in (JobState.WAITING.value, JobState.DELAYED.value):
            while True:
                page = await target.list_jobs(state, 0, _PAGE)
                done = 0
                for raw in page:
                    if await target.cancel_job(str(raw["id"])):
                        done += 1
                cancelled += done
                if len(page) < _PAGE or done == 0:
                    break
        return cancelled

    count = _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"queue {name} drained: {count} job(s) cancelled")


@queue.command("clean")
@click.argument("name")
@click.option(
    "--state",
    type=click.Choice(_FINISHED_STATES),
    default=JobState.COMPLETED.value,
    show_default=True,
    help="Which finished jobs to delete.",
)
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Only jobs that finished more than this many seconds ago.",
)
@_yes_option
@backend_options
def queue_clean(
    name: str,
    state: str,
    older_than: float,
    yes: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Delete finished jobs of NAME in one state."""
    _confirm(yes, f"{state} jobs of queue {name} older than {older_than:g}s will be deleted")

    async def action(choice: BackendChoice) -> int:
        return await Queue(name, backend=choice.backend).clean(state, older_than)

    count = _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"queue {name}: {count} {state} job(s) deleted")


# -- job -----------------------------------------------------------------------------------------------
@click.group("job")
def job() -> None:
    """Show, cancel or retry one job."""


def _queue_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--queue", "-q", "queue_name", required=True, help="The job's queue.")(func)


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))
    return f"{stamp} ({format_age(time.time() - float(value))} ago)"


@job.command("show")
@click.argument("job_id", metavar="ID")
@_queue_option
@_json_option
@backend_options
def job_show(
    job_id: str,
    queue_name: str,
    as_json: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Show a job: state, attempts, timings, error and result."""

    async def action(choice: BackendChoice) -> dict[str, Any] | None:
        return await Queue(queue_name, backend=choice.backend).get_job(job_id)

    raw = _run(backend_url, prefix, connect_timeout, action)
    if raw is None:
        raise CLIError(f"no job {job_id} in queue {queue_name}: check the id and --queue", ExitCode.CRASH)
    if as_json:
        _echo_json(raw)
        return
    attempts = f"{raw.get('attempts', 0)} of {int(raw.get('max_retries') or 0) + 1}"
    rows = [
        ("id", raw.get("id")),
        ("task", raw.get("task")),
        ("queue", raw.get("queue", queue_name)),
        ("state", raw.get("state")),
        ("attempts", attempts),
        ("priority", raw.get("priority")),
        ("enqueued", _when(raw.get("enqueued_at"))),
        ("eligible", _when(raw.get("eligible_at"))),
        ("finished", _when(raw.get("finished_at"))),
    ]
    if raw.get("progress") is not None:
        rows.append(("progress", f"{raw['progress']:g}%"))
    if raw.get("dlq_reason"):
        rows.append(("dlq reason", raw["dlq_reason"]))
    error = raw.get("error")
    if isinstance(error, dict):
        rows.append(("error", f"{error.get('type')}: {error.get('message')}"))
    if raw.get("payload_error"):
        rows.append(("payload error", raw["payload_error"]))
    rows.append(("args", json.dumps(raw.get("args", []), default=str)))
    rows.append(("kwargs", json.dumps(raw.get("kwargs", {}), default=str)))
    if raw.get("state") == JobState.COMPLETED.value:
        rows.append(("result", json.dumps(raw.get("result"), default=str)))
    stream = sys.stdout
    for label, value in rows:
        click.echo(f"{paint(label.ljust(14), 'blue', stream)}{value}")


@job.command("cancel")
@click.argument("job_id", metavar="ID")
@_queue_option
@backend_options
def job_cancel(
    job_id: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Cancel a job: a queued one never runs; a running one is stopped at its next await."""

    async def action(choice: BackendChoice) -> tuple[bool, str | None]:
        target = Queue(queue_name, backend=choice.backend)
        done = await target.cancel_job(job_id)
        return done, await target.get_job_state(job_id)

    done, state = _run(backend_url, prefix, connect_timeout, action)
    if not done:
        raise CLIError(
            f"job {job_id} was not cancelled: "
            + (f"it is already {state}" if state else f"there is no such job in queue {queue_name}"),
            ExitCode.CRASH,
        )
    if state == JobState.CANCELLED.value:
        click.echo(f"job {job_id} cancelled")
    else:
        click.echo(f"job {job_id} is running: its worker was asked to stop it")


@job.command("retry")
@click.argument("job_id", metavar="ID")
@_queue_option
@backend_options
def job_retry(
    job_id: str, queue_name: str, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Move a dead-lettered job back to waiting with fresh retries."""

    async def action(choice: BackendChoice) -> tuple[bool, str | None]:
        target = Queue(queue_name, backend=choice.backend)
        return await target.retry_job(job_id), await target.get_job_state(job_id)

    done, state = _run(backend_url, prefix, connect_timeout, action)
    if not done:
        where = (
            f"it is {state}, not dead-lettered" if state else f"there is no such job in queue {queue_name}"
        )
        raise CLIError(f"job {job_id} was not retried: {where}", ExitCode.CRASH)
    click.echo(f"job {job_id} is waiting again")


# -- dlq -----------------------------------------------------------------------------------------------
@click.group("dlq")
def dlq() -> None:
    """List, retry or purge dead-lettered jobs."""


@dlq.command("list")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@_json_option
@backend_options
def dlq_list(
    name: str,
    limit: int,
    offset: int,
    as_json: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Dead-lettered jobs of NAME, newest first."""

    async def action(choice: BackendChoice) -> list[dict[str, Any]]:
        return await Queue(name, backend=choice.backend).dlq(offset, limit)

    rows = _run(backend_url, prefix, connect_timeout, action)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo(f"the dead-letter queue of {name} is empty")
        return
    now = time.time()
    table = []
    for raw in rows:
        error = raw.get("error") if isinstance(raw.get("error"), dict) else {}
        finished = raw.get("finished_at")
        message = (
            f"{error.get('type', '')}: {error.get('message', '')}" if error else raw.get("payload_error", "")
        )
        table.append(
            [
                raw.get("id"),
                raw.get("task", "?"),
                raw.get("dlq_reason", "?"),
                raw.get("attempts", 0),
                format_age(now - float(finished)) if isinstance(finished, int | float) else "-",
                str(message)[:80],
            ]
        )
    for line in format_table(["ID", "TASK", "REASON", "ATTEMPTS", "AGE", "ERROR"], table):
        click.echo(line)


@dlq.command("retry")
@click.argument("name")
@click.argument("job_ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead-lettered job of NAME.")
@backend_options
def dlq_retry(
    name: str,
    job_ids: tuple[str, ...],
    retry_all: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Move dead-lettered jobs of NAME (the IDs given, or --all) back to waiting."""
    if not job_ids and not retry_all:
        raise click.UsageError("give the job IDs to retry, or --all")
    if job_ids and retry_all:
        raise click.UsageError("give job IDs or --all, not both")

    async def action(choice: BackendChoice) -> tuple[int, list[str]]:
        target = Queue(name, backend=choice.backend)
        if job_ids:
            missed = [job_id for job_id in job_ids if not await target.retry_job(job_id)]
            return len(job_ids) - len(missed), missed
        retried = 0
        while True:
            page = await target.dlq(0, _PAGE)
            done = sum([await target.retry_job(str(raw["id"])) for raw in page])
            retried += done
            if len(page) < _PAGE or done == 0:
                return retried, []

    retried, missed = _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"{retried} job(s) of {name} are waiting again")
    if missed:
        raise CLIError(
            f"not in the dead-letter queue of {name}: {', '.join(missed)}; list it with "
            f"`asyncmq-otel dlq list {name}`",
            ExitCode.CRASH,
        )


@dlq.command("purge")
@click.argument("name")
@_yes_option
@backend_options
def dlq_purge(
    name: str, yes: bool, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Delete every dead-lettered job of NAME."""
    _confirm(yes, f"every dead-lettered job of queue {name} will be deleted")

    async def action(choice: BackendChoice) -> int:
        return await Queue(name, backend=choice.backend).purge_dlq()

    count = _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"{count} dead-lettered job(s) of {name} deleted")


# -- workers -------------------------------------------------------------------------------------------
@click.command("workers")
@_json_option
@backend_options
def workers(as_json: bool, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """Live workers: id, host, pid, queues, concurrency, in-flight jobs, heartbeat age."""

    async def action(choice: BackendChoice) -> tuple[float, list[WorkerInfo]]:
        return await choice.backend.now(), await choice.backend.list_workers()

    now, live = _run(backend_url, prefix, connect_timeout, action)
    if as_json:
        _echo_json([info.to_dict() for info in live])
        return
    if not live:
        click.echo("no live workers: start one with `asyncmq-otel worker QUEUE --app MODULE --backend URL`")
        return
    table = [
        [
            info.worker_id[:8],
            info.host,
            info.pid,
            ",".join(info.queues),
            info.concurrency,
            info.active,
            info.state,
            format_age(now - info.heartbeat_at) if info.heartbeat_at else "-",
            format_age(now - info.started_at) if info.started_at else "-",
        ]
        for info in sorted(live, key=lambda item: (item.host, item.pid))
    ]
    headers = ["ID", "HOST", "PID", "QUEUES", "CONCURRENCY", "IN-FLIGHT", "STATE", "HEARTBEAT", "UP"]
    for line in format_table(headers, table):
        click.echo(line)

"""Admin commands: ``enqueue``, ``queues``, ``queue ...``, ``job ...``, ``dlq ...`` and ``workers``.

Each one builds the backend from ``--backend`` (or ``ASYNCMQ_BACKEND``, or the settings), checks
that it answers within ``--connect-timeout`` (else exit 3), does one thing and exits. Tables are
plain columns; ``--json`` prints the same data for scripts.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import click

from ..backends.base import Backend, WorkerInfo
from ..errors import InvalidName
from ..jobs import JobState, check_job_id
from ..queues import Queue
from ..settings import get_settings
from ..tasks import TASK_REGISTRY
from ._backend import BackendChoice, backend_options, close_backend, open_backend, probe_or_exit
from ._exit import CLIError, ExitCode, translate_errors
from ._options import PRIORITY_BOUND, Seconds
from ._output import format_age, format_table, paint

__all__ = ["dlq", "enqueue", "job", "queue", "queues", "queues_with_job", "workers"]

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
    *,
    idempotent: bool = False,
) -> T:
    """Build the backend, check that it answers (exit 3 if not), run ``action``, close the backend.

    ``idempotent``: an unreachable backend's message says that running the command again is safe.
    """

    async def main(choice: BackendChoice) -> T:
        try:
            await probe_or_exit(choice, connect_timeout)
            return await action(choice)
        finally:
            await close_backend(choice)

    with translate_errors(backend_url, idempotent=idempotent):
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


def _echo_json_or_empty(rows: Sequence[object], as_json: bool, empty: str) -> bool:
    """Print ``rows`` as JSON, or ``empty`` when there are none; True when nothing more is to print."""
    if as_json:
        _echo_json(rows)
        return True
    if not rows:
        click.echo(empty)
        return True
    return False


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


def _job_id_argument(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:  # noqa: ANN401 - str or tuple
    """Validate job ids as the backends do, so a bad one is a usage error (exit 2), not a lookup."""
    try:
        for job_id in value if isinstance(value, tuple) else (value,):
            check_job_id(job_id)
    except InvalidName as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _task_argument(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("give the task's dotted name, e.g. myapp.tasks.send_email")
    return value


async def _no_such_queue(target: Queue, next_step: str = "") -> CLIError:
    known = await target.backend.list_queues()
    close = difflib.get_close_matches(target.name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return CLIError(
        f"no such queue {target.name!r}: {hint}list the queues with `asyncmq-otel queues`{next_step}",
        ExitCode.USAGE,
    )


async def _require_queue(target: Queue) -> None:
    """Exit 2 when the queue does not exist.

    An admin command never creates one: a typo would stay in ``queues`` and the exporter's gauges forever.
    """
    if not await target.exists():
        raise await _no_such_queue(target)


# -- enqueue -------------------------------------------------------------------------------------------
@click.command("enqueue")
@click.argument("task_id", metavar="TASK", callback=_task_argument)
@click.option(
    "--queue",
    "-q",
    "queue_name",
    help="Queue to add the job to [default: the queue TASK declares, as this process or a live worker's "
    "registration knows it; else default].",
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
@click.option("--delay", type=Seconds(allow_zero=True), help="Seconds before the job may run.")
@click.option(
    "--priority",
    type=click.IntRange(-PRIORITY_BOUND, PRIORITY_BOUND),
    default=5,
    show_default=True,
    help=f"Lower runs first ({-PRIORITY_BOUND}..{PRIORITY_BOUND}).",
)
@click.option("--job-id", help="Idempotency key: a second enqueue with this id returns the same job.")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    help="Retries after a failure [default: the task's own, applied by the worker that runs it].",
)
@click.option("--ttl", type=Seconds(), help="Seconds after which an unstarted job expires.")
@click.option("--timeout", type=Seconds(), help="Seconds an attempt may run.")
@backend_options
def enqueue(
    task_id: str,
    queue_name: str | None,
    args: list[Any],
    kwargs: dict[str, Any],
    delay: float | None,
    priority: int,
    job_id: str | None,
    retries: int | None,
    ttl: float | None,
    timeout: float | None,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Add a job for TASK and print its id."""

    async def action(choice: BackendChoice) -> str:
        if queue_name is None:
            queue = await Queue.for_task(task_id, choice.backend)
        else:
            queue = Queue(queue_name, backend=choice.backend)
        return await queue.add(
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

    click.echo(_run(backend_url, prefix, connect_timeout, action, idempotent=True))


# -- queues --------------------------------------------------------------------------------------------
@click.command("queues")
@_json_option
@backend_options
def queues(as_json: bool, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """List queues: depth by state, oldest waiting job's age, paused, rate limit, workers."""

    async def action(choice: BackendChoice) -> list[dict[str, Any]]:
        backend = choice.backend
        live = await backend.list_workers()
        rows = []
        for name in sorted(await backend.list_queues()):
            counts = await backend.counts(name)
            stats = await backend.queue_stats(name)
            limit = await Queue(name, backend=backend).get_rate_limit()
            rows.append(
                {
                    "queue": name,
                    **{state.value: counts.get(state.value, 0) for state in JobState},
                    "dlq": stats.dead,
                    "oldest_waiting_s": stats.oldest_ready_age,
                    "paused": stats.paused,
                    "rate_limit": None
                    if limit is None
                    else {"limit": limit.limit, "interval": limit.interval},
                    "workers": sum(1 for info in live if name in info.queues),
                }
            )
        return rows

    rows = _run(backend_url, prefix, connect_timeout, action)
    if _echo_json_or_empty(
        rows, as_json, "no queues yet: enqueue a job (asyncmq-otel enqueue TASK --queue NAME) to create one"
    ):
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
        "LIMIT",
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
            "-"
            if row["rate_limit"] is None
            else f"{row['rate_limit']['limit']}/{row['rate_limit']['interval']:g}s",
            row["workers"],
        ]
        for row in rows
    ]
    for line in format_table(headers, table):
        click.echo(line)


# -- queue ---------------------------------------------------------------------------------------------
@click.group("queue")
def queue() -> None:
    """Pause, resume, drain, clean or rate-limit one queue."""


@queue.command("pause")
@click.argument("name")
@click.option(
    "--create",
    is_flag=True,
    help="Create NAME paused when it does not exist yet (to pause it before any worker starts).",
)
@backend_options
def queue_pause(
    name: str, create: bool, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Stop workers from claiming jobs of NAME (running jobs finish; enqueueing goes on)."""

    async def action(choice: BackendChoice) -> bool:
        target = Queue(name, backend=choice.backend)
        existed = await target.exists()
        if not existed and not create:
            raise await _no_such_queue(target, ", or pass --create to create it paused")
        await target.pause()
        return existed

    existed = _run(backend_url, prefix, connect_timeout, action)
    created = "" if existed else " (created)"
    click.echo(f"queue {name} paused{created}: resume it with `asyncmq-otel queue resume {name}`")


@queue.command("resume")
@click.argument("name")
@backend_options
def queue_resume(name: str, backend_url: str | None, prefix: str | None, connect_timeout: float) -> None:
    """Let workers claim jobs of NAME again."""

    async def action(choice: BackendChoice) -> None:
        target = Queue(name, backend=choice.backend)
        await _require_queue(target)
        await target.resume()

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
        await _require_queue(target)
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
    type=Seconds(allow_zero=True),
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
        target = Queue(name, backend=choice.backend)
        await _require_queue(target)
        return await target.clean(state, older_than)

    count = _run(backend_url, prefix, connect_timeout, action)
    click.echo(f"queue {name}: {count} {state} job(s) deleted")


# -- job -----------------------------------------------------------------------------------------------
@click.group("job")
def job() -> None:
    """Show, cancel or retry one job."""


def _queue_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--queue",
        "-q",
        "queue_name",
        help="The job's queue [default: found from the id; needed only when two queues hold the id].",
    )(func)


async def queues_with_job(backend: Backend, job_id: str) -> list[str]:
    """The queues that hold a job with this id, reading only (no queue is created)."""
    locate = getattr(backend, "queues_with_job", None)
    if callable(locate):  # an optional capability: Redis answers in one pipelined round trip
        found: list[str] = await locate(job_id)
        return found
    return [name for name in await backend.list_queues() if await backend.get_job(name, job_id) is not None]


async def _job_queue(choice: BackendChoice, job_id: str, queue_name: str | None) -> Queue | None:
    """The queue holding ``job_id``: ``queue_name`` when given (it must exist), else found from the id.

    Returns None when no queue holds the job. Ids are unique within a queue; an id that two queues
    hold (a ``--job-id`` reused across queues) needs ``--queue``.
    """
    if queue_name is not None:
        target = Queue(queue_name, backend=choice.backend)
        await _require_queue(target)
        return target
    holders = await queues_with_job(choice.backend, job_id)
    if len(holders) > 1:
        raise CLIError(
            f"queues {', '.join(holders)} each hold a job {job_id}: pass --queue to pick one", ExitCode.USAGE
        )
    return Queue(holders[0], backend=choice.backend) if holders else None


def _no_such_job(job_id: str, queue_name: str | None) -> str:
    if queue_name:
        return f"there is no job {job_id} in queue {queue_name}: check the id and --queue"
    return f"there is no job {job_id} in any queue: check the id"


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))
    return f"{stamp} ({format_age(time.time() - float(value))} ago)"


def _count(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _describe_attempts(raw: dict[str, Any]) -> tuple[str, str]:
    """The ``attempts`` and ``retries`` rows of ``job show``.

    ``attempts`` counts every claim; only a failure uses a retry (``retries`` of ``max_retries``).
    An interrupted attempt (the worker shut down) or a lost one (the worker died) is requeued
    without using a retry, so attempts can exceed ``max_retries + 1``: they are shown apart.
    """
    attempts = _count(raw, "attempts")
    extra = []
    if interrupted := _count(raw, "interrupts"):
        extra.append(f"{interrupted} interrupted")
    if lost := _count(raw, "stalls"):
        extra.append(f"{lost} lost with a worker")
    attempt_text = f"{attempts} ({', '.join(extra)})" if extra else str(attempts)
    used = _count(raw, "retries")
    if raw.get("max_retries") is None:  # left to the task's declaration, which the worker applies
        declared = TASK_REGISTRY.get(str(raw.get("task", "")))
        limit = str(declared.retries) if declared is not None else "the task's declared retries"
    else:
        limit = str(_count(raw, "max_retries"))
    return attempt_text, f"{used} of {limit} used"


@job.command("show")
@click.argument("job_id", metavar="ID", callback=_job_id_argument)
@_queue_option
@_json_option
@backend_options
def job_show(
    job_id: str,
    queue_name: str | None,
    as_json: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Show a job: state, attempts, timings, error and result."""

    async def action(choice: BackendChoice) -> dict[str, Any] | None:
        target = await _job_queue(choice, job_id, queue_name)
        return None if target is None else await target.get_job(job_id)

    raw = _run(backend_url, prefix, connect_timeout, action)
    if raw is None:
        raise CLIError(_no_such_job(job_id, queue_name), ExitCode.CRASH)
    if as_json:
        _echo_json(raw)
        return
    attempts, retries = _describe_attempts(raw)
    rows = [
        ("id", raw.get("id")),
        ("task", raw.get("task")),
        ("queue", raw.get("queue", queue_name)),
        ("state", raw.get("state")),
        ("attempts", attempts),
        ("retries", retries),
        ("priority", raw.get("priority")),
        ("enqueued", _when(raw.get("enqueued_at"))),
        ("eligible", _when(raw.get("eligible_at"))),
        ("finished", _when(raw.get("finished_at"))),
    ]
    if isinstance(raw.get("progress"), int | float):
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
@click.argument("job_id", metavar="ID", callback=_job_id_argument)
@_queue_option
@backend_options
def job_cancel(
    job_id: str, queue_name: str | None, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Cancel a job: a queued one never runs; a running one is stopped at its next await."""

    async def action(choice: BackendChoice) -> tuple[bool, str | None]:
        target = await _job_queue(choice, job_id, queue_name)
        if target is None:
            return False, None
        done = await target.cancel_job(job_id)
        return done, await target.get_job_state(job_id)

    done, state = _run(backend_url, prefix, connect_timeout, action)
    if not done:
        raise CLIError(
            f"job {job_id} was not cancelled: "
            + (f"it is already {state}" if state else _no_such_job(job_id, queue_name)),
            ExitCode.CRASH,
        )
    if state == JobState.CANCELLED.value:
        click.echo(f"job {job_id} cancelled")
    else:
        click.echo(f"job {job_id} is running: its worker was asked to stop it")


@job.command("retry")
@click.argument("job_id", metavar="ID", callback=_job_id_argument)
@_queue_option
@backend_options
def job_retry(
    job_id: str, queue_name: str | None, backend_url: str | None, prefix: str | None, connect_timeout: float
) -> None:
    """Move a dead-lettered job back to waiting with fresh retries."""

    async def action(choice: BackendChoice) -> tuple[bool, str | None]:
        target = await _job_queue(choice, job_id, queue_name)
        if target is None:
            return False, None
        return await target.retry_job(job_id), await target.get_job_state(job_id)

    done, state = _run(backend_url, prefix, connect_timeout, action)
    if not done:
        where = f"it is {state}, not dead-lettered" if state else _no_such_job(job_id, queue_name)
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
        target = Queue(name, backend=choice.backend)
        await _require_queue(target)
        return await target.dlq(offset, limit)

    rows = _run(backend_url, prefix, connect_timeout, action)
    if _echo_json_or_empty(rows, as_json, f"the dead-letter queue of {name} is empty"):
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
@click.argument("job_ids", nargs=-1, metavar="[ID]...", callback=_job_id_argument)
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
        await _require_queue(target)
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
        target = Queue(name, backend=choice.backend)
        await _require_queue(target)
        return await target.purge_dlq()

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

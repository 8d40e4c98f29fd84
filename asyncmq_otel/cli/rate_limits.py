"""``asyncmq-otel queue rate-limit NAME [LIMIT | --clear]``: a queue's shared rate limit, from the shell.

The limit is the one :meth:`Queue.set_rate_limit` stores: every worker of the queue together starts at
most LIMIT jobs per window, applied at once without a restart. This command joins the ``queue`` group
of :mod:`.admin` (that module is at its size limit), so the command table names this module for
``queue``: whichever is imported first, the group always has it.
"""

from __future__ import annotations

import re

import click

from ..errors import JobArgumentError
from ..queues import Queue, _check_rate_limit
from ._backend import BackendChoice, backend_options
from .admin import _no_such_queue, _run, queue

__all__ = ["queue", "queue_rate_limit"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LIMIT = re.compile(r"(?P<limit>[0-9]+)(?:/(?P<number>[0-9]*\.?[0-9]+)(?P<unit>ms|s|m|h)?)?")


def _parse_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, float] | None:
    """``LIMIT``: ``N/INTERVAL`` (``50/1s``, ``100/500ms``, ``10/2.5``, ``600/1m``) or ``N`` (per second)."""
    if value is None:
        return None
    match = _LIMIT.fullmatch(value.strip().lower())
    if match is None:
        raise click.BadParameter(
            f"{value!r} is not N/INTERVAL, e.g. 50/1s, 100/500ms or 600/1m (N alone is per second)"
        )
    limit = int(match["limit"])
    interval = float(match["number"] or 1) * _UNITS[match["unit"] or "s"]
    if limit == 0:
        raise click.BadParameter("0 jobs per window would stop the queue: pass --clear to remove the limit")
    try:
        return _check_rate_limit(limit, interval)
    except JobArgumentError as exc:
        raise click.BadParameter(str(exc)) from None


def _describe(limit: int, interval: float) -> str:
    return f"{limit} job(s) per {interval:g}s, shared by every worker"


@queue.command("rate-limit")
@click.argument("name")
@click.argument("limit", required=False, metavar="[N/INTERVAL]", callback=_parse_limit)
@click.option("--clear", is_flag=True, help="Remove NAME's shared rate limit.")
@click.option(
    "--create",
    is_flag=True,
    help="Create NAME when it does not exist yet (to limit it before any job is enqueued).",
)
@backend_options
def queue_rate_limit(
    name: str,
    limit: tuple[int, float] | None,
    clear: bool,
    create: bool,
    backend_url: str | None,
    prefix: str | None,
    connect_timeout: float,
) -> None:
    """Show, set or --clear the rate limit all workers of NAME share: at most N job starts per INTERVAL.

    N/INTERVAL, like 50/1s, 100/500ms or 600/1m (a bare INTERVAL is seconds; N alone is per second):
    counted over every worker of NAME in any window of INTERVAL and applied at once, without a restart.
    A worker's own --rate-limit still applies on top. Without N/INTERVAL or --clear it shows the limit.
    """
    if clear and limit is not None:
        raise click.UsageError("give N/INTERVAL or --clear, not both")
    if create and limit is None:
        raise click.UsageError("--create goes with N/INTERVAL: only setting a limit creates the queue")

    async def action(choice: BackendChoice) -> tuple[bool, tuple[int, float] | None]:
        target = Queue(name, backend=choice.backend)
        existed = await target.exists()
        if not existed and not (create and limit is not None):
            next_step = ", or pass --create to create it with this limit" if limit is not None else ""
            raise await _no_such_queue(target, next_step)
        if clear:
            return await target.clear_rate_limit(), None
        if limit is not None:
            await target.set_rate_limit(*limit)
            return existed, limit
        current = await target.get_rate_limit()
        return existed, None if current is None else (current.limit, current.interval)

    done, shown = _run(backend_url, prefix, connect_timeout, action)
    if clear:
        click.echo(f"queue {name} rate limit cleared" if done else f"queue {name} had no shared rate limit")
    elif limit is not None:
        created = "" if done else " (created)"
        click.echo(
            f"queue {name} rate limit set{created}: {_describe(*limit)}; clear it with "
            f"`asyncmq-otel queue rate-limit {name} --clear`"
        )
    elif shown is None:
        example = f"asyncmq-otel queue rate-limit {name} 50/1s"
        click.echo(f"queue {name} has no shared rate limit: set one with `{example}`")
    else:
        click.echo(f"queue {name}: {_describe(*shown)}")

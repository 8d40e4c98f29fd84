"""``asyncmq-otel worker QUEUE...``: run a worker until it is signalled (or, with ``--burst``, until idle).

The first SIGTERM/SIGINT drains: claiming stops at once, in-flight jobs get ``--shutdown-timeout``
seconds, the rest go back to the queue. A second signal at least 1 s later stops at once (in-flight
jobs are cancelled and requeued); a repeat within 1 s is ignored. ``--check`` is the health probe.

With ``--processes N`` (N > 1) this process becomes the supervisor of N such workers and serves their
merged ``/metrics`` (:mod:`asyncmq_otel.worker.supervisor`); each child runs this same command, with
every option handed over in one :class:`~asyncmq_otel.worker.supervisor.WorkerSpec`.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import sys
import traceback
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import click

from ..errors import BackendUnavailable, ConfigError
from ..events import LifecycleEvent, bus
from ..jobs import check_queue_name
from ..settings import DEFAULT_METRICS_ADDR, get_settings
from ..tasks import autodiscover_tasks, list_tasks
from ..worker.supervisor import SPEC_ENVVAR, WorkerSpec
from ..worker.worker import Worker
from ._backend import (
    BackendChoice,
    backend_options,
    close_backend,
    open_backend,
    probe_backend,
    probe_or_exit,
)
from ._banner import Banner
from ._exit import CLIError, ExitCode, cli_error_for, translate_errors
from ._options import Seconds, env_option, log_format_option, metrics_addr_option, otlp_endpoint_option
from ._output import Reporter, json_logs
from ._signals import StopSignals
from ._telemetry import TelemetryHandle, start_telemetry

__all__ = ["import_apps", "parse_rate_limit", "worker_command"]

_OUTCOMES = frozenset(
    {"job:completed", "job:retried", "job:failed", "job:cancelled", "job:interrupted", "job:expired"}
)


def parse_rate_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """``--rate-limit``: a whole number >= 0, where ``0``, ``none`` and ``unlimited`` mean no limit."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in {"none", "unlimited", ""}:
        return 0
    try:
        number = int(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a whole number (or 'none' for no limit)") from None
    if number < 0:
        raise click.BadParameter(f"{number} is negative; use 0 or 'none' for no limit")
    return number


def import_apps(modules: Sequence[str]) -> list[str]:
    """Import each ``--app`` module (registering its tasks), then ``settings.tasks``.

    The current directory is put on ``sys.path`` first, as ``python -m`` would.

    Raises:
        CLIError: exit 2 when a module cannot be imported, naming it and what to check.

    """
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    imported: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise CLIError(
                f"cannot import --app {name!r}: {exc}; check the dotted module path (e.g. myproject.tasks) "
                f"and run from the directory that holds it (now {cwd}) or put that directory on PYTHONPATH",
                ExitCode.USAGE,
            ) from exc
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise CLIError(
                f"importing --app {name!r} failed: {detail}; fix the module so it imports cleanly "
                f"(try: python -c 'import {name}')",
                ExitCode.USAGE,
            ) from exc
        imported.append(name)
    try:
        imported.extend(autodiscover_tasks())
    except ImportError as exc:
        raise CLIError(
            f"cannot import a package of settings.tasks ({exc}); fix ASYNCMQ_TASKS or the settings module",
            ExitCode.USAGE,
        ) from exc
    return imported


class _Ledger:
    """Inline bus listener: the outcomes this worker settled (for the exit summary)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.outcomes: Counter[str] = Counter()

    def __call__(self, event: LifecycleEvent) -> None:
        if event.worker_id != self.worker_id:
            return
        if event.name in _OUTCOMES:
            self.outcomes[event.name.split(":", 1)[1]] += 1

    def summary(self) -> str:
        if not self.outcomes:
            return "no jobs run"
        return ", ".join(f"{count} {name}" for name, count in sorted(self.outcomes.items()))


@dataclass(frozen=True, slots=True)
class _Process:
    """One worker process: its :class:`WorkerSpec` and what is derived from it at start-up.

    The spec is what a supervisor hands its children; the opened backend, whether telemetry must start
    and who supervises this process are decided here and never travel.
    """

    spec: WorkerSpec
    choice: BackendChoice
    telemetry_required: bool
    """An explicit ``--metrics-addr``/``--otlp-endpoint``, or a supervised child: telemetry that cannot
    start is an error, not a warning."""
    supervised_by: int | None
    """The supervisor's pid (``--supervised-by``), or ``None``."""


@click.command("worker")
@click.argument("queues", nargs=-1, required=False, metavar="QUEUES...")  # required unless supervised
@env_option(
    "--app",
    "apps",
    envvar="ASYNCMQ_APP",
    multiple=True,
    metavar="MODULE",
    help="Module to import before starting, registering its tasks (repeatable).",
)
@backend_options
@env_option(
    "--concurrency",
    envvar="ASYNCMQ_WORKER_CONCURRENCY",
    type=click.IntRange(min=1),
    help="Jobs run at once [default: settings.worker_concurrency, 10].",
)
@env_option(
    "--rate-limit",
    envvar="ASYNCMQ_RATE_LIMIT",
    metavar="N",
    callback=parse_rate_limit,
    help="Job starts allowed per --rate-interval; 0 or 'none' for no limit [default: settings.rate_limit].",
)
@env_option(
    "--rate-interval",
    envvar="ASYNCMQ_RATE_INTERVAL",
    type=Seconds(),
    help="Seconds of the rate-limit window [default: settings.rate_interval, 1.0].",
)
@metrics_addr_option(
    default=DEFAULT_METRICS_ADDR,
    envvar="ASYNCMQ_METRICS_ADDR",
    help_text="Serve /metrics and /healthz here; port 0 picks a free port, '' serves nothing.",
)
@otlp_endpoint_option(
    "OTLP/HTTP base URL for traces, e.g. http://jaeger:4318 [default: OTEL_EXPORTER_OTLP_ENDPOINT]."
)
@log_format_option("Log lines as JSON or for a terminal [default: auto, console on a TTY, else JSON].")
@env_option(
    "--shutdown-timeout",
    envvar="ASYNCMQ_SHUTDOWN_TIMEOUT",
    type=Seconds(allow_zero=True),
    help="Seconds in-flight jobs get after the first SIGTERM [default: settings.shutdown_timeout, 25].",
)
@env_option(
    "--burst",
    envvar="ASYNCMQ_BURST",
    is_flag=True,
    help="Exit 0 once the queues are empty and nothing is running or due.",
)
@env_option(
    "--queue-sampler",
    envvar="ASYNCMQ_QUEUE_SAMPLER",
    type=click.Choice(["elected", "off"]),
    default="elected",
    show_default=True,
    help="Export queue depth gauges from this worker, or leave them to `asyncmq-otel exporter`.",
)
@env_option(
    "--processes",
    envvar="ASYNCMQ_WORKER_PROCESSES",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run; above 1 this process supervises them and serves their merged /metrics.",
)
@env_option(
    "--max-restarts",
    envvar="ASYNCMQ_MAX_RESTARTS",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="With --processes: crashed processes replaced per 60s before the whole instance stops.",
)
@click.option(
    "--supervised-by",
    type=int,
    hidden=True,
    help=f"Internal: the supervisor's pid (--processes); the options come from {SPEC_ENVVAR}.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Health probe: exit 0 when the backend answers and this host's worker is healthy, else 1.",
)
@click.pass_context
def worker_command(
    ctx: click.Context,
    /,
    processes: int,
    max_restarts: int,
    supervised_by: int | None,
    check: bool,
    **options: Any,  # noqa: ANN401 - the WorkerSpec fields, typed there
) -> None:
    """Run a worker on one or more QUEUES.

    Exit codes: 0 clean drain (or --burst done, --check healthy), 1 crash (or a failed requeue,
    --check unhealthy), 2 usage or import error, 3 backend unreachable at startup.
    """
    if supervised_by is not None:
        spec = _spec_from_supervisor()
    else:
        if not options["queues"]:
            raise click.MissingParameter(ctx=ctx, param=ctx.command.params[0])
        # Options are declared once: every parameter but the four above is the WorkerSpec field of its
        # name (tests/cli/test_multiprocess_worker.py checks that the two sets are equal).
        spec = WorkerSpec(**options)
    reporter = Reporter(json_lines=json_logs(spec.log_format))
    with translate_errors(spec.backend_url):
        get_settings()  # a ConfigError in the environment or the settings module exits 2 here
        for name in spec.queues:
            check_queue_name(name)
        if not check:
            import_apps(spec.apps)
        choice = open_backend(spec.backend_url, spec.prefix)
    if check:
        ctx.exit(
            anyio.run(
                _check, choice, list(spec.queues), spec.metrics_addr, spec.connect_timeout, backend="asyncio"
            )
        )
    if processes > 1 and supervised_by is None:
        with translate_errors(spec.backend_url):
            code = anyio.run(_supervise, choice, reporter, spec, processes, max_restarts, backend="asyncio")
        ctx.exit(int(code))
    source = ctx.get_parameter_source
    explicit = any(
        source(name) not in {None, click.core.ParameterSource.DEFAULT}
        for name in ("metrics_addr", "otlp_endpoint")
    )
    process = _Process(
        spec=spec,
        choice=choice,
        telemetry_required=explicit or supervised_by is not None,
        supervised_by=supervised_by,
    )
    with translate_errors(spec.backend_url):
        code = anyio.run(_serve, process, reporter, backend="asyncio")
    ctx.exit(int(code))


def _spec_from_supervisor() -> WorkerSpec:
    """A supervised child's options: the supervisor's :class:`WorkerSpec`, whatever its own flags say."""
    text = os.environ.get(SPEC_ENVVAR)
    if text is None:
        raise click.UsageError(f"--supervised-by is internal to --processes: {SPEC_ENVVAR} is not set")
    try:
        return WorkerSpec.from_json(text)
    except ConfigError as exc:
        raise CLIError(str(exc), ExitCode.USAGE) from exc


async def _supervise(
    choice: BackendChoice, reporter: Reporter, spec: WorkerSpec, processes: int, max_restarts: int
) -> ExitCode:
    """Multi-process mode: check the backend once (exit 3 at once rather than N times), then supervise."""
    from ..telemetry._multiprocess import MergedMetrics  # noqa: PLC0415 - only this mode needs them
    from ..worker.supervisor import Supervisor  # noqa: PLC0415 - as above

    if not choice.shared:
        raise CLIError(
            f"--processes {processes} needs a backend the processes share: {choice.masked_url} is private "
            "to each process; pass --backend redis://HOST:6379/0",
            ExitCode.USAGE,
        )
    try:
        await probe_or_exit(choice, spec.connect_timeout)
    finally:
        await close_backend(choice)
    supervisor = Supervisor(
        reporter.say,
        spec,
        processes=processes,
        max_restarts=max_restarts,
        open_metrics=functools.partial(MergedMetrics, metrics_addr=spec.metrics_addr),
    )
    try:
        return await supervisor.run()
    except ConfigError as exc:  # its message names what to change (the directory, the address)
        raise CLIError(str(exc), ExitCode.USAGE) from exc


async def _serve(process: _Process, reporter: Reporter) -> ExitCode:
    spec, choice = process.spec, process.choice
    try:
        facts = await probe_or_exit(choice, spec.connect_timeout)
        telemetry = start_telemetry(
            reporter,
            metrics_addr=spec.metrics_addr,
            otlp_endpoint=spec.otlp_endpoint,
            log_format=spec.log_format,
            required=process.telemetry_required,
            queue_sampler=spec.queue_sampler,
        )
        try:
            return await _run(process, reporter, facts.describe(choice.prefix), facts.warnings, telemetry)
        finally:
            if telemetry is not None:
                await telemetry.stop()
    finally:
        await close_backend(choice)


async def _run(
    process: _Process,
    reporter: Reporter,
    backend_details: str,
    warnings: list[str],
    telemetry: TelemetryHandle | None,
) -> ExitCode:
    config = get_settings()
    spec, choice = process.spec, process.choice
    the_worker = Worker(
        spec.queues,
        backend=choice.backend,
        concurrency=spec.concurrency,
        rate_limit=spec.rate_limit,
        rate_interval=spec.rate_interval,
        burst=spec.burst,
        shutdown_timeout=spec.shutdown_timeout,
    )
    shutdown_timeout = spec.shutdown_timeout if spec.shutdown_timeout is not None else config.shutdown_timeout
    Banner(
        role="worker",
        process_id=the_worker.worker_id,
        pid=os.getpid(),
        host=socket.gethostname(),
        backend=choice.masked_url,
        backend_details=backend_details,
        queues=spec.queues,
        concurrency=spec.concurrency or config.worker_concurrency,
        rate_limit=spec.rate_limit if spec.rate_limit is not None else config.rate_limit,
        rate_interval=spec.rate_interval or config.rate_interval,
        lease=config.lease,
        shutdown_timeout=shutdown_timeout,
        metrics_url=(
            f"served by the supervisor (pid {process.supervised_by})"
            if process.supervised_by is not None and telemetry
            else telemetry.metrics_url
            if telemetry
            else None
        ),
        otlp_endpoint=telemetry.otlp_endpoint if telemetry else None,
        otlp_signals=telemetry.otlp_signals if telemetry else (),
        tasks=list_tasks(),
        warnings=warnings,
    ).write(reporter)
    ledger = _Ledger(the_worker.worker_id)
    bus.on("job:*", ledger, inline=True)
    signals = StopSignals(
        the_worker.stop,
        lambda: the_worker.stop(now=True),
        reporter,
        drain_note=f"no new jobs; in-flight jobs get up to {shutdown_timeout:g}s",
    )
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(signals.watch)  # the Worker runs telemetry's queue sampler itself
            if process.supervised_by is not None:
                group.start_soon(_watch_supervisor, process.supervised_by, the_worker, reporter)
            try:
                await the_worker.run()
            except Exception as exc:  # noqa: BLE001 - reported below with its exit code
                failure = _unwrap(exc)
            finally:
                group.cancel_scope.cancel()
    finally:
        bus.off("job:*", ledger)
    if failure is not None:
        if isinstance(failure, BackendUnavailable) and not the_worker.wait_started(0):
            raise cli_error_for(failure, choice.url) from failure
        reporter.say(
            "worker.crashed",
            "".join(traceback.format_exception(type(failure), failure, failure.__traceback__)).rstrip(),
            level="error",
        )
        raise CLIError(
            f"worker {the_worker.worker_id[:8]} crashed: {type(failure).__name__}: {failure}; unfinished "
            f"jobs return to the queue when their lease ({config.lease:g}s) expires: fix the cause, restart",
            ExitCode.CRASH,
        ) from failure
    # A job whose settle was fenced (STALE: another worker owns it now) is not lost; only requeues
    # that did not land count.
    lost = the_worker.requeue_failures
    if lost:
        raise CLIError(
            f"worker {the_worker.worker_id[:8]} stopped, but {lost} job(s) could not be returned to the "
            f"queue; another worker's reaper recovers them after their lease ({config.lease:g}s)",
            ExitCode.CRASH,
        )
    how = "drained" if signals.count else "burst done" if spec.burst else "stopped"
    if signals.count > 1:
        how = "stopped at once"
    reporter.say(
        "worker.exited",
        f"worker {the_worker.worker_id[:8]} stopped ({how}): {ledger.summary()}",
        reason=how,
        outcomes=dict(ledger.outcomes),
    )
    return ExitCode.OK


async def _watch_supervisor(pid: int, the_worker: Worker, reporter: Reporter) -> None:
    """A child whose supervisor died (even by SIGKILL) drains instead of running on unsupervised."""
    while os.getppid() == pid:  # noqa: ASYNC110 - no event tells a process that its parent died
        await anyio.sleep(1.0)
    reporter.say(
        "worker.orphaned", f"the supervisor (pid {pid}) is gone: draining", level="warning", supervisor=pid
    )
    the_worker.stop()


def _unwrap(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, or the group itself."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or len(inner) != 1:
            return exc
        exc = inner[0]


def _healthz_url(addr: str) -> str:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in {"", "0.0.0.0"}:  # noqa: S104 - a bind-all address is probed on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def _get_healthz(url: str) -> str | None:
    """``None`` when ``url`` answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as reply:  # noqa: S310 - our own http:// probe URL
            return None if reply.status == 200 else f"{url} answered {reply.status}"  # noqa: PLR2004 - HTTP OK
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read(200).decode(errors='replace').strip()}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return f"no worker answers on {url} ({reason}); is the worker running with this --metrics-addr?"


async def _check(choice: BackendChoice, queues: list[str], metrics_addr: str, timeout: float) -> int:
    problems: list[str] = []
    notes: list[str] = []
    try:
        try:
            facts = await probe_backend(choice, timeout)
        except BackendUnavailable as exc:
            problems.append(cli_error_for(exc, choice.url).format_message())
        else:
            notes.append(f"backend answered in {facts.round_trip_ms:.0f}ms")
            if not metrics_addr and choice.shared:
                host = socket.gethostname()
                live = [
                    info
                    for info in await choice.backend.list_workers()
                    if info.host == host and set(queues) <= set(info.queues)
                ]
                if live:
                    notes.append(f"{len(live)} live worker(s) on {host}")
                else:
                    problems.append(
                        f"no live worker on {host} serves {', '.join(queues)}; it stopped heartbeating "
                        "or never started"
                    )
        if metrics_addr:
            url = _healthz_url(metrics_addr)
            problem = await anyio.to_thread.run_sync(_get_healthz, url)
            if problem is None:
                notes.append(f"{url} ok")
            else:
                problems.append(problem)
    finally:
        await close_backend(choice)
    if problems:
        click.echo(f"unhealthy: {'; '.join(problems)}")
        return int(ExitCode.CRASH)
    click.echo(f"healthy: {', '.join(notes)}")
    return int(ExitCode.OK)

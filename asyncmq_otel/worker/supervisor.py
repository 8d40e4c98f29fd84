"""``asyncmq-otel worker --processes N``: the start-up script of multi-process mode.

The parent is a supervisor, like gunicorn's arbiter. It sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory of its own (under ``$PROMETHEUS_MULTIPROC_DIR`` when that is set, else the temp directory),
starts N worker processes (``python -m asyncmq_otel worker --supervised-by PID``: the single-process
worker, telemetry on, no ``/metrics`` of their own), and serves ``/metrics`` and ``/healthz`` itself,
merging the children's files (telemetry builds that view; see ``OpenMetrics``).

- Each child runs with the parent's options as a :class:`WorkerSpec`, handed over as JSON in
  ``ASYNCMQ_WORKER_SPEC`` (kept out of ``ps``, which would show the backend's password): one object
  carries every worker option, so a new option cannot silently stay behind in the parent.

- SIGTERM/SIGINT are forwarded to every child; each child applies the single-process rules (the first
  drains, a second one at least 1 s later stops at once, a repeat within 1 s is ignored).
- A child that exits unexpectedly (exit 1, killed by a signal, or exit 0 without ``--burst``: stopped by a
  signal sent to it alone) is restarted after ``RESTART_DELAY_S``, at most ``max_restarts`` times per
  ``RESTART_WINDOW_S``. Past that limit, or when a child exits 2 (usage) or 3 (backend unreachable, data
  loss halt), every other child is drained and the supervisor exits non-zero: restarting cannot fix a
  configuration, and an instance left with no worker is not a success. A ``--burst`` child that exits 0
  is done and not restarted.
- When a child exits, its gauge files go (its live gauges: ``asyncmq_worker_up`` and the other
  ``livesum`` rows; and its last-value gauges), so a dead sampler's queue depth is not kept as a
  maximum forever. Counters and histograms stay: totals never go backwards.
- Exit code: the highest exit code among the last process of each slot (a signal death counts as 1).
  The directory is removed on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Final, Protocol, get_args, get_origin, get_type_hints

import anyio
import anyio.abc

from .._exit_status import ExitCode, describe_exit
from .._version import __version__
from ..errors import ConfigError

__all__ = [
    "RESTART_DELAY_S",
    "RESTART_WINDOW_S",
    "SPEC_ENVVAR",
    "ChildMetrics",
    "OpenMetrics",
    "Say",
    "Supervisor",
    "WorkerSpec",
]

RESTART_DELAY_S: Final = 1.0
"""Seconds before a crashed worker process is replaced (a crash loop cannot spin)."""
RESTART_WINDOW_S: Final = 60.0
"""The window over which ``max_restarts`` is counted."""
SPEC_ENVVAR: Final = "ASYNCMQ_WORKER_SPEC"
"""The variable that hands a child its :class:`WorkerSpec` as JSON (read only with ``--supervised-by``)."""
_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
_FATAL: Final = frozenset({ExitCode.USAGE, ExitCode.BACKEND_UNREACHABLE})


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGTERM/SIGINT around a spawn.

    The child inherits the mask and unblocks them once its own handlers are in place, so a signal sent
    while it starts is delayed, never fatal.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Every option ``asyncmq-otel worker`` runs one worker process with: what a supervisor's children get.

    The command line builds it from its flags, variables and defaults; each child of ``--processes N``
    receives it whole as JSON. Options of the supervisor itself (``--processes``, ``--max-restarts``)
    and of the probe (``--check``) are not here.
    """

    queues: tuple[str, ...]
    """The queues to claim from."""
    apps: tuple[str, ...]
    """Modules imported first, registering their tasks."""
    backend_url: str | None
    """``--backend``; ``None``: the settings' backend."""
    prefix: str | None
    """The Redis key prefix; ``None``: the settings' prefix."""
    connect_timeout: float
    """Seconds the backend has to answer at start-up."""
    concurrency: int | None
    """Jobs run at once; ``None``: the settings' value."""
    rate_limit: int | None
    """Job starts per ``rate_interval`` (0: no limit); ``None``: the settings' value."""
    rate_interval: float | None
    """Seconds of the rate-limit window; ``None``: the settings' value."""
    metrics_addr: str
    """Where ``/metrics`` is served; ``""`` serves nothing (every supervised child)."""
    otlp_endpoint: str | None
    """The OTLP/HTTP base URL, or ``None``."""
    log_format: str | None
    """``json``, ``console``, ``auto`` or ``None`` (auto)."""
    shutdown_timeout: float | None
    """Seconds in-flight jobs get after the first stop signal; ``None``: the settings' value."""
    burst: bool
    """Exit 0 once the queues are empty."""
    queue_sampler: str
    """``elected`` or ``off``: whether this process may export queue depth."""

    def to_json(self) -> str:
        """The spec as one JSON object (tuples as arrays)."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Read a spec written by :meth:`to_json`.

        Raises:
            ConfigError: ``text`` is not such an object (a field missing, unknown or of another type).

        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{SPEC_ENVVAR} is not JSON ({exc}); it is set by the supervisor only") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{SPEC_ENVVAR} is not a JSON object; it is set by the supervisor only")
        hints = get_type_hints(cls)
        if set(data) != set(hints):
            raise ConfigError(
                f"{SPEC_ENVVAR} has the fields {sorted(data)}, not {sorted(hints)}: the supervisor and its "
                "worker processes must run the same version of asyncmq-otel"
            )
        for name, hint in hints.items():
            if not _conforms(data[name], hint):
                raise ConfigError(f"{SPEC_ENVVAR}: {name}={data[name]!r} is not a {hint}")
        values: dict[str, Any] = {name: tuple(v) if isinstance(v, list) else v for name, v in data.items()}
        return cls(**values)


def _conforms(value: object, hint: Any) -> bool:  # noqa: ANN401 - a type hint
    """Whether the JSON ``value`` has the type ``hint`` of a spec field.

    Tuples travel as arrays and a float may be written as an int; a bool is never a number here.
    """
    if isinstance(hint, UnionType):
        return any(_conforms(value, arm) for arm in get_args(hint))
    if get_origin(hint) is tuple:
        return isinstance(value, list) and all(_conforms(v, get_args(hint)[0]) for v in value)
    accepted = {float: (int, float), type(None): (type(None),)}.get(hint, (hint,))
    return isinstance(value, accepted) and (hint is bool or not isinstance(value, bool))


class Say(Protocol):
    """Where the supervisor's own messages go (the command line's reporter)."""

    def __call__(self, event: str, message: str, *, level: str = "info", **fields: Any) -> None:  # noqa: ANN401 - JSON fields
        """Write ``message``, an event called ``event`` with ``fields``."""


class ChildMetrics(Protocol):
    """The children's merged metrics as the supervisor serves them (telemetry builds them)."""

    @property
    def url(self) -> str | None:
        """Where the merged ``/metrics`` is served, or ``None``."""

    def forget(self, pid: int) -> None:
        """A child exited: drop its gauges."""

    def close(self) -> None:
        """Stop serving."""


OpenMetrics = Callable[[str, Callable[[], tuple[bool, str]]], ChildMetrics]
"""Opens the children's metrics: given their multiprocess directory and the ``/healthz`` check."""


def _exit_code(returncode: int) -> ExitCode:
    """A child's return code as an exit code: a signal death (negative) or an unknown code is a crash."""
    try:
        return ExitCode(returncode)
    except ValueError:
        return ExitCode.CRASH


class Supervisor:
    """Runs ``processes`` worker processes and serves their merged ``/metrics``.

    Args:
        say: where the supervisor's own messages go.
        spec: the options of every child; they serve no ``/metrics`` of their own (``metrics_addr`` is
            ignored: the supervisor serves theirs).
        processes: how many worker processes run at once.
        max_restarts: crashed processes replaced per ``RESTART_WINDOW_S`` before the instance stops.
        open_metrics: serves the children's merged ``/metrics`` and ``/healthz``; ``None`` serves nothing.

    """

    def __init__(
        self,
        say: Say,
        spec: WorkerSpec,
        *,
        processes: int,
        max_restarts: int,
        open_metrics: OpenMetrics | None = None,
    ) -> None:
        self.say = say
        self.spec = dataclasses.replace(spec, metrics_addr="")
        self.processes = processes
        self.max_restarts = max_restarts
        self.open_metrics = open_metrics
        # A --burst child exits 0 when its queues are empty; any other child only when told to stop.
        self.burst = spec.burst
        self.directory = ""
        self.metrics_url: str | None = None
        self.running: dict[int, anyio.abc.Process] = {}
        self.final: dict[int, ExitCode] = {}
        self._restarts: deque[float] = deque()
        self._stopped = anyio.Event()
        self._metrics: ChildMetrics | None = None
        self._spawn_lock = anyio.Lock()

    # -- the multiprocess directory and /metrics --------------------------------------------------------
    def _prepare(self) -> None:
        base = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
        try:
            Path(base).mkdir(parents=True, exist_ok=True)
            self.directory = tempfile.mkdtemp(prefix=f"asyncmq-otel-metrics-{os.getpid()}-", dir=base)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the metrics directory under {base}: {exc.strerror or exc}; point "
                "PROMETHEUS_MULTIPROC_DIR at a writable directory"
            ) from exc
        if self.open_metrics is not None:
            self._metrics = self.open_metrics(self.directory, self._health)
            self.metrics_url = self._metrics.url

    def _cleanup(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _health(self) -> tuple[bool, str]:
        up = len(self.running)
        text = f"{up} of {self.processes} worker processes running"
        return (up == self.processes and not self.stopping), text

    # -- running --------------------------------------------------------------------------------------
    async def run(self) -> ExitCode:
        """Start the children, supervise them until they have all exited, and return the worst code.

        Raises:
            ConfigError: the multiprocess directory cannot be made or ``/metrics`` cannot be served; the
                message says what to change.

        """
        try:
            self._prepare()
            self.say(
                "supervisor.started",
                f"asyncmq-otel {__version__} · worker supervisor (pid {os.getpid()}): {self.processes} "
                f"worker processes · metrics {self.metrics_url or 'off'} (merged, no exemplars) · "
                f"multiprocess dir {self.directory}",
                pid=os.getpid(),
                processes=self.processes,
                metrics_url=self.metrics_url,
                multiprocess_dir=self.directory,
            )
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_signals)
                async with anyio.create_task_group() as slots:
                    for slot in range(self.processes):
                        slots.start_soon(self._supervise, slot)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._kill_leftovers()
            self._cleanup()
        worst = max(self.final.values(), default=ExitCode.OK)
        self.say(
            "supervisor.exited",
            f"worker supervisor stopped: exit {int(worst)} "
            f"({', '.join(f'process {slot + 1}: {int(code)}' for slot, code in sorted(self.final.items()))})",
            exit_code=int(worst),
        )
        return worst

    async def _spawn(self, slot: int) -> anyio.abc.Process:
        env = {**os.environ, SPEC_ENVVAR: self.spec.to_json(), "PROMETHEUS_MULTIPROC_DIR": self.directory}
        command = [sys.executable, "-m", "asyncmq_otel", "worker", "--supervised-by", str(os.getpid())]
        # One spawn at a time: open_process yields, and overlapping save/restore pairs of the signal
        # mask could leave the stop signals blocked in this process for good.
        async with self._spawn_lock:
            with _stop_signals_blocked():
                process = await anyio.open_process(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=None, stderr=None
                )
        self.running[slot] = process
        if self.stopping:  # a stop signal came while it was being started: it gets one too
            process.send_signal(signal.SIGTERM)
        return process

    async def _supervise(self, slot: int) -> None:
        while not self.stopping:
            process = await self._spawn(slot)
            returncode = await process.wait()
            self.running.pop(slot, None)
            if self._metrics is not None:
                self._metrics.forget(process.pid)
            code = _exit_code(returncode)
            self.final[slot] = code
            if (code is ExitCode.OK and self.burst) or self.stopping:
                return
            what = f"worker process {slot + 1} (pid {process.pid}) {describe_exit(returncode)}"
            if code is ExitCode.OK:
                # Stopped by a signal sent to it alone: not a success of the instance unless replaced.
                self.final[slot] = ExitCode.CRASH
                what += " without being asked to stop"
            if code in _FATAL:
                self._stop_all(f"{what}: a restart cannot fix that; stopping the other processes")
                return
            if not self._may_restart():
                self._stop_all(
                    f"{what}: {self.max_restarts} restart(s) within {RESTART_WINDOW_S:g}s already; "
                    "stopping the other processes (look at the crash above)"
                )
                return
            self.say(
                "supervisor.restarting",
                f"{what}; restarting it in {RESTART_DELAY_S:g}s",
                level="warning",
                slot=slot + 1,
                pid=process.pid,
                returncode=returncode,
            )
            with anyio.move_on_after(RESTART_DELAY_S):
                await self._stopped.wait()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            return False
        self._restarts.append(now)
        return True

    def _stop_all(self, reason: str) -> None:
        self.say("supervisor.stopping", reason, level="error")
        self._begin_stop()
        self._forward(signal.SIGTERM)

    @property
    def stopping(self) -> bool:
        """Whether the instance is stopping: no process is started or restarted any more."""
        return self._stopped.is_set()

    def _begin_stop(self) -> None:
        self._stopped.set()

    def _forward(self, signum: signal.Signals) -> None:
        for process in list(self.running.values()):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(*_STOP_SIGNALS) as received:
            async for signum in received:
                name = signal.Signals(signum).name
                first = not self.stopping
                self._begin_stop()
                self.say(
                    "supervisor.signal",
                    f"{name} received: forwarded to {len(self.running)} worker process(es)"
                    + (", which drain (send it again after 1s to stop them at once)" if first else ""),
                    signal=name,
                )
                self._forward(signal.Signals(signum))

    async def _kill_leftovers(self) -> None:
        """Only on an unexpected error of the supervisor itself: no child may outlive it."""
        for process in list(self.running.values()):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with anyio.move_on_after(5):
                await process.wait()

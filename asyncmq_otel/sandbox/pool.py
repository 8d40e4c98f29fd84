"""Run task handlers in warm child processes that can be stopped hard, whatever the handler does.

Each child is ``python -m asyncmq_otel.sandbox.child`` in a session of its own, so ``killpg`` also reaches
whatever the handler started. Parent and child exchange length-prefixed JSON frames over two dedicated pipes;
the child's stdout and stderr become log lines on ``asyncmq_otel.sandbox`` and never touch the protocol.

While a job runs, the parent reads the child's replies on the event loop and refuses any frame over
``max_result_bytes`` from its header alone, so a large result fails fast and no pipe can deadlock. A watchdog
beside the reader stops the child on timeout or cancellation: SIGTERM to its process group and to every
process found below it (one that called ``setsid()`` has left the group), ``sandbox_term_grace`` for all of
them, then SIGKILL to what is left; it reaps the child in a shielded scope and ends the read at once, since an
escaped process could hold the reply pipe open for as long as it likes. Dead or killed children are replaced,
never reused.

A child dies with its worker: it watches a third pipe whose only writer is the parent (see
``sandbox.child``). Not ``PR_SET_PDEATHSIG``: that fires when the *thread* that started the child exits,
and children are started from worker threads.

POSIX only: the sandbox relies on sessions, process groups and ``os.waitid``; finding the processes that left
the group needs Linux's ``/proc``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import anyio
from anyio.lowlevel import RunVar, checkpoint_if_cancelled

from .._exit_status import describe_exit
from ..errors import (
    JobArgumentError,
    ResultSerializationError,
    ResultTooLarge,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
    UnknownTask,
)
from ..jobs import dumps
from ..settings import get_settings
from ..tasks import TASK_REGISTRY, get_task
from ._process_tree import ProcessTree
from .child import FRAME_HEADER, Oversize, encode_message, write_frame

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11; annotations are not evaluated

__all__ = ["ProgressCallback", "SandboxPool", "SandboxTaskError", "run_handler", "shutdown_sandbox"]

logger = logging.getLogger("asyncmq_otel.sandbox")

ProgressCallback: TypeAlias = Callable[[float, Any], "Awaitable[None] | None"]
"""Called with ``(pct, data)`` for each progress report; it may be a coroutine function."""

_FRAME_SLACK = 64 * 1024  # room for the reply envelope, and for error frames when max_result_bytes is tiny
_STARTUP_TIMEOUT = 30.0  # a fresh child must import the task modules and answer ``ready`` within this
_POLL_INTERVAL = 0.01  # exit polling while stopping: cheap, and needs no thread a full limiter could withhold
_WATCH_INTERVAL = 0.05  # how often a running job's watchdog checks that its child is still alive
_TREE_INTERVAL = 0.1  # how often a stop walks /proc for what runs below the child
_READ_CHUNK = 1024 * 1024
_MAX_LOG_LINE = 8192  # a child printing without newlines must not grow one log line without bound
_RUN_REPLIES = frozenset({"result", "error", "too_large", "unserializable", "unknown_task"})
_INIT_REPLIES = frozenset({"ready"})
_pool_numbers = itertools.count()


class SandboxTaskError(SandboxError):
    """The sandboxed handler raised; its exception is re-created from what the child reported.

    Attributes:
        error_type: the qualified type name, ``ValueError`` for builtins or ``module.Class``.
        message: the exception's message (at most 2 KiB).
        traceback: the formatted traceback from the child (its last 16 KiB).

    """

    def __init__(self, error_type: str, message: str, traceback: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


@dataclass(frozen=True, slots=True)
class _Ended:
    """The child stopped answering before a final frame: it died, or broke the protocol."""

    detail: str


@dataclass(frozen=True, slots=True)
class _TimedOut:
    """The watchdog's deadline passed first and the child was stopped."""


_Outcome: TypeAlias = "dict[str, Any] | _Ended | Oversize | _TimedOut"


class _ReplyPipe:
    """The parent's end of a child's reply pipe, read on the event loop so a wait can end on demand.

    A thread blocked in ``read`` would wait for end of file, which never comes while any process holding
    the write end lives: one the handler started and that escaped the stop, say.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)  # the child's end is another open file: its writes still block
        self.fd = fd
        self._buffer = bytearray()
        self._ended = False  # end of file seen
        self._stopped = False
        self._waiting: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Wait no more: what the pipe already holds is still read, then the reader sees the end."""
        self._stopped = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def read(self, limit: int) -> bytes | Oversize | None:
        """The next frame's body; ``None`` at end of file or once stopped, :class:`Oversize` past ``limit``.

        An oversized frame's body is not read, so a huge reply costs nothing; the pipe is then out of step
        and its child must be discarded.
        """
        while (frame := self._frame(limit)) is None:
            if self._fill():
                continue
            if self._ended or self._stopped:
                return None
            try:
                with anyio.CancelScope() as self._waiting:
                    await anyio.wait_readable(self.fd)
            finally:
                self._waiting = None
        return frame

    def _frame(self, limit: int) -> bytes | Oversize | None:
        header = FRAME_HEADER.size
        if len(self._buffer) < header:
            return None
        (size,) = FRAME_HEADER.unpack_from(self._buffer)
        if size > limit:
            return Oversize(size)
        if len(self._buffer) < header + size:
            return None
        frame = bytes(self._buffer[header : header + size])
        del self._buffer[: header + size]
        return frame

    def _fill(self) -> bool:
        """Read what the pipe holds now; whether anything was there."""
        try:
            chunk = os.read(self.fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""  # treated as its end: the child is discarded either way
        if not chunk:
            self._ended = True
            return False
        self._buffer += chunk
        return True


@dataclass(eq=False, slots=True)
class _Child:
    """One warm child: its process and the parent's ends of its pipes."""

    proc: subprocess.Popen[bytes]
    requests: int
    replies: _ReplyPipe
    parent_watch: int  # never written: the kernel closes it when this process dies, and the child then dies
    broken: bool = False  # killed, crashed or out of step: never handed another job
    closed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close_requests(self) -> None:
        # End of file on its request pipe is the child's signal to exit cleanly.
        if self.requests >= 0:
            fd, self.requests = self.requests, -1
            os.close(fd)

    def close(self) -> None:
        self.close_requests()
        if not self.closed:
            self.closed = True
            os.close(self.replies.fd)
            os.close(self.parent_watch)


@dataclass(slots=True)
class _Watch:
    done: bool = False  # a final frame arrived: the child is idle again and must be left alone
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class _RunState:
    """Primitives bound to one event loop run, so a pool survives from one ``anyio.run`` to the next."""

    processes: int
    slots: anyio.Semaphore
    threads: anyio.CapacityLimiter


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it: its pid keeps its process group addressable."""
    if proc.returncode is not None:
        return True  # reaped by us already
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # already reaped


def _signal_group(pid: int, signum: signal.Signals) -> None:
    # Lookup error: the group is already empty; permission error: some systems refuse to signal a zombie.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Collect an exited child's status; called only once :func:`_exited` is true, so it does not block."""
    proc.wait()


def _child_env() -> dict[str, str]:
    """The parent's environment, plus this package's checkout when it is not installed in site-packages.

    ``-m`` must find ``asyncmq_otel`` before the init frame hands the child the parent's ``sys.path``.
    Site-packages itself is never prepended: that would let installed packages shadow the stdlib.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    installed = {
        str(Path(p).resolve()) for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"))
    }
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _pump_output(stream: IO[bytes], pid: int, name: str, level: int) -> None:
    """Turn one of the child's output streams into log lines until it closes (runs in its own thread)."""
    try:
        with stream:
            for raw in iter(lambda: stream.readline(_MAX_LOG_LINE), b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                logger.log(level, "sandbox child %d %s: %s", pid, name, line, extra={"sandbox_pid": pid})
    except (OSError, ValueError):
        logger.debug("sandbox child %d: its %s could not be read to the end", pid, name)


def _start_child() -> _Child:
    """Start one child (blocking: run it in a worker thread)."""
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    watch_read, watch_write = os.pipe()
    try:
        proc = subprocess.Popen(  # noqa: S603 - a fixed argv: this interpreter and our own module
            [
                sys.executable,
                "-m",
                "asyncmq_otel.sandbox.child",
                "--requests",
                str(request_read),
                "--replies",
                str(reply_write),
                "--parent-watch",
                str(watch_read),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(request_read, reply_write, watch_read),
            start_new_session=True,  # its own process group, so killpg reaches what the handler starts
            env=_child_env(),
        )
    except BaseException:
        os.close(request_write)
        os.close(reply_read)
        os.close(watch_write)
        raise
    finally:
        # The child holds these ends now; keeping them would hide its death (no EOF) from the reader, and
        # keep its parent watch open after this process is gone.
        os.close(request_read)
        os.close(reply_write)
        os.close(watch_read)
    for stream, name, level in (
        (proc.stdout, "stdout", logging.INFO),
        (proc.stderr, "stderr", logging.WARNING),
    ):
        if stream is not None:
            threading.Thread(
                target=_pump_output,
                args=(stream, proc.pid, name, level),
                name=f"asyncmq-sandbox-{proc.pid}-{name}",
                daemon=True,
            ).start()
    logger.debug("sandbox child %d started", proc.pid)
    return _Child(proc=proc, requests=request_write, replies=_ReplyPipe(reply_read), parent_watch=watch_write)


class SandboxPool:
    """A pool of warm sandbox children, reused across jobs, at most ``processes`` alive at once.

    Use one per worker (``async with SandboxPool() as pool``) or the module's default through
    :func:`run_handler`. Settings are read when they matter: ``sandbox_term_grace`` on each stop,
    ``max_result_bytes`` and ``sandbox_default_timeout`` on each job, ``sandbox_processes`` once per
    event loop run (unless ``processes`` is given).
    """

    def __init__(self, processes: int | None = None) -> None:
        """Create an empty pool; children start on first use or with :meth:`start`.

        Args:
            processes: the most children alive at once; ``settings.sandbox_processes`` when omitted.

        """
        if processes is not None and processes < 1:
            raise ValueError(f"processes must be >= 1, not {processes}")
        self._processes = processes
        self._children: set[_Child] = set()
        self._idle: list[_Child] = []
        self._starting = 0  # children being started (not yet in _children)
        self._closed = False
        self._state: RunVar[_RunState | None] = RunVar(
            f"asyncmq_otel.sandbox.pool{next(_pool_numbers)}", None
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called; a closed pool runs no more jobs."""
        return self._closed

    def _run_state(self) -> _RunState:
        state = self._state.get()
        if state is None:
            processes = self._processes or max(1, int(get_settings().sandbox_processes))
            state = _RunState(processes, anyio.Semaphore(processes), anyio.CapacityLimiter(processes + 1))
            self._state.set(state)
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError("this sandbox pool is closed; create a new SandboxPool")

    async def start(self) -> None:
        """Start children, concurrently, until the pool holds its full number: first jobs find them warm."""
        self._check_open()
        state = self._run_state()
        async with anyio.create_task_group() as tg:
            for _ in range(state.processes - len(self._children) - self._starting):
                tg.start_soon(self._prestart, state)

    async def _prestart(self, state: _RunState) -> None:
        async with state.slots:
            # Counting children still starting keeps the pool at its size when jobs start them too.
            if len(self._children) + self._starting < state.processes:
                self._idle.append(await self._spawn(state))

    async def run(
        self,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        timeout: float | None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Any:  # noqa: ANN401 - the handler's JSON result
        """Run a registered task in a warm child and return its JSON result; see :func:`run_handler`."""
        info = get_task(task_id)
        self._check_open()
        config = get_settings()
        limit = int(config.max_result_bytes)
        seconds = float(config.sandbox_default_timeout if timeout is None else timeout)
        request = _encode_request(task_id, info.module, args, kwargs, limit)
        state = self._run_state()
        async with state.slots:
            child = await self._checkout(state)
            try:
                outcome = await self._converse(
                    child, request, seconds, limit + _FRAME_SLACK, on_progress, _RUN_REPLIES, state
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await self._checkin(child)
        return self._result(task_id, child, outcome, seconds, limit)

    async def aclose(self) -> None:
        """Stop every child: idle ones exit cleanly, busy ones are terminated (their jobs fail as crashed)."""
        self._closed = True
        idle, self._idle = self._idle, []
        busy = [child for child in self._children if child not in idle]
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for child in idle:
                    tg.start_soon(functools.partial(self._dispose, child, graceful=True))
                for child in busy:
                    tg.start_soon(self._terminate, child)

    # -- children -----------------------------------------------------------------------------------------

    async def _checkout(self, state: _RunState) -> _Child:
        # Last in, first out: the most recently used child is the warmest (caches, imports).
        while self._idle:
            child = self._idle.pop()
            if not _exited(child.proc):
                return child
            logger.warning("sandbox child %d died while idle; replacing it", child.pid)
            with anyio.CancelScope(shield=True):
                await self._dispose(child)
        return await self._spawn(state)

    async def _checkin(self, child: _Child) -> None:
        if child.broken or self._closed or _exited(child.proc):
            await self._dispose(child, graceful=not child.broken)
        else:
            self._idle.append(child)

    async def _spawn(self, state: _RunState) -> _Child:
        self._starting += 1
        try:
            child = await anyio.to_thread.run_sync(_start_child, limiter=state.threads)
        except OSError as exc:
            raise SandboxCrashed(f"the sandbox child could not be started: {exc}") from exc
        finally:
            self._starting -= 1
        self._children.add(child)
        init = encode_message(
            {
                "op": "init",
                "sys_path": list(sys.path),
                "modules": sorted({info.module for info in TASK_REGISTRY.values()} - {"", "__main__"}),
                "packages": list(get_settings().tasks),
            }
        )
        ready = False
        try:
            outcome = await self._converse(
                child, init, _STARTUP_TIMEOUT, _FRAME_SLACK, None, _INIT_REPLIES, state
            )
            ready = isinstance(outcome, dict)
        finally:
            if not ready:
                with anyio.CancelScope(shield=True):
                    await self._dispose(child)
        if not isinstance(outcome, dict):
            how = (
                f"did not start within {_STARTUP_TIMEOUT:g}s"
                if isinstance(outcome, _TimedOut)
                else describe_exit(child.proc.returncode)
            )
            raise SandboxCrashed(
                f"sandbox child (pid {child.pid}) {how} before it was ready; "
                "its stderr is logged on 'asyncmq_otel.sandbox'"
            )
        for error in outcome.get("errors", []):
            logger.warning("sandbox child %d could not import %s", child.pid, error)
        return child

    async def _terminate(self, child: _Child) -> None:
        """Stop the child and every process below it: SIGTERM, ``sandbox_term_grace``, SIGKILL; reap it."""
        child.broken = True
        tree = ProcessTree(child.pid)
        if not _exited(child.proc):
            # Found while the child lives: its descendants hang below it (it is their subreaper), and one that
            # left its process group with setsid() is out of killpg's reach.
            await _in_own_thread(tree.refresh)
            _signal_group(child.pid, signal.SIGTERM)
            # Not to the group's members again: to some programs a second SIGTERM means "skip the clean-up".
            tree.signal(signal.SIGTERM, outside_group=child.pid)
            if not await _wait_tree_exit(child.proc, tree, float(get_settings().sandbox_term_grace)):
                logger.warning(
                    "sandbox child %d or a process it started ignored SIGTERM; sending SIGKILL", child.pid
                )
                if not _exited(child.proc):
                    # Stopped first, so as a subreaper it still holds every orphan while the tree is killed.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGSTOP)
                await _in_own_thread(tree.kill)
                _signal_group(child.pid, signal.SIGKILL)
                await _wait_exit(child.proc, None)
        if child.proc.returncode is None:
            # The leader is a zombie here, so its pid still names the group and cannot have been reused:
            # kill whatever the handler started, then collect the leader's status.
            _signal_group(child.pid, signal.SIGKILL)
            _reap(child.proc)

    async def _dispose(self, child: _Child, graceful: bool = False) -> None:
        """Stop (``graceful``: ask first by closing its request pipe), reap and forget a child."""
        if graceful and not _exited(child.proc):
            child.close_requests()
            await _wait_exit(child.proc, float(get_settings().sandbox_term_grace))
        await self._terminate(child)
        child.close()
        self._children.discard(child)

    # -- one conversation ---------------------------------------------------------------------------------

    async def _converse(
        self,
        child: _Child,
        request: bytes,
        timeout: float,
        limit: int,
        on_progress: ProgressCallback | None,
        final_ops: frozenset[str],
        state: _RunState,
    ) -> _Outcome:
        """Send ``request`` and read replies until a final one, with a watchdog that stops the child.

        The watchdog kills the child on timeout, on cancellation, and whenever the reader gives up without
        a final frame; the reader then sees end of file, so its (uncancellable) thread always returns.
        """
        watch = _Watch()
        outcome: _Outcome = _Ended("no reply was read")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watchdog, child, timeout, watch)
            try:
                outcome = await self._talk(child, request, limit, on_progress, final_ops, state)
                # Only a final frame proves the child is idle again; anything else leaves it to the watchdog.
                watch.done = isinstance(outcome, dict)
            finally:
                tg.cancel_scope.cancel()
        # A cancelled caller gets its cancellation, not a crash report about the child we stopped for it.
        await checkpoint_if_cancelled()
        if watch.timed_out and not watch.done:
            return _TimedOut()
        return outcome

    async def _watchdog(self, child: _Child, timeout: float, watch: _Watch) -> None:
        deadline = anyio.current_time() + timeout
        try:
            # Watching the leader, not just the pipe: a process the handler forked may hold the reply pipe
            # open after the leader dies, and the reader would then wait for end of file until the timeout.
            while not _exited(child.proc):
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    watch.timed_out = True
                    break
                await anyio.sleep(min(remaining, _WATCH_INTERVAL))
        finally:
            if not watch.done:
                with anyio.CancelScope(shield=True):
                    await self._terminate(child)
                # Whatever still holds the reply pipe open, the child is gone: read what it wrote, then stop.
                child.replies.stop()

    async def _talk(
        self,
        child: _Child,
        request: bytes,
        limit: int,
        on_progress: ProgressCallback | None,
        final_ops: frozenset[str],
        state: _RunState,
    ) -> _Outcome:
        try:
            await anyio.to_thread.run_sync(write_frame, child.requests, request, limiter=state.threads)
        except OSError as exc:
            return _Ended(f"the request could not be sent: {exc}")
        while True:
            reply = await self._next_reply(child, limit)
            if not isinstance(reply, dict) or reply.get("op") != "progress":
                break
            await _report_progress(on_progress, reply, child.pid)
        if isinstance(reply, dict) and reply.get("op") not in final_ops:
            return _Ended(f"protocol error: unexpected reply {reply.get('op')!r}")
        return reply

    async def _next_reply(self, child: _Child, limit: int) -> dict[str, Any] | _Ended | Oversize:
        frame = await child.replies.read(limit)
        if frame is None:
            return _Ended("its reply pipe closed")
        if isinstance(frame, Oversize):
            return frame
        try:
            message = json.loads(frame)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return _Ended("protocol error: a reply is not a JSON object")
        return message

    def _result(self, task_id: str, child: _Child, outcome: _Outcome, timeout: float, limit: int) -> Any:  # noqa: ANN401 - the handler's JSON result
        if isinstance(outcome, _TimedOut):
            how = describe_exit(child.proc.returncode)
            logger.warning(
                "sandbox child %d: task %s ran past its %gs timeout and %s", child.pid, task_id, timeout, how
            )
            raise SandboxTimeout(
                f"task {task_id!r} ran past its {timeout:g}s sandbox timeout; its process {how} "
                f"(SIGTERM, then SIGKILL after {float(get_settings().sandbox_term_grace):g}s)"
            )
        if isinstance(outcome, Oversize):
            raise ResultTooLarge(outcome.size, limit)
        if isinstance(outcome, _Ended):
            why = "the sandbox pool was closed" if self._closed else outcome.detail
            logger.warning(
                "sandbox child %d %s while running %s (%s)",
                child.pid,
                describe_exit(child.proc.returncode),
                task_id,
                why,
            )
            raise SandboxCrashed(
                f"sandbox child (pid {child.pid}) {describe_exit(child.proc.returncode)} while running task "
                f"{task_id!r} ({why}); the handler may have partly run"
            )
        op = outcome["op"]
        if op == "result":
            return outcome.get("value")
        if op == "error":
            raise SandboxTaskError(
                str(outcome.get("type", "Exception")),
                str(outcome.get("message", "")),
                str(outcome.get("traceback", "")),
            )
        if op == "too_large":
            raise ResultTooLarge(int(outcome.get("size", limit + 1)), limit)
        if op == "unserializable":
            raise ResultSerializationError(str(outcome.get("message", "")))
        raise UnknownTask(str(outcome.get("message", f"task {task_id!r} is unknown to the sandbox child")))


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Poll until the child exits (not reaped) or ``timeout`` passes; whether it exited."""
    deadline = None if timeout is None else anyio.current_time() + timeout
    while not _exited(proc):
        if deadline is not None and anyio.current_time() >= deadline:
            return False
        await anyio.sleep(_POLL_INTERVAL)
    return True


async def _in_own_thread(func: Callable[[], object]) -> None:
    """Run ``func`` off the loop (it reads ``/proc`` and may sleep), on a thread no full limiter withholds."""
    await anyio.to_thread.run_sync(func, limiter=anyio.CapacityLimiter(1))


async def _wait_tree_exit(proc: subprocess.Popen[bytes], tree: ProcessTree, timeout: float) -> bool:
    """Poll until the child and every process found below it have exited, or ``timeout`` passes."""
    deadline = anyio.current_time() + timeout
    next_walk = anyio.current_time() + _TREE_INTERVAL
    while not (_exited(proc) and not tree.pids):
        now = anyio.current_time()
        if now >= deadline:
            return False
        if now >= next_walk:
            # Walked again: what was found may have died, and the child may have forked more.
            await _in_own_thread(tree.refresh)
            next_walk = anyio.current_time() + _TREE_INTERVAL
        else:
            await anyio.sleep(_POLL_INTERVAL)
    return True


async def _report_progress(on_progress: ProgressCallback | None, message: dict[str, Any], pid: int) -> None:
    if on_progress is None:
        return
    try:
        returned = on_progress(float(message.get("pct", 0.0)), message.get("data"))
        if inspect.isawaitable(returned):
            await returned
    except Exception:  # a failing progress callback must not change the job's outcome
        logger.exception("sandbox child %d: the progress callback failed", pid)


def _encode_request(
    task_id: str, module: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int
) -> bytes:
    request = {
        "op": "run",
        "task": task_id,
        "module": module,
        "args": list(args),
        "kwargs": dict(kwargs),
        "max_result_bytes": limit,
    }
    try:
        return dumps(request).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise JobArgumentError("args", f"the job's arguments are not JSON ({exc}); nothing was run") from exc


class _DefaultPool:
    """Holds the module's default pool, created on first use and dropped by :func:`shutdown_sandbox`."""

    pool: SandboxPool | None = None


async def run_handler(
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    timeout: float | None,
    *,
    on_progress: ProgressCallback | None = None,
) -> Any:  # noqa: ANN401 - the handler's JSON result
    """Run a registered task in a warm sandbox child (the default pool) and return its JSON result.

    Args:
        task_id: a task registered in this process (``@task``, ``--app`` or ``settings.tasks``).
        args: positional arguments (JSON).
        kwargs: keyword arguments (JSON).
        timeout: seconds before the child is stopped; ``settings.sandbox_default_timeout`` when ``None``.
            Waiting for a free child does not count.
        on_progress: called with ``(pct, data)`` for each ``report_progress`` of a ``progress=True`` task.

    Raises:
        UnknownTask: the task is not registered here (nothing was started), or not in the child.
        SandboxTaskError: the handler raised; ``error_type``, ``message`` and ``traceback`` describe it.
        SandboxTimeout: it ran past ``timeout`` and its process group was stopped.
        SandboxCrashed: the child died (exit code or signal in the message).
        ResultTooLarge: the encoded result is over ``settings.max_result_bytes``.
        ResultSerializationError: the result is not JSON.

    """
    get_task(task_id)
    if _DefaultPool.pool is None or _DefaultPool.pool.closed:
        _DefaultPool.pool = SandboxPool()
    return await _DefaultPool.pool.run(task_id, args, kwargs, timeout, on_progress=on_progress)


async def shutdown_sandbox() -> None:
    """Stop every child of the default pool; the next :func:`run_handler` starts a fresh pool."""
    pool, _DefaultPool.pool = _DefaultPool.pool, None
    if pool is not None:
        await pool.aclose()

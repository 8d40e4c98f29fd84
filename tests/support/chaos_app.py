"""The test app the chaos and multi-process tests run in real worker subprocesses (``--app tests.support.chaos_app``).

It registers the tasks below and installs the kill points and the ledger hooks of §13. None of
this is product code: the hooks wrap ``RedisBackend`` methods in the subprocess only, and what each
does is chosen by environment variables the test sets per process:

``CHAOS_LEDGER_DIR``
    Append claims, handler starts/ends, fenced writes and ``job:stalled`` events to the ledger
    (``tests/support/ledger.py``).
``CHAOS_EXIT_AFTER_CLAIM``
    A directory. Right after a claim returns jobs, ``os._exit(137)`` when one of them has no marker
    file there yet (the markers are written first, so each job is killed this way at most once).
``CHAOS_STOP_BEFORE_COMPLETE``
    ``1``: the first ``complete`` call of the process stops the whole process with SIGSTOP just
    before it is sent (a zombie frozen between its handler's return and its settle).
``CHAOS_HOLD``
    ``1``: ``chaos.zombie`` holds its job until cancelled; otherwise it returns at once.
``CHAOS_CLOCK_OFFSET``
    Seconds added to ``time.time()`` in this process: a worker whose wall clock is skewed (row 18).
    The product has no clock-provider hook for the Redis backend (Redis ``TIME`` decides), so the
    test app skews the only client clock the worker could read.
``CHAOS_NO_CANCEL_HINTS``
    ``1``: cancel hints (Pub/Sub) are dropped, so only the renewer's ``CANCEL`` answer stops a job.
"""

from __future__ import annotations

import contextvars
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio

from asyncmq_otel.backends.base import ClaimReply, SettleReply
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.tasks import task
from tests.support.ledger import LEDGER_ENV, LedgerWriter

P = ParamSpec("P")
R = TypeVar("R")

QUEUE = "chaos"  # the default queue of the tasks; tests enqueue by task id on their own queue names

_LEDGER = LedgerWriter(os.environ[LEDGER_ENV]) if os.environ.get(LEDGER_ENV) else None
_EXIT_MARKS = os.environ.get("CHAOS_EXIT_AFTER_CLAIM")
_STOP_BEFORE_COMPLETE = os.environ.get("CHAOS_STOP_BEFORE_COMPLETE") == "1"
_HOLD = os.environ.get("CHAOS_HOLD") == "1"

_TOKENS: dict[tuple[str, str], str] = {}  # (queue, job id) -> token of this process's claim
_CURRENT: contextvars.ContextVar[tuple[str, str, int | None]] = contextvars.ContextVar("chaos_current")
_stopped_once = [False]
_CLOCK_OFFSET = float(os.environ.get("CHAOS_CLOCK_OFFSET") or 0.0)

if _CLOCK_OFFSET:
    _real_time = time.time

    def _skewed_time() -> float:
        return _real_time() + _CLOCK_OFFSET

    time.time = _skewed_time  # every `time.time()` in this process reads the skewed clock


def _record(ev: str, **fields: Any) -> None:
    if _LEDGER is not None:
        _LEDGER.write(ev, **fields)


# -- hooks on the backend (this subprocess only) ----------------------------------------------------------
_claim = RedisBackend.claim


async def _hooked_claim(
    self: RedisBackend, queue: str, worker_id: str, count: int, lease: float
) -> ClaimReply:
    reply = await _claim(self, queue, worker_id, count, lease)
    if not reply.jobs:
        return reply
    ids = [str(job.get("id")) for job in reply.jobs]
    tokens = [str(job.get("token")) for job in reply.jobs]
    for job_id, token in zip(ids, tokens, strict=True):
        _TOKENS[queue, job_id] = token
    _record("claim", queue=queue, ids=ids, tokens=tokens, worker=worker_id, now=reply.now)
    if _EXIT_MARKS:
        fresh = [job_id for job_id in ids if not (Path(_EXIT_MARKS) / job_id).exists()]
        for job_id in fresh:
            (Path(_EXIT_MARKS) / job_id).touch()
        if fresh:
            _record("exit", ids=fresh, where="after_claim")
            os._exit(137)
    return reply


def _settle_hook(
    op: str, method: Callable[..., Awaitable[SettleReply]]
) -> Callable[..., Awaitable[SettleReply]]:
    @functools.wraps(method)
    async def hooked(
        self: RedisBackend, queue: str, job_id: str, token: str, *args: Any, **kwargs: Any
    ) -> SettleReply:
        if op == "complete" and _STOP_BEFORE_COMPLETE and not _stopped_once[0]:
            _stopped_once[0] = True
            _record("sigstop", id=job_id, token=token)
            os.kill(os.getpid(), signal.SIGSTOP)  # the test sends SIGCONT once the lease is long gone
        reply = await method(self, queue, job_id, token, *args, **kwargs)
        _record("settle", op=op, id=job_id, token=token, status=reply.status.value.lower(), owner=reply.owner)
        return reply

    return hooked


RedisBackend.claim = _hooked_claim  # type: ignore[method-assign]
if os.environ.get("CHAOS_NO_CANCEL_HINTS") == "1":

    def _no_hints(self: RedisBackend, listener: Callable[[str, str], None]) -> None:
        """Drop the listener: a running job learns of its cancellation from its renewal only."""

    RedisBackend.add_cancel_listener = _no_hints  # type: ignore[method-assign]
for _op in ("complete", "retry", "fail", "requeue", "defer", "settle_cancelled"):
    setattr(RedisBackend, _op, _settle_hook(_op, getattr(RedisBackend, _op)))


def _on_event(event: LifecycleEvent) -> None:
    """Inline listener: runs in the attempt's own task, so the context variable reaches the handler."""
    if event.name == "job:started":
        queue, job_id = str(event.queue), str(event.job_id)
        token = _TOKENS.get((queue, job_id), "")
        _CURRENT.set((job_id, token, event.attempt))
        _record("start", id=job_id, token=token, attempt=event.attempt, wall=time.time(), task=event.task)
    elif event.name == "job:stalled":
        _record("event", name=event.name, id=event.job_id)


bus.on("job:started", _on_event, inline=True)
bus.on("job:stalled", _on_event, inline=True)


def _current() -> tuple[str, str, int | None]:
    return _CURRENT.get(("?", "", None))


def ledgered(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[Any]]:
    """Record the handler's ``end`` and return ``{"t": token, "r": its result}``."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        result = await func(*args, **kwargs)
        job_id, token, attempt = _current()
        _record("end", id=job_id, token=token, attempt=attempt)
        return {"t": token, "r": result}

    return wrapper


# -- tasks --------------------------------------------------------------------------------------------------
@task(QUEUE, name="chaos.noop")
@ledgered
async def noop(index: int | None = None) -> int | None:
    return index


@task(QUEUE, name="chaos.sleep")
@ledgered
async def sleep(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


@task(QUEUE, name="chaos.hold")
@ledgered
async def hold(release_path: str) -> str:
    """Runs until the file at ``release_path`` exists."""
    path = anyio.Path(release_path)
    while not await path.exists():
        await anyio.sleep(0.01)
    return "released"


@task(QUEUE, name="chaos.zombie")
@ledgered
async def zombie() -> str:
    """Holds until cancelled in a process started with ``CHAOS_HOLD=1``; returns at once elsewhere."""
    if _HOLD:
        await anyio.sleep_forever()
    return "done"


@task(QUEUE, name="chaos.poison")
async def poison() -> None:
    """Kills its worker every time it runs."""
    os._exit(137)


@task(QUEUE, name="chaos.unserialisable")
@ledgered
async def unserialisable() -> object:
    return object()


@task(QUEUE, name="chaos.big_result")
async def big_result(size: int) -> str:
    return "x" * size


@task(QUEUE, name="chaos.payload_size")
async def payload_size(blob: str) -> int:
    return len(blob)


@task(QUEUE, name="chaos.sentinel")
async def sentinel(path: str) -> None:
    """Touches ``path``: it must never run for a job that was not enqueued through the API."""
    await anyio.Path(path).touch()


@task(QUEUE, name="chaos.block")
@ledgered
async def block(seconds: float, once_path: str = "") -> float:
    """Blocks the event loop with ``time.sleep`` (row 5); with ``once_path``, only the first run blocks."""
    if once_path:
        marker = anyio.Path(once_path)
        if await marker.exists():
            return 0.0
        await marker.touch()
    time.sleep(seconds)  # noqa: ASYNC251 - the fault under test: a handler that blocks the loop
    return seconds


@task(QUEUE, name="chaos.spin", timeout=1.0)
def spin(pid_path: str, ignore_sigterm: bool = False) -> None:
    """Burns a core in the sandbox child until killed (row 7); first writes ``pid wall-time``."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pid_path).write_text(f"{os.getpid()} {time.time()!r}")
    while True:
        pass

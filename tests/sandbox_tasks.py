"""Tasks the sandbox tests run in child processes; importable by the child as ``tests.sandbox_tasks``."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncmq_otel.tasks import task

QUEUE = "sandbox-tests"


class SandboxTestError(Exception):
    """A handler error with a qualified (non-builtin) type name."""


@task(QUEUE, name="sandbox.add")
def add(a: int, b: int = 0) -> int:
    return a + b


@task(QUEUE, name="sandbox.async_add")
async def async_add(a: int, b: int = 0) -> int:
    await asyncio.sleep(0)
    return a + b


@task(QUEUE, name="sandbox.pid")
def pid() -> int:
    return os.getpid()


@task(QUEUE, name="sandbox.fail")
def fail(n: int) -> None:
    raise SandboxTestError(f"boom {n}")


@task(QUEUE, name="sandbox.async_fail")
async def async_fail() -> None:
    await asyncio.sleep(0)
    raise ValueError("async boom")


@task(QUEUE, name="sandbox.group_fail")
async def group_fail() -> None:
    async def inner() -> None:
        raise KeyError("inside a group")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(inner())


@task(QUEUE, name="sandbox.spin", progress=True)
def spin(report_progress: Callable[..., None], ignore_sigterm: bool = False) -> None:
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report_progress(0.0, {"pid": os.getpid()})
    while True:
        pass


@task(QUEUE, name="sandbox.hang", progress=True)
def hang(report_progress: Callable[..., None]) -> None:
    # Hangs without burning a core, for tests about stopping rather than about spinning.
    report_progress(0.0, {"pid": os.getpid()})
    while True:
        time.sleep(0.05)


@task(QUEUE, name="sandbox.hang_with_grandchild", progress=True)
def hang_with_grandchild(report_progress: Callable[..., None]) -> None:
    # A process the handler starts stays in the child's process group, so the stop must reach it too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = os.fork()
    if grandchild == 0:
        while True:
            time.sleep(0.05)
    report_progress(0.0, {"pid": os.getpid(), "grandchild": grandchild})
    while True:
        time.sleep(0.05)


@task(QUEUE, name="sandbox.big")
def big(size: int) -> str:
    return "x" * size


@task(QUEUE, name="sandbox.exit", progress=True)
def exit_now(report_progress: Callable[..., None], code: int) -> None:
    report_progress(0.0, {"pid": os.getpid()})
    os._exit(code)


@task(QUEUE, name="sandbox.kill_self")
def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task(QUEUE, name="sandbox.progress", progress=True)
async def progress(report_progress: Callable[..., None], steps: int) -> str:
    for step in range(steps):
        report_progress(100.0 * step / steps, {"step": step})
        await asyncio.sleep(0)
    report_progress(100.0)
    return "done"


@task(QUEUE, name="sandbox.chatty")
def chatty() -> dict[str, Any]:
    print("hello from the sandbox child")
    # Bytes that look like a protocol frame must only ever reach the log.
    sys.stdout.buffer.write(b'\x00\x00\x00\x0b{"op":"ok"}\n')
    sys.stdout.flush()
    print("a complaint on stderr", file=sys.stderr)
    return {"ok": True, "pid": os.getpid()}


@task(QUEUE, name="sandbox.unserializable")
def unserializable() -> object:
    return {"when": object()}


@task(QUEUE, name="sandbox.sleep")
def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@task(QUEUE, name="sandbox.exit_with_grandchild", progress=True)
def exit_with_grandchild(report_progress: Callable[..., None]) -> None:
    # The grandchild inherits the reply pipe, so the parent only learns of the exit by watching the leader.
    grandchild = os.fork()
    if grandchild == 0:
        while True:
            time.sleep(0.05)
    report_progress(0.0, {"pid": os.getpid(), "grandchild": grandchild})
    os._exit(4)


def _fork_escapee(seconds: float, *, ignore_sigterm: bool = False, orphan: bool = False) -> int:
    """Start a process that leaves the child's session and process group, sleeps ``seconds``; its pid.

    It inherits every descriptor, the reply pipe included, so it holds that pipe open while it lives.
    ``orphan``: its parent exits first (a daemon's double fork), so its parent link no longer leads to the
    handler. Returns once it runs in its own session, so ``killpg`` can no longer reach it.
    """
    ready_read, ready_write = os.pipe()
    first = os.fork()
    if first == 0:
        os.setsid()
        if ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if orphan and os.fork() != 0:
            os._exit(0)
        os.write(ready_write, str(os.getpid()).encode())
        time.sleep(seconds)
        os._exit(0)
    os.close(ready_write)
    escapee = int(os.read(ready_read, 32))
    os.close(ready_read)
    if orphan:
        os.waitpid(first, 0)  # its parent has exited: it has been handed to the nearest subreaper
    return escapee


@task(QUEUE, name="sandbox.hang_with_escapee", progress=True)
def hang_with_escapee(
    report_progress: Callable[..., None],
    seconds: float = 60.0,
    pid_path: str = "",
    ignore_sigterm: bool = False,
    orphan: bool = False,
) -> None:
    # The escapee sleeps in a session of its own: only tracking descendants finds it at the deadline.
    escapee = _fork_escapee(seconds, ignore_sigterm=ignore_sigterm, orphan=orphan)
    if pid_path:
        Path(pid_path).write_text(f"{os.getpid()} {escapee}", encoding="utf-8")
    report_progress(0.0, {"pid": os.getpid(), "escapee": escapee})
    while True:
        time.sleep(0.05)


@task(QUEUE, name="sandbox.exclusive")
def exclusive(lock_path: str, record_path: str) -> bool:
    """Whether no other run of this job held ``lock_path``; the first run hangs with an escapee holding it.

    The exclusive ``flock`` lives as long as any process holding its descriptor, so a run that outlives
    its worker (the sandbox child or the escapee it forked) makes a later run see the lock taken.
    Each run appends ``{"pid", "escapee", "exclusive"}`` to ``record_path`` (one JSON line).
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = True
    except BlockingIOError:
        free = False
    first = not Path(record_path).exists()
    escapee = _fork_escapee(3600.0) if first else None
    with Path(record_path).open("a", encoding="utf-8") as record:
        record.write(json.dumps({"pid": os.getpid(), "escapee": escapee, "exclusive": free}) + "\n")
    while first:
        time.sleep(0.05)
    os.close(fd)
    return free

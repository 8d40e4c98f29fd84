"""Helpers shared by the chaos tests: queues on a backend, stopping workers, waiting for states."""

from __future__ import annotations

import signal
from collections.abc import Iterable

import anyio
import anyio.to_thread

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.backends.redis._scripts import SCRIPTS
from asyncmq_otel.queues import Queue
from tests.support.poll import eventually, wait_until
from tests.support.worker_proc import WorkerProc

__all__ = ["SHA", "counts", "stop_all", "wait_counts", "wait_states"]

SHA = {name: script.sha for name, script in SCRIPTS.items()}
"""The ``EVALSHA`` first argument of each transition, for :meth:`ChaosProxy.drop_reply`."""


async def stop_all(workers: Iterable[WorkerProc], timeout: float = 20.0) -> list[int]:
    """SIGTERM every live worker (SIGCONT first) and return the exit codes.

    A worker still starting is waited for first: before its signal handlers are installed,
    SIGTERM would kill it outright.
    """
    workers = list(workers)
    for worker in workers:
        if worker.alive:
            worker.sigcont()
            await anyio.to_thread.run_sync(_started_or_dead, worker)
    for worker in workers:
        if worker.alive:
            worker.signal(signal.SIGTERM)
    return [await anyio.to_thread.run_sync(worker.wait, timeout) for worker in workers]


def _started_or_dead(worker: WorkerProc) -> None:
    wait_until(
        lambda: not worker.alive or worker.started(), timeout=30, interval=0.05, what=f"{worker.name} started"
    )


async def counts(queue: Queue) -> dict[str, int]:
    return await queue.counts()


async def wait_counts(
    queue: Queue,
    *,
    timeout: float,
    workers: Iterable[WorkerProc] = (),
    what: str = "",
    **wanted: int,
) -> dict[str, int]:
    """Poll ``queue.counts()`` until every ``state=count`` holds; fail early if a worker died."""
    watched = list(workers)
    found: dict[str, int] = {}

    async def reached() -> bool:
        for worker in watched:
            assert worker.alive, f"{worker} died:\n{worker.text()[-2000:]}"
        found.update(await queue.counts())
        return all(found.get(state) == count for state, count in wanted.items())

    try:
        await eventually(reached, timeout=timeout, interval=0.1, what=what or f"counts {wanted}")
    except AssertionError as exc:
        why = await _failed_jobs(queue) + _worker_warnings(watched)
        raise AssertionError(f"{exc}; last counts {found}{why}") from None
    return found


def _worker_warnings(workers: Iterable[WorkerProc]) -> str:
    """The last warnings and errors each worker logged (a timing failure in CI is read from these)."""
    out = []
    for worker in workers:
        noted = [line for line in worker.lines() if line.get("level") in ("warning", "error", "critical")]
        out += [f"\n{worker.name}: {line}" for line in noted[-8:]]
    return "".join(out)


async def _failed_jobs(queue: Queue) -> str:
    """What a failure message needs to tell why jobs failed: each failed job's reason and history."""
    fields = ("id", "dlq_reason", "attempts", "stalls", "interrupts", "owner", "error")
    jobs = await queue.list_jobs("failed", limit=10)
    return "".join(f"\nfailed job: { {name: job.get(name) for name in fields} }" for job in jobs)


async def wait_states(queue: Queue, states: dict[str, str], *, timeout: float) -> None:
    """Poll until each job id is in its state."""

    async def reached() -> bool:
        for job_id, state in states.items():
            if await queue.get_job_state(job_id) != state:
                return False
        return True

    await eventually(reached, timeout=timeout, interval=0.05, what=f"jobs in states {states}")


def backend_for(url: str, prefix: str, **options: object) -> RedisBackend:
    """A producer/inspector backend (close it when done)."""
    options.setdefault("retry_timeout", 15.0)
    return RedisBackend(url, prefix=prefix, **options)  # type: ignore[arg-type]

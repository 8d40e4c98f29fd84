"""Helpers shared by the chaos tests: queues on a backend, the usual scenario set-ups (a batch of
jobs, workers started side by side, waiting for work to flow or drain), stopping workers, waiting for
states.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterable

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.backends.redis._scripts import SCRIPTS
from asyncmq_otel.queues import Queue
from tests.support.invariants import Enqueued, LeaseSampler, Report, check_invariants, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.poll import eventually, wait_until
from tests.support.worker_proc import StartWorker, WorkerProc

__all__ = [
    "SHA",
    "backend_for",
    "check_after_faults",
    "counts",
    "enqueue_sleeps",
    "queue_fixture",
    "start_workers",
    "stop_all",
    "wait_counts",
    "wait_drained",
    "wait_flowing",
    "wait_running",
    "wait_started",
    "wait_states",
]

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


def queue_fixture(name: str) -> object:
    """A function-scoped ``queue`` fixture: queue ``name`` on the shared Redis under the test's prefix.

    A test module declares it as ``queue = queue_fixture(QUEUE)``.
    """

    @pytest.fixture
    async def queue(redis_url: str, redis_prefix: str) -> AsyncIterator[Queue]:
        backend = backend_for(redis_url, redis_prefix)
        yield Queue(name, backend=backend)
        await backend.close()

    return queue


# -- scenario set-ups ----------------------------------------------------------------------------------
async def enqueue_sleeps(
    queue: Queue, count: int, *, seconds: float, ids: str, digits: int = 0, batch: int | None = None
) -> Enqueued:
    """Enqueue ``count`` ``chaos.sleep`` jobs of ``seconds`` each; return their acknowledged ids.

    Job ``i`` is ``f"{ids}{i}"`` with ``i`` zero-padded to ``digits``. The jobs go in ``add_bulk``
    calls of ``batch`` jobs (all in one call by default).
    """
    enqueued = Enqueued()
    step = batch or max(count, 1)
    for first in range(0, count, step):
        enqueued.ack(
            await queue.add_bulk(
                [
                    {"task_id": "chaos.sleep", "args": [seconds], "job_id": f"{ids}{i:0{digits}d}"}
                    for i in range(first, min(first + step, count))
                ]
            )
        )
    return enqueued


def wait_started(workers: Iterable[WorkerProc]) -> list[WorkerProc]:
    """Wait until each worker runs (start them with ``wait=False`` so that they start side by side)."""
    started = list(workers)
    for worker in started:
        worker.wait_started()
    return started


def start_workers(
    worker_proc: StartWorker,
    queue: str,
    urls: Iterable[str],
    prefix: str,
    *,
    concurrency: int,
    env: dict[str, str],
) -> list[WorkerProc]:
    """One worker of ``queue`` per URL in ``urls``, started side by side; returned once every one runs."""
    return wait_started(
        [worker_proc(queue, url, prefix, concurrency=concurrency, env=env, wait=False) for url in urls]
    )


async def wait_flowing(ledger: Ledger, *, more_than: int, timeout: float, what: str = "work flowing") -> None:
    """Poll until the ledger holds more than ``more_than`` job starts."""
    await eventually(lambda: len(ledger.starts()) > more_than, timeout=timeout, what=what)


async def wait_running(ledger: Ledger, count: int, *, timeout: float, what: str = "") -> None:
    """Poll until the ledger holds exactly ``count`` job starts (``count`` jobs in flight at once)."""
    await eventually(
        lambda: len(ledger.starts()) == count, timeout=timeout, what=what or f"{count} jobs running"
    )


async def wait_drained(
    queue: Queue,
    url: str,
    prefix: str,
    *,
    timeout: float,
    workers: Iterable[WorkerProc] = (),
    what: str = "",
    **wanted: int,
) -> dict[str, int]:
    """:func:`wait_counts` for ``state=count``, then :func:`wait_quiescent` on ``queue`` at ``url``."""
    found = await wait_counts(queue, timeout=timeout, workers=workers, what=what, **wanted)
    wait_quiescent(url, prefix, queue.name)
    return found


def check_after_faults(
    url: str, prefix: str, queue: str, enqueued: Enqueued, ledger: Ledger, sampler: LeaseSampler
) -> Report:
    """:func:`check_invariants` once every worker has exited, after a run in which workers or Redis failed.

    ``job:stalled`` events are checked ``at_most``: a killed reaper may die between its reap and its
    event. Call ``.check()`` on the report.
    """
    return check_invariants(
        url, prefix, queue, enqueued, ledger, sampler=sampler, stalled_events="at_most", workers_stopped=True
    )

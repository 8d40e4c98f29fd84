"""Chaos rows 9 and 10: graceful shutdown of a real worker process (reliability.md §7, §13).

9. SIGTERM with 3 short and 2 long jobs in flight: the short ones complete, the long ones are
   requeued at once when the drain timeout ends (``interrupts`` = 1, no stall), no ``claim`` reaches
   Redis after the signal (counted by the proxy), exit 0 within drain + 3 s.
10. A duplicate SIGTERM 0.2 s after the first is ignored (still draining); one 1.5 s later stops
   at once: the 60 s drain is skipped, in-flight jobs are requeued, exit 0.

(tests/cli/test_signals.py checks the CLI's messages for the same signals; these add the ledger,
the proxy's command counts and the invariant checker.)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.queues import Queue
from tests.chaos.helpers import SHA, queue_fixture, stop_all, wait_drained, wait_running
from tests.support.chaos_proxy import ChaosProxy
from tests.support.invariants import Enqueued, check_invariants
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker, WorkerProc

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "shutdown"

queue = queue_fixture(QUEUE)


async def finish_and_check(
    queue: Queue,
    worker_proc: StartWorker,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
    enqueued: Enqueued,
) -> None:
    """Run whatever is left with a fresh worker, then check the invariants."""
    finisher = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=8, env=ledger.env)
    await wait_drained(
        queue, redis_url, redis_prefix, completed=len(enqueued.acknowledged), timeout=30, workers=[finisher]
    )
    assert await stop_all([finisher]) == [0]
    check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()


async def exit_code(worker: WorkerProc, timeout: float) -> int:
    return await anyio.to_thread.run_sync(worker.wait, timeout)


@pytest.mark.timeout(90)
async def test_row9_sigterm_completes_short_jobs_and_requeues_long_ones_at_once(
    queue: Queue,
    worker_proc: StartWorker,
    chaos_proxy: Callable[[int], ChaosProxy],
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    jobs = [{"task_id": "chaos.sleep", "args": [0.6], "job_id": f"short{i}"} for i in range(3)]
    jobs += [{"task_id": "chaos.hold", "args": [str(release)], "job_id": f"long{i}"} for i in range(2)]
    jobs += [{"task_id": "chaos.noop", "args": [i], "job_id": f"later{i}"} for i in range(3)]
    enqueued = Enqueued(set(await queue.add_bulk(jobs)))
    proxy = chaos_proxy(6379)
    worker = worker_proc(QUEUE, proxy.url, redis_prefix, concurrency=5, shutdown_timeout=2, env=ledger.env)
    await wait_running(ledger, 5, timeout=15, what="5 jobs in flight")
    claims = proxy.scripts[SHA["claim"]]
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await exit_code(worker, 15) == 0, worker.text()[-2000:]
    took = time.monotonic() - signalled

    assert took <= 2 + 3, f"exit {took:.1f}s after SIGTERM (drain 2 s + 3 s)"
    assert proxy.scripts[SHA["claim"]] == claims  # not one claim after the signal
    for index in range(3):
        job = await queue.get_job(f"short{index}")
        assert job is not None
        assert job["state"] == "completed"
    for index in range(2):
        job = await queue.get_job(f"long{index}")
        assert job is not None
        assert (job["state"], job["interrupts"], job["stalls"], job["attempts"]) == ("waiting", 1, 0, 1)
    for index in range(3):
        job = await queue.get_job(f"later{index}")
        assert job is not None
        assert (job["state"], job["attempts"]) == ("waiting", 0)  # never claimed
    requeues = [s for s in ledger.settles() if s["op"] == "requeue"]
    assert sorted(s["id"] for s in requeues) == ["long0", "long1"]
    assert all(s["status"] == "ok" for s in requeues)
    summary = worker.events("worker.exited")[0]
    assert summary["outcomes"] == {"completed": 3, "interrupted": 2}

    release.touch()
    await finish_and_check(queue, worker_proc, ledger, redis_url, redis_prefix, enqueued)


@pytest.mark.timeout(90)
async def test_row10_duplicate_signal_is_ignored_and_a_later_second_one_stops_at_once(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    enqueued = Enqueued(
        set(
            await queue.add_bulk(
                [{"task_id": "chaos.hold", "args": [str(release)], "job_id": f"h{i}"} for i in range(2)]
            )
        )
    )
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=2, shutdown_timeout=60, env=ledger.env)
    await wait_running(ledger, 2, timeout=15, what="2 jobs in flight")

    worker.signal(signal.SIGTERM)
    await eventually(lambda: bool(worker.events("shutdown.draining")), timeout=10, what="draining")
    await anyio.sleep(0.2)  # the scenario: a duplicate 0.2 s later
    worker.signal(signal.SIGTERM)
    await eventually(lambda: bool(worker.events("signal.duplicate")), timeout=10, what="duplicate ignored")
    assert worker.alive  # still draining its two jobs
    await anyio.sleep(1.5)  # the scenario: another one 1.5 s later
    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await exit_code(worker, 15) == 0, worker.text()[-2000:]
    assert time.monotonic() - stopped < 5  # far less than the 60 s drain
    assert worker.events("shutdown.now")
    for index in range(2):
        job = await queue.get_job(f"h{index}")
        assert job is not None
        assert (job["state"], job["interrupts"], job["stalls"]) == ("waiting", 1, 0)

    release.touch()
    await finish_and_check(queue, worker_proc, ledger, redis_url, redis_prefix, enqueued)


def hook_env(ledger: Ledger, marks: Path, block: str) -> dict[str, str]:
    marks.mkdir(exist_ok=True)
    return {
        **ledger.env,
        "ASYNCMQ_SETTINGS_MODULE": "tests.chaos.hook_settings",
        "HOOK_MARK_DIR": str(marks),
        "HOOK_BLOCK": block,
    }


@pytest.mark.timeout(90)
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_a_second_signal_ends_a_worker_stuck_in_a_sync_shutdown_hook(
    queue: Queue,
    worker_proc: StartWorker,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    second: signal.Signals,
) -> None:
    marks = tmp_path / "marks"
    job_id = await queue.add("chaos.noop", [1])
    worker = worker_proc(QUEUE, redis_url, redis_prefix, env=hook_env(ledger, marks, "shutdown"))
    await eventually(lambda: bool(ledger.records("end")), timeout=15, what="the job ran")
    worker.signal(second)
    await eventually((marks / "shutdown").exists, timeout=15, what="the shutdown hook runs")
    await anyio.sleep(1.2)  # the scenario: a second signal counts only 1 s or more after the first
    stopped = time.monotonic()
    worker.signal(second)
    assert await exit_code(worker, 15) == 0, worker.text()[-2000:]
    assert time.monotonic() - stopped < 8  # not the hook's 1000 s, nor the tail's whole budget
    assert worker.logged("worker.shutdown_hooks_abandoned")
    assert await queue.get_job_state(job_id) == "completed"


@pytest.mark.timeout(90)
async def test_the_tail_budget_ends_a_worker_stuck_in_a_sync_shutdown_hook(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    worker = worker_proc(QUEUE, redis_url, redis_prefix, env=hook_env(ledger, marks, "shutdown"))
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await exit_code(worker, 40) == 0, worker.text()[-2000:]
    assert (marks / "shutdown").exists()
    assert time.monotonic() - signalled < 30  # the tail's 10 s budget, with room for a loaded machine
    assert worker.logged("worker.shutdown_hooks_abandoned")


@pytest.mark.timeout(90)
async def test_sigterm_during_a_blocked_sync_startup_hook_is_a_graceful_stop(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    job_id = await queue.add("chaos.noop", [1])
    worker = worker_proc(
        QUEUE, redis_url, redis_prefix, shutdown_timeout=1, env=hook_env(ledger, marks, "startup"), wait=False
    )
    await eventually((marks / "startup").exists, timeout=30, what="the startup hook runs")
    worker.signal(signal.SIGTERM)
    # the startup hook is in-flight work: it gets the 1 s drain timeout, then the worker stops
    assert await exit_code(worker, 30) == 0, worker.text()[-2000:]
    assert worker.events("shutdown.draining")
    assert worker.logged("worker.startup_abandoned")
    assert (marks / "shutdown").exists()  # the shutdown hooks still ran
    assert await queue.get_job_state(job_id) == "waiting"  # nothing was claimed
    assert ledger.starts() == []

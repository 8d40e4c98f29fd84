"""Issue 3, multi-process tests: real worker processes share one queue on the shared Redis.

* 2 and 4 worker processes drain 10,000 no-op jobs, each completed exactly once (ledger + Redis);
* a worker SIGKILLed mid-job: another worker runs the job again within lease + reaper time (≤ 2 s);
* a worker SIGSTOPped past its lease (frozen just before its settle) is fenced after SIGCONT: its
  write is rejected, logged as ``job.stale_write`` with both worker ids and counted once by
  ``asyncmq_stale_writes_rejected_total``; the other worker's result is the one stored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.chaos.figures import record_figure
from tests.chaos.helpers import stop_all
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker, WorkerProc, scrape_metric

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

QUEUE = "mp"


@pytest.fixture
async def queue(redis_url: str, redis_prefix: str) -> AsyncIterator[Queue]:
    backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=10.0)
    yield Queue(QUEUE, backend=backend)
    await backend.close()


async def completed_count(queue: Queue) -> int:
    return (await queue.counts())["completed"]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("processes", [2, 4])
async def test_worker_processes_complete_ten_thousand_jobs_exactly_once(
    processes: int,
    queue: Queue,
    worker_proc: StartWorker,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
) -> None:
    total = 10_000
    workers = [
        worker_proc(QUEUE, redis_url, redis_prefix, concurrency=20, env=ledger.env, wait=False)
        for _ in range(processes)
    ]
    for worker in workers:
        worker.wait_started()
    enqueued = Enqueued()
    started = time.monotonic()
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        for chunk in range(0, total, 1000):
            ids = await queue.add_bulk(
                [
                    {"task_id": "chaos.noop", "args": [index], "job_id": f"j{index:05d}"}
                    for index in range(chunk, chunk + 1000)
                ]
            )
            enqueued.ack(ids)

        async def drained() -> bool:
            assert all(worker.alive for worker in workers), workers
            return await completed_count(queue) == total

        await eventually(drained, timeout=180, interval=0.2, what=f"{total} jobs completed")
        elapsed = time.monotonic() - started
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert await stop_all(workers) == [0] * processes

    counts = await queue.counts()
    assert counts == {
        "waiting": 0,
        "delayed": 0,
        "blocked": 0,
        "active": 0,
        "completed": total,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
    }
    starts = Counter(record["id"] for record in ledger.starts())
    assert len(starts) == total
    assert set(starts.values()) == {1}, [job for job, n in starts.items() if n > 1][:10]
    accepted = Counter(s["id"] for s in ledger.settles("ok") if s["op"] == "complete")
    assert len(accepted) == total
    assert set(accepted.values()) == {1}
    assert ledger.settles("stale") == []
    by_pid = Counter(record["pid"] for record in ledger.starts())
    assert set(by_pid) == {worker.pid for worker in workers}  # every process took a share
    reported = sum(worker.events("worker.exited")[0]["outcomes"].get("completed", 0) for worker in workers)
    assert reported == total
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert (report.executions, report.stalls, report.rejected_settles) == (total, 0, 0)
    record_figure(
        "multiprocess_drain",
        f"{processes}_processes",
        {
            "jobs": total,
            "processes": processes,
            "concurrency": 20,
            "seconds": round(elapsed, 2),
            "jobs_per_second": round(total / elapsed),
        },
    )


@pytest.mark.timeout(90)
async def test_sigkilled_worker_job_is_run_by_another_within_lease_and_reaper_time(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    first = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    job_id = await queue.add("chaos.hold", [str(release)], job_id="victim")
    await eventually(lambda: ledger.starts(job_id), timeout=20, what="the job started")
    assert ledger.starts(job_id)[0]["pid"] == first.pid
    second = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)

    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        killed_at = first.kill9()
        await eventually(
            lambda: ledger.first_start(job_id, after=killed_at, exclude_pids={first.pid}) is not None,
            timeout=10,
            what="the job runs again on the second worker",
        )
        restarted = ledger.first_start(job_id, after=killed_at, exclude_pids={first.pid})
        assert restarted is not None
        recovery = restarted - killed_at
        release.touch()

        async def done() -> bool:
            return await queue.get_job_state(job_id) == "completed"

        await eventually(done, timeout=10, what="the job completed")
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert recovery <= 2.0, f"redelivered after {recovery:.2f}s (lease 1 s + reaper 0.2 s)"
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job["attempts"], job["stalls"], job["state"]) == (2, 1, "completed")
    runs = ledger.executions()[job_id]
    assert [run.pid for run in runs] == [first.pid, second.pid]
    assert job["result"]["t"] == runs[1].token
    assert len(ledger.events("job:stalled")) == 1
    assert await stop_all([second]) == [0]
    enqueued = Enqueued({job_id})
    check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    record_figure(
        "sigkill_recovery_s",
        "multiproc_single_kill",
        {"definition": "SIGKILL -> ledger start on another worker", "lease_s": 1, "reaper_s": 0.2},
        [recovery],
    )


@dataclass
class Zombie:
    """The outcome of :func:`zombie_scenario`."""

    zombie: WorkerProc
    other: WorkerProc
    job_id: str
    sampler: LeaseSampler


async def zombie_scenario(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> Zombie:
    """A worker freezes (SIGSTOP) between its handler's return and its settle; another worker
    reclaims and completes the job; after 1.5 × lease the zombie gets SIGCONT and sends its write.
    """
    zombie = worker_proc(
        QUEUE,
        redis_url,
        redis_prefix,
        concurrency=1,
        metrics=True,
        env={**ledger.env, "CHAOS_STOP_BEFORE_COMPLETE": "1"},
    )
    job_id = await queue.add("chaos.noop", [1], job_id="zombie-job")
    await eventually(zombie.is_stopped, timeout=20, what="the zombie stopped itself before its settle")
    stopped_at = monotonic()
    other = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:

        async def completed_elsewhere() -> bool:
            return await queue.get_job_state(job_id) == "completed"

        await eventually(completed_elsewhere, timeout=15, what="the other worker completed the job")
        while monotonic() - stopped_at < 1.5:  # the scenario: stopped for 1.5 × lease at least
            await anyio.sleep(0.05)
        zombie.sigcont()
        await eventually(
            lambda: zombie.logged("job.stale_write"), timeout=10, what="the zombie's stale write"
        )
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    return Zombie(zombie, other, job_id, sampler)


@pytest.mark.timeout(90)
async def test_sigstopped_worker_past_its_lease_cannot_complete_after_sigcont(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    run = await zombie_scenario(queue, worker_proc, ledger, redis_url, redis_prefix)
    zombie, other, job_id = run.zombie, run.other, run.job_id
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1)
    runs = ledger.executions()[job_id]
    assert [r.pid for r in runs] == [zombie.pid, other.pid]
    assert job["result"] == {"t": runs[1].token, "r": 1}  # the other worker's result, not the zombie's
    settles = [(s["pid"], s["op"], s["status"]) for s in ledger.settles() if s["id"] == job_id]
    assert sorted(settles) == sorted([(other.pid, "complete", "ok"), (zombie.pid, "complete", "stale")])
    stale = ledger.settles("stale")[0]
    assert stale["owner"] == other.worker_id  # the reply names the current owner
    line = next(line for line in zombie.lines() if "job.stale_write" in str(line.get("event", "")))
    assert line["level"] == "warning"
    text = str(line)
    assert job_id in text
    assert zombie.worker_id in text  # this worker ...
    assert other.worker_id in text  # ... and the current owner
    assert zombie.metrics_url is not None
    counter = await anyio.to_thread.run_sync(
        scrape_metric, zombie.metrics_url, "asyncmq_stale_writes_rejected_total"
    )
    assert counter == 1
    codes = await stop_all([zombie, other])
    assert codes[1] == 0
    # codes[0]: asserted by test_a_fenced_zombie_exits_0_on_sigterm
    check_invariants(
        redis_url,
        redis_prefix,
        QUEUE,
        Enqueued({job_id}),
        ledger,
        sampler=run.sampler,
        stale_counter=counter,
        workers_stopped=True,
    ).check()


@pytest.mark.timeout(90)
async def test_a_fenced_zombie_exits_0_on_sigterm(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    run = await zombie_scenario(queue, worker_proc, ledger, redis_url, redis_prefix)
    codes = await stop_all([run.zombie, run.other])
    assert codes == [0, 0], run.zombie.text()[-1500:]

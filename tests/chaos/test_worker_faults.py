"""Chaos rows 1-4: workers that die or freeze (reliability.md §13).

1. SIGKILL mid-job: redelivered within lease + reaper interval (≤ 2 s with the test config),
   ``attempts`` = 2, ``stalls`` = 1, completed once, ``job:stalled`` emitted. Kills repeat and the
   recovery times are the §15 figure.
2. SIGKILL between claim and start (the test app exits right after its claim returns): as #1,
   and the job runs exactly once although it was claimed twice.
3. A poison job that kills every worker: 2 runs, then DLQ ``worker_lost``; 100 other jobs flow.
4. Zombie frozen mid-handler (SIGSTOP 1.5 × lease, SIGCONT): the other worker runs and completes
   the job; the zombie learns ``LOST`` from its renewal and cancels its handler without writing.
   (The zombie frozen just before its settle, whose late write is rejected and counted, is
   tests/multiproc/test_multiprocess.py::test_sigstopped_worker_past_its_lease_cannot_complete_after_sigcont.)

Every test ends with the invariant checker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from asyncmq_otel.queues import Queue
from tests.chaos.figures import record_figure
from tests.chaos.helpers import (
    check_after_faults,
    queue_fixture,
    stop_all,
    wait_drained,
    wait_started,
    wait_states,
)
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker, WorkerProc

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "chaos"
KILLS = int(os.environ.get("CHAOS_KILLS", "5"))
CLAIM_KILLS = int(os.environ.get("CHAOS_CLAIM_KILLS", "8"))

queue = queue_fixture(QUEUE)


@pytest.mark.timeout(60 + 12 * KILLS)  # 120 s at the CI scale; CHAOS_KILLS=50 (§15's count) gets 660 s
async def test_row1_sigkill_mid_job_is_redelivered_within_lease_and_reaper_time(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    def start() -> WorkerProc:
        return worker_proc(QUEUE, redis_url, redis_prefix, concurrency=2, env=ledger.env, wait=False)

    workers = wait_started([start() for _ in range(3)])
    enqueued = Enqueued()
    recoveries: list[float] = []

    def two_running() -> bool:
        return sum(1 for worker in workers if worker.started()) >= 2

    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        for kill in range(KILLS):
            await eventually(two_running, timeout=30, what="two workers running")
            job_id = f"victim{kill}"
            release = tmp_path / f"release-{kill}"
            enqueued.ack([await queue.add("chaos.hold", [str(release)], job_id=job_id)])
            await eventually(
                lambda job_id=job_id: ledger.starts(job_id), timeout=15, what=f"{job_id} started"
            )
            pid = ledger.starts(job_id)[0]["pid"]
            victim = next(worker for worker in workers if worker.pid == pid)
            killed_at = victim.kill9()

            def elsewhere(job_id: str = job_id, pid: int = pid, killed_at: float = killed_at) -> float | None:
                return ledger.first_start(job_id, after=killed_at, exclude_pids={pid})

            await eventually(lambda: elsewhere() is not None, timeout=10, what=f"{job_id} runs elsewhere")
            restarted = elsewhere()
            assert restarted is not None
            recoveries.append(restarted - killed_at)
            release.touch()
            # Each kill must take one job only: the next victim may be the worker that still runs
            # this one, so this job completes first (else its second lease loss is worker_lost).
            await wait_states(queue, {job_id: "completed"}, timeout=10)
            workers.remove(victim)
            workers.append(start())  # a replacement, not waited for: two others are running
        await wait_drained(queue, redis_url, redis_prefix, completed=KILLS, timeout=20, workers=workers)
    assert await stop_all(workers) == [0] * len(workers)

    assert max(recoveries) <= 2.0, f"recovery times {recoveries} (lease 1 s + reaper 0.2 s)"
    for kill in range(KILLS):
        job = await queue.get_job(f"victim{kill}")
        assert job is not None
        assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1)
        assert len(ledger.starts(f"victim{kill}")) == 2
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert report.stalled_events == KILLS  # one job:stalled per kill, emitted by the reaper
    record_figure(
        "sigkill_recovery_s",
        "row1_kills",
        {"definition": "SIGKILL -> ledger start of the job on another worker", "lease_s": 1, "reaper_s": 0.2},
        recoveries,
    )


@pytest.mark.timeout(150)
async def test_row2_sigkill_between_claim_and_start_costs_a_stall_not_a_run(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    marks = tmp_path / "killed-after-claim"
    marks.mkdir()
    total = CLAIM_KILLS + 20
    enqueued = Enqueued()
    enqueued.ack(
        await queue.add_bulk(
            [{"task_id": "chaos.noop", "args": [i], "job_id": f"c{i:04d}"} for i in range(total)]
        )
    )
    env = {**ledger.env, "CHAOS_EXIT_AFTER_CLAIM": str(marks)}

    def killer() -> WorkerProc:
        return worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=env, wait=False)

    killers = [killer() for _ in range(3)]
    deaths = 0
    deadline = time.monotonic() + 110
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        while deaths < CLAIM_KILLS:
            assert time.monotonic() < deadline, f"only {deaths} claim kills in time"
            for index, worker in enumerate(killers):
                if not worker.alive:
                    assert worker.proc.returncode == 137, worker.text()[-2000:]
                    deaths += 1
                    killers[index] = killer()
            await anyio.sleep(0.05)
        # then an ordinary worker finishes whatever is left; killers still alive may exit once more
        finisher = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=4, env=ledger.env)
        await wait_drained(queue, redis_url, redis_prefix, completed=total, timeout=60, workers=[finisher])
    codes = await stop_all([*killers, finisher])
    assert set(codes) <= {0, 137}

    victims = {job_id for record in ledger.records("exit") for job_id in record["ids"]}
    assert len(victims) >= CLAIM_KILLS
    for job_id in victims:
        job = await queue.get_job(job_id)
        assert job is not None
        # claimed twice (the first claim's lease expired with its worker), run once, completed
        assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1), job
        starts = ledger.starts(job_id)
        assert len(starts) == 1, starts
    # stalled events at most: a killer may die right after reaping, before emitting job:stalled
    check_after_faults(redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler).check()
    record_figure("claim_kills", "row2", {"processes_killed_after_claim": len(victims), "jobs": total})


@pytest.mark.timeout(120)
async def test_row3_poison_job_is_dead_lettered_after_two_runs_while_others_flow(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    def start() -> WorkerProc:
        return worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env, wait=False)

    workers = [start(), start()]
    enqueued = Enqueued()
    enqueued.ack([await queue.add("chaos.poison", job_id="poison")])
    enqueued.ack(
        await queue.add_bulk(
            [{"task_id": "chaos.noop", "args": [i], "job_id": f"ok{i:03d}"} for i in range(100)]
        )
    )
    restarts = 0
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        deadline = time.monotonic() + 90
        while True:
            found = await queue.counts()
            if found["completed"] == 100 and found["failed"] == 1:
                break
            assert time.monotonic() < deadline, found
            assert restarts <= 5, "the poison job ran more than its limit"
            for index, worker in enumerate(workers):
                if not worker.alive:  # the supervisor restarts a dead worker
                    assert worker.proc.returncode == 137
                    restarts += 1
                    workers[index] = start()
            await anyio.sleep(0.05)
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert await stop_all(workers) == [0, 0]

    poison = await queue.get_job("poison")
    assert poison is not None
    assert (poison["state"], poison["dlq_reason"], poison["attempts"], poison["stalls"]) == (
        "failed",
        "worker_lost",
        2,
        2,
    )
    assert len(ledger.starts("poison")) == 2  # max_stalls (1) + 1 runs, never a third
    assert restarts == 2
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert report.states == {"completed": 100, "failed": 1}
    assert report.dlq_reasons == {"worker_lost": 1}


@pytest.mark.timeout(90)
async def test_row4_zombie_frozen_mid_job_cancels_on_lost_and_writes_nothing(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    zombie = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env={**ledger.env, "CHAOS_HOLD": "1"})
    enqueued = Enqueued({await queue.add("chaos.zombie", job_id="z")})
    await eventually(lambda: ledger.starts("z"), timeout=15, what="the zombie started the job")
    other = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        zombie.sigstop()
        stopped_at = monotonic()
        await wait_states(queue, {"z": "completed"}, timeout=15)
        while monotonic() - stopped_at < 1.5:  # SIGSTOP for 1.5 × lease
            await anyio.sleep(0.05)
        zombie.sigcont()
        await eventually(lambda: zombie.logged("job.lease_lost"), timeout=10, what="the zombie heard LOST")
        wait_quiescent(redis_url, redis_prefix, QUEUE)

    job = await queue.get_job("z")
    assert job is not None
    runs = ledger.executions()["z"]
    assert [run.pid for run in runs] == [zombie.pid, other.pid]
    assert runs[0].end is None  # the zombie's handler was cancelled, it never returned
    assert [s["pid"] for s in ledger.settles()] == [other.pid]  # the zombie wrote nothing
    assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1)
    assert job["result"] == {"t": runs[1].token, "r": "done"}
    line = next(line for line in zombie.lines() if "job.lease_lost" in str(line.get("event")))
    assert "z" in str(line)
    assert zombie.worker_id in str(line)
    assert not zombie.logged("job.stale_write")
    codes = await stop_all([zombie, other])
    assert codes == [0, 0]  # fenced, the zombie still exits cleanly: nothing of its own was lost
    check_invariants(
        redis_url,
        redis_prefix,
        QUEUE,
        enqueued,
        ledger,
        sampler=sampler,
        stale_counter=0,
        workers_stopped=True,
    ).check()

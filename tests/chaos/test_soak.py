"""Chaos row 25, the soak: 4 worker processes, 20,000 jobs, one worker SIGKILLed and restarted every
2 s, one Redis restart (AOF), 1 s blackholes of single workers (each worker talks to Redis through
its own chaos proxy); then the invariant checker: 0 lost, 0 untracked duplicates, no two live
leases, every id in exactly one terminal state.

A kill is skipped (and counted) when fewer than 3 workers are serving: on a starved 2-core machine
a fresh worker can need several seconds to start, and killing starting workers would stop the run.

``CHAOS_SOAK_JOBS`` scales the job count (default 20,000). The figures (§15) come from this run:
SIGKILL → job running elsewhere for every job a kill interrupted, Redis restart → completions
resumed, jobs lost, untracked duplicates, redeliveries and rejected (stale) writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.queues import Queue
from tests.chaos.figures import record_figure
from tests.chaos.helpers import backend_for, check_after_faults, enqueue_sleeps, stop_all, wait_started
from tests.support.chaos_proxy import ChaosProxy
from tests.support.invariants import LeaseSampler, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import StartWorker, WorkerProc

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

QUEUE = "soak"
PREFIX = "soak"
JOBS = int(os.environ.get("CHAOS_SOAK_JOBS", "20000"))
WORKERS = 4
KILL_EVERY = 2.0


def kill_recoveries(ledger: Ledger, kills: list[tuple[int, float]]) -> list[float]:
    """For each job running in a killed worker: the time until it started on another worker."""
    out: list[float] = []
    for pid, killed_at in kills:
        for start in ledger.running(pid):
            again = ledger.first_start(start["id"], after=killed_at, exclude_pids={pid})
            if again is not None:
                out.append(again - killed_at)
    return out


@pytest.mark.timeout(300)
async def test_row25_soak_loses_nothing_and_runs_nothing_untracked(
    redis_server_factory: Callable[..., RedisServer],
    worker_proc: StartWorker,
    chaos_proxy: Callable[[int], ChaosProxy],
    ledger: Ledger,
) -> None:
    server = redis_server_factory(aof=True)
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    proxies = [chaos_proxy(server.port) for _ in range(WORKERS)]
    started = time.monotonic()
    try:
        enqueued = await enqueue_sleeps(queue, JOBS, seconds=0.01, ids="s", digits=6, batch=2000)

        def start(slot: int) -> WorkerProc:
            return worker_proc(QUEUE, proxies[slot].url, PREFIX, concurrency=10, env=ledger.env, wait=False)

        workers = wait_started([start(slot) for slot in range(WORKERS)])
        kills: list[tuple[int, float]] = []
        answered = 0.0
        live: list[int] = []
        blackholes = 0
        skipped = 0
        restarted_redis = False
        deadline = time.monotonic() + 200
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            round_ = 0
            while True:
                found = await queue.counts()
                if found["completed"] + found["failed"] >= JOBS:
                    break
                assert time.monotonic() < deadline, f"soak not done in time: {found}"
                await anyio.sleep(KILL_EVERY)
                round_ += 1
                # the victim: the longest-serving started worker, as long as two others keep serving
                # (on a starved machine a fresh worker can need several seconds to start)
                serving = [slot for slot, w in enumerate(workers) if w.alive and w.started()]
                if len(serving) >= 3:
                    slot = serving[round_ % len(serving)]
                    kills.append((workers[slot].pid, workers[slot].kill9()))
                    workers[slot] = start(slot)
                else:
                    skipped += 1
                    slot = round_ % WORKERS
                if round_ % 3 == 1:  # a 1 s partition of another worker
                    proxies[(slot + 2) % WORKERS].blackhole(1.0)
                    blackholes += 1
                if round_ == 3 and not restarted_redis:  # one Redis restart, mid-soak
                    await anyio.to_thread.run_sync(server.restart)
                    answered = monotonic()
                    restarted_redis = True
                    live = [w.pid for w in workers if w.alive and w.started()]
            elapsed = time.monotonic() - started
            wait_quiescent(server.url, PREFIX, QUEUE, timeout=60)
        codes = await stop_all(workers, timeout=30)
    finally:
        await backend.close()

    report = check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler)
    summary = report.summary()
    recoveries = kill_recoveries(ledger, kills)
    firsts = [
        min(
            (s["mono"] for s in ledger.settles("ok") if s["pid"] == pid and s["mono"] > answered),
            default=None,
        )
        for pid in live  # a worker killed before it completed anything after the restart does not count
    ]
    resumes = [first - answered for first in firsts if first is not None]
    record_figure(
        "soak",
        "row25",
        {
            **summary,
            "jobs_enqueued": JOBS,
            "worker_processes": WORKERS,
            "kills": len(kills),
            "redis_restarts": 1,
            "blackholes_1s": blackholes,
            "kills_skipped_fewer_than_3_serving": skipped,
            "seconds": round(elapsed, 1),
            "exit_codes": codes,
        },
    )
    record_figure(
        "sigkill_recovery_s",
        "row25_soak",
        {"definition": "SIGKILL -> job started on another worker"},
        recoveries,
    )
    record_figure(
        "redis_restart_resume_s",
        "row25_soak",
        {"definition": "Redis answers PING after restart (AOF) -> first completion of each live worker"},
        resumes,
    )
    report.check()
    assert report.lost == []
    assert report.untracked_duplicates == 0
    assert restarted_redis
    assert len(kills) >= 5
    assert report.jobs == JOBS

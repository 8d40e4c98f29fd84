"""Flows under chaos: a 1,000-job graph across two queues while workers are SIGKILLed and Redis restarts.

Ten layers of 100 jobs; each job after the first layer depends on one to three jobs of the layer
before, in either queue, so most edges cross queues (the outbox and the reaper's delivery pass
carry them). About 2 % of the jobs fail (their result is not JSON: dead-lettered, not retried) and
about 5 % of the children run even when a parent failed. Three worker processes (5 slots each) serve both queues, each job sleeping 0.1 s;
one is SIGKILLed and restarted every second, and Redis (AOF) is SIGKILLed and restarted once.

At the end every job is in exactly one terminal state, consistent with its parents (the flows
invariant: none blocked with all parents completed, none run before its parents finished, every
``dependency_failed`` job has a dead parent), and the §14 checks hold per queue.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.flows import FlowProducer
from asyncmq_otel.queues import Queue
from tests.chaos.helpers import backend_for, check_after_faults, stop_all, wait_started
from tests.support.invariants import Enqueued, LeaseSampler, check_flows
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import StartWorker, WorkerProc

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

PREFIX = "flowchaos"
QUEUES = ("flow-a", "flow-b")
LAYERS, WIDTH = 10, 100
TERMINAL = ("completed", "failed", "expired", "cancelled")


def graph(seed: int = 15) -> list[dict[str, object]]:
    """The flow's jobs, layer by layer (reproducible)."""
    rng = random.Random(seed)
    jobs: list[dict[str, object]] = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            job: dict[str, object] = {
                "job_id": f"n{layer}-{i:03d}",
                "queue": QUEUES[rng.randrange(2)],
                "task_id": "chaos.unserialisable"
                if layer < LAYERS - 1 and rng.random() < 0.02
                else "chaos.sleep",
            }
            if job["task_id"] == "chaos.sleep":
                job["args"] = [0.1]
            if layer:
                parents = rng.sample(range(WIDTH), rng.randint(1, 3))
                job["depends_on"] = [f"n{layer - 1}-{p:03d}" for p in parents]
                if rng.random() < 0.05:
                    job["on_parent_failure"] = "run"
            jobs.append(job)
    return jobs


@pytest.mark.timeout(150)
async def test_a_thousand_job_flow_survives_worker_kills_and_a_redis_restart(
    redis_server_factory: Callable[..., RedisServer],
    worker_proc: StartWorker,
    ledger: Ledger,
) -> None:
    server = redis_server_factory(aof=True)
    backend = backend_for(server.url, PREFIX)
    jobs = graph()
    try:
        ids = await FlowProducer(backend).add_flow(QUEUES[0], jobs)
        where = {str(job["job_id"]): str(job["queue"]) for job in jobs}
        queues = [Queue(name, backend) for name in QUEUES]

        def start() -> WorkerProc:
            return worker_proc(list(QUEUES), server.url, PREFIX, concurrency=5, env=ledger.env, wait=False)

        workers = wait_started([start() for _ in range(3)])
        kills = 0
        restarted = False
        deadline = time.monotonic() + 90
        with LeaseSampler(server.url, PREFIX, QUEUES[0]) as sampler:
            round_ = 0
            while True:
                counts = [await queue.counts() for queue in queues]
                finished = sum(found[state] for found in counts for state in TERMINAL)
                if finished >= len(ids):
                    break
                assert time.monotonic() < deadline, f"flow not finished in time: {counts}"
                await anyio.sleep(1.0)
                round_ += 1
                serving = [slot for slot, worker in enumerate(workers) if worker.alive and worker.started()]
                if len(serving) >= 2:  # keep one serving on a starved machine
                    slot = serving[round_ % len(serving)]
                    workers[slot].kill9()
                    kills += 1
                    workers[slot] = start()
                if round_ == 2 and not restarted:
                    await anyio.to_thread.run_sync(server.restart)
                    restarted = True

            async def outboxes_empty() -> bool:
                return check_flows(server.url, PREFIX, [(where[i], i) for i in ids]) == []

            # the last cross-queue outcomes are delivered by the reaper's next passes
            await eventually(outboxes_empty, timeout=20, what="every outbox delivered")
        codes = await stop_all(workers, timeout=30)
    finally:
        await backend.close()

    assert kills >= 3, f"only {kills} kills: the flow finished before the chaos started"
    assert restarted
    problems = check_flows(server.url, PREFIX, [(where[i], i) for i in ids])
    assert problems == [], problems[:10]
    for name in QUEUES:
        enqueued = Enqueued()
        enqueued.ack(i for i in ids if where[i] == name)
        check_after_faults(server.url, PREFIX, name, enqueued, ledger, sampler).check()
    assert started_after_parents(jobs, ledger) == [], codes


def started_after_parents(jobs: list[dict[str, object]], ledger: Ledger) -> list[str]:
    """Jobs whose handler started before any run of a parent had returned (the ledger's clocks).

    A parent completes only after one of its handler runs returned, so a child starting earlier ran
    too soon. (A run's accepted settle can be missing from the ledger when its worker was killed
    right after the settle, so the earliest return is the bound that holds in every case.)
    """
    executions = ledger.executions()
    done_at = {
        job_id: min(run.end for run in runs if run.end is not None)
        for job_id, runs in executions.items()
        if any(run.end is not None for run in runs)
    }
    early = []
    for job in jobs:
        runs = executions.get(str(job["job_id"]), [])
        if not runs or job.get("on_parent_failure") == "run":
            continue
        first = min(run.start for run in runs)
        parents = [str(parent) for parent in job.get("depends_on") or []]  # type: ignore[attr-defined] - a list
        early += [
            f"{job['job_id']} started before its parent {parent} finished"
            for parent in parents
            if first < done_at.get(parent, float("inf"))
        ]
    return early

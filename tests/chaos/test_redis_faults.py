"""Chaos rows 11, 12, 26, 27 and 31: Redis itself fails (a private ``redis-server`` per test).

11. SIGKILL + restart with AOF, twice, while two workers drain jobs and a producer keeps
    enqueueing: every acknowledged job survives and completes, nothing runs untracked, and
    consumption resumes by itself within 5 s of Redis answering (the §15 figure).
12. Restart without persistence: the worker reports the loss (ERROR ``backend.data_loss``, the
    ``asyncmq_backend_data_loss_total`` counter and ``..._detected`` gauge, a red ``--check``)
    within about one renew interval, and goes on consuming new jobs.
26. Redis at ``maxmemory`` (noeviction): enqueue raises ``BackendOutOfMemory`` and stores nothing;
    running jobs keep their leases (``renew`` is ``allow-oom``); their settles land once memory frees.
27. A slow script makes Redis answer ``BUSY`` for 2 s under load: calls are retried with backoff,
    no job is claimed twice at once, the invariants hold.
31. Delayed jobs across a Redis restart and the SIGKILL of every worker: each runs, never before
    its due time by Redis' clock.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import redis

from asyncmq_otel.errors import BackendOutOfMemory
from asyncmq_otel.queues import Queue
from tests.chaos.figures import record_figure
from tests.chaos.helpers import (
    backend_for,
    check_after_faults,
    enqueue_sleeps,
    start_workers,
    stop_all,
    wait_counts,
    wait_drained,
    wait_flowing,
    wait_running,
    wait_started,
)
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.poll import eventually, wait_until
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import REPO, StartWorker, WorkerProc, scrape_metric, worker_env

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "rf"
PREFIX = "chaos"
Servers = Callable[..., RedisServer]


def first_completion_after(ledger: Ledger, pid: int, after: float) -> float | None:
    for settle in ledger.settles("ok"):
        if settle["pid"] == pid and settle["op"] == "complete" and settle["mono"] > after:
            return float(settle["mono"])
    return None


@pytest.mark.timeout(150)
async def test_row11_redis_killed_and_restarted_with_aof_loses_no_acknowledged_job(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory(aof=True)
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    enqueued = Enqueued()
    first, produced = 2000, 1000
    try:
        enqueued.ack(
            await queue.add_bulk([{"task_id": "chaos.noop", "job_id": f"a{i:05d}"} for i in range(first)])
        )
        workers = start_workers(worker_proc, QUEUE, [server.url] * 2, PREFIX, concurrency=10, env=ledger.env)

        async def producer() -> None:
            for chunk in range(0, produced, 50):
                ids = [f"p{i:05d}" for i in range(chunk, chunk + 50)]
                try:
                    enqueued.ack(await queue.add_bulk([{"task_id": "chaos.noop", "job_id": i} for i in ids]))
                except Exception:  # an enqueue that raised is "maybe" (§14)
                    enqueued.unsure(ids)
                await anyio.sleep(0.05)

        resumes: list[float] = []
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            async with anyio.create_task_group() as group:
                group.start_soon(producer)
                for _ in range(2):
                    await eventually(lambda: len(ledger.settles("ok")) > 200, timeout=30, what="work flowing")
                    await anyio.to_thread.run_sync(
                        server.restart
                    )  # SIGKILL, same port and dir; returns on PING
                    answered = monotonic()
                    for worker in workers:
                        await eventually(
                            lambda worker=worker, answered=answered: (
                                first_completion_after(ledger, worker.pid, answered) is not None
                            ),
                            timeout=15,
                            what=f"{worker.name} completes a job after the restart",
                        )
                    resumes.append(
                        max(first_completion_after(ledger, w.pid, answered) or 0.0 for w in workers)
                        - answered
                    )
            await wait_drained(
                queue,
                server.url,
                PREFIX,
                completed=len(enqueued.acknowledged),
                timeout=90,
                workers=workers,
                what="every job completed",
            )
        assert await stop_all(workers) == [0, 0]
    finally:
        await backend.close()
    assert max(resumes) <= 5.0, resumes
    report = check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler).check()
    assert report.lost == []
    assert report.untracked_duplicates == 0
    assert all(worker.logged("asyncmq") for worker in workers)
    record_figure(
        "redis_restart_resume_s",
        "row11_aof",
        {
            "definition": "Redis answers PING after SIGKILL + restart (AOF) -> first completion on every worker",
            "jobs": len(enqueued.acknowledged),
            "stalls": report.stalls,
            "rejected_settles": report.rejected_settles,
        },
        resumes,
    )


def check_command(url: str, metrics_url: str) -> int:
    addr = metrics_url.removeprefix("http://").removesuffix("/metrics")
    args = [sys.executable, "-m", "asyncmq_otel", "worker", QUEUE, "--check", "--backend", url]
    args += ["--prefix", PREFIX, "--metrics-addr", addr]
    return subprocess.run(
        args, cwd=REPO, env=worker_env(), capture_output=True, check=False, timeout=30
    ).returncode


@pytest.mark.timeout(90)
async def test_row12_restart_without_persistence_is_detected_and_reported(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger, tmp_path: Path
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    release = tmp_path / "release"
    try:
        worker = worker_proc(QUEUE, server.url, PREFIX, concurrency=2, metrics=True, env=ledger.env)
        metrics_url = worker.metrics_url
        assert metrics_url is not None
        held = await queue.add("chaos.hold", [str(release)], job_id="held")
        await eventually(lambda: ledger.starts(held), timeout=15, what="a job in flight")
        assert await anyio.to_thread.run_sync(check_command, server.url, metrics_url) == 0  # healthy before

        await anyio.to_thread.run_sync(server.restart)  # no AOF: the dataset is gone
        answered = time.time()

        def reported() -> bool:
            return any("backend.data_loss" in str(line.get("event")) for line in worker.lines())

        await eventually(reported, timeout=5, what="the loss is reported")
        line = next(line for line in worker.lines() if "backend.data_loss" in str(line.get("event")))
        assert line["level"] == "error"
        assert QUEUE in str(line["event"])
        logged_at = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
        detected_after = logged_at - answered
        assert detected_after <= 1.0, f"reported {detected_after:.2f}s after Redis came back"
        total = await anyio.to_thread.run_sync(scrape_metric, metrics_url, "asyncmq_backend_data_loss_total")
        gauge = await anyio.to_thread.run_sync(
            scrape_metric, metrics_url, "asyncmq_backend_data_loss_detected"
        )
        assert (total, gauge) == (1, 1)
        assert await anyio.to_thread.run_sync(check_command, server.url, metrics_url) == 1  # health is red

        # the worker keeps consuming in the new epoch
        after = await queue.add("chaos.noop", [12], job_id="after-loss")
        await wait_counts(queue, completed=1, timeout=15, workers=[worker])
        release.touch()  # the held job is gone: its renewal answers LOST (or its settle GONE); never resurrected
        await eventually(
            lambda: worker.logged("job.lease_lost") or worker.logged("job.stale_write"),
            timeout=10,
            what="the worker gives the lost job up",
        )
        assert await queue.get_job(held) is None
        wait_quiescent(server.url, PREFIX, QUEUE)
        await stop_all([worker])
    finally:
        await backend.close()
    record_figure(
        "data_loss_detection_s", "row12", {"definition": "PING after restart -> ERROR log"}, [detected_after]
    )
    check_invariants(server.url, PREFIX, QUEUE, Enqueued({after}), ledger, workers_stopped=True).check()


async def fill_up(admin: redis.Redis) -> None:
    """Put Redis 1 MB over ``maxmemory`` (noeviction) with a key; a query buffer would soon be freed."""
    baseline = int(admin.info("memory")["used_memory"])
    admin.set("filler", "x" * 2_000_000)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(baseline + 1_000_000))


async def maxmemory_scenario(
    server: RedisServer, worker_proc: StartWorker, ledger: Ledger, *, run_for: float, full_for: float
) -> None:
    """Two jobs run ``run_for`` seconds; Redis is full for ``full_for`` seconds of it; then all must settle."""
    backend = backend_for(server.url, PREFIX, retry_timeout=3.0)
    queue = Queue(QUEUE, backend=backend)
    admin = server.client()
    try:
        enqueued = await enqueue_sleeps(queue, 2, seconds=run_for, ids="m")
        worker = worker_proc(QUEUE, server.url, PREFIX, concurrency=2, env=ledger.env)
        await wait_running(ledger, 2, timeout=15)
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            await fill_up(admin)
            with pytest.raises(BackendOutOfMemory):
                await queue.add("chaos.noop", job_id="refused")
            assert admin.exists(f"{PREFIX}:{{{QUEUE}}}:job:refused") == 0  # no partial job
            await anyio.sleep(full_for)
            assert worker.alive, worker.text()[-3000:]
            states = {job_id: await queue.get_job_state(job_id) for job_id in ("m0", "m1")}
            assert states == {"m0": "active", "m1": "active"}  # leases renewed at maxmemory (allow-oom)
            admin.config_set("maxmemory", "0")
            await wait_drained(
                queue, server.url, PREFIX, completed=2, timeout=20, workers=[worker], what="settles land"
            )
        assert await stop_all([worker]) == [0]
    finally:
        admin.close()
        await backend.close()
    report = check_invariants(
        server.url, PREFIX, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    )
    assert (report.check().stalls, report.executions) == (0, 2)


@pytest.mark.timeout(90)
async def test_row26_maxmemory_refuses_enqueues_whole_and_running_jobs_keep_their_leases(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    # full for 2.5 s (2.5 leases) while the handlers run; memory frees before they settle
    await maxmemory_scenario(redis_server_factory(), worker_proc, ledger, run_for=4.0, full_for=2.5)


@pytest.mark.timeout(90)
async def test_row26_a_settle_at_maxmemory_lands_once_memory_frees(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    # the handlers end while Redis is full: their completes meet OOM
    await maxmemory_scenario(redis_server_factory(), worker_proc, ledger, run_for=1.0, full_for=2.5)


@pytest.mark.timeout(90)
async def test_row27_busy_redis_under_load_is_ridden_out_without_double_claims(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    admin = server.client()
    spin = "local s = tonumber(redis.call('TIME')[1]) + 2 while tonumber(redis.call('TIME')[1]) < s do end return 1"
    try:
        total = 600
        enqueued = await enqueue_sleeps(queue, total, seconds=0.02, ids="u", digits=4)
        workers = start_workers(worker_proc, QUEUE, [server.url] * 2, PREFIX, concurrency=4, env=ledger.env)
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            await wait_flowing(ledger, more_than=50, timeout=20)
            admin.config_set("busy-reply-threshold", "50")
            spinner = server.client()
            busy = threading.Thread(target=spinner.eval, args=(spin, 0), daemon=True)
            busy.start()

            def answers_busy() -> bool:
                try:
                    admin.ping()
                except redis.ResponseError as exc:
                    return str(exc).startswith("BUSY")
                return False

            wait_until(answers_busy, timeout=5, what="Redis answers BUSY")
            await anyio.to_thread.run_sync(busy.join, 10)
            spinner.close()
            await wait_drained(queue, server.url, PREFIX, completed=total, timeout=60, workers=workers)
        assert await stop_all(workers) == [0, 0]
    finally:
        admin.close()
        await backend.close()
    check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler).check()


@pytest.mark.timeout(120)
async def test_row31_delayed_jobs_run_once_and_never_early_across_restarts(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory(aof=True)
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    total = 600

    def start() -> WorkerProc:
        return worker_proc(QUEUE, server.url, PREFIX, concurrency=10, env=ledger.env, wait=False)

    try:
        workers = wait_started([start(), start()])
        enqueued = Enqueued(
            set(
                await queue.add_bulk(
                    [
                        {
                            "task_id": "chaos.noop",
                            "args": [i],
                            "job_id": f"d{i:04d}",
                            "delay": 2.0 + i / total,
                        }
                        for i in range(total)
                    ]
                )
            )
        )
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            await wait_flowing(ledger, more_than=total // 4, timeout=20, what="a quarter has run")
            for worker in workers:  # mid-way: every worker dies, and Redis restarts
                worker.kill9()
            await anyio.to_thread.run_sync(server.restart)
            workers = [start(), start()]
            await wait_drained(queue, server.url, PREFIX, completed=total, timeout=60, workers=workers)
        assert await stop_all(workers) == [0, 0]
        due = {
            job_id: (await queue.get_job(job_id) or {}).get("delay_until") for job_id in enqueued.acknowledged
        }
    finally:
        await backend.close()
    report = check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler).check()
    early = [
        (start["id"], start["wall"], due[start["id"]])
        for start in ledger.starts()
        if due[start["id"]] is None or start["wall"] < due[start["id"]] - 0.001
    ]
    assert early == []  # never before its due time (Redis TIME and the workers share this host's clock)
    once = [job for job, runs in ledger.executions().items() if len(runs) == 1]
    assert len(once) + report.redelivered_jobs >= total  # a job ran twice only after a recorded stall

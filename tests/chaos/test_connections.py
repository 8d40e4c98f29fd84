"""Chaos rows 13 (the parts the proxy cannot do), 17, 18 and 27 (``LOADING``): a private ``redis-server``.

13. ``CLIENT KILL`` of every connection, three times while jobs flow: the workers reconnect with
    backoff and no lease is lost. ``CLIENT PAUSE 3000`` while six jobs run: no lease is lost either.
    (RST, the 3 s blackhole and the 8 s blackhole of one of two workers are
    tests/chaos/test_network_faults.py.)
17. An idle worker whose ``BLPOP`` lasts as long as the command socket timeout (block 5 s, socket
    5 s) opens no new connection while idle (``INFO stats`` and ``CLIENT LIST``). The idle window is
    12 s by default (``CHAOS_IDLE_SECONDS``; the matrix says 30 s: scaled down for CI time). Invalid
    timing settings stop the worker with exit 2 and a message naming the setting.
18. A worker whose wall clock is 5 minutes ahead or behind (``CHAOS_CLOCK_OFFSET`` in the test app:
    the product has no clock-provider hook for Redis workers, because scripts read Redis ``TIME``)
    neither reclaims early nor late (row 1 under skew, both ways round) and promotes delayed jobs
    neither early nor late (row 31 under skew).
27. Redis restarts with a dataset that takes seconds to load: the workers' calls meet ``LOADING``,
    are retried with backoff (the server counts the ``LOADING`` replies), no job is claimed twice at
    once, and the invariants hold.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import redis

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.errors import ConfigError
from asyncmq_otel.queues import Queue
from tests.chaos.helpers import (
    backend_for,
    check_after_faults,
    enqueue_sleeps,
    start_workers,
    stop_all,
    wait_drained,
    wait_flowing,
    wait_running,
    wait_states,
)
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger, monotonic
from tests.support.poll import eventually, wait_until
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import StartWorker, WorkerProc

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "conn"
PREFIX = "chaos"
Servers = Callable[..., RedisServer]
IDLE_SECONDS = float(os.environ.get("CHAOS_IDLE_SECONDS", "12"))
SKEW = 300.0


def _info(server: RedisServer, section: str) -> dict[str, object]:
    admin = server.client()
    try:
        return dict(admin.info(section))
    finally:
        admin.close()


# -- row 13 ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_row13_client_kill_of_every_connection_loses_no_lease(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    admin = server.client()
    try:
        workers = start_workers(worker_proc, QUEUE, [server.url] * 2, PREFIX, concurrency=5, env=ledger.env)
        total = 150
        enqueued = await enqueue_sleeps(queue, total, seconds=0.05, ids="k", digits=3)
        before = int(_info(server, "stats")["total_connections_received"])
        killed = 0
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            for _ in range(3):
                await wait_flowing(ledger, more_than=10, timeout=15)
                await anyio.sleep(0.5)  # the gap between two kills, not a wait for a result
                for kind in ("normal", "pubsub"):  # every client but this admin (the sampler reconnects too)
                    killed += int(admin.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"))
            await wait_drained(queue, server.url, PREFIX, completed=total, timeout=60, workers=workers)
        assert killed >= 6  # each round cut at least the two workers' connections
        assert int(_info(server, "stats")["total_connections_received"]) > before + 3
        assert await stop_all(workers) == [0, 0]
    finally:
        admin.close()
        await backend.close()
    report = check_invariants(
        server.url, PREFIX, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert (report.stalls, report.executions) == (0, total)  # no lease lost


@pytest.mark.timeout(90)
async def test_row13_client_pause_3000_loses_no_lease(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    admin = server.client()
    try:
        workers = start_workers(worker_proc, QUEUE, [server.url] * 2, PREFIX, concurrency=3, env=ledger.env)
        enqueued = await enqueue_sleeps(queue, 6, seconds=2.0, ids="z")
        await wait_running(ledger, 6, timeout=15)
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            assert admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            await wait_drained(queue, server.url, PREFIX, completed=6, timeout=30, workers=workers)
        assert await stop_all(workers) == [0, 0]
    finally:
        admin.close()
        await backend.close()
    report = check_invariants(
        server.url, PREFIX, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    )
    assert (report.stalls, report.executions, report.states) == (0, 6, {"completed": 6}), report.summary()
    report.check()


# -- row 17 ---------------------------------------------------------------------------------------------
def _client_ids(admin: redis.Redis) -> set[int]:
    return {int(client["id"]) for client in admin.client_list()} - {int(admin.client_id())}


def _calls(admin: redis.Redis, command: str) -> int:
    entry = admin.info("commandstats").get(f"cmdstat_{command}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


@pytest.mark.timeout(90)
async def test_row17_an_idle_worker_never_churns_connections(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    # the longest BLPOP (5 s) equals the command socket timeout (5 s): the blocking connection
    # must still get its own, longer socket timeout, or every idle round would reconnect
    worker = worker_proc(
        QUEUE, server.url, PREFIX, concurrency=2, env={**ledger.env, "ASYNCMQ_BLOCK_TIMEOUT": "5"}
    )
    try:
        enqueued = Enqueued({await queue.add("chaos.noop", [17], job_id="warm")})
        await wait_states(queue, {"warm": "completed"}, timeout=15)
    finally:
        await backend.close()  # the test's own client leaves before the idle window
    admin = server.client()  # one connection for every reading below
    try:
        ids_before = _client_ids(admin)
        received_before = int(admin.info("stats")["total_connections_received"])
        blpops_before = _calls(admin, "blpop")
        await anyio.sleep(IDLE_SECONDS)  # the idle window under test
        received_after = int(admin.info("stats")["total_connections_received"])
        ids_after = _client_ids(admin)
        blpops = _calls(admin, "blpop") - blpops_before
    finally:
        admin.close()
    assert worker.alive
    assert blpops >= 2  # it did wait on Redis, in 5 s slices
    assert received_after == received_before  # 0 reconnects
    assert ids_after == ids_before
    assert len(ids_before) >= 2  # the worker's command and blocking connections at least
    assert await stop_all([worker]) == [0]
    check_invariants(server.url, PREFIX, QUEUE, enqueued, ledger, workers_stopped=True).check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ASYNCMQ_BLOCK_TIMEOUT": "0"}, "block_timeout"),
        ({"ASYNCMQ_BLOCK_TIMEOUT": "-1"}, "block_timeout"),
        ({"ASYNCMQ_RENEW_INTERVAL": "0.5"}, "renew_interval"),  # over lease / 3
        ({"ASYNCMQ_REAPER_INTERVAL": "0.4"}, "reaper_interval"),  # 3 × it reaches the lease
        ({"ASYNCMQ_LOOP_BLOCK_LIMIT": "0.5"}, "loop_block_limit"),  # under the lease
    ],
)
async def test_row17_invalid_timing_settings_stop_the_worker_with_config_error(
    env: dict[str, str], named: str, worker_proc: StartWorker, redis_url: str, redis_prefix: str
) -> None:
    worker = worker_proc(QUEUE, redis_url, redis_prefix, env=env, wait=False)
    assert await anyio.to_thread.run_sync(worker.wait, 30) == 2
    assert named in worker.text()
    assert "Traceback" not in worker.text()
    with pytest.raises(ConfigError):
        RedisBackend(
            redis_url, prefix=redis_prefix, block_timeout=float(env.get("ASYNCMQ_BLOCK_TIMEOUT", "0"))
        )


# -- row 18 ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("offset", [SKEW, -SKEW], ids=["ahead", "behind"])
async def test_row18_a_skewed_worker_clock_neither_reclaims_nor_promotes_early_or_late(
    offset: float, redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger, tmp_path: Path
) -> None:
    server = redis_server_factory()
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    skewed_env = {**ledger.env, "CHAOS_CLOCK_OFFSET": str(offset)}
    offsets: dict[int, float] = {}

    def start(skewed: bool) -> WorkerProc:
        worker = worker_proc(
            QUEUE, server.url, PREFIX, concurrency=1, env=skewed_env if skewed else ledger.env
        )
        offsets[worker.pid] = offset if skewed else 0.0
        return worker

    async def hold_then_kill(job_id: str, holder: WorkerProc) -> float:
        """With the other worker watching, hold 3 × lease (no early reclaim), then SIGKILL the holder."""
        await anyio.sleep(3.0)  # three leases pass while the job runs: renewal must keep it
        assert len(ledger.starts(job_id)) == 1, ledger.starts(job_id)
        killed_at = holder.kill9()
        await eventually(
            lambda: ledger.first_start(job_id, after=killed_at, exclude_pids={holder.pid}) is not None,
            timeout=10,
            what=f"{job_id} reclaimed",
        )
        return (
            float(ledger.first_start(job_id, after=killed_at, exclude_pids={holder.pid}) or 0.0) - killed_at
        )

    enqueued = Enqueued()
    try:
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            # the skewed worker holds the job, a true-clock worker is the would-be thief and the reaper
            skewed = start(skewed=True)
            release = [tmp_path / "release-0", tmp_path / "release-1"]
            enqueued.ack([await queue.add("chaos.hold", [str(release[0])], job_id="held-by-skewed")])
            await eventually(
                lambda: ledger.starts("held-by-skewed"), timeout=15, what="the skewed worker runs it"
            )
            honest = start(skewed=False)
            recoveries = [await hold_then_kill("held-by-skewed", skewed)]
            release[0].touch()
            await wait_states(queue, {"held-by-skewed": "completed"}, timeout=10)
            # the other way round: a true-clock worker holds it, the skewed worker reaps
            enqueued.ack([await queue.add("chaos.hold", [str(release[1])], job_id="held-by-honest")])
            await eventually(
                lambda: ledger.starts("held-by-honest"), timeout=15, what="the honest worker runs it"
            )
            skewed = start(skewed=True)
            recoveries.append(await hold_then_kill("held-by-honest", honest))
            release[1].touch()
            await wait_states(queue, {"held-by-honest": "completed"}, timeout=10)
            # row 31 under skew: only the skewed worker is left to promote delayed jobs
            delayed = [f"d{i:02d}" for i in range(20)]
            enqueued.ack(
                await queue.add_bulk(
                    [
                        {"task_id": "chaos.noop", "args": [i], "job_id": job_id, "delay": 1.5 + i / 20}
                        for i, job_id in enumerate(delayed)
                    ]
                )
            )
            await wait_states(queue, dict.fromkeys(delayed, "completed"), timeout=20)
            wait_quiescent(server.url, PREFIX, QUEUE)
        assert await stop_all([skewed]) == [0]
        due = {job_id: float((await queue.get_job(job_id) or {})["delay_until"]) for job_id in delayed}
    finally:
        await backend.close()
    assert max(recoveries) <= 2.0, recoveries  # lease + reaper interval: not late
    promotions = {
        start["id"]: start["wall"] - offsets[start["pid"]] - due[start["id"]]
        for start in ledger.starts()
        if start["id"] in due
    }
    assert {start["pid"] for start in ledger.starts() if start["id"] in due} == {skewed.pid}
    assert min(promotions.values()) >= -0.001, promotions  # never before its due Redis TIME
    assert max(promotions.values()) <= 1.0, promotions  # and not late (block timeout 0.5 s)
    report = check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler).check()
    assert report.stalls == 2  # exactly the two kills


# -- row 27 (LOADING) -----------------------------------------------------------------------------------
def _wait_rewritten(server: RedisServer) -> None:
    def done() -> bool:
        info = _info(server, "persistence")
        return info["aof_rewrite_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0

    wait_until(done, timeout=30, interval=0.1, what="the AOF rewrite finished")


@pytest.mark.timeout(150)
async def test_row27_loading_after_a_restart_is_retried_with_backoff_without_double_claims(
    redis_server_factory: Servers, worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory(aof=True)
    admin = server.client()
    try:
        admin.execute_command("DEBUG", "POPULATE", "2000", "filler", "1024")
        admin.bgrewriteaof()  # the filler goes into the AOF's base file, which the restart loads
    finally:
        admin.close()
    _wait_rewritten(server)
    backend = backend_for(server.url, PREFIX)
    queue = Queue(QUEUE, backend=backend)
    total = 200
    try:
        enqueued = await enqueue_sleeps(queue, total, seconds=0.02, ids="l", digits=4)
        workers = start_workers(worker_proc, QUEUE, [server.url] * 2, PREFIX, concurrency=4, env=ledger.env)
        with LeaseSampler(server.url, PREFIX, QUEUE) as sampler:
            await wait_flowing(ledger, more_than=30, timeout=20)
            await anyio.to_thread.run_sync(time.sleep, 1.1)  # AOF everysec: let the enqueues reach the disk
            # 2,000 keys × 1 ms: about 2 s of LOADING, answering clients between keys
            server.extra = ("--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024")
            failed_rounds = sampler.failed_rounds
            await anyio.to_thread.run_sync(server.restart_loading)
            restarted = monotonic()
            await eventually(lambda: server.loading() is False, timeout=30, interval=0.05, what="loaded")
            loading_s = monotonic() - restarted
            errors = _info(server, "errorstats")
            sampler_errors = sampler.failed_rounds - failed_rounds  # the sampler's own LOADING replies
            await wait_drained(queue, server.url, PREFIX, completed=total, timeout=60, workers=workers)
        assert await stop_all(workers) == [0, 0]
    finally:
        await backend.close()
    loading = errors.get("errorstat_LOADING")
    assert isinstance(loading, dict), (errors, loading_s)
    replies = int(loading["count"]) - sampler_errors
    assert loading_s >= 1.0, loading_s
    # the workers met LOADING and retried; with backoff (50 ms doubling to a 2 s cap) each of their
    # ~10 callers retries a handful of times in ~2 s, where a tight loop would be thousands
    assert 2 <= replies <= 300, (replies, loading_s)
    print(f"row27: LOADING for {loading_s:.2f}s, {replies} LOADING replies to the workers")
    check_after_faults(server.url, PREFIX, QUEUE, enqueued, ledger, sampler).check()

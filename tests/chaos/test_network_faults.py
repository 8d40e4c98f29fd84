"""Chaos rows 13-16 and 20: the network between workers and Redis misbehaves (the in-repo proxy).

13. Connection resets (RST on every connection, three times) while jobs flow: the workers
    reconnect by themselves and no lease is lost; a 3 s blackhole of every worker: no lease lost
    either; an 8 s blackhole of one of two workers: its job is reaped, run by the other and fenced.
14. The reply to an enqueue is lost: redis-py's re-sent call is a replay, so there is exactly one
    job, the caller gets its id, and no ``job:duplicated``.
15. The reply to a claim is lost: the re-sent claim (same nonce) returns the same job; no
    orphaned lease (``stalls`` = 0), one execution.
16. The reply to a complete is lost: the re-sent complete is answered ``OK`` (replay), the job is
    completed once, no stale write, one ``job.completed``.
20. A payload over 1 MiB (and non-JSON arguments) are refused before anything is sent: the proxy
    sees no ``EVALSHA``, nothing is stored. The exact limit is the largest payload handled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import anyio
import pytest
import redis

from asyncmq_otel.backends.redis._keys import Keys
from asyncmq_otel.errors import JobArgumentError, PayloadTooLarge
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.jobs import Job, dumps
from asyncmq_otel.queues import Queue
from asyncmq_otel.settings import get_settings
from tests.chaos.figures import record_figure
from tests.chaos.helpers import (
    SHA,
    backend_for,
    enqueue_sleeps,
    queue_fixture,
    start_workers,
    stop_all,
    wait_counts,
    wait_drained,
    wait_running,
    wait_states,
)
from tests.support.chaos_proxy import ChaosProxy
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "net"
Proxies = Callable[[int], ChaosProxy]

queue = queue_fixture(QUEUE)


@pytest.mark.timeout(90)
async def test_row13_connection_resets_are_ridden_out_without_losing_a_lease(
    queue: Queue,
    worker_proc: StartWorker,
    chaos_proxy: Proxies,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
) -> None:
    proxies = [chaos_proxy(6379), chaos_proxy(6379)]
    urls = [proxy.url for proxy in proxies]
    workers = start_workers(worker_proc, QUEUE, urls, redis_prefix, concurrency=5, env=ledger.env)
    total = 150
    enqueued = await enqueue_sleeps(queue, total, seconds=0.05, ids="r", digits=3)
    before = [proxy.connections_made for proxy in proxies]
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        for _ in range(3):
            await anyio.sleep(0.5)
            assert sum(proxy.reset_all() for proxy in proxies) > 0
        await wait_drained(queue, redis_url, redis_prefix, completed=total, timeout=60, workers=workers)
    assert await stop_all(workers) == [0, 0]
    assert all(proxy.connections_made > made for proxy, made in zip(proxies, before, strict=True))
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert report.stalls == 0  # no lease lost
    assert report.executions == total


@pytest.mark.timeout(90)
async def test_row13_a_three_second_blackhole_of_every_worker_loses_no_lease(
    queue: Queue,
    worker_proc: StartWorker,
    chaos_proxy: Proxies,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
) -> None:
    proxies = [chaos_proxy(6379), chaos_proxy(6379)]
    urls = [proxy.url for proxy in proxies]
    workers = start_workers(worker_proc, QUEUE, urls, redis_prefix, concurrency=3, env=ledger.env)
    enqueued = await enqueue_sleeps(queue, 6, seconds=2.0, ids="b")
    await wait_running(ledger, 6, timeout=15)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        for proxy in proxies:
            proxy.blackhole(3.0)

        async def settled() -> bool:
            found = await queue.counts()
            return found["completed"] + found["failed"] == 6

        await eventually(settled, timeout=40, interval=0.1, what="6 jobs finished")
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    await stop_all(workers)
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    )
    assert (report.stalls, report.executions, report.states) == (0, 6, {"completed": 6}), report.summary()
    report.check()


@pytest.mark.timeout(90)
async def test_row13_an_eight_second_blackhole_of_one_worker_gets_its_job_reaped_and_fenced(
    queue: Queue,
    worker_proc: StartWorker,
    chaos_proxy: Proxies,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
) -> None:
    cut_off = chaos_proxy(6379)
    partitioned = worker_proc(
        QUEUE, cut_off.url, redis_prefix, concurrency=1, env={**ledger.env, "CHAOS_HOLD": "1"}
    )
    enqueued = Enqueued({await queue.add("chaos.zombie", job_id="p")})
    await eventually(lambda: ledger.starts("p"), timeout=15, what="the partitioned worker started the job")
    other = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        cut_off.blackhole(8.0)
        await wait_states(queue, {"p": "completed"}, timeout=15)  # reaped and run by the other worker
        await eventually(
            lambda: partitioned.logged("job.lease_lost") or partitioned.logged("job.stale_write"),
            timeout=20,
            what="the partitioned worker learns it lost the lease",
        )
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    job = await queue.get_job("p")
    assert job is not None
    runs = ledger.executions()["p"]
    assert [run.pid for run in runs] == [partitioned.pid, other.pid]
    assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1)
    assert job["result"] == {"t": runs[1].token, "r": "done"}
    assert not any(s["status"] == "ok" for s in ledger.settles() if s["pid"] == partitioned.pid)
    await stop_all([partitioned, other])
    check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()


@pytest.mark.timeout(60)
async def test_row14_lost_enqueue_reply_stores_exactly_one_job(
    worker_proc: StartWorker, chaos_proxy: Proxies, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    proxy = chaos_proxy(6379)
    backend = backend_for(proxy.url, redis_prefix)
    queue = Queue(QUEUE, backend=backend)
    seen: list[LifecycleEvent] = []
    bus.on("job:*", seen.append, inline=True)
    try:
        await queue.counts()  # the queue's epoch is set up before the fault
        proxy.drop_reply("EVALSHA", 1, first_arg=SHA["enqueue"])
        job_id = await queue.add("chaos.noop", [14])
        assert proxy.dropped["EVALSHA"] == 1
        assert proxy.scripts[SHA["enqueue"]] == 2  # redis-py's call was re-sent after the lost reply
        assert (await queue.counts())["waiting"] == 1
        assert [event.name for event in seen] == ["job:enqueued"]  # a replay, not a duplicate
        assert seen[0].job_id == job_id
        worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
        await wait_drained(queue, redis_url, redis_prefix, completed=1, timeout=15, workers=[worker])
        assert await stop_all([worker]) == [0]
    finally:
        bus.off("job:*", seen.append)
        await backend.close()
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, Enqueued({job_id}), ledger, workers_stopped=True
    )
    assert report.check().executions == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", ["claim", "complete"])
async def test_rows15_16_lost_claim_or_complete_reply_is_replayed_once(
    script: str,
    queue: Queue,
    worker_proc: StartWorker,
    chaos_proxy: Proxies,
    ledger: Ledger,
    redis_url: str,
    redis_prefix: str,
) -> None:
    proxy = chaos_proxy(6379)
    worker = worker_proc(QUEUE, proxy.url, redis_prefix, concurrency=1, env=ledger.env)
    job_id = f"lost-{script}-reply"
    # only the reply that carries this job is lost (an idle worker's empty claims go through); a
    # worker's completion reply does not carry the job, but this job's is the test's only one
    carries = job_id.encode() if script == "claim" else None
    proxy.drop_reply("EVALSHA", 1, first_arg=SHA[script], reply_contains=carries)
    enqueued = Enqueued({await queue.add("chaos.noop", [16], job_id=job_id)})
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        await wait_drained(queue, redis_url, redis_prefix, completed=1, timeout=20, workers=[worker])
    assert proxy.dropped["EVALSHA"] == 1
    assert await stop_all([worker]) == [0]
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 1, 0)
    assert len(ledger.starts(job_id)) == 1
    assert [(s["op"], s["status"]) for s in ledger.settles()] == [("complete", "ok")]
    assert not worker.logged("job.stale_write")
    completed = [
        line for line in worker.events("job.completed") if line.get("messaging.message.id") == job_id
    ]
    assert len(completed) == 1
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


def _envelope_size(queue: str, blob: str) -> int:
    """The stored size of the job the test enqueues: retries left unset store no ``max_retries``."""
    job = Job(id="x" * 32, task="chaos.payload_size", queue=queue, args=[blob])
    envelope = job.envelope()
    del envelope["max_retries"]  # the task's declared retries apply (the producer leaves them out)
    return len(dumps(envelope).encode())


@pytest.mark.timeout(60)
async def test_row20_oversized_and_non_json_payloads_send_nothing_and_the_limit_is_exact(
    worker_proc: StartWorker, chaos_proxy: Proxies, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    proxy = chaos_proxy(6379)
    backend = backend_for(proxy.url, redis_prefix)
    queue = Queue(QUEUE, backend=backend)
    admin = redis.Redis.from_url(redis_url)
    limit = get_settings().max_payload_bytes
    try:
        await queue.counts()
        keys_before = len(admin.keys(f"{redis_prefix}:*"))
        calls_before = proxy.counts["EVALSHA"]
        with pytest.raises(PayloadTooLarge) as caught:
            await queue.add("chaos.payload_size", ["x" * (2 * 1024 * 1024)])
        assert (caught.value.limit, caught.value.size > limit) == (limit, True)
        for bad in ([math.nan], [{1, 2}], [object()], [2**70], [{1: "non-str key"}]):
            with pytest.raises(JobArgumentError):
                await queue.add("chaos.payload_size", bad)
        assert proxy.counts["EVALSHA"] == calls_before  # nothing reached Redis
        assert len(admin.keys(f"{redis_prefix}:*")) == keys_before

        # the exact limit: an envelope of exactly max_payload_bytes is accepted, one byte more is not
        overhead = _envelope_size(QUEUE, "")
        largest = "y" * (limit - overhead)
        assert _envelope_size(QUEUE, largest) == limit
        with pytest.raises(PayloadTooLarge):
            await queue.add("chaos.payload_size", [largest + "y"], job_id="x" * 32)
        job_id = await queue.add("chaos.payload_size", [largest], job_id="x" * 32)
        stored = admin.hget(Keys(redis_prefix).queue(QUEUE).job(job_id), "payload")
        assert isinstance(stored, bytes)
        assert len(stored) == limit  # the size computed above is the size stored
        worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
        await wait_counts(queue, completed=1, timeout=20, workers=[worker])
        assert await queue.get_job_result(job_id) == len(largest)
        assert await stop_all([worker]) == [0]
    finally:
        admin.close()
        await backend.close()
    check_invariants(redis_url, redis_prefix, QUEUE, Enqueued({job_id}), None, workers_stopped=True).check()
    record_figure(
        "largest_payload_bytes",
        "row20",
        {"accepted": limit, "refused_from": limit + 1, "error": "PayloadTooLarge", "limit": limit},
    )

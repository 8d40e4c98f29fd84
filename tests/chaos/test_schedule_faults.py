"""Schedules under faults: 4 worker processes, 3 schedules every second for 20 s, two workers
SIGKILLed and Redis (AOF) restarted once; every tick fired exactly once, as ``catch_up`` says.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest
import redis

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.support.invariants import Enqueued, check_invariants, check_schedules, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.redis_server import RedisServer
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(180)]

QUEUE = "sched"
PREFIX = "schaos"
# key -> (catch_up, interval ms): two catch every tick up after the outage, one fires the latest only
SCHEDULES = {"every-all-1": "all", "every-all-2": "all", "every-latest": "latest"}
RUN_SECONDS = 20.0


def _server_ms(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        seconds, micros = client.time()
    finally:
        client.close()
    return int(seconds) * 1000 + int(micros) // 1000


async def _at(start: float, offset: float) -> None:
    """Return when ``offset`` seconds of the run have passed (the run's own timeline, not a wait for a result)."""
    await anyio.sleep(max(start + offset - time.monotonic(), 0.0))


async def test_every_tick_fires_exactly_once_through_worker_kills_and_a_redis_restart(
    redis_server_factory: Callable[..., RedisServer], worker_proc: StartWorker, ledger: Ledger
) -> None:
    server = redis_server_factory(aof=True)
    backend = RedisBackend(server.url, prefix=PREFIX, retry_timeout=10.0)
    queue = Queue(QUEUE, backend=backend)
    try:
        for key, policy in SCHEDULES.items():
            await queue.upsert_repeatable("chaos.noop", every=1, key=key, catch_up=policy)
    finally:
        await backend.close()

    starting = [worker_proc(QUEUE, server.url, PREFIX, env=ledger.env, wait=False) for _ in range(4)]
    workers = [w.wait_started(timeout=60) for w in starting]
    start = time.monotonic()

    await _at(start, 5)
    workers[0].kill9()
    workers[1].kill9()
    replacement = worker_proc(QUEUE, server.url, PREFIX, env=ledger.env, wait=False)

    await _at(start, 10)
    outage_start = _server_ms(server)
    server.restart()  # SIGKILL, then the same port and directory: the AOF is replayed
    outage_end = _server_ms(server)
    replacement.wait_started(timeout=60)

    await _at(start, RUN_SECONDS)
    backend = RedisBackend(server.url, prefix=PREFIX, retry_timeout=10.0)
    queue = Queue(QUEUE, backend=backend)
    try:
        for key in SCHEDULES:
            await queue.pause_repeatable(key)
    finally:
        await backend.close()
    wait_quiescent(server.url, PREFIX, QUEUE, timeout=60)

    # a worker's scheduler wakes within 2 s of the restart (its backoff cap): slack for the outage
    outages = [(outage_start - 1000, outage_end + 3000)]
    report = check_schedules(
        server.url, PREFIX, QUEUE, {key: (1000, policy) for key, policy in SCHEDULES.items()}, outages=outages
    ).check()
    for key, dues in report.dues.items():
        # about one tick a second for 20 s (scheduler start-up eats into the first seconds)
        assert len(dues) >= (RUN_SECONDS - 6 if SCHEDULES[key] == "all" else RUN_SECONDS - 10), (key, dues)

    for worker in [*workers[2:], replacement]:
        worker.signal(15)
    for worker in [*workers[2:], replacement]:
        worker.wait(timeout=30)
    enqueued = Enqueued()
    enqueued.ack(report.job_ids)
    check_invariants(
        server.url, PREFIX, QUEUE, enqueued, ledger, stalled_events="at_most", workers_stopped=True
    ).check()

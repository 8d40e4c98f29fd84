"""Rows 36-39: corrupt keys and undecodable fields written into Redis meet a real worker process.

Each bad entry sits in a claim batch of good jobs. On the code before issue 13 one of them made
``claim.lua`` fail halfway (good jobs left ``active`` without a lease or ``waiting`` outside
``ready``, for good), or made the decode of the batch raise (the worker crashed and the good jobs
were dead-lettered ``worker_lost`` without running). Now each bad entry goes to the DLQ alone as
``malformed_payload``, with its ``job.malformed_payload`` log line, the good ones run once, the worker
keeps running, ``job show`` reads every job, and the invariant checker finds nothing stuck.
"""

from __future__ import annotations

import pytest
import redis

from asyncmq_otel.backends.redis._keys import Keys, QueueKeys
from asyncmq_otel.queues import Queue
from tests.chaos.helpers import queue_fixture, stop_all, wait_drained
from tests.support.invariants import Enqueued, check_invariants, stuck_jobs
from tests.support.ledger import Ledger
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "hostile"
GOOD_PER_BAD = 9

queue = queue_fixture(QUEUE)


def corrupt(admin: redis.Redis, keys: QueueKeys, job_id: str, how: str) -> None:
    """Damage one stored job the way another program (or an old bug) could."""
    job = keys.job(job_id)
    if how == "string_in_ready":
        admin.delete(job)
        admin.set(job, b"written over by another program")
    elif how == "string_in_delayed":
        admin.zrem(keys.ready, job_id)
        admin.delete(job)
        admin.set(job, b"written over by another program")
        admin.zadd(keys.delayed, {job_id: 0})  # due now
    elif how == "no_state":
        admin.hdel(job, "state")
    elif how == "attempts_abc":
        admin.hset(job, "attempts", "abc")
    elif how == "enqueued_at_soon":
        admin.hset(job, "enqueued_at", "soon")
    elif how == "expires_at_1e303":  # what ttl=1e300 was stored as
        admin.hset(job, "expires_at", "1e+303")
    elif how == "delay_until_1e303":
        admin.hset(job, "delay_until", "1e+303")
    elif how == "nested_100000":
        envelope = b'{"v":1,"id":"%s","task":"chaos.noop","queue":"hostile","args":' % job_id.encode()
        admin.hset(job, "payload", envelope + b"[" * 100_000 + b"]" * 100_000 + b"}")
    else:
        raise AssertionError(how)


CASES = [
    "string_in_ready",
    "string_in_delayed",
    "no_state",
    "attempts_abc",
    "enqueued_at_soon",
    "expires_at_1e303",
    "delay_until_1e303",
    "nested_100000",
]


@pytest.mark.timeout(120)
async def test_rows36_to_39_each_corrupt_job_is_dead_lettered_alone_and_its_batch_runs(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    jobs = []
    for case in CASES:
        jobs += [
            {"task_id": "chaos.noop", "args": [i], "job_id": f"{case}.good{i}"} for i in range(GOOD_PER_BAD)
        ]
        jobs.append({"task_id": "chaos.noop", "args": [0], "job_id": case})
    ids = await queue.add_bulk(jobs)
    enqueued = Enqueued(set(ids))
    keys = Keys(redis_prefix).queue(QUEUE)
    admin = redis.Redis.from_url(redis_url)
    try:
        for case in CASES:
            corrupt(admin, keys, case, case)
    finally:
        admin.close()
    good = len(ids) - len(CASES)
    # one claim batch holds one bad job and its nine neighbours
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=GOOD_PER_BAD + 1, env=ledger.env)
    await wait_drained(
        queue, redis_url, redis_prefix, completed=good, failed=len(CASES), timeout=60, workers=[worker]
    )
    assert worker.alive  # no crash, no restart
    assert await stop_all([worker]) == [0]

    started = {start["id"] for start in ledger.starts()}
    assert started == set(ids) - set(CASES)  # every good job ran; no bad one did
    for case in CASES:
        shown = await queue.get_job(case)  # what `job show` prints: no traceback
        assert shown is not None, case
        assert (shown["state"], shown["dlq_reason"]) == ("failed", "malformed_payload"), case
        # the error says why, whether the stored job still cannot be decoded or (no state) now can
        assert shown["error"]["type"] == "malformed_payload", case
        assert shown["error"]["message"], case
    logged = [line for line in worker.lines() if "job.malformed_payload" in str(line.get("event"))]
    assert len(logged) == len(CASES)
    assert stuck_jobs(redis_url, redis_prefix, QUEUE) == []
    report = check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()
    assert report.dlq_reasons == {"malformed_payload": len(CASES)}
    assert report.states == {"completed": good, "failed": len(CASES)}

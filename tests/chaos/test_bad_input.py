"""Chaos rows 22-24: bad input meets a real worker process through Redis (reliability.md §8).

22. Unknown tasks among 1,000 jobs: DLQ ``unknown_task`` without retry, and no import of the
    module the payload names (a trap module would leave a sentinel file); the others complete.
23. Malformed or malicious jobs written straight into Redis with ``HSET`` (garbage bytes, a pickle
    ``__reduce__`` blob that would run ``touch``, a JSON list, wrong types, an unknown envelope
    version naming a real task, missing fields): each is dead-lettered ``malformed_payload``,
    nothing is unpickled or executed (no sentinel, no ledger start); a good job beside them runs.
24. Unserialisable results (``object()``, a 2 MiB string): ``failed`` with
    ``ResultSerializationError`` / ``ResultTooLarge``, not retried; the exact result limit is the
    largest result handled.

Rows 20 (oversized payload) and 21 (non-JSON arguments) are in test_network_faults.py and
tests/core/test_jobs.py (every bad type, with its path; hypothesis round-trips accepted values);
the in-process worker versions of 22-24 are in tests/worker/test_worker.py, the backend's decoding
of a pickle blob in tests/backends/redis/test_scripts_and_keys.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from asyncmq_otel.backends.redis._keys import Keys
from asyncmq_otel.queues import Queue
from asyncmq_otel.settings import get_settings
from tests.chaos.figures import record_figure
from tests.chaos.helpers import queue_fixture, stop_all, wait_counts, wait_drained
from tests.support.invariants import Enqueued, check_invariants, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "bad"

queue = queue_fixture(QUEUE)


@pytest.mark.timeout(90)
async def test_row22_unknown_tasks_are_dead_lettered_without_import_among_a_thousand_jobs(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    sentinel = tmp_path / "imported"
    jobs = [{"task_id": "chaos.noop", "args": [i], "job_id": f"n{i:04d}"} for i in range(1000)]
    jobs.insert(300, {"task_id": "nope.task", "retries": 3, "job_id": "nope"})
    jobs.insert(600, {"task_id": "tests.chaos.trap.run", "retries": 3, "job_id": "trap"})
    enqueued = Enqueued(set(await queue.add_bulk(jobs)))
    worker = worker_proc(
        QUEUE, redis_url, redis_prefix, concurrency=10, env={**ledger.env, "CHAOS_SENTINEL": str(sentinel)}
    )
    found = await wait_counts(queue, completed=1000, failed=2, timeout=60, workers=[worker])
    assert found["waiting"] == found["delayed"] == 0
    wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert await stop_all([worker]) == [0]
    for job_id in ("nope", "trap"):
        job = await queue.get_job(job_id)
        assert job is not None
        assert (job["dlq_reason"], job["retries"], job["attempts"]) == ("unknown_task", 0, 1)
        assert ledger.starts(job_id) == []
    assert not sentinel.exists()  # the module named by the payload was never imported
    report = check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()
    assert report.dlq_reasons == {"unknown_task": 2}


@pytest.mark.timeout(90)
async def test_row23_malformed_and_pickled_jobs_written_into_redis_never_run(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    sentinel = tmp_path / "executed"
    good = await queue.add("chaos.noop", [23], job_id="good")  # also creates the queue's epoch
    pickled = b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR."  # os.system(...) when unpickled
    bad: dict[str, bytes] = {
        "garbage": b"\x80\x81 not json \xff" * 40,
        "pickle": pickled,
        "pickle4": b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
        "a_list": b"[1, 2, 3]",
        "wrong_types": b'{"v": 1, "id": "wrong_types", "task": 3, "queue": "bad", "args": "x"}',
        "future_version": (
            b'{"v": 99, "id": "future_version", "task": "chaos.sentinel", "queue": "bad", "args": ["'
            + str(sentinel).encode()
            + b'"], "kwargs": {}}'
        ),
        "missing_fields": b'{"v": 1}',
    }
    keys = Keys(redis_prefix).queue(QUEUE)
    admin = redis.Redis.from_url(redis_url)
    try:
        for seq, (job_id, payload) in enumerate(bad.items(), start=1_000_000):
            admin.hset(
                keys.job(job_id), mapping={"payload": payload, "state": "waiting", "priority": 5, "seq": seq}
            )
            admin.zadd(keys.ready, {job_id: 5 * 2**44 + seq})
        admin.lpush(keys.signal, *["1"] * len(bad))
    finally:
        admin.close()
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=4, env=ledger.env)
    await wait_drained(
        queue, redis_url, redis_prefix, completed=1, failed=len(bad), timeout=30, workers=[worker]
    )
    assert await stop_all([worker]) == [0]

    assert not sentinel.exists()  # nothing was unpickled or executed
    assert [start["id"] for start in ledger.starts()] == [good]
    for job_id in bad:
        job = await queue.get_job(job_id)
        assert job is not None
        assert job["state"] == "failed", job_id  # the reason is read from Redis by the checker below
    lines = [line for line in worker.lines() if "job.malformed_payload" in str(line.get("event"))]
    assert len(lines) == len(bad)
    assert all(len(str(line["event"])) < 700 for line in lines)  # at most 256 bytes of the payload shown
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, Enqueued({good, *bad}), ledger, workers_stopped=True
    ).check()
    assert report.dlq_reasons == {"malformed_payload": len(bad)}


@pytest.mark.timeout(90)
async def test_row24_unserialisable_results_fail_without_retry_and_the_result_limit_is_exact(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    limit = get_settings().max_result_bytes
    largest = limit - 2  # a string result is stored as JSON: two quotes around it
    jobs = [
        {"task_id": "chaos.unserialisable", "retries": 2, "job_id": "object"},
        {"task_id": "chaos.big_result", "args": [2 * 1024 * 1024], "retries": 2, "job_id": "two_mib"},
        {"task_id": "chaos.big_result", "args": [largest + 1], "retries": 2, "job_id": "one_byte_over"},
        {"task_id": "chaos.big_result", "args": [largest], "job_id": "largest"},
    ]
    enqueued = Enqueued(set(await queue.add_bulk(jobs)))
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=4, env=ledger.env)
    await wait_drained(queue, redis_url, redis_prefix, completed=1, failed=3, timeout=30, workers=[worker])
    assert await stop_all([worker]) == [0]

    errors = {job["id"]: (job["error"]["type"], job["retries"], job["attempts"]) for job in await queue.dlq()}
    assert errors == {
        "object": ("asyncmq_otel.errors.ResultSerializationError", 0, 1),
        "two_mib": ("asyncmq_otel.errors.ResultTooLarge", 0, 1),
        "one_byte_over": ("asyncmq_otel.errors.ResultTooLarge", 0, 1),
    }
    assert "the handler ran" in (await queue.get_job("object") or {})["error"]["message"]
    assert len(await queue.get_job_result("largest")) == largest
    check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()
    record_figure(
        "largest_result_bytes",
        "row24",
        {"accepted": limit, "refused_from": limit + 1, "error": "ResultTooLarge", "limit": limit},
    )

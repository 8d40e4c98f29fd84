"""Issue 15, the shared rate limit measured: 5 worker processes, one queue limited to 50 jobs a second.

Every worker claims as fast as its capacity allows (concurrency 20, no-op jobs); only the queue's
limit holds them back. "Starts" are measured as claims: a job starts when a claim moves it to
``active`` in the backend, and that is the step the limit governs (the claim script checks the
queue's sliding log of claim times and appends its own, on the backend's clock, Redis ``TIME``).
The ledger records each claim with that clock. Over 20 s: at most 50 claims in any 1 s window, and
the average within 5 % of 50/s.

Handler starts are recorded too (the host's wall clock) and reported beside the claims, but not
bounded: a handler begins when its worker's event loop gets to it, a few milliseconds after the
claim, so jobs claimed in one window can begin in the next and bunch up there. That lag is local
scheduling, which no shared limit can govern; bounding it would test the host's load, not the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.chaos.figures import record_figure
from tests.chaos.helpers import stop_all
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

QUEUE = "limited"
LIMIT, INTERVAL, SPAN, PROCESSES = 50, 1.0, 20.0, 5


@pytest.fixture
async def queue(redis_url: str, redis_prefix: str) -> AsyncIterator[Queue]:
    backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=10.0)
    yield Queue(QUEUE, backend=backend)
    await backend.close()


def most_in_a_window(times: list[float], interval: float) -> int:
    """The most events in any half-open window ``[t, t + interval)`` (one starting at each event)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - interval:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_five_workers_together_keep_to_the_queue_limit(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    total = int(LIMIT * (SPAN + 4))  # more than 20 s worth: the queue never runs dry while measured
    await queue.set_rate_limit(LIMIT, INTERVAL)
    workers = [
        worker_proc(QUEUE, redis_url, redis_prefix, concurrency=20, env=ledger.env, wait=False)
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.wait_started()
    await queue.add_bulk(
        [{"task_id": "chaos.noop", "args": [i], "job_id": f"j{i:05d}"} for i in range(total)]
    )

    def claimed() -> list[float]:
        return [record["now"] for record in ledger.records("claim") for _ in record["ids"]]

    def measured() -> bool:
        assert all(worker.alive for worker in workers), workers
        times = claimed()
        return bool(times) and max(times) - min(times) >= SPAN + 0.5

    await eventually(measured, timeout=SPAN + 60, interval=0.5, what=f"{SPAN} s of claims")
    await queue.clear_rate_limit()  # the rest drains at full speed

    async def drained() -> bool:
        return (await queue.counts())["completed"] == total

    await eventually(drained, timeout=60, interval=0.2, what="every job completed")
    assert await stop_all(workers) == [0] * PROCESSES

    claim_of = {job_id: record for record in ledger.records("claim") for job_id in record["ids"]}
    first = min(record["now"] for record in claim_of.values())
    measured_ids = {job_id for job_id, record in claim_of.items() if record["now"] < first + SPAN}
    measured_claims = [claim_of[job_id]["now"] for job_id in measured_ids]
    most_claims = most_in_a_window(measured_claims, INTERVAL)
    rate = len(measured_claims) / SPAN
    # the handler starts of the jobs claimed while measured (wall clock: the host's, like Redis TIME
    # on this host), and how long after its claim each began
    by_id = {record["id"]: record["wall"] for record in ledger.starts()}
    starts = [by_id[job_id] for job_id in measured_ids]
    most_starts = most_in_a_window(starts, INTERVAL)
    lags = sorted(by_id[job_id] - claim_of[job_id]["now"] for job_id in measured_ids)
    per_process = sorted({record["pid"] for record in ledger.records("claim")})
    print(  # the figures the README quotes (pytest -s shows them)
        f"claims: {len(measured_claims)} in {SPAN:.0f} s = {rate:.2f}/s, most in 1 s: {most_claims}; "
        f"handler starts: most in 1 s: {most_starts}, after their claim p50 {lags[len(lags) // 2] * 1000:.1f} ms "
        f"max {lags[-1] * 1000:.1f} ms; processes claiming: {len(per_process)}"
    )
    # the bounds are on claims (the job's start in the backend, on Redis TIME); handler starts lag
    # them by local scheduling and are reported above, not bounded
    assert most_claims <= LIMIT, (
        f"{most_claims} claims (job starts on the backend clock) in one {INTERVAL} s window; "
        f"the queue's limit is {LIMIT}"
    )
    assert abs(rate - LIMIT / INTERVAL) <= 0.05 * LIMIT / INTERVAL, (
        f"{rate:.2f} claims/s (job starts on the backend clock) over {SPAN} s; "
        f"want {LIMIT / INTERVAL:.0f}/s within 5 %"
    )
    assert len(per_process) == PROCESSES, f"only {len(per_process)} processes claimed under the one limit"
    assert len(by_id) == total, (
        f"{len(by_id)} jobs ran a handler, {total} were enqueued (handler starts are recorded, "
        "not bounded: they lag their claims by local scheduling)"
    )
    record_figure(
        "shared_rate_limit",
        f"{PROCESSES}_processes",
        {
            "limit_per_s": LIMIT,
            "seconds": SPAN,
            "claims_per_s": round(rate, 2),
            "most_claims_in_1s": most_claims,
            "most_handler_starts_in_1s": most_starts,
        },
    )

"""Workers under a queue's shared rate limit, on both backends.

What the limit allows is checked on the backend's own claim times (``ClaimReply.now``), recorded
by wrapping ``claim`` of the backend object the workers use; the telemetry through the events.
The in-memory variant runs on a FakeClock that the waits move on (``eventually_on``); the Redis one on
real time. Either way only what the backend's or the worker's clock guarantees is asserted.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.base import Backend, ClaimReply
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.events import LifecycleEvent
from asyncmq_otel.settings import override_settings
from tests.support.poll import clock_of, eventually, eventually_on
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings"), pytest.mark.timeout(60)]

ran: list[str] = []


@task("rq", name="t.rl_record")
async def rl_record(label: str) -> str:
    ran.append(label)
    return label


@pytest.fixture
def memory_clock() -> FakeClock:
    """The in-memory backend's clock (tests/support/fixtures.py): fake, moved only by the tests."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


def record_claims(backend: Backend) -> list[float]:
    """Wrap the backend object's ``claim``: the backend's clock at each claimed job, in order."""
    times: list[float] = []
    claim = backend.claim

    async def recording(queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        reply = await claim(queue, worker_id, count, lease)
        times.extend(reply.now for _ in reply.jobs)
        return reply

    backend.claim = recording  # type: ignore[method-assign]
    return times


def most_in_a_window(times: list[float], interval: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - interval:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_two_workers_share_the_queue_limit(
    backend: Backend, unique_name: str, events: list[LifecycleEvent]
) -> None:
    q = Queue(unique_name, backend=backend)
    await q.set_rate_limit(4, 0.4)
    claims = record_claims(backend)
    for i in range(12):
        await q.add("t.rl_record", [str(i)])
    async with (
        running_worker(unique_name, backend, concurrency=10),
        running_worker(unique_name, backend, concurrency=10),
    ):
        await eventually_on(clock_of(backend), lambda: len(ran) == 12, timeout=20, what="12 jobs ran")
    # 4 now, 4 after 0.4 s, 4 after 0.8 s: never more, whatever the number of workers
    assert len(claims) == 12
    assert most_in_a_window(claims, 0.4) == 4
    assert max(claims) - min(claims) >= 0.8 - 0.001  # whole ms on Redis
    throttled = [e for e in events if e.name == "job:throttled"]
    assert throttled
    assert {e.scope for e in throttled} == {"queue"}
    by_job = {e.job_id: e for e in events if e.name == "job:started"}
    for e in throttled:
        assert e.ratelimit_wait_s is not None
        assert 0.001 < e.ratelimit_wait_s < 5.0
        assert by_job[e.job_id].ratelimit_wait_s == pytest.approx(e.ratelimit_wait_s)


async def test_the_worker_limit_still_applies_on_top(
    backend: Backend, unique_name: str, events: list[LifecycleEvent]
) -> None:
    q = Queue(unique_name, backend=backend)
    await q.set_rate_limit(1000, 1.0)  # generous: the worker's own limit is the tighter one
    for i in range(6):
        await q.add("t.rl_record", [str(i)])
    async with running_worker(unique_name, backend, concurrency=10, rate_limit=2, rate_interval=0.2):
        await eventually_on(clock_of(backend), lambda: len(ran) == 6, timeout=20, what="6 jobs ran")
    starts = sorted(e.started_at for e in events if e.name == "job:started" and e.started_at is not None)
    assert len(starts) == 6
    assert starts[-1] - starts[0] >= 0.4 - 0.01  # 2 at once, then one per 0.1 s of the worker's clock
    throttled = [e for e in events if e.name == "job:throttled"]
    assert throttled
    assert {e.scope for e in throttled} == {"worker"}


async def test_a_throttled_worker_stops_at_once(backend: Backend, unique_name: str) -> None:
    """The wait for a token (here up to a minute, with waits cut at 60 s) ends with the worker's shutdown."""
    q = Queue(unique_name, backend=backend)
    await q.set_rate_limit(1, 60.0)
    for i in range(3):
        await q.add("t.rl_record", [str(i)])
    with override_settings(block_timeout=60.0), anyio.fail_after(10):
        async with running_worker(unique_name, backend, concurrency=5):
            await eventually(lambda: len(ran) == 1, timeout=5)
            counts: dict[str, Any] = {}

            async def throttled() -> bool:
                counts.update(await q.counts())
                return counts["waiting"] == 2 and counts["active"] == 0

            await eventually(throttled, what="two jobs left waiting, none claimed without a token")
    assert (await q.counts())["waiting"] == 2
    assert ran == ["0"]

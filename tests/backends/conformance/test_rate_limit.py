"""The shared rate limit of a queue on every backend: stored with the queue, enforced inside ``claim``.

Set, read and clear through ``Queue``; claims through the port, by two "workers" (two backend
objects on one store), so what is checked is what every worker of a queue shares. Redis' ``TIME``
cannot be faked: the timed checks record the backend's own claim times (``ClaimReply.now``) and
check the property on them; the exact boundaries are checked on the in-memory backend's clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.lowlevel
import pytest

from asyncmq_otel.backends.base import Backend, EnqueueItem, QueueRateLimit
from asyncmq_otel.backends.capabilities import RateLimitStore
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.errors import JobArgumentError
from asyncmq_otel.jobs import Job
from asyncmq_otel.queues import Queue
from tests.backends.conformance import BACKEND_KINDS
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    RedisServer,
    delete_prefix,
    redis_cluster_server,
    redis_url,
    unique_prefix,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

Factory = Callable[[], Backend]


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on asyncio only, so the whole suite does."""
    return "asyncio"


@pytest.fixture(params=BACKEND_KINDS)
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Backends of one kind on one store (each call: another worker's backend object)."""
    kind = str(request.param)
    if kind == "memory":
        shared = InMemoryBackend()
        yield lambda: shared
        return
    from asyncmq_otel.backends.redis import RedisBackend

    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        server: RedisServer = request.getfixturevalue("redis_cluster_server")
        url = server.url
    prefix = unique_prefix()
    made: list[RedisBackend] = []

    def make() -> Backend:
        made.append(RedisBackend(url, prefix=prefix, cluster=kind == "cluster", retry_timeout=5.0))
        return made[-1]

    yield make
    for backend in made:
        await backend.close()
    delete_prefix(url, prefix)


@pytest.fixture
def backend(make_backend: Factory) -> Backend:
    return make_backend()


@pytest.fixture
def queue() -> str:
    return unique_prefix()


async def put(backend: Backend, queue: str, count: int, start: int = 0) -> None:
    items = []
    for index in range(start, start + count):
        job = Job(id=f"j{index}", task="tests.noop", queue=queue, args=[index])
        items.append(EnqueueItem(job.id, json.dumps(job.envelope())))
    await backend.enqueue_bulk(queue, items)


def windows_over(times: list[float], interval: float) -> int:
    """The most claims in any half-open window ``[t, t + interval)`` (one starting at each claim)."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - interval:
            first += 1
        most = max(most, last - first + 1)
    return most


# -- storing the limit --------------------------------------------------------------------------------
async def test_set_get_and_clear_through_the_queue(backend: Backend, queue: str) -> None:
    assert isinstance(backend, RateLimitStore)
    q = Queue(queue, backend)
    assert await q.get_rate_limit() is None
    assert await q.clear_rate_limit() is False  # no such queue: nothing created
    assert not await backend.has_queue(queue)
    await q.set_rate_limit(50, 1.0)
    assert await backend.has_queue(queue)  # a queue with a limit shows in `queues`
    assert queue in await backend.list_queues()
    assert await q.get_rate_limit() == QueueRateLimit(50, 1.0)
    await q.set_rate_limit(7, 0.25)  # replaced
    assert await Queue(queue, backend).get_rate_limit() == QueueRateLimit(7, 0.25)
    assert await q.clear_rate_limit() is True
    assert await q.get_rate_limit() is None
    assert await q.clear_rate_limit() is False


@pytest.mark.parametrize(
    ("limit", "interval"),
    [
        (0, 1.0),
        (-1, 1.0),
        (1.5, 1.0),
        (True, 1.0),
        (2_000_000, 1.0),
        (5, 0.0),
        (5, 0.0004),
        (5, float("nan")),
    ],
)
async def test_bad_limits_are_refused_before_anything_is_stored(
    backend: Backend, queue: str, limit: object, interval: float
) -> None:
    q = Queue(queue, backend)
    with pytest.raises(JobArgumentError):
        await q.set_rate_limit(limit, interval)  # type: ignore[arg-type]
    assert not await backend.has_queue(queue)


# -- claims under the limit ---------------------------------------------------------------------------
async def test_claims_of_every_worker_share_one_limit(make_backend: Factory, queue: str) -> None:
    one, two = make_backend(), make_backend()
    await put(one, queue, 10)
    await Queue(queue, one).set_rate_limit(3, 60.0)  # long enough that no token frees during the test
    first = await one.claim(queue, "w1", 2, 30.0)
    assert len(first.jobs) == 2
    assert first.throttled_for is None  # a token is left: not held back
    second = await two.claim(queue, "w2", 5, 30.0)
    assert len(second.jobs) == 1  # the last token, whoever asks
    assert second.throttled_for is not None
    assert 0 < second.throttled_for <= 60.0
    third = await one.claim(queue, "w1", 5, 30.0)
    assert third.jobs == []
    assert third.throttled_for is not None
    assert 0 < third.throttled_for <= 60.0
    assert (await one.counts(queue))["waiting"] == 7  # nothing was claimed without a token
    await Queue(queue, two).clear_rate_limit()
    rest = await two.claim(queue, "w2", 10, 30.0)
    assert len(rest.jobs) == 7
    assert rest.throttled_for is None


async def test_tokens_are_taken_only_for_jobs_claimed(backend: Backend, queue: str) -> None:
    """Asking for more than is ready takes no token for the rest (nothing to give back)."""
    await Queue(queue, backend).set_rate_limit(5, 60.0)
    await put(backend, queue, 2)
    assert len((await backend.claim(queue, "w1", 10, 30.0)).jobs) == 2
    empty = await backend.claim(queue, "w1", 10, 30.0)
    assert empty.jobs == []
    assert empty.throttled_for is None  # nothing ready: an empty claim, not a throttled one
    await put(backend, queue, 10, start=2)
    claimed = await backend.claim(queue, "w1", 10, 30.0)
    assert len(claimed.jobs) == 3  # 5 - 2: the 8 unclaimed slots of the first claim took nothing
    assert claimed.throttled_for is not None


async def test_a_new_limit_counts_the_claims_already_made(backend: Backend, queue: str) -> None:
    q = Queue(queue, backend)
    await put(backend, queue, 10)
    await q.set_rate_limit(3, 60.0)
    assert len((await backend.claim(queue, "w1", 10, 30.0)).jobs) == 3
    await q.set_rate_limit(5, 60.0)  # raised: two more, not five
    assert len((await backend.claim(queue, "w1", 10, 30.0)).jobs) == 2
    await q.set_rate_limit(1, 60.0)  # lowered below what was claimed: nothing until they age out
    lowered = await backend.claim(queue, "w1", 10, 30.0)
    assert (lowered.jobs, lowered.throttled_for is not None) == ([], True)
    assert await q.clear_rate_limit() is True
    await q.set_rate_limit(2, 60.0)  # a limit set after a clear starts from an empty log
    assert len((await backend.claim(queue, "w1", 10, 30.0)).jobs) == 2


async def test_a_throttled_queue_with_nothing_ready_is_empty_and_a_paused_one_paused(
    backend: Backend, queue: str
) -> None:
    await Queue(queue, backend).set_rate_limit(1, 60.0)
    await put(backend, queue, 1)
    assert len((await backend.claim(queue, "w1", 1, 30.0)).jobs) == 1
    empty = await backend.claim(queue, "w1", 1, 30.0)
    assert (empty.jobs, empty.throttled_for) == ([], None)
    await put(backend, queue, 1, start=1)
    await backend.pause(queue)
    paused = await backend.claim(queue, "w1", 1, 30.0)
    assert paused.paused
    assert paused.throttled_for is None


async def test_no_window_ever_holds_more_than_the_limit(make_backend: Factory, queue: str) -> None:
    """Two workers claim as fast as they are let until 25 jobs ran, limit 5 per 0.3 s."""
    one, two = make_backend(), make_backend()
    limit, interval, total = 5, 0.3, 25
    await put(one, queue, total)
    await Queue(queue, one).set_rate_limit(limit, interval)
    claimed: list[float] = []
    deadline = time.monotonic() + 30.0

    async def worker(backend: Backend, name: str, batch: int) -> None:
        while len(claimed) < total:
            assert time.monotonic() < deadline, f"only {len(claimed)} of {total} claimed"
            reply = await backend.claim(queue, name, batch, 30.0)
            claimed.extend(reply.now for _ in reply.jobs)  # the backend's clock at the claim
            if reply.throttled_for is not None:
                # half the advised wait: early claims must be refused, not granted
                await anyio.sleep(reply.throttled_for / 2)
            elif not reply.jobs:
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(worker, one, "w1", 3)
        group.start_soon(worker, two, "w2", 4)
    assert len(claimed) == total
    assert windows_over(claimed, interval) == limit


# -- exact boundaries, on the in-memory backend's clock ----------------------------------------------
async def test_a_token_frees_exactly_one_interval_after_its_claim() -> None:
    now = [1000.0]
    backend = InMemoryBackend(clock=lambda: now[0])
    await put(backend, "q", 20)
    await Queue("q", backend).set_rate_limit(3, 1.0)
    assert len((await backend.claim("q", "w", 2, 30.0)).jobs) == 2
    now[0] = 1000.4
    reply = await backend.claim("q", "w", 5, 30.0)
    assert len(reply.jobs) == 1
    assert reply.throttled_for == pytest.approx(0.6)  # the claims at 1000.0 leave at 1001.0
    now[0] = 1000.999
    reply = await backend.claim("q", "w", 5, 30.0)
    assert reply.jobs == []
    assert reply.throttled_for == pytest.approx(0.001)
    now[0] = 1001.0
    assert len((await backend.claim("q", "w", 5, 30.0)).jobs) == 2  # the two from 1000.0
    now[0] = 1001.4
    assert len((await backend.claim("q", "w", 5, 30.0)).jobs) == 1  # the one from 1000.4

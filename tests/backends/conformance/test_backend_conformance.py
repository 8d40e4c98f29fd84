"""One suite, every backend: InMemoryBackend, RedisBackend and RedisBackend on a Redis Cluster.

Backend-level behaviour only (the worker is tested elsewhere): each test drives the port's
transitions and checks replies and stored state. Times come from the backend's own clock
(``await backend.now()``). The in-memory backend runs on a FakeClock that :func:`elapse` advances;
Redis' ``TIME`` cannot be faked, so there :func:`elapse` polls it with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from asyncmq_otel.backends.base import (
    Backend,
    CancelStatus,
    ClaimedJob,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    RenewStatus,
    SettleStatus,
    StoredJob,
    WorkerInfo,
)
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.errors import PayloadTooLarge
from asyncmq_otel.jobs import Job, JobState
from tests.backends.conformance import BACKEND_KINDS, elapse
from tests.support.poll import eventually
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    RedisServer,
    delete_prefix,
    redis_cluster_server,
    redis_url,
    unique_prefix,
)

pytestmark = pytest.mark.anyio

MAX_RESULT = 4096
MAX_PAYLOAD = 8192
Factory = Callable[..., Backend]


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on asyncio only, so the whole suite does."""
    return "asyncio"


@pytest.fixture(params=BACKEND_KINDS)
async def make_backend(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of backends of one kind sharing one namespace; closed and cleaned afterwards."""
    kind = str(request.param)
    made: list[Backend] = []
    prefix = unique_prefix()
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "cluster":
        server: RedisServer = request.getfixturevalue("redis_cluster_server")
        url = server.url
    shared_memory: dict[str, InMemoryBackend] = {}

    def make(**overrides: Any) -> Backend:
        options: dict[str, Any] = {"max_result_bytes": MAX_RESULT, "max_payload_bytes": MAX_PAYLOAD}
        options.update(overrides)
        backend: Backend
        if kind == "memory":
            # one in-memory store per test, like one Redis: extra backends only change options
            if "first" not in shared_memory:
                shared_memory["first"] = InMemoryBackend(clock=FakeClock(start=time.time()), **options)
                backend = shared_memory["first"]
            else:
                backend = shared_memory["first"]
                for name, value in overrides.items():
                    setattr(backend, name, value)
        else:
            from asyncmq_otel.backends.redis import RedisBackend

            backend = RedisBackend(
                url, prefix=prefix, cluster=kind == "cluster", retry_timeout=5.0, **options
            )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()
    if url:
        delete_prefix(url, prefix)


@pytest.fixture
def backend(make_backend: Factory) -> Backend:
    """The backend under test."""
    return make_backend()


@pytest.fixture
def queue() -> str:
    """A fresh queue name."""
    return unique_prefix()


# -- helpers ----------------------------------------------------------------------------------------------
def envelope(job_id: str, queue: str, *, priority: int = 5, ttl: float | None = None, **extra: Any) -> str:
    job = Job(id=job_id, task="tests.noop", queue=queue, args=[job_id], priority=priority, ttl=ttl, **extra)
    return json.dumps(job.envelope())


async def put(
    backend: Backend, queue: str, job_id: str, *, delay: float = 0.0, nonce: str = "", **kwargs: Any
) -> EnqueueReply:
    return await backend.enqueue(queue, EnqueueItem(job_id, envelope(job_id, queue, **kwargs), delay, nonce))


async def claim_ids(
    backend: Backend, queue: str, count: int = 100, worker: str = "w1", lease: float = 30.0
) -> list[str]:
    reply = await backend.claim(queue, worker, count, lease)
    return [job.id for job in reply.jobs]


async def claim_one(backend: Backend, queue: str, worker: str = "w1", lease: float = 30.0) -> ClaimedJob:
    reply = await backend.claim(queue, worker, 1, lease)
    assert len(reply.jobs) == 1, reply
    return reply.jobs[0]


async def drain_tokens(backend: Backend, queue: str) -> None:
    while await backend.wait_for_work(queue, 0):
        pass


# -- enqueue and claim --------------------------------------------------------------------------------------
async def test_claimed_job_decodes_with_its_bookkeeping(backend: Backend, queue: str) -> None:
    before = await backend.now()
    reply = await put(backend, queue, "a", nonce="n1")
    assert reply == EnqueueReply("a", "waiting", False, reply.enqueued_at, reply.enqueued_at)
    assert before - 0.01 <= reply.enqueued_at <= await backend.now() + 0.01
    claimed = await backend.claim(queue, "worker-1", 10, 30.0)
    assert len(claimed.jobs) == 1
    job = claimed.jobs[0].job
    assert job is not None
    assert claimed.jobs[0].claimed_at == claimed.now
    assert job.state is JobState.ACTIVE
    assert (job.id, job.task, job.args, job.attempts, job.owner) == ("a", "tests.noop", ["a"], 1, "worker-1")
    assert job.token is not None
    assert job.token.endswith(".0")
    assert claimed.now >= job.enqueued_at
    assert job.enqueued_at == pytest.approx(reply.enqueued_at)


async def test_enqueue_is_idempotent_by_id_and_nonce(backend: Backend, queue: str) -> None:
    first = await put(backend, queue, "a", nonce="n1")
    replay = await put(backend, queue, "a", nonce="n1")
    assert not replay.duplicate
    assert (replay.state, replay.enqueued_at) == ("waiting", first.enqueued_at)
    other = await put(backend, queue, "a", nonce="n2")
    assert other.duplicate
    assert other.state == "waiting"
    await claim_one(backend, queue)
    assert (await put(backend, queue, "a", nonce="n3")).state == "active"
    assert (await backend.counts(queue))["active"] == 1


async def test_fifty_concurrent_enqueues_of_one_id_store_one_job(backend: Backend, queue: str) -> None:
    replies: list[EnqueueReply] = []

    async def one(index: int) -> None:
        replies.append(await put(backend, queue, "same", nonce=f"n{index}"))

    async with anyio.create_task_group() as tg:
        for index in range(50):
            tg.start_soon(one, index)
    assert len(replies) == 50
    assert sum(not reply.duplicate for reply in replies) == 1
    assert {reply.job_id for reply in replies} == {"same"}
    assert (await backend.counts(queue))["waiting"] == 1
    assert await claim_ids(backend, queue) == ["same"]


async def test_bulk_enqueue_keeps_order_and_reports_each_job(backend: Backend, queue: str) -> None:
    items = [EnqueueItem(f"j{i:04d}", envelope(f"j{i:04d}", queue)) for i in range(1200)]
    items.append(EnqueueItem("j0000", envelope("j0000", queue)))  # a duplicate inside the batch
    replies = await backend.enqueue_bulk(queue, items)
    assert [reply.job_id for reply in replies] == [item.job_id for item in items]
    assert [reply.duplicate for reply in replies] == [False] * 1200 + [True]
    assert (await backend.counts(queue))["waiting"] == 1200
    assert await claim_ids(backend, queue, count=5) == ["j0000", "j0001", "j0002", "j0003", "j0004"]


async def test_payload_over_the_limit_is_refused_before_any_write(backend: Backend, queue: str) -> None:
    item = EnqueueItem("big", envelope("big", queue, kwargs={"blob": "x" * MAX_PAYLOAD}))
    with pytest.raises(PayloadTooLarge) as caught:
        await backend.enqueue(queue, item)
    assert caught.value.limit == MAX_PAYLOAD
    assert caught.value.size > MAX_PAYLOAD
    assert await backend.get_job(queue, "big") is None
    assert sum((await backend.counts(queue)).values()) == 0


async def test_priority_then_fifo(backend: Backend, queue: str) -> None:
    for job_id, priority in [("a", 5), ("b", 1), ("c", 5), ("d", 1), ("e", 10), ("f", 0)]:
        await put(backend, queue, job_id, priority=priority)
    assert await claim_ids(backend, queue) == ["f", "b", "d", "a", "c", "e"]


async def test_claim_takes_at_most_count_with_one_token_each(backend: Backend, queue: str) -> None:
    for index in range(5):
        await put(backend, queue, f"j{index}")
    reply = await backend.claim(queue, "w1", 3, 30.0)
    tokens = [job.token for job in reply.jobs]
    assert [job.id for job in reply.jobs] == ["j0", "j1", "j2"]
    nonces = {token.rsplit(".", 1)[0] for token in tokens}
    assert len(nonces) == 1
    assert [token.rsplit(".", 1)[1] for token in tokens] == ["0", "1", "2"]
    assert await claim_ids(backend, queue, count=10) == ["j3", "j4"]
    assert (await backend.counts(queue))["active"] == 5


async def test_empty_claim_reports_the_next_due_time(backend: Backend, queue: str) -> None:
    empty = await backend.claim(queue, "w1", 1, 30.0)
    assert (empty.jobs, empty.paused, empty.next_due_in) == ([], False, None)
    await put(backend, queue, "later", delay=30.0)
    reply = await backend.claim(queue, "w1", 1, 30.0)
    assert reply.jobs == []
    assert reply.next_due_in is not None
    assert 29.0 < reply.next_due_in <= 30.0


async def test_delayed_job_is_never_claimed_early(backend: Backend, queue: str) -> None:
    reply = await put(backend, queue, "d", delay=0.3)
    assert reply.state == "delayed"
    assert reply.eligible_at == pytest.approx(reply.enqueued_at + 0.3, abs=0.002)
    stored = await backend.get_job(queue, "d")
    assert stored is not None
    assert stored.delay_until == pytest.approx(reply.eligible_at)
    assert await claim_ids(backend, queue) == []
    await elapse(backend, 0.3)
    claimed: list[ClaimedJob] = []

    async def due() -> bool:
        got = await backend.claim(queue, "w1", 1, 30.0)
        if got.jobs:
            claimed.append(got.jobs[0])
            assert got.now >= reply.eligible_at  # never before its due time, by the backend's clock
        return bool(got.jobs)

    await eventually(due, timeout=5, what="the delayed job becomes claimable")
    assert claimed[0].id == "d"


async def test_ttl_sets_expires_at(backend: Backend, queue: str) -> None:
    reply = await put(backend, queue, "t", ttl=0.05)
    stored = await backend.get_job(queue, "t")
    assert stored is not None
    assert stored.expires_at == pytest.approx(reply.enqueued_at + 0.05, abs=0.002)


async def test_priority_and_ttl_carried_on_the_item_are_used_as_given(backend: Backend, queue: str) -> None:
    """A producer that sets EnqueueItem.priority/ttl is taken at its word (the payload is not read
    for them); without item.priority both come from the payload, as before."""
    plain = envelope("low", queue)  # the payload says priority 5 and no TTL
    await backend.enqueue(queue, EnqueueItem("low", plain, priority=9))
    await backend.enqueue(queue, EnqueueItem("high", envelope("high", queue), priority=-3, ttl=0.05))
    await backend.enqueue(queue, EnqueueItem("payload", envelope("payload", queue, priority=1, ttl=60.0)))
    stored = {job_id: await backend.get_job(queue, job_id) for job_id in ("low", "high", "payload")}
    high, from_payload = stored["high"], stored["payload"]
    assert high is not None and from_payload is not None
    assert high.expires_at == pytest.approx(high.enqueued_at + 0.05, abs=0.002)
    assert from_payload.expires_at == pytest.approx(from_payload.enqueued_at + 60.0, abs=0.002)
    assert stored["low"] is not None and stored["low"].expires_at is None
    claimed = await backend.claim(queue, "w1", 3, 30.0)
    assert [job.id for job in claimed.jobs] == ["high", "payload", "low"]


async def test_items_without_a_nonce_replay_within_their_call_only(backend: Backend, queue: str) -> None:
    """An empty nonce: the backend gives the item one of its call, so the same id twice in one call
    or in another call is a duplicate (a redis-py re-send of the call replays: tests/chaos row 14)."""
    items = [EnqueueItem("x", envelope("x", queue)), EnqueueItem("x", envelope("x", queue))]
    first, second = await backend.enqueue_bulk(queue, items)
    assert (first.duplicate, second.duplicate) == (False, True)
    again = await backend.enqueue(queue, EnqueueItem("x", envelope("x", queue)))
    assert again.duplicate and again.state == "waiting"


async def test_malformed_stored_job_is_claimed_with_payload_error(backend: Backend, queue: str) -> None:
    await backend.enqueue(queue, EnqueueItem("bad", "{not json"))
    await backend.enqueue(queue, EnqueueItem("list", "[1, 2]"))
    reply = await backend.claim(queue, "w1", 5, 30.0)
    by_id = {job.id: job for job in reply.jobs}
    assert set(by_id) == {"bad", "list"}
    for job in by_id.values():
        assert job.decode_error
        assert job.job is None
        assert job.attempts == 1
        assert job.token
    settled = await backend.fail(queue, "bad", by_id["bad"].token, "malformed_payload")
    assert settled.ok
    assert [job.id for job in await backend.list_dlq(queue)] == ["bad"]


@pytest.mark.parametrize("depth", [600, 4000])
async def test_a_payload_nested_too_deep_is_claimed_malformed_alone(
    backend: Backend, queue: str, depth: int
) -> None:
    deep = envelope("deep", queue)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}"
    await backend.enqueue_bulk(
        queue,
        [
            EnqueueItem("a", envelope("a", queue)),
            EnqueueItem("deep", deep),
            EnqueueItem("b", envelope("b", queue)),
        ],
    )
    by_id = {job.id: job for job in (await backend.claim(queue, "w1", 5, 30.0)).jobs}
    assert set(by_id) == {"a", "deep", "b"}
    assert "deeper than" in by_id["deep"].decode_error
    assert by_id["a"].decode_error is None and by_id["b"].decode_error is None
    assert by_id["a"].job is not None and by_id["b"].job is not None
    shown = await backend.get_job(queue, "deep")
    assert shown is not None and shown.decode_error == by_id["deep"].decode_error
    assert (await backend.fail(queue, "deep", by_id["deep"].token, "malformed_payload")).ok


async def test_nan_and_infinity_in_a_stored_payload_are_not_json(backend: Backend, queue: str) -> None:
    nan = envelope("nan", queue)[:-1] + ', "timeout": NaN}'
    inf = envelope("inf", queue)[:-1] + ', "ttl": -Infinity}'
    await backend.enqueue_bulk(queue, [EnqueueItem("nan", nan), EnqueueItem("inf", inf)])
    by_id = {job.id: job for job in (await backend.claim(queue, "w1", 5, 30.0)).jobs}
    assert by_id["nan"].decode_error and by_id["inf"].decode_error


# -- settling and fencing -----------------------------------------------------------------------------------
async def test_complete_is_fenced_and_replays(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    job = await claim_one(backend, queue, worker="owner-1")
    stale = await backend.complete(queue, "a", "not-the-token", '"x"')
    assert (stale.status, stale.owner, stale.state) == (SettleStatus.STALE, "owner-1", "active")
    done = await backend.complete(queue, "a", job.token, '{"answer": 42}')
    assert done.ok
    assert done.job is not None
    assert (done.job.state, done.job.result) == ("completed", {"answer": 42})
    assert done.job.finished_at is not None
    replay = await backend.complete(queue, "a", job.token, '{"answer": 42}')
    assert replay.ok
    assert (await backend.counts(queue))["completed"] == 1
    assert (await backend.complete(queue, "nope", "t", "1")).status is SettleStatus.GONE
    after = await backend.retry(queue, "a", job.token + "x", 0.0, ErrorInfo("E", "boom"))
    assert after.status is SettleStatus.STALE


async def test_result_over_the_limit_is_refused(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    job = await claim_one(backend, queue)
    reply = await backend.complete(queue, "a", job.token, json.dumps("y" * MAX_RESULT))
    assert reply.status is SettleStatus.TOO_LARGE
    stored = await backend.get_job(queue, "a")
    assert stored is not None
    assert stored.state == "active"
    assert (await backend.complete(queue, "a", job.token, "null")).ok


async def test_retry_schedules_after_backoff_from_backend_time(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a", trace_context={"traceparent": "00-1-2-01"})
    job = await claim_one(backend, queue)
    before = await backend.now()
    reply = await backend.retry(
        queue, "a", job.token, 0.3, ErrorInfo("ValueError", "boom", "Traceback ..."), "span-1"
    )
    assert reply.ok
    assert reply.job is not None
    stored = reply.job
    assert (stored.state, stored.retries, stored.attempts) == ("delayed", 1, 1)
    assert stored.error == {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
    assert stored.job is not None
    assert stored.job.trace_context == {"traceparent": "00-1-2-01", "prev_attempt": "span-1"}
    assert before + 0.29 <= stored.eligible_at <= await backend.now() + 0.31
    assert (await backend.retry(queue, "a", job.token, 0.3, ErrorInfo("ValueError", "boom"))).ok  # a replay
    assert (await backend.counts(queue))["delayed"] == 1
    empty = await backend.claim(queue, "w1", 1, 30.0)
    assert empty.jobs == []
    assert empty.next_due_in is not None
    assert empty.next_due_in > 0
    await elapse(backend, 0.3)
    again: list[ClaimedJob] = []

    async def claimed() -> bool:
        got = await backend.claim(queue, "w1", 1, 30.0)
        again.extend(got.jobs)
        return bool(got.jobs)

    await eventually(claimed, timeout=5, what="the retried job is due again")
    assert again[0].job is not None
    assert (again[0].attempts, again[0].job.retries) == (2, 1)


async def test_retry_without_backoff_goes_to_the_back(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    job = await claim_one(backend, queue)
    reply = await backend.retry(queue, "a", job.token, 0.0, ErrorInfo("E", "boom"))
    assert reply.ok
    assert reply.job is not None
    assert reply.job.state == "waiting"
    assert await claim_ids(backend, queue) == ["b", "a"]


async def test_fail_dead_letters_with_reason(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    jobs = (await backend.claim(queue, "w1", 2, 30.0)).jobs
    first = await backend.fail(
        queue, "a", jobs[0].token, "unknown_task", ErrorInfo("UnknownTask", "no task t")
    )
    assert first.ok
    assert first.job is not None
    assert (first.job.state, first.job.dlq_reason) == ("failed", "unknown_task")
    assert first.job.error == {"type": "UnknownTask", "message": "no task t", "traceback": ""}
    second = await backend.fail(queue, "b", jobs[1].token, "expired")
    assert second.job is not None
    assert (second.job.state, second.job.dlq_reason) == ("expired", "expired")
    counts = await backend.counts(queue)
    assert (counts["failed"], counts["expired"], counts["active"]) == (1, 1, 0)
    dlq = await backend.list_dlq(queue)
    assert {job.id: job.dlq_reason for job in dlq} == {"a": "unknown_task", "b": "expired"}
    assert dlq[0].finished_at >= dlq[1].finished_at
    with pytest.raises(ValueError, match="unknown DLQ reason"):
        await backend.fail(queue, "a", "t", "because")


async def test_defer_gives_the_attempt_back(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    job = await claim_one(backend, queue)
    reply = await backend.defer(queue, "a", job.token)
    assert reply.ok
    assert reply.job is not None
    assert (reply.job.state, reply.job.attempts) == ("waiting", 0)
    again = await claim_one(backend, queue)
    assert (again.id, again.attempts) == ("a", 1)


async def test_requeue_keeps_the_original_place_then_dead_letters(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b", "c"):
        await put(backend, queue, job_id)
    job = await claim_one(backend, queue)
    reply = await backend.requeue(queue, "a", job.token, max_interrupts=1)
    assert reply.ok
    assert reply.job is not None
    assert (reply.job.state, reply.job.interrupts) == ("waiting", 1)
    assert (await backend.requeue(queue, "a", job.token, max_interrupts=1)).ok  # a replay
    job = await claim_one(backend, queue)
    assert job.id == "a"
    reply = await backend.requeue(queue, "a", job.token, max_interrupts=1)
    assert reply.job is not None
    assert (reply.job.state, reply.job.dlq_reason, reply.job.interrupts) == (
        "failed",
        "interrupted",
        2,
    )
    assert await claim_ids(backend, queue) == ["b", "c"]


async def test_progress_is_fenced(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    job = await claim_one(backend, queue)
    assert (await backend.report_progress(queue, "a", job.token, 0.5)).ok
    assert (await backend.report_progress(queue, "a", "other", 0.6)).status is SettleStatus.STALE
    assert (await backend.report_progress(queue, "zz", "other", 0.6)).status is SettleStatus.GONE
    stored = await backend.get_job(queue, "a")
    assert stored is not None
    assert stored.progress == 0.5


# -- leases, renewal and the reaper ---------------------------------------------------------------------------
async def test_renew_answers_per_lease(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    jobs = {job.id: job for job in (await backend.claim(queue, "w1", 2, 30.0)).jobs}
    assert await backend.cancel(queue, "b") is CancelStatus.RUNNING
    answers = await backend.renew(queue, {"a": jobs["a"].token, "b": jobs["b"].token, "zz": "t"}, 30.0)
    assert answers == {"a": RenewStatus.OK, "b": RenewStatus.CANCEL, "zz": RenewStatus.LOST}
    assert await backend.renew(queue, {"a": "wrong"}, 30.0) == {"a": RenewStatus.LOST}
    assert await backend.renew(queue, {}, 30.0) == {}
    renewer = backend.lease_renewer()
    try:
        found = await anyio.to_thread.run_sync(renewer.renew, queue, {"a": jobs["a"].token}, 30.0)
    finally:
        renewer.close()
    assert found == {"a": RenewStatus.OK}


async def test_reaper_role_is_held_by_one_worker(backend: Backend, queue: str) -> None:
    assert (await backend.reap(queue, "w1", 1, 5.0)).is_reaper
    assert not (await backend.reap(queue, "w2", 1, 5.0)).is_reaper
    assert (await backend.reap(queue, "w1", 1, 5.0)).is_reaper


async def test_expired_lease_stalls_back_to_its_place_then_worker_lost(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    zombie = await claim_one(backend, queue, worker="w-dead", lease=0.2)
    await elapse(backend, 0.2)
    stalled: list[StoredJob] = []

    async def reaped() -> bool:
        reply = await backend.reap(queue, "reaper", 1, 5.0)
        assert reply.is_reaper
        stalled.extend(reply.stalled)
        return bool(reply.stalled)

    await eventually(reaped, timeout=5, what="the expired lease is reaped")
    assert [(job.id, job.state, job.stalls) for job in stalled] == [("a", "waiting", 1)]
    second = await claim_one(backend, queue, worker="w2", lease=0.2)
    assert second.job is not None
    assert (second.id, second.attempts, second.job.stalls) == ("a", 2, 1)
    # the zombie's late writes are rejected and name the current owner
    late = await backend.complete(queue, "a", zombie.token, "1")
    assert (late.status, late.owner) == (SettleStatus.STALE, "w2")
    assert await backend.renew(queue, {"a": zombie.token}, 30.0) == {"a": RenewStatus.LOST}
    await elapse(backend, 0.2)
    dead: list[StoredJob] = []

    async def dead_lettered() -> bool:
        reply = await backend.reap(queue, "reaper", 1, 5.0)
        dead.extend(reply.dead)
        return bool(reply.dead)

    await eventually(dead_lettered, timeout=5, what="the second lease loss dead-letters the job")
    assert [(job.id, job.state, job.dlq_reason, job.stalls) for job in dead] == [
        ("a", "failed", "worker_lost", 2)
    ]
    assert (await backend.complete(queue, "a", second.token, "1")).status is SettleStatus.STALE
    assert [job.id for job in await backend.list_dlq(queue)] == ["a"]
    assert await claim_ids(backend, queue) == ["b"]


async def test_renewal_past_the_deadline_keeps_the_job(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    job = await claim_one(backend, queue, lease=0.1)
    await elapse(backend, 0.15)  # past the lease deadline
    assert await backend.renew(queue, {"a": job.token}, 30.0) == {"a": RenewStatus.OK}
    reply = await backend.reap(queue, "reaper", 1, 5.0)
    assert (reply.stalled, reply.dead) == ([], [])
    assert (await backend.complete(queue, "a", job.token, "1")).ok


# -- cancellation -----------------------------------------------------------------------------------------------
async def test_cancel_in_each_state(backend: Backend, queue: str) -> None:
    heard: list[tuple[str, str]] = []
    backend.add_cancel_listener(lambda q, job_id: heard.append((q, job_id)))
    await put(backend, queue, "waiting")
    await put(backend, queue, "delayed", delay=30.0)
    await put(backend, queue, "running")
    assert await backend.cancel(queue, "waiting") is CancelStatus.CANCELLED
    assert await backend.cancel(queue, "delayed") is CancelStatus.CANCELLED
    running = await claim_one(backend, queue)
    assert running.id == "running"
    assert await backend.cancel(queue, "running") is CancelStatus.RUNNING
    assert heard == [(queue, "running")]
    assert await backend.renew(queue, {"running": running.token}, 30.0) == {"running": RenewStatus.CANCEL}
    settled = await backend.settle_cancelled(queue, "running", running.token)
    assert settled.ok
    assert settled.job is not None
    assert settled.job.state == "cancelled"
    assert await backend.cancel(queue, "running") is CancelStatus.FINISHED
    assert await backend.cancel(queue, "nope") is CancelStatus.GONE
    counts = await backend.counts(queue)
    assert (counts["cancelled"], counts["waiting"], counts["delayed"], counts["active"]) == (3, 0, 0, 0)
    assert await claim_ids(backend, queue) == []
    stored = await backend.get_job(queue, "waiting")
    assert stored is not None
    assert (stored.state, stored.attempts) == ("cancelled", 0)


async def test_cancel_listener_can_be_removed(backend: Backend, queue: str) -> None:
    heard: list[str] = []

    def listener(_queue: str, job_id: str) -> None:
        heard.append(job_id)

    backend.add_cancel_listener(listener)
    backend.remove_cancel_listener(listener)
    await put(backend, queue, "a")
    await claim_one(backend, queue)
    assert await backend.cancel(queue, "a") is CancelStatus.RUNNING
    assert heard == []


# -- pause, resume and wake tokens --------------------------------------------------------------------------------
async def test_pause_stops_claims_and_resume_wakes(backend: Backend, queue: str) -> None:
    await backend.pause(queue)
    assert await backend.is_queue_paused(queue)
    await put(backend, queue, "a")
    reply = await backend.claim(queue, "w1", 1, 30.0)
    assert (reply.jobs, reply.paused) == ([], True)
    await drain_tokens(backend, queue)
    await backend.resume(queue)
    assert not await backend.is_queue_paused(queue)
    with anyio.fail_after(2):
        assert await backend.wait_for_work(queue, 1.0)
    assert await claim_ids(backend, queue) == ["a"]


async def test_wait_for_work_wakes_on_enqueue_and_times_out(backend: Backend, queue: str) -> None:
    await drain_tokens(backend, queue)
    woke: list[bool] = []

    async def waiter(timeout: float) -> None:
        woke.append(await backend.wait_for_work(queue, timeout))

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 0.1)
        await blocked(backend)
        await elapse(backend, 0.1)
    assert woke == [False]
    if not isinstance(getattr(backend, "timer", None), FakeClock):
        assert anyio.current_time() - started >= 0.09
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 10.0)
        await blocked(backend)
        started = anyio.current_time()
        await put(backend, queue, "a")
    assert woke == [False, True]
    assert anyio.current_time() - started < 2.0


async def blocked(backend: Backend) -> None:
    """Let a waiter block first (ordering, not a wait for a result)."""
    timer = getattr(backend, "timer", None)
    if isinstance(timer, FakeClock):
        await eventually(lambda: timer.timers >= 1, what="the waiter blocks")
    else:
        await anyio.sleep(0.05)


async def test_every_transition_to_ready_pushes_a_wake_token(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    await put(backend, queue, "b")
    jobs = (await backend.claim(queue, "w1", 2, 30.0)).jobs
    await drain_tokens(backend, queue)
    assert (await backend.requeue(queue, "a", jobs[0].token, 5)).ok
    assert await backend.wait_for_work(queue, 0)
    assert (await backend.retry(queue, "b", jobs[1].token, 0.0, ErrorInfo("E", "boom"))).ok
    assert await backend.wait_for_work(queue, 0)


# -- retention, counts and listings -------------------------------------------------------------------------------
async def _complete_all(backend: Backend, queue: str, ids: list[str]) -> None:
    for job_id in ids:
        await put(backend, queue, job_id)
        job = await claim_one(backend, queue)
        assert (await backend.complete(queue, job_id, job.token, "null")).ok
        await elapse(backend, 0.001)  # finished in order, at distinct (millisecond) times on every clock


async def test_retention_trims_by_count_and_frees_the_id(make_backend: Factory, queue: str) -> None:
    backend = make_backend(keep_completed=3)
    await _complete_all(backend, queue, [f"j{i}" for i in range(6)])
    assert (await backend.counts(queue))["completed"] == 3
    assert await backend.get_job(queue, "j0") is None
    assert [job.id for job in await backend.list_jobs(queue, "completed")] == ["j5", "j4", "j3"]
    again = await put(backend, queue, "j0")
    assert (again.duplicate, again.state) == (False, "waiting")


async def test_retention_trims_by_age(make_backend: Factory, queue: str) -> None:
    backend = make_backend(keep_completed_age=0.2)
    await _complete_all(backend, queue, ["old"])
    await elapse(backend, 0.25)  # the first job ages out
    await _complete_all(backend, queue, ["new"])
    assert await backend.get_job(queue, "old") is None
    assert (await backend.counts(queue))["completed"] == 1


async def test_dlq_retention_by_count(make_backend: Factory, queue: str) -> None:
    backend = make_backend(keep_failed=2)
    for index in range(4):
        await put(backend, queue, f"j{index}")
        job = await claim_one(backend, queue)
        assert (await backend.fail(queue, job.id, job.token, "failed")).ok
    assert [job.id for job in await backend.list_dlq(queue)] == ["j3", "j2"]
    assert (await backend.counts(queue))["failed"] == 2


async def test_counts_cover_every_state(backend: Backend, queue: str) -> None:
    assert await backend.counts(queue) == dict.fromkeys((state.value for state in JobState), 0)
    await put(backend, queue, "w")
    await put(backend, queue, "d", delay=30.0)
    await put(backend, queue, "a")
    await put(backend, queue, "c")
    await put(backend, queue, "f")
    await put(backend, queue, "x")
    jobs = {job.id: job for job in (await backend.claim(queue, "w1", 5, 30.0)).jobs}
    await backend.complete(queue, "c", jobs["c"].token, "1")
    await backend.fail(queue, "f", jobs["f"].token, "failed")
    await backend.fail(queue, "x", jobs["x"].token, "expired")
    await backend.settle_cancelled(queue, "w", jobs["w"].token)
    assert await backend.counts(queue) == {
        "waiting": 0,
        "delayed": 1,
        "blocked": 0,
        "active": 1,
        "completed": 1,
        "failed": 1,
        "expired": 1,
        "cancelled": 1,
    }
    stats = await backend.queue_stats(queue)
    assert (stats.ready, stats.scheduled, stats.active, stats.dead, stats.paused) == (0, 1, 1, 2, False)


async def test_queue_stats_reports_the_oldest_ready_age(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    await backend.pause(queue)
    await elapse(backend, 0.05)
    stats = await backend.queue_stats(queue)
    assert (stats.ready, stats.paused) == (1, True)
    assert stats.oldest_ready_age >= 0.0499  # float seconds of a unix time: not exact


async def test_list_jobs_pages_in_each_order(backend: Backend, queue: str) -> None:
    for index in range(7):
        await put(backend, queue, f"w{index}", priority=9 if index == 0 else 5)
    pages = [await backend.list_jobs(queue, "waiting", offset, 3) for offset in (0, 3, 6)]
    assert [[job.id for job in page] for page in pages] == [["w1", "w2", "w3"], ["w4", "w5", "w6"], ["w0"]]
    assert await backend.list_jobs(queue, "waiting", 7, 3) == []
    for job_id, delay in [("d-late", 60.0), ("d-soon", 30.0)]:
        await put(backend, queue, job_id, delay=delay)
    assert [job.id for job in await backend.list_jobs(queue, "delayed")] == ["d-soon", "d-late"]
    jobs = (await backend.claim(queue, "w1", 3, 30.0)).jobs
    assert {job.id for job in await backend.list_jobs(queue, "active")} == {"w1", "w2", "w3"}
    for job in jobs:
        await backend.complete(queue, job.id, job.token, "1")
    finished = await backend.list_jobs(queue, "completed", 0, 10)
    assert {job.id for job in finished} == {"w1", "w2", "w3"}
    stamps = [job.finished_at for job in finished]
    assert stamps == sorted(stamps, reverse=True)
    with pytest.raises(ValueError, match="not a valid JobState"):
        await backend.list_jobs(queue, "nonsense")


# -- the DLQ and cleaning -----------------------------------------------------------------------------------------
async def test_retry_dead_and_purge(backend: Backend, queue: str) -> None:
    for job_id in ("a", "b"):
        await put(backend, queue, job_id)
    for job in (await backend.claim(queue, "w1", 2, 30.0)).jobs:
        await backend.fail(queue, job.id, job.token, "failed", ErrorInfo("E", "boom"))
    assert await backend.retry_dead(queue, "a")
    assert not await backend.retry_dead(queue, "a")
    assert not await backend.retry_dead(queue, "nope")
    stored = await backend.get_job(queue, "a")
    assert stored is not None
    assert (
        stored.state,
        stored.attempts,
        stored.retries,
        stored.dlq_reason,
        stored.error,
    ) == (
        "waiting",
        0,
        0,
        None,
        None,
    )
    again = await claim_one(backend, queue)
    assert (again.id, again.attempts) == ("a", 1)
    assert await backend.purge_dlq(queue) == 1
    assert await backend.list_dlq(queue) == []
    assert await backend.get_job(queue, "b") is None
    assert (await backend.counts(queue))["failed"] == 0


async def test_clean_deletes_finished_jobs_by_age(backend: Backend, queue: str) -> None:
    await _complete_all(backend, queue, ["a", "b"])
    assert await backend.clean(queue, "completed", 3600.0) == 0
    assert await backend.clean(queue, "completed", 0.0) == 2
    assert (await backend.counts(queue))["completed"] == 0
    assert await backend.get_job(queue, "a") is None
    with pytest.raises(ValueError, match="finished state"):
        await backend.clean(queue, "waiting", 0.0)


# -- workers and queues ---------------------------------------------------------------------------------------------
async def test_workers_registry(backend: Backend) -> None:
    name = unique_prefix()
    long_lived = WorkerInfo(f"{name}-1", ["q1"], "host-a", 101, 10, started_at=1.5)
    short_lived = WorkerInfo(f"{name}-2", ["q2"], "host-b", 102, 5)
    await backend.register_worker(long_lived, 30.0)
    await backend.register_worker(short_lived, 0.2)
    assert long_lived.heartbeat_at > 0

    async def ids() -> set[str]:
        return {info.worker_id for info in await backend.list_workers() if info.worker_id.startswith(name)}

    assert await ids() == {f"{name}-1", f"{name}-2"}
    await elapse(backend, 0.2)

    async def short_gone() -> bool:
        return await ids() == {f"{name}-1"}

    await eventually(short_gone, timeout=5, what="the silent worker's registration expires")
    long_lived.active, long_lived.state = 3, "draining"
    await backend.heartbeat(long_lived, 30.0)
    listed = [info for info in await backend.list_workers() if info.worker_id == f"{name}-1"]
    assert [(info.active, info.state, info.queues, info.pid, info.started_at) for info in listed] == [
        (3, "draining", ["q1"], 101, 1.5)
    ]
    assert listed[0].heartbeat_at == pytest.approx(long_lived.heartbeat_at)
    await backend.deregister_worker(f"{name}-1")
    assert await ids() == set()


async def test_list_queues_includes_used_queues(backend: Backend, queue: str) -> None:
    await put(backend, queue, "a")
    assert queue in await backend.list_queues()

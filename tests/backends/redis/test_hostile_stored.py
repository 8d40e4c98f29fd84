"""Corrupt keys and undecodable fields written straight into Redis (issue 13 items 1-3, reliability §2, §8).

One bad entry never takes its neighbours down: every script validates what it computes with before
its first write, a job key that is not a hash is quarantined by itself, and a stored job whose
fields cannot be decoded comes back with ``payload_error`` (the worker dead-letters it as
``malformed_payload``) instead of raising. After each case, :func:`stuck_jobs` finds no job outside
the index of its state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio.to_thread
import pytest
import redis
from click.testing import CliRunner

from asyncmq_otel.backends.base import EnqueueItem, ErrorInfo, RawJob, RenewStatus, SettleStatus
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.backends.redis._keys import QueueKeys
from asyncmq_otel.cli import main
from asyncmq_otel.errors import BackendError
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from tests.support.invariants import stuck_jobs
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

QUEUE = "hostile"
DEEP = b'{"v":1,"id":"x","task":"t.x","queue":"hostile","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


ran: list[str] = []


@task(QUEUE, name="hostile.record")
async def record(label: str) -> str:
    ran.append(label)
    return label


def item(job_id: str, queue: str = QUEUE, delay: float = 0.0) -> EnqueueItem:
    envelope = {"v": 1, "id": job_id, "task": "t.x", "queue": queue, "args": [], "priority": 5}
    return EnqueueItem(job_id, json.dumps(envelope), delay=delay)


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def enqueue_ten(backend: RedisBackend) -> list[str]:
    ids = [f"j{i}" for i in range(10)]
    await backend.enqueue_bulk(QUEUE, [item(job_id) for job_id in ids])
    return ids


def keys_of(backend: RedisBackend) -> QueueKeys:
    return backend.keys.queue(QUEUE)


def assert_consistent(redis_url: str, redis_prefix: str) -> None:
    assert stuck_jobs(redis_url, redis_prefix, QUEUE) == []


async def claim_all(backend: RedisBackend, count: int = 20) -> dict[str, RawJob]:
    return {str(job.id): job for job in (await backend.claim(QUEUE, "w", count, 30.0)).jobs}


async def test_a_string_key_in_ready_is_quarantined_alone_and_the_others_are_claimed(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    ids = await enqueue_ten(backend)
    admin.delete(keys_of(backend).job("j4"))
    admin.set(keys_of(backend).job("j4"), b"not a hash")
    claimed = await claim_all(backend)
    assert sorted(claimed) == sorted(ids)  # one claim, nothing left behind
    bad = claimed.pop("j4")
    assert "not a hash" in bad.decode_error
    assert bad.attempts == 1 and bad.job is None
    assert all(job.decode_error is None for job in claimed.values())
    assert_consistent(redis_url, redis_prefix)
    assert (await backend.fail(QUEUE, "j4", bad.token, "malformed_payload")).ok
    stored = await backend.get_job(QUEUE, "j4")
    assert stored is not None
    assert (stored.state, stored.dlq_reason) == ("failed", "malformed_payload")
    assert admin.hget(keys_of(backend).job("j4"), "quarantined") == b"not a hash"  # kept for the operator
    counts = await backend.counts(QUEUE)
    assert (counts["active"], counts["failed"], counts["waiting"]) == (9, 1, 0)
    assert_consistent(redis_url, redis_prefix)


@pytest.mark.parametrize("corrupt", ["attempts_abc", "attempts_huge", "no_state", "unknown_state"])
async def test_a_hash_claim_lua_cannot_use_is_handed_over_malformed_alone(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, corrupt: str
) -> None:
    ids = await enqueue_ten(backend)
    job_key = keys_of(backend).job("j4")
    if corrupt == "attempts_abc":
        admin.hset(job_key, "attempts", "abc")
    elif corrupt == "attempts_huge":
        admin.hset(job_key, "attempts", "1e+303")
    elif corrupt == "no_state":
        admin.hdel(job_key, "state")
    else:
        admin.hset(job_key, "state", "limbo")
    claimed = await claim_all(backend)
    assert sorted(claimed) == sorted(ids)
    bad = claimed.pop("j4")
    assert bad.decode_error
    assert bad.job is None
    assert all(job.decode_error is None for job in claimed.values())
    assert_consistent(redis_url, redis_prefix)
    assert (await backend.fail(QUEUE, "j4", bad.token, "malformed_payload")).ok
    assert_consistent(redis_url, redis_prefix)


async def test_a_string_key_in_delayed_does_not_stop_claims(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    await backend.enqueue(QUEUE, item("later", delay=3600))
    await backend.enqueue(QUEUE, item("good"))
    keys = keys_of(backend)
    admin.delete(keys.job("later"))
    admin.set(keys.job("later"), b"oops")
    admin.zadd(keys.delayed, {"later": 0})  # due now
    claimed = await claim_all(backend)
    assert sorted(claimed) == ["good", "later"]
    assert "not a hash" in claimed["later"].decode_error
    assert claimed["good"].decode_error is None
    assert_consistent(redis_url, redis_prefix)
    await backend.enqueue(QUEUE, item("next"))
    assert list(await claim_all(backend)) == ["next"]  # later claims work


async def test_a_delayed_hash_without_state_is_handed_over_malformed(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    await backend.enqueue(QUEUE, item("later", delay=3600))
    keys = keys_of(backend)
    admin.hdel(keys.job("later"), "state")
    admin.zadd(keys.delayed, {"later": 0})
    claimed = await claim_all(backend)
    assert list(claimed) == ["later"]
    assert claimed["later"].decode_error
    assert_consistent(redis_url, redis_prefix)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enqueued_at", b"soon"),
        ("eligible_at", b"1e+303"),
        ("delay_until", b"1e+303"),
        ("expires_at", b"1e+303"),
        ("expires_at", b"nan"),
        ("retries", b"abc"),
        ("stalls", b"1.5"),
        ("interrupts", b"-"),
        # what int() takes but the scripts' int_field does not: both must judge a value alike
        ("retries", b"+1"),
        ("stalls", b" 1"),
        ("interrupts", b"1234567890123456"),
        ("finished_at", b"\xff"),
        ("progress", b"fast"),
        ("payload", DEEP),
        (
            "payload",
            b'{"v":1,"id":"j4","task":"t.x","queue":"hostile","args":' + b"[" * 600 + b"]" * 600 + b"}",
        ),
    ],
)
async def test_a_field_that_cannot_be_decoded_makes_that_job_malformed_and_nothing_raises(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, field: str, value: bytes
) -> None:
    ids = await enqueue_ten(backend)
    admin.hset(keys_of(backend).job("j4"), field, value)
    claimed = await claim_all(backend)
    assert sorted(claimed) == sorted(ids)
    bad = claimed.pop("j4")
    assert bad.decode_error
    assert field in bad.decode_error or field == "payload"
    assert all(job.decode_error is None for job in claimed.values())
    assert all(job.job is not None for job in claimed.values())  # the neighbours decode as usual
    shown = await backend.get_job(QUEUE, "j4")  # what `job show` reads: no traceback
    assert shown is not None
    assert shown.decode_error == bad.decode_error
    assert (await backend.fail(QUEUE, "j4", bad.token, "malformed_payload")).ok
    assert [job.id for job in await backend.list_dlq(QUEUE)] == ["j4"]
    assert_consistent(redis_url, redis_prefix)


async def test_the_reaper_recovers_the_others_past_a_string_key_and_a_bad_counter(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    ids = await enqueue_ten(backend)
    claimed = (await backend.claim(QUEUE, "w", 10, 0.001)).jobs
    assert len(claimed) == 10
    keys = keys_of(backend)
    admin.delete(keys.job("j3"))
    admin.set(keys.job("j3"), b"gone bad")
    admin.hset(keys.job("j6"), "stalls", "abc")
    stalled: list[RawJob] = []

    async def reaped() -> bool:
        reply = await backend.reap(QUEUE, "w", 1, 5.0)
        stalled.extend(reply.stalled)
        return len(stalled) >= 9

    await eventually(reaped, timeout=10, what="the reaper recovered the good leases")
    assert sorted(str(job.id) for job in stalled) == sorted(set(ids) - {"j3"})
    assert_consistent(redis_url, redis_prefix)
    again = await claim_all(backend)
    assert sorted(again) == sorted(ids)  # j3 is back in ready, quarantined; j6 too
    assert "not a hash" in again["j3"].decode_error
    assert "stalls" in again["j6"].decode_error
    assert_consistent(redis_url, redis_prefix)


@pytest.mark.parametrize(
    ("op", "field", "value"),
    [
        ("requeue", "interrupts", "abc"),
        ("requeue", "seq", "nan"),
        ("requeue", "priority", "inf"),
        ("retry", "retries", "abc"),
        ("retry", "priority", "nan"),
        ("defer", "attempts", "abc"),
        ("defer", "seq", "x"),
        ("defer", "delay_until", "inf"),
    ],
)
async def test_a_settle_on_a_bad_field_moves_the_job_whole_or_not_at_all(
    backend: RedisBackend,
    admin: redis.Redis,
    redis_url: str,
    redis_prefix: str,
    op: str,
    field: str,
    value: str,
) -> None:
    await backend.enqueue(QUEUE, item("a"))
    job = (await backend.claim(QUEUE, "w", 1, 30.0)).jobs[0]
    admin.hset(keys_of(backend).job("a"), field, value)
    if op == "requeue":
        reply = await backend.requeue(QUEUE, "a", job.token, 5)
    elif op == "retry":
        reply = await backend.retry(QUEUE, "a", job.token, 0.0, ErrorInfo("X", "m"))
    else:
        reply = await backend.defer(QUEUE, "a", job.token)
    assert reply.ok
    assert_consistent(redis_url, redis_prefix)
    again = await claim_all(backend)
    assert list(again) == ["a"]  # back where the next claim finds it
    assert_consistent(redis_url, redis_prefix)


async def test_renew_answers_lost_for_a_string_key_and_renews_the_others(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    await enqueue_ten(backend)
    claimed = (await backend.claim(QUEUE, "w", 3, 30.0)).jobs
    tokens = {str(job.id): str(job.token) for job in claimed}
    admin.delete(keys_of(backend).job("j1"))
    admin.set(keys_of(backend).job("j1"), b"x")
    statuses = await backend.renew(QUEUE, tokens, 30.0)
    assert statuses == {"j0": RenewStatus.OK, "j1": RenewStatus.LOST, "j2": RenewStatus.OK}


async def test_retry_dead_of_a_string_key_keeps_the_indexes_truthful(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    await backend.enqueue(QUEUE, item("a"))
    job = (await backend.claim(QUEUE, "w", 1, 30.0)).jobs[0]
    assert (await backend.fail(QUEUE, "a", job.token, "failed")).ok
    admin.delete(keys_of(backend).job("a"))
    admin.set(keys_of(backend).job("a"), b"x")
    assert await backend.retry_dead(QUEUE, "a")
    assert_consistent(redis_url, redis_prefix)
    claimed = await claim_all(backend)
    assert "not a hash" in claimed["a"].decode_error


async def test_enqueue_over_a_string_key_writes_nothing_and_says_which_job(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str
) -> None:
    await backend.enqueue(QUEUE, item("first"))  # the batch below looks up existing ids
    admin.set(keys_of(backend).job("b"), b"x")
    with pytest.raises(BackendError, match="'b'"):
        await backend.enqueue_bulk(QUEUE, [item("a"), item("b"), item("c")])
    assert await backend.get_job(QUEUE, "a") is None
    assert await backend.get_job(QUEUE, "c") is None
    assert (await backend.counts(QUEUE))["waiting"] == 1
    admin.delete(keys_of(backend).job("b"))
    assert_consistent(redis_url, redis_prefix)


@pytest.mark.parametrize("how", ["enqueue", "flow"])
async def test_a_duplicate_reports_stored_times_that_are_not_integers_as_zero(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, how: str
) -> None:
    """Both enqueue scripts read a held id's times with int_field: '1e+303' or 'inf' is no time."""
    await backend.enqueue(QUEUE, item("parent"))
    await backend.enqueue(QUEUE, item("a"))
    admin.hset(keys_of(backend).job("a"), mapping={"enqueued_at": "1e+303", "eligible_at": "inf"})
    if how == "enqueue":  # enqueue.lua
        reply = await backend.enqueue(QUEUE, item("a"))
    else:  # flow_enqueue.lua: the same id again, with a parent
        again = EnqueueItem("a", item("a").payload, depends_on=((QUEUE, "parent"),))
        [reply] = await backend.add_flow([(QUEUE, again)])
    assert (reply.duplicate, reply.state, reply.enqueued_at, reply.eligible_at) == (True, "waiting", 0.0, 0.0)
    assert_consistent(redis_url, redis_prefix)


async def test_queue_stats_survive_a_string_key_at_the_head(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    await enqueue_ten(backend)
    admin.delete(keys_of(backend).job("j0"))
    admin.set(keys_of(backend).job("j0"), b"x")
    stats = await backend.queue_stats(QUEUE)
    assert stats.ready == 10


async def test_job_show_and_listings_read_a_key_of_another_type_without_raising(
    backend: RedisBackend, admin: redis.Redis
) -> None:
    await backend.enqueue(QUEUE, item("a"))
    job = (await backend.claim(QUEUE, "w", 1, 30.0)).jobs[0]
    assert (await backend.fail(QUEUE, "a", job.token, "failed")).ok
    admin.delete(keys_of(backend).job("a"))
    admin.rpush(keys_of(backend).job("a"), b"x")  # a list: not even readable as a string
    shown = await backend.get_job(QUEUE, "a")
    assert shown is not None
    assert "not a job hash" in shown.decode_error
    listed = await backend.list_dlq(QUEUE)
    assert [(job.id, "not a job hash" in job.decode_error) for job in listed] == [("a", True)]


@pytest.mark.parametrize(
    "op", ["complete", "fail", "retry", "requeue", "defer", "cancelled", "progress", "cancel"]
)
async def test_a_settle_on_a_key_written_over_answers_gone_and_the_job_is_dead_lettered_later(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, op: str
) -> None:
    await backend.enqueue(QUEUE, item("a"))
    job = (await backend.claim(QUEUE, "w", 1, 0.001)).jobs[0]
    token = str(job.token)
    admin.delete(keys_of(backend).job("a"))
    admin.set(keys_of(backend).job("a"), b"x")
    if op == "cancel":
        await backend.cancel(QUEUE, "a")  # answers without raising
    else:
        calls = {
            "complete": lambda: backend.complete(QUEUE, "a", token, "1"),
            "fail": lambda: backend.fail(QUEUE, "a", token, "failed"),
            "retry": lambda: backend.retry(QUEUE, "a", token, 0.0, ErrorInfo("X", "m")),
            "requeue": lambda: backend.requeue(QUEUE, "a", token, 5),
            "defer": lambda: backend.defer(QUEUE, "a", token),
            "cancelled": lambda: backend.settle_cancelled(QUEUE, "a", token),
            "progress": lambda: backend.report_progress(QUEUE, "a", token, 0.5),
        }
        reply = await calls[op]()
        assert reply.status is SettleStatus.GONE

    async def back_in_ready() -> bool:
        await backend.reap(QUEUE, "w", 1, 5.0)
        return "a" in await claim_all(backend)

    await eventually(back_in_ready, timeout=10, what="the reaper hands the quarantined job to a claim")
    assert_consistent(redis_url, redis_prefix)


BAD_ENVELOPE = b'{"v":1,"id":"j4","task":"hostile.record","queue":"hostile","args":["j4"],"max_retries":2,'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enqueued_at", b"soon"),
        ("payload", BAD_ENVELOPE + b'"backoff":{"type":"bogus"}}'),  # would fail only at its first retry
        ("payload", BAD_ENVELOPE + b'"timeout":NaN}'),  # not JSON
    ],
)
async def test_a_worker_dead_letters_the_bad_job_with_its_event_and_runs_the_batch(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, field: str, value: bytes
) -> None:
    ran.clear()
    queue = Queue(QUEUE, backend=backend)
    ids = [await queue.add("hostile.record", [f"j{i}"], job_id=f"j{i}") for i in range(10)]
    admin.hset(keys_of(backend).job("j4"), field, value)
    events: list[LifecycleEvent] = []
    bus.on("job:failed", events.append, inline=True)
    try:
        async with running_worker(QUEUE, backend, concurrency=10) as worker:

            async def drained() -> bool:
                counts = await queue.counts()
                return (counts["completed"], counts["failed"]) == (9, 1)

            await eventually(drained, timeout=20, what="nine completed, one dead-lettered")
            assert worker.state == "running"
    finally:
        bus.off("job:failed", events.append)
    assert sorted(label for label in ran if label in ids) == sorted(set(ids) - {"j4"})
    assert [(event.job_id, event.reason) for event in events] == [("j4", "malformed_payload")]
    assert_consistent(redis_url, redis_prefix)


@pytest.mark.parametrize("corrupt", ["enqueued_at_soon", "string", "list"])
async def test_job_show_prints_a_corrupt_job_without_a_traceback(
    backend: RedisBackend, admin: redis.Redis, redis_url: str, redis_prefix: str, corrupt: str
) -> None:
    await backend.enqueue(QUEUE, item("a"))
    job_key = keys_of(backend).job("a")
    if corrupt == "enqueued_at_soon":
        admin.hset(job_key, "enqueued_at", "soon")
    elif corrupt == "string":
        admin.delete(job_key)
        admin.set(job_key, b"x")
    else:
        admin.delete(job_key)
        admin.rpush(job_key, b"x")
    target = ["--queue", QUEUE, "--backend", redis_url, "--prefix", redis_prefix]
    result = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(main, ["job", "show", "a", *target]))
    assert result.exit_code == 0, result.output
    assert "payload error" in result.stdout
    assert "Traceback" not in result.output

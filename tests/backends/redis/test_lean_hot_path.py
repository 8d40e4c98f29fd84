"""The lean hot path: what enqueue and claim store, the prelude each script carries, the client packing."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.redis import RedisBackend, _scripts
from asyncmq_otel.backends.redis._connection import ConnectionSettings
from asyncmq_otel.backends.redis._packing import HiredisPackedConnection
from asyncmq_otel.jobs import Job, encode_payload, new_job_id

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def payload(job_id: str, queue: str, priority: int = 5) -> str:
    return json.dumps({"v": 1, "id": job_id, "task": "t.x", "queue": queue, "args": [], "priority": priority})


def fields(backend: RedisBackend, redis_url: str, queue: str, job_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hgetall(backend.keys.queue(queue).job(job_id))  # type: ignore[return-value]
    finally:
        client.close()


async def test_a_default_priority_is_not_stored_and_reads_back_as_5(
    backend: RedisBackend, redis_url: str
) -> None:
    queue = "lean"
    await backend.enqueue(queue, EnqueueItem("plain", payload("plain", queue)))
    await backend.enqueue(queue, EnqueueItem("urgent", payload("urgent", queue, 1), priority=1))
    await backend.enqueue(queue, EnqueueItem("late", payload("late", queue)))
    assert "priority" not in fields(backend, redis_url, queue, "plain")
    assert fields(backend, redis_url, queue, "urgent")["priority"] == "1"
    claimed = await backend.claim(queue, "w", 3, 30.0)
    assert [job.id for job in claimed.jobs] == ["urgent", "plain", "late"]


async def test_a_first_claim_writes_no_settle_fields_and_a_later_one_clears_them(
    backend: RedisBackend, redis_url: str
) -> None:
    queue = "lean-claim"
    await backend.enqueue(queue, EnqueueItem("a", payload("a", queue)))
    first = (await backend.claim(queue, "w", 1, 30.0)).jobs[0]
    stored = fields(backend, redis_url, queue, "a")
    assert (stored["state"], stored["attempts"], stored["token"]) == ("active", "1", first.token)
    assert "settled_token" not in stored and "cancel_requested" not in stored
    assert (await backend.cancel(queue, "a")).value == "RUNNING"  # flags the running job
    assert (await backend.requeue(queue, "a", first.token, max_interrupts=5)).ok
    second = (await backend.claim(queue, "w", 1, 30.0)).jobs[0]
    stored = fields(backend, redis_url, queue, "a")
    assert (stored["attempts"], stored["settled_token"], stored["cancel_requested"]) == ("2", "", "")
    assert second.job is not None and second.job.cancel_requested is False
    assert (await backend.complete(queue, "a", second.token, "1")).ok
    # the first attempt's settle is still fenced out
    assert not (await backend.complete(queue, "a", first.token, "2")).ok


def test_each_script_carries_only_the_prelude_it_uses() -> None:
    defined = re.compile(r"^local function (\w+)", re.MULTILINE)
    enqueue = set(defined.findall(_scripts.SCRIPTS["enqueue"].source))
    assert {"now_ms", "epoch_and", "ready_score", "wake"} <= enqueue
    assert not {"trim", "finish", "pack", "flat_job", "fence_values"} & enqueue
    complete = set(defined.findall(_scripts.SCRIPTS["complete"].source))
    assert {"fence_values", "trim", "flat_job", "pack"} <= complete
    assert {"flow_settled", "wake"} <= complete  # completing a parent releases its blocked children
    # a definition used only through another one comes along (finish calls trim)
    assert {"finish", "trim"} <= set(defined.findall(_scripts.SCRIPTS["fail"].source))


def test_new_job_ids_are_uuid4_hex() -> None:
    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    for job_id in ids:
        parsed = uuid.UUID(hex=job_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (job_id, 4, uuid.RFC_4122)


def test_the_envelope_encodes_as_compact_json() -> None:
    job = Job(id="j", task="t.x", queue="q", args=[1, 2.5, "é\n\u2028", None, True], kwargs={"k": {"n": [1]}})
    job.ttl = 3.5
    text = encode_payload(job.envelope(), 1 << 20)
    assert text == json.dumps(job.envelope(), separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(ValueError, match="Out of range"):
        encode_payload({"x": float("nan")}, 1 << 20)


def test_plain_clients_pack_commands_with_hiredis_like_redis_py() -> None:
    assert ConnectionSettings("redis://127.0.0.1:1/0").async_client().connection_pool.connection_class is (
        HiredisPackedConnection
    )
    ours, theirs = HiredisPackedConnection(), Connection()
    for args in [
        ("EVALSHA", "abc", 2, "k1", "k2", 1.5, 0.1, 10**15, b"\x00bytes", "é", ""),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", b"x"),
    ]:
        assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    for bad in (True, None):
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)


async def test_a_plain_client_round_trips_through_the_packed_connection(backend: RedisBackend) -> None:
    queue = "lean-packed"
    replies = await backend.enqueue_bulk(
        queue, [EnqueueItem(f"j{i}", payload(f"j{i}", queue, i % 3)) for i in range(1200)]
    )
    assert not any(reply.duplicate for reply in replies)
    assert (await backend.counts(queue))["waiting"] == 1200

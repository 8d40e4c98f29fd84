"""The shared rate limit's Lua side: its keys stay in the queue's slot, its log stays bounded, bad input is refused.

``claim.lua`` enforces the limit stored by ``rate_limit.lua`` in the queue's ``meta`` hash, with a
sliding log of claim times in ``<prefix>:{<queue>}:rate``.
"""

from __future__ import annotations

import json

import pytest
import redis
from redis.cluster import key_slot

from asyncmq_otel.backends.base import EnqueueItem, QueueRateLimit
from asyncmq_otel.backends.redis import RedisBackend, _scripts

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]


def payload(job_id: str, queue: str) -> str:
    return json.dumps({"v": 1, "id": job_id, "task": "t.x", "queue": queue, "args": []})


async def put(backend: RedisBackend, queue: str, count: int) -> None:
    await backend.enqueue_bulk(queue, [EnqueueItem(f"j{i}", payload(f"j{i}", queue)) for i in range(count)])


async def test_the_log_shares_the_queue_slot_and_stays_bounded(
    backend: RedisBackend, redis_url: str, redis_prefix: str
) -> None:
    queue = "limited"
    await put(backend, queue, 12)
    await backend.set_rate_limit(queue, 4, 30.0)
    claimed = 0
    for _ in range(5):  # more claims than tokens: the log must not grow past the limit
        claimed += len((await backend.claim(queue, "w", 3, 30.0)).jobs)
    assert claimed == 4
    admin = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in admin.scan_iter(match=f"{redis_prefix}:{{{queue}}}:*")]
        rate = f"{redis_prefix}:{{{queue}}}:rate"
        assert rate in keys
        assert len({key_slot(key.encode()) for key in keys}) == 1  # Redis Cluster: one slot per queue
        assert admin.zcard(rate) == 4  # one member per claimed job, never more than the limit
        members = {member.decode() for member in admin.zrange(rate, 0, -1)}
        assert len(members) == 4  # each claim's tokens: distinct members even at the same µs
        assert admin.hmget(f"{redis_prefix}:{{{queue}}}:meta", "rate_limit", "rate_interval") == [
            b"4",
            b"30000",
        ]
    finally:
        admin.close()


async def test_claim_declares_the_log_key(backend: RedisBackend) -> None:
    """A cluster routes a script by its declared keys: the log must be one of them, not built inside."""
    header = _scripts.SCRIPTS["claim"].source.split("-- claim.lua", 1)[1].splitlines()[1]
    assert header.startswith("-- KEYS:")
    assert header.rstrip().endswith("rate")
    assert backend.keys.queue("q").rate == f"{backend.prefix}:{{q}}:rate"


async def test_a_new_limit_keeps_the_log_and_clearing_deletes_it(
    backend: RedisBackend, redis_url: str, redis_prefix: str
) -> None:
    queue = "reset"
    await put(backend, queue, 10)
    await backend.set_rate_limit(queue, 3, 30.0)
    assert len((await backend.claim(queue, "w", 10, 30.0)).jobs) == 3
    await backend.set_rate_limit(queue, 4, 30.0)  # replaced: the three claims still count
    again = await backend.claim(queue, "w", 10, 30.0)
    assert len(again.jobs) == 1
    assert again.throttled_for is not None
    assert await backend.clear_rate_limit(queue) is True
    admin = redis.Redis.from_url(redis_url)
    try:
        assert admin.exists(f"{redis_prefix}:{{{queue}}}:rate") == 0  # no stale log left behind
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("limit", "interval"), [(b"abc", b"1000"), (b"5", b"1e3"), (b"-5", b"1000"), (b"5", b"0")]
)
async def test_hand_written_fields_read_as_no_limit(
    backend: RedisBackend, redis_url: str, redis_prefix: str, limit: bytes, interval: bytes
) -> None:
    """Reliability rule "no stored value can make a script fail": garbage is no limit, not an error."""
    queue = "garbage"
    await put(backend, queue, 6)
    admin = redis.Redis.from_url(redis_url)
    try:
        admin.hset(
            f"{redis_prefix}:{{{queue}}}:meta", mapping={"rate_limit": limit, "rate_interval": interval}
        )
    finally:
        admin.close()
    assert await backend.get_rate_limit(queue) is None
    reply = await backend.claim(queue, "w", 6, 30.0)
    assert len(reply.jobs) == 6
    assert reply.throttled_for is None


async def test_the_script_refuses_bad_arguments_and_writes_nothing(backend: RedisBackend) -> None:
    queue = "refused"
    await backend.set_rate_limit(queue, 2, 1.0)
    keys = backend.keys.queue(queue)
    for args in (["set", "0", "1000"], ["set", "5", "0"], ["set", "x", "1000"], ["drop", "", ""]):
        with pytest.raises(redis.ResponseError, match="rate_limit"):
            await backend._store.transition(keys, "rate_limit", [keys.meta, keys.rate], args)
    assert await backend.get_rate_limit(queue) == QueueRateLimit(2, 1.0)

"""The Lua layer: documented scripts, SHA loading, one slot per queue, replayed claims, raw stored jobs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.cluster import key_slot

from asyncmq_otel.backends import from_url
from asyncmq_otel.backends.base import EnqueueItem
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.backends.redis import RedisBackend, _scripts
from asyncmq_otel.errors import ConfigError, InvalidName
from tests.support.poll import eventually
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LUA = Path(_scripts.__file__).with_name("lua")


def payload(job_id: str, queue: str, priority: int = 5) -> str:
    return json.dumps({"v": 1, "id": job_id, "task": "t.x", "queue": queue, "args": [], "priority": priority})


def test_every_script_documents_keys_argv_and_replies() -> None:
    scripts = sorted(path for path in LUA.glob("*.lua") if path.name != "_fence.lua")
    assert {path.stem for path in scripts} == set(_scripts.SCRIPTS)
    for path in scripts:
        text = path.read_text()
        header = "\n".join(line for line in text.splitlines()[:12] if line.startswith("--"))
        for word in ("KEYS:", "ARGV:", "Replies:"):
            assert word in header, f"{path.name} does not document {word}"
        assert "redis.call('TIME')" not in text, f"{path.name} must take time from now_ms() in the prelude"


def test_script_sources_start_with_a_shebang_then_the_prelude() -> None:
    for script in _scripts.SCRIPTS.values():
        first, rest = script.source.split("\n", 1)
        assert first.startswith("#!lua")
        assert rest.startswith("-- _fence.lua")
    assert _scripts.SCRIPTS["renew"].source.startswith("#!lua flags=allow-oom\n")


async def test_scripts_reload_after_script_flush(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p")
    try:
        await backend.enqueue("q", EnqueueItem("a", payload("a", "q")))
        admin = redis_server.client()
        assert admin.script_exists(_scripts.SCRIPTS["claim"].sha) == [True]
        admin.script_flush()
        admin.close()
        claimed = await backend.claim("q", "w", 1, 5.0)
        assert [job.id for job in claimed.jobs] == ["a"]
    finally:
        await backend.close()


async def test_every_key_of_a_queue_shares_one_slot(
    backend: RedisBackend, redis_url: str, redis_prefix: str
) -> None:
    queue = "slots"
    for job_id in ("a", "b", "c", "d", "e"):
        await backend.enqueue(queue, EnqueueItem(job_id, payload(job_id, queue)))
    await backend.enqueue(queue, EnqueueItem("later", payload("later", queue), delay=60))
    jobs = (await backend.claim(queue, "w", 2, 0.05)).jobs
    await backend.complete(queue, jobs[0].id, jobs[0].token, "1")
    await backend.fail(queue, jobs[1].id, jobs[1].token, "failed")
    await backend.cancel(queue, "d")
    await backend.reap(queue, "w", 0, 5.0)
    admin = redis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in admin.scan_iter(match=f"{redis_prefix}:{{{queue}}}:*")]
    finally:
        admin.close()
    names = {key.rsplit(":", 1)[-1] if ":job:" not in key else "job" for key in keys}
    assert {
        "meta",
        "ready",
        "delayed",
        "completed",
        "dlq",
        "failed",
        "cancelled",
        "reaper",
        "signal",
        "job",
    } <= names
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_a_resent_claim_returns_the_same_jobs(backend: RedisBackend) -> None:
    """A claim whose reply was lost is re-sent with the same nonce: same jobs, no orphaned lease."""
    queue = "replay"
    for job_id in ("a", "b", "c"):
        await backend.enqueue(queue, EnqueueItem(job_id, payload(job_id, queue)))
    keys = backend.keys.queue(queue)
    epoch = backend.cached_epoch(queue)
    assert epoch is not None
    script_keys = [keys.meta, keys.ready, keys.delayed, keys.leases, keys.signal, keys.claim("nonce-1")]
    args = [epoch, "w", 2, 30_000, "nonce-1", 100]
    client = backend.connections.client
    first = await _scripts.call(client, "claim", script_keys, args)
    again = await _scripts.call(client, "claim", script_keys, args)
    assert first[0] == again[0] == b"OK"
    assert [job[0] for job in first[2]] == [job[0] for job in again[2]] == [b"a", b"b"]
    counts = await backend.counts(queue)
    assert (counts["active"], counts["waiting"]) == (2, 1)
    stored = await backend.get_job(queue, "a")
    assert stored is not None
    assert (stored.token, stored.attempts) == ("nonce-1.0", 1)


async def test_raw_binary_job_is_claimed_as_malformed_and_never_decoded(
    backend: RedisBackend, redis_url: str
) -> None:
    queue = "raw"
    await backend.enqueue(queue, EnqueueItem("ok", payload("ok", queue)))
    keys = backend.keys.queue(queue)
    pickle_blob = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."
    admin = redis.Redis.from_url(redis_url)
    try:
        admin.hset(
            keys.job("evil"), mapping={"payload": pickle_blob, "state": "waiting", "priority": 0, "seq": 0}
        )
        admin.zadd(keys.ready, {"evil": 0})
    finally:
        admin.close()
    jobs = (await backend.claim(queue, "w", 5, 30.0)).jobs
    assert [job.id for job in jobs] == ["evil", "ok"]
    evil = jobs[0]
    assert evil.decode_error
    assert (evil.attempts, evil.job) == (1, None)
    shown = await backend.get_job(queue, "evil")
    assert shown is not None and shown.payload_preview is not None
    assert shown.payload_preview.startswith("\ufffd")
    assert (shown.state, shown.decode_error) == ("active", evil.decode_error)
    assert (await backend.fail(queue, "evil", evil.token, "malformed_payload")).ok


async def test_huge_priorities_keep_their_order(backend: RedisBackend) -> None:
    queue = "prio"
    for job_id, priority in [("low", 10**9), ("mid", 5), ("high", -(10**9)), ("low2", 10**9)]:
        await backend.enqueue(queue, EnqueueItem(job_id, payload(job_id, queue, priority)))
    jobs = (await backend.claim(queue, "w", 10, 30.0)).jobs
    assert [job.id for job in jobs] == ["high", "mid", "low", "low2"]


async def test_names_that_could_break_the_hash_tag_are_refused(backend: RedisBackend) -> None:
    with pytest.raises(InvalidName):
        await backend.enqueue("bad}name", EnqueueItem("a", "{}"))
    with pytest.raises(InvalidName):
        await backend.enqueue("q", EnqueueItem("a}b", "{}"))
    with pytest.raises(ConfigError):
        RedisBackend(prefix="bad{prefix")


def test_from_url_picks_the_adapter() -> None:
    assert isinstance(from_url("memory://"), InMemoryBackend)
    backend = from_url("redis://127.0.0.1:6379/0", prefix="x")
    assert isinstance(backend, RedisBackend)
    assert backend.prefix == "x"
    assert isinstance(from_url("rediss://127.0.0.1:6380/0"), RedisBackend)
    with pytest.raises(ConfigError, match="unknown backend URL scheme"):
        from_url("amqp://localhost")


def test_repr_masks_the_password() -> None:
    backend = RedisBackend("redis://app:s3cret@127.0.0.1:6379/0?x=1")
    assert "s3cret" not in repr(backend)
    assert "app:****@" in repr(backend)


async def test_stored_fields_use_redis_time(
    backend: RedisBackend, make_backend: Callable[..., RedisBackend]
) -> None:
    reply = await backend.enqueue("t", EnqueueItem("a", payload("a", "t")))
    server_now = await backend.now()
    assert abs(server_now - reply.enqueued_at) < 1.0
    other = make_backend()
    stored = await other.get_job("t", "a")
    assert stored is not None and stored.enqueued_at == reply.enqueued_at


def test_job_fields_agree_between_lua_and_python() -> None:
    from asyncmq_otel.backends.redis._decode import JOB_FIELDS

    prelude = (LUA / "_fence.lua").read_text()
    block = prelude[
        prelude.index("local JOB_FIELDS = {") : prelude.index("}", prelude.index("local JOB_FIELDS"))
    ]
    assert tuple(part.strip().strip("'") for part in block.split("{", 1)[1].split(",")) == JOB_FIELDS


async def test_a_reap_held_in_transit_revokes_nothing_and_says_late(backend: RedisBackend) -> None:
    """Outage grace: a reap that reaches Redis long after it was sent (an outage held
    it) must not take leases that the renewals held up by the same outage are about to extend."""
    queue = "held-reap"
    await backend.enqueue(queue, EnqueueItem("a", payload("a", queue)))
    claimed = (await backend.claim(queue, "w", 1, 0.05)).jobs
    assert [job.id for job in claimed] == ["a"]

    async def lease_expired() -> bool:
        deadline = await backend.connections.run(
            lambda client: client.zscore(backend.keys.queue(queue).leases, "a")
        )
        return deadline is not None and (await backend.now()) * 1000 > deadline

    # a first reap measures the Redis clock; the lease (50 ms) has expired once a second one is due
    first = await backend.reap(queue, "r", 1, 5.0, max_delay=1.0)
    assert not first.late
    await eventually(lease_expired, timeout=5, what="the lease expired")
    assert backend._jobs._reap_clock is not None
    backend._jobs._reap_clock -= 5_000  # this call "was sent" 5 s ago, as if a blackhole had held it
    held = await backend.reap(queue, "r", 1, 5.0, max_delay=1.0)
    assert (held.late, held.is_reaper, held.stalled, held.dead) == (True, False, [], [])
    job = await backend.get_job(queue, "a")
    assert job is not None and job.state == "active" and job.stalls == 0
    # the reply re-measured the clock: the next, timely reap recovers the expired lease
    timely = await backend.reap(queue, "r", 1, 5.0, max_delay=1.0)
    assert not timely.late and [raw.id for raw in timely.stalled] == ["a"]

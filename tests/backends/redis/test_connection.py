"""Connections: typed errors without retry storms, TLS, OOM, BUSY, restarts and the blocking read."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest
import redis

from asyncmq_otel.backends.base import EnqueueItem, RenewStatus
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.errors import (
    BackendAuthError,
    BackendOutOfMemory,
    BackendTLSError,
    BackendUnavailable,
    ConfigError,
)
from tests.support.poll import wait_until
from tests.support.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def item(job_id: str, size: int = 0) -> EnqueueItem:
    data = {"v": 1, "id": job_id, "task": "t.x", "queue": "q", "kwargs": {"pad": "x" * size}}
    return EnqueueItem(job_id, json.dumps(data))


async def test_wrong_password_fails_fast_without_retrying(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(password="right-one")  # noqa: S106 - a throwaway test server
    wrong = RedisBackend(server.url.replace("right-one", "wrong-one"), prefix="p", retry_timeout=10.0)
    missing = RedisBackend(server.url.replace(":right-one@", ""), prefix="p", retry_timeout=10.0)
    good = RedisBackend(server.url, prefix="p", retry_timeout=10.0)
    try:
        started = time.monotonic()
        with pytest.raises(BackendAuthError) as caught:
            await wrong.probe()
        assert time.monotonic() - started < 1.0  # one attempt, not ten seconds of retries
        assert "wrong-one" not in str(caught.value)
        with pytest.raises(BackendAuthError):
            await missing.enqueue("q", item("a"))
        assert (await good.enqueue("q", item("a"))).state == "waiting"
        stats = server.client().info("stats")
        assert int(stats["total_connections_received"]) < 10
    finally:
        for backend in (wrong, missing, good):
            await backend.close()


async def test_unreachable_redis_raises_backend_unavailable_after_retrying() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", prefix="p", retry_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            await backend.enqueue("q", item("a"))
        assert not isinstance(caught.value, (BackendAuthError, BackendTLSError))
        assert 0.2 <= time.monotonic() - started < 3.0
    finally:
        await backend.close()


@pytest.mark.tls
async def test_tls_verifies_the_server_certificate(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(tls=True)
    assert server.tls is not None
    assert server.url.startswith("rediss://")
    good = RedisBackend(server.url, prefix="p", ssl_ca_certs=str(server.tls.ca))
    wrong_ca = RedisBackend(server.url, prefix="p", ssl_ca_certs=str(server.tls.other_ca), retry_timeout=10.0)
    mtls = RedisBackend(
        server.url,
        prefix="p",
        ssl_ca_certs=str(server.tls.ca),
        ssl_certfile=str(server.tls.client_cert),
        ssl_keyfile=str(server.tls.client_key),
    )
    try:
        assert (await good.enqueue("q", item("a"))).state == "waiting"
        assert [job.id for job in (await mtls.claim("q", "w", 1, 30.0)).jobs] == ["a"]
        started = time.monotonic()
        with pytest.raises(BackendTLSError):
            await wrong_ca.probe()
        assert time.monotonic() - started < 2.0
        renewer = good.lease_renewer()
        try:
            assert await anyio.to_thread.run_sync(renewer.renew, "q", {"zz": "t"}, 30.0) == {
                "zz": RenewStatus.LOST
            }
        finally:
            renewer.close()
    finally:
        for backend in (good, wrong_ca, mtls):
            await backend.close()


@pytest.mark.chaos
async def test_out_of_memory_refuses_whole_enqueues_and_keeps_leases(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", retry_timeout=2.0)
    admin = redis_server.client()
    try:
        await backend.enqueue("q", item("held"))
        held = (await backend.claim("q", "w", 1, 30.0)).jobs[0]
        admin.set("filler", "x" * 400_000)
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(used - 200_000))  # now over the limit, as a full Redis is
        with pytest.raises(BackendOutOfMemory):
            await backend.enqueue("q", item("refused"))
        assert admin.exists(backend.keys.queue("q").job("refused")) == 0
        answers = await backend.renew("q", {"held": held.token}, 30.0)
        assert answers == {"held": RenewStatus.OK}  # renew is allow-oom: leases survive at maxmemory
        admin.config_set("maxmemory", "0")
        assert (await backend.complete("q", "held", held.token, "1")).ok
        assert (await backend.enqueue("q", item("later"))).state == "waiting"
    finally:
        admin.close()
        await backend.close()


@pytest.mark.chaos
async def test_busy_script_is_ridden_out(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", retry_timeout=10.0)
    admin = redis_server.client()
    admin.config_set("busy-reply-threshold", "50")
    spin = "local s = tonumber(redis.call('TIME')[1]) + 2 while tonumber(redis.call('TIME')[1]) < s do end return 1"
    try:
        await backend.enqueue("q", item("a"))
        spinner = redis_server.client()
        busy = threading.Thread(target=spinner.eval, args=(spin, 0), daemon=True)
        busy.start()

        def answers_busy() -> bool:
            try:
                admin.ping()
            except redis.ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        wait_until(answers_busy, timeout=5, what="Redis answers BUSY")
        claimed = await backend.claim("q", "w", 1, 30.0)  # BUSY is retried with backoff
        busy.join(timeout=5)
        spinner.close()
        assert [job.id for job in claimed.jobs] == ["a"]
    finally:
        admin.close()
        await backend.close()


@pytest.mark.chaos
async def test_a_call_during_a_restart_completes_after_it(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", retry_timeout=15.0)
    try:
        await backend.enqueue("q", item("a"))
        redis_server.kill9()
        restarter = threading.Timer(0.5, redis_server.restart)
        restarter.start()
        started = time.monotonic()
        reply = await backend.enqueue("q", item("b"))  # retried with backoff until Redis is back
        restarter.join()
        assert reply.state == "waiting"
        assert time.monotonic() - started < 10.0
    finally:
        await backend.close()


async def test_wait_for_work_blocks_in_slices_and_never_polls(
    make_backend: Callable[..., RedisBackend], redis_url: str
) -> None:
    backend = make_backend(block_timeout=0.3)
    assert backend.connections.settings.client_kwargs(blocking=True)["socket_timeout"] == pytest.approx(5.3)
    while await backend.wait_for_work("q", 0):
        pass
    started = time.monotonic()
    assert not await backend.wait_for_work("q", 0.8)
    elapsed = time.monotonic() - started
    assert 0.75 <= elapsed < 1.5


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        RedisBackend("http://127.0.0.1:6379")
    with pytest.raises(ConfigError):
        RedisBackend(block_timeout=0)


async def test_idle_waits_reuse_one_blocking_connection(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", block_timeout=0.2)
    admin = redis_server.client()
    try:
        assert not await backend.wait_for_work("q", 0.3)
        before = int(admin.info("stats")["total_connections_received"])
        assert not await backend.wait_for_work("q", 1.5)  # several BLPOP slices
        after = int(admin.info("stats")["total_connections_received"])
        assert after == before  # no reconnect while idle (§13 row 17)
    finally:
        admin.close()
        await backend.close()


async def test_a_cancelled_wait_leaves_the_backend_usable(backend: RedisBackend) -> None:
    with anyio.move_on_after(0.2) as scope:
        await backend.wait_for_work("q", 10.0)
    assert scope.cancelled_caught
    await backend.enqueue("q", item("a"))
    assert await backend.wait_for_work("q", 1.0)
    assert [job.id for job in (await backend.claim("q", "w", 1, 30.0)).jobs] == ["a"]


def test_a_backend_moves_to_a_new_event_loop_cleanly(redis_url: str, redis_prefix: str) -> None:
    """Each ``anyio.run`` is a new loop: the backend reconnects there and drops the old sockets quietly."""
    backend = RedisBackend(redis_url, prefix=redis_prefix)

    async def use() -> int:
        await backend.enqueue("q", item(f"j{time.monotonic_ns()}"))
        await backend.wait_for_work("q", 0.01)
        return (await backend.counts("q"))["waiting"]

    assert anyio.run(use) == 1
    assert anyio.run(use) == 2  # warnings are errors: an unclosed socket would fail this test
    anyio.run(backend.close)

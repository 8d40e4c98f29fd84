"""The queue epoch: a lost dataset is reported once, then consumption carries on."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.backends.base import EnqueueItem, RenewStatus, SettleStatus
from asyncmq_otel.backends.redis import RedisBackend
from tests.support.redis_server import RedisServer, delete_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def item(job_id: str, queue: str = "q") -> EnqueueItem:
    return EnqueueItem(job_id, json.dumps({"v": 1, "id": job_id, "task": "t.x", "queue": queue}))


class Losses:
    """Records ``on_data_loss`` calls and the thread each came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str]] = []
        self.threads: list[str] = []

    def __call__(self, queue: str, old: str | None, new: str) -> None:
        self.calls.append((queue, old, new))
        self.threads.append(threading.current_thread().name)


async def test_lost_meta_is_reported_once_and_work_goes_on(
    make_backend: Callable[..., RedisBackend], redis_url: str, redis_prefix: str
) -> None:
    backend = make_backend()
    losses = Losses()
    backend.on_data_loss = losses
    await backend.enqueue("q", item("a"))
    held = (await backend.claim("q", "w", 1, 30.0)).jobs[0]
    old = backend.cached_epoch("q")
    delete_prefix(redis_url, redis_prefix)  # what FLUSHALL or a restart without persistence does
    gone = await backend.complete("q", "a", held.token, "1")
    assert gone.status is SettleStatus.GONE
    new = backend.cached_epoch("q")
    assert losses.calls == [("q", old, new)]
    assert new != old
    await backend.enqueue("q", item("b"))
    assert [job.id for job in (await backend.claim("q", "w", 5, 30.0)).jobs] == ["b"]
    assert len(losses.calls) == 1


async def test_two_backends_each_report_the_same_new_epoch(
    make_backend: Callable[..., RedisBackend], redis_url: str, redis_prefix: str
) -> None:
    first, second = make_backend(), make_backend()
    first_losses, second_losses = Losses(), Losses()
    first.on_data_loss, second.on_data_loss = first_losses, second_losses
    await first.enqueue("q", item("a"))
    await second.counts("q")
    delete_prefix(redis_url, redis_prefix)
    await first.enqueue("q", item("b"))
    await second.enqueue("q", item("c"))
    assert first_losses.calls[0][2] == second_losses.calls[0][2] == first.cached_epoch("q")
    assert (await first.counts("q"))["waiting"] == 2


async def test_the_renewer_thread_detects_the_loss(
    make_backend: Callable[..., RedisBackend], redis_url: str, redis_prefix: str
) -> None:
    backend = make_backend()
    losses = Losses()
    backend.on_data_loss = losses
    await backend.enqueue("q", item("a"))
    held = (await backend.claim("q", "w", 1, 30.0)).jobs[0]
    renewer = backend.lease_renewer()
    try:
        ok = await anyio.to_thread.run_sync(renewer.renew, "q", {"a": held.token}, 30.0)
        assert ok == {"a": RenewStatus.OK}
        delete_prefix(redis_url, redis_prefix)
        lost = await anyio.to_thread.run_sync(renewer.renew, "q", {"a": held.token}, 30.0)
    finally:
        renewer.close()
    assert lost == {"a": RenewStatus.LOST}
    assert len(losses.calls) == 1
    assert losses.threads[0] != threading.main_thread().name
    # the event loop's next call uses the epoch the thread adopted: no second report
    await backend.enqueue("q", item("b"))
    assert len(losses.calls) == 1


async def test_restart_without_persistence_reconnects_and_reports(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="p", retry_timeout=10.0)
    losses = Losses()
    backend.on_data_loss = losses
    try:
        await backend.enqueue("q", item("a"))
        redis_server.restart()
        await backend.enqueue("q", item("b"))
        assert len(losses.calls) == 1
        assert [job.id for job in (await backend.claim("q", "w", 5, 30.0)).jobs] == ["b"]
    finally:
        await backend.close()


@pytest.mark.chaos
async def test_restart_with_aof_keeps_every_acknowledged_job(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(aof=True)
    backend = RedisBackend(server.url, prefix="p", retry_timeout=10.0)
    losses = Losses()
    backend.on_data_loss = losses
    try:
        replies = await backend.enqueue_bulk("q", [item(f"j{i}") for i in range(200)])
        assert not any(reply.duplicate for reply in replies)
        await backend.enqueue("q", item("last"))
        # Redis writes the AOF before it replies, so SIGKILL (unlike a host crash) loses no acknowledged job
        server.restart()
        assert (await backend.counts("q"))["waiting"] == 201
        assert losses.calls == []
    finally:
        await backend.close()

"""A schedule stored by one process wakes every other process's scheduler at once, not at its longest sleep."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task

pytestmark = pytest.mark.anyio


@task("watched", name="watch.tick")
async def tick() -> None:
    return None


async def _changes_seen(watcher: RedisBackend, change: Callable[[], object]) -> int:
    seen = anyio.Event()
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        seen.set()

    stop = watcher.watch_schedules(on_change)
    try:
        await watcher.list_queues()  # the watcher's reader subscribes in this loop before the change
        with anyio.fail_after(10):
            while not calls:
                await change()  # type: ignore[misc]
                with anyio.move_on_after(0.5):
                    await seen.wait()
    finally:
        stop()
    return len(calls)


async def test_another_process_upserting_a_schedule_wakes_the_watchers(
    make_backend: Callable[..., RedisBackend], unique_name: str
) -> None:
    watcher, changer = make_backend(), make_backend()
    queue = Queue(unique_name, backend=changer)
    keys = iter(range(1000))

    async def upsert() -> None:
        await queue.upsert_repeatable("watch.tick", every=3600, key=f"k{next(keys)}")

    assert await _changes_seen(watcher, upsert) >= 1


async def test_pausing_and_removing_wake_the_watchers_too(
    make_backend: Callable[..., RedisBackend], unique_name: str
) -> None:
    watcher, changer = make_backend(), make_backend()
    queue = Queue(unique_name, backend=changer)
    key = await queue.upsert_repeatable("watch.tick", every=3600, key="paused-one")

    async def pause_then_resume() -> None:
        await queue.pause_repeatable(key)
        await queue.resume_repeatable(key)

    assert await _changes_seen(watcher, pause_then_resume) >= 1

    async def remove_and_restore() -> None:
        await queue.remove_repeatable(key)
        await queue.upsert_repeatable("watch.tick", every=3600, key=key)

    assert await _changes_seen(watcher, remove_and_restore) >= 1

"""Cross-process events on ``<prefix>:events``: publish, subscribe, cancel hints, tenant isolation."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from asyncmq_otel.backends.base import CancelStatus, EnqueueItem
from asyncmq_otel.backends.redis import RedisBackend, _events
from asyncmq_otel.backends.redis._events import CANCEL_HINT
from tests.support.poll import eventually
from tests.support.redis_server import delete_prefix, unique_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_published_events_reach_a_subscriber(make_backend: Callable[..., RedisBackend]) -> None:
    producer, consumer = make_backend(), make_backend()
    async with await consumer.subscribe_events(names={"job:completed"}) as events:
        assert await producer.publish_event({"name": "job:started", "job_id": "a"}) == 1
        assert await producer.publish_event({"name": "job:completed", "job_id": "a", "duration_s": 0.5}) == 1
        with anyio.fail_after(5):
            event = await events.__anext__()
    assert event == {"name": "job:completed", "job_id": "a", "duration_s": 0.5}


async def test_a_value_json_cannot_take_is_published_as_its_text(
    make_backend: Callable[..., RedisBackend],
) -> None:
    producer, consumer = make_backend(), make_backend()
    when = datetime.datetime(2026, 11, 29, tzinfo=datetime.timezone.utc)
    async with await consumer.subscribe_events() as events:
        assert await producer.publish_event({"name": "custom", "at": when}) == 1
        with anyio.fail_after(5):
            event = await events.__anext__()
    assert event == {"name": "custom", "at": str(when)}


async def test_another_prefix_hears_nothing(
    make_backend: Callable[..., RedisBackend], redis_url: str
) -> None:
    other_prefix = unique_prefix()
    mine, theirs = make_backend(), make_backend(prefix=other_prefix)
    try:
        async with await theirs.subscribe_events() as foreign, await mine.subscribe_events() as own:
            await mine.publish_event({"name": "job:enqueued", "job_id": "secret"})
            await theirs.publish_event({"name": "job:enqueued", "job_id": "theirs"})
            with anyio.fail_after(5):
                assert (await own.__anext__())["job_id"] == "secret"
                assert (await foreign.__anext__())["job_id"] == "theirs"  # not "secret": it came first
    finally:
        delete_prefix(redis_url, other_prefix)


async def test_cancel_hint_reaches_the_owner_in_another_process(
    make_backend: Callable[..., RedisBackend],
) -> None:
    worker_side, admin_side = make_backend(), make_backend()
    heard: list[tuple[str, str]] = []
    worker_side.add_cancel_listener(lambda queue, job_id: heard.append((queue, job_id)))
    await worker_side.enqueue(
        "q", EnqueueItem("a", json.dumps({"v": 1, "id": "a", "task": "t", "queue": "q"}))
    )
    await worker_side.claim("q", "w", 1, 30.0)  # also makes sure the hint reader is subscribed

    async def reader_subscribed() -> bool:
        return await admin_side.publish_event({"name": "ping"}, channel="control") >= 1

    await eventually(reader_subscribed, timeout=5, what="the worker's cancel reader is subscribed")
    assert await admin_side.cancel("q", "a") is CancelStatus.RUNNING
    await eventually(lambda: heard == [("q", "a")], timeout=5, what="the owner hears the cancel hint")


async def test_own_cancel_is_heard_once(backend: RedisBackend) -> None:
    heard: list[str] = []
    backend.add_cancel_listener(lambda _queue, job_id: heard.append(job_id))
    async with await backend.subscribe_events(names={CANCEL_HINT}, channel="control") as hints:
        await backend.enqueue(
            "q", EnqueueItem("a", json.dumps({"v": 1, "id": "a", "task": "t", "queue": "q"}))
        )
        await backend.claim("q", "w", 1, 30.0)
        assert await backend.cancel("q", "a") is CancelStatus.RUNNING
        with anyio.fail_after(5):
            hint = await hints.__anext__()
    assert (hint["queue"], hint["job_id"]) == ("q", "a")
    assert heard == ["a"]  # called at once, and the reader skips this process's own hint


@pytest.mark.parametrize("where", ["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def test_a_batch_of_events_is_published_in_order_in_one_call(
    where: str, request: pytest.FixtureRequest, make_backend: Callable[..., RedisBackend]
) -> None:
    """What a worker's event relay sends: one pipelined call, received in order (also on a cluster,
    where PUBLISH has no key to route by)."""
    if where == "cluster":
        server = request.getfixturevalue("redis_cluster_server")
        prefix = unique_prefix()
        publisher = RedisBackend(server.url, prefix=prefix, cluster=True)
        subscriber = RedisBackend(server.url, prefix=prefix, cluster=True)
    else:
        publisher, subscriber = make_backend(), make_backend()
    messages = [json.dumps({"name": "job:started", "job_id": f"j{i}"}) for i in range(5)]
    try:
        async with await subscriber.subscribe_events() as events:
            await publisher.publish_events(messages)
            with anyio.fail_after(5):
                heard = [await events.__anext__() for _ in messages]
        assert [event["job_id"] for event in heard] == [f"j{i}" for i in range(5)]
    finally:
        if where == "cluster":
            await publisher.close()
            await subscriber.close()


async def test_a_filtered_subscription_skips_other_events_without_decoding_them(
    make_backend: Callable[..., RedisBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription by name passes over the lifecycle events it does
    not want without decoding them, yet still gets a wanted event whose text mentions other names,
    and an unwanted one that merely quotes the wanted name is decoded and dropped."""
    decoded: list[object] = []
    decode = _events._decode

    def counting_decode(data: object) -> dict[str, Any] | None:
        decoded.append(data)
        return decode(data)

    monkeypatch.setattr(_events, "_decode", counting_decode)
    publisher, subscriber = make_backend(), make_backend()
    async with await subscriber.subscribe_events(names={CANCEL_HINT}) as hints:
        await publisher.publish_events(
            [
                json.dumps({"name": "job:completed", "job_id": "skipped"}),
                json.dumps({"name": "job:failed", "job_id": "quoted", "note": CANCEL_HINT}),
                "not json at all",
                json.dumps({"job_id": "wanted", "previous": "job:completed", "name": CANCEL_HINT}),
            ]
        )
        with anyio.fail_after(5):
            event = await hints.__anext__()
    assert event == {"job_id": "wanted", "previous": "job:completed", "name": CANCEL_HINT}
    assert [json.loads(data)["job_id"] for data in decoded] == ["quoted", "wanted"]


@pytest.mark.parametrize("name", ["team/job:done", "job:fertig-ü", 'job:"quoted"'])
async def test_names_an_encoder_may_escape_are_matched_after_decoding(
    name: str, make_backend: Callable[..., RedisBackend]
) -> None:
    """Names with a slash, non-ASCII text or a quote may be escaped in JSON: no byte prefilter then."""
    publisher, subscriber = make_backend(), make_backend()
    async with await subscriber.subscribe_events(names={name}) as events:
        await publisher.publish_events(
            [
                json.dumps({"name": "other", "job_id": "no"}),
                json.dumps({"name": name, "job_id": "yes"}),  # ensure_ascii escapes ü; \\" for a quote
            ]
        )
        with anyio.fail_after(5):
            event = await events.__anext__()
    assert (event["name"], event["job_id"]) == (name, "yes")


async def test_cancel_hints_ride_their_own_channel(make_backend: Callable[..., RedisBackend]) -> None:
    """A worker's hint reader listens on ``<prefix>:control``, so the lifecycle events every worker
    relays on ``<prefix>:events`` never reach it; a subscriber of ``events`` hears no hints."""
    worker_side, admin_side = make_backend(), make_backend()
    async with (
        await worker_side.subscribe_events(channel="control") as control,
        await worker_side.subscribe_events() as events,
    ):
        await admin_side.publish_events([json.dumps({"name": "job:completed", "job_id": "x"})])
        await admin_side.enqueue(
            "q", EnqueueItem("a", json.dumps({"v": 1, "id": "a", "task": "t", "queue": "q"}))
        )
        await admin_side.claim("q", "w", 1, 30.0)
        assert await admin_side.cancel("q", "a") is CancelStatus.RUNNING
        with anyio.fail_after(5):
            assert (await control.__anext__())["name"] == CANCEL_HINT  # the hint, not job:completed
            assert (await events.__anext__())["name"] == "job:completed"
        await admin_side.publish_events([json.dumps({"name": "job:started", "job_id": "y"})])
        with anyio.fail_after(5):
            assert (await events.__anext__())["name"] == "job:started"  # no hint in between

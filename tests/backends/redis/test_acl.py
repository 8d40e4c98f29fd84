"""Least privilege: the documented ACL user is enough for every backend operation."""

from __future__ import annotations

import json

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.backends.base import CancelStatus, EnqueueItem, ErrorInfo, RenewStatus, WorkerInfo
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.errors import BackendAuthError
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

ACL_RULES = (
    "on >app-secret resetkeys ~asyncmq:* resetchannels &asyncmq:* -@all +@list +@hash +@sortedset +@string "
    "+@connection -@dangerous +del +exists +evalsha +script|load +time +info +publish +subscribe"
)


def item(job_id: str) -> EnqueueItem:
    return EnqueueItem(job_id, json.dumps({"v": 1, "id": job_id, "task": "t.x", "queue": "q"}))


async def test_the_documented_acl_user_runs_every_operation(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "asyncmq", *ACL_RULES.split())
    admin.close()
    url = f"redis://asyncmq:app-secret@127.0.0.1:{redis_server.port}/0"
    backend = RedisBackend(url, prefix="asyncmq", retry_timeout=3.0)
    other = RedisBackend(url, prefix="other", retry_timeout=3.0)
    try:
        assert (await backend.probe())["version"]
        await backend.enqueue_bulk("q", [item("a"), item("b"), item("c")])
        await backend.enqueue("q", EnqueueItem("d", item("d").payload, delay=30.0))
        assert await backend.wait_for_work("q", 1.0)
        jobs = {job.id: job for job in (await backend.claim("q", "w", 3, 30.0)).jobs}
        renewer = backend.lease_renewer()
        try:
            renewed = await anyio.to_thread.run_sync(renewer.renew, "q", {"a": jobs["a"].token}, 30.0)
        finally:
            renewer.close()
        assert renewed == {"a": RenewStatus.OK}
        assert (await backend.renew("q", {"b": jobs["b"].token}, 30.0)) == {"b": RenewStatus.OK}
        assert (await backend.report_progress("q", "a", jobs["a"].token, 0.5)).ok
        assert (await backend.complete("q", "a", jobs["a"].token, "1")).ok
        assert (await backend.retry("q", "b", jobs["b"].token, 0.0, ErrorInfo("E", "boom"))).ok
        assert (await backend.fail("q", "c", jobs["c"].token, "failed")).ok
        backend.add_cancel_listener(lambda _q, _j: None)
        job_b = (await backend.claim("q", "w", 1, 30.0)).jobs[0]
        assert await backend.cancel("q", "b") is CancelStatus.RUNNING
        assert (await backend.settle_cancelled("q", "b", job_b.token)).ok
        assert await backend.cancel("q", "d") is CancelStatus.CANCELLED
        assert (await backend.reap("q", "w", 1, 1.0)).is_reaper
        await backend.set_rate_limit("q", 1, 30.0)  # the shared rate limit: its log is a sorted set
        await backend.enqueue_bulk("q", [item("r1"), item("r2")])
        limited = await backend.claim("q", "w", 2, 30.0)
        assert (len(limited.jobs), limited.throttled_for is not None) == (1, True)
        assert await backend.clear_rate_limit("q")
        await backend.pause("q")
        assert await backend.is_queue_paused("q")
        await backend.resume("q")
        assert await backend.counts("q")
        assert await backend.queue_stats("q")
        assert await backend.list_jobs("q", "completed")
        assert await backend.list_dlq("q")
        assert await backend.retry_dead("q", "c")
        assert await backend.clean("q", "completed", 0.0) == 1
        assert await backend.purge_dlq("q") == 0
        assert await backend.list_queues() == ["q"]
        assert await backend.has_queue("q")
        assert not await backend.has_queue("nowhere")
        assert await backend.queues_with_job("b") == ["q"]
        info = WorkerInfo("w", ["q"], "host", 1, 1)
        await backend.register_worker(info, 10.0)
        assert [worker.worker_id for worker in await backend.list_workers()] == ["w"]
        await backend.deregister_worker("w")
        async with await backend.subscribe_events() as events:
            await backend.publish_event({"name": "job:started"})
            await backend.publish_events(['{"name": "job:completed"}'])  # a worker's relay
            with anyio.fail_after(5):
                assert (await events.__anext__())["name"] == "job:started"
                assert (await events.__anext__())["name"] == "job:completed"
        assert await backend.now() > 0
        with pytest.raises(BackendAuthError, match="denied"):
            await other.enqueue("q", item("x"))  # another tenant's prefix is off limits
    finally:
        await backend.close()
        await other.close()


async def test_the_acl_user_quarantines_job_keys_of_another_type(redis_server: RedisServer) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "asyncmq", *ACL_RULES.split())
    url = f"redis://asyncmq:app-secret@127.0.0.1:{redis_server.port}/0"
    backend = RedisBackend(url, prefix="asyncmq", retry_timeout=3.0)
    try:
        await backend.enqueue_bulk("q", [item("a"), item("s"), item("l"), item("b")])
        keys = backend.keys.queue("q")
        admin.delete(keys.job("s"), keys.job("l"))
        admin.set(keys.job("s"), b"text")
        admin.rpush(keys.job("l"), b"x")
        jobs = {job.id: job for job in (await backend.claim("q", "w", 4, 30.0)).jobs}
        assert sorted(jobs) == ["a", "b", "l", "s"]
        assert "kept" in jobs["s"].decode_error
        assert "deleted" in jobs["l"].decode_error
        assert admin.hget(keys.job("s"), "quarantined") == b"text"
    finally:
        admin.close()
        await backend.close()

"""Flows on the hot path: a completion looks for children only on a job that has some.

``complete.lua`` reads the ``has_children`` field (set by ``flow_enqueue.lua`` and ``flow_link.lua``
when a child is registered) in the HMGET it already makes, so a job without children costs no extra
command. A queue created before the field existed (its meta lacks the ``child_flags`` marker) keeps
looking for children on every completion.
"""

from __future__ import annotations

import json

import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

TASK = "tests.flag_step"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hkeys_calls(server: RedisServer) -> int:
    admin = server.client()
    try:
        stats = admin.info("commandstats")
    finally:
        admin.close()
    return int(stats.get("cmdstat_hkeys", {}).get("calls", 0))


async def run(backend: RedisBackend, queue: str, job_id: str) -> None:
    reply = await backend.claim(queue, "w1", 100, 30.0)
    held = {job.id: job.token for job in reply.jobs}
    assert job_id in held, sorted(held)
    for other, token in held.items():
        if other != job_id:
            assert (await backend.requeue(queue, other, token, 100)).ok
    assert (await backend.complete(queue, job_id, held[job_id], json.dumps(None))).ok


async def test_only_a_parent_looks_for_children_when_it_completes(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="f")
    admin = redis_server.client()
    try:
        queue = Queue("q", backend)
        await queue.add(TASK, job_id="plain")
        await queue.add(TASK, job_id="parent")
        await queue.add(TASK, job_id="child", depends_on=["parent"])
        keys = backend.keys.queue("q")
        assert admin.hget(keys.job("parent"), "has_children") == b"1"
        assert admin.hget(keys.job("plain"), "has_children") is None

        before = hkeys_calls(redis_server)
        await run(backend, "q", "plain")
        assert hkeys_calls(redis_server) == before  # no children: no look-up
        await run(backend, "q", "parent")
        assert hkeys_calls(redis_server) > before
        assert await queue.get_job_state("child") == "waiting"
    finally:
        admin.close()
        await backend.close()


async def test_a_child_in_another_queue_flags_its_parent(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="f")
    admin = redis_server.client()
    try:
        parents, children = Queue("p", backend), Queue("c", backend)
        await parents.add(TASK, job_id="parent")
        await children.add(TASK, job_id="child", depends_on=[("p", "parent")])
        assert admin.hget(backend.keys.queue("p").job("parent"), "has_children") == b"1"
        assert await children.get_job_state("child") == "blocked"
    finally:
        admin.close()
        await backend.close()


async def test_a_queue_older_than_the_flag_still_releases_children(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, prefix="f")
    admin = redis_server.client()
    try:
        queue = Queue("q", backend)
        await queue.add(TASK, job_id="parent")
        await queue.add(TASK, job_id="child", depends_on=["parent"])
        keys = backend.keys.queue("q")
        # As an older version stored them: no marker on the queue, no flag on the parent.
        admin.hdel(keys.meta, "child_flags")
        admin.hdel(keys.job("parent"), "has_children")
        await run(backend, "q", "parent")
        assert await queue.get_job_state("child") == "waiting"
    finally:
        admin.close()
        await backend.close()

"""Cross-queue flows on Redis: the outbox, the reaper's delivery pass and a kill between its steps.

A parent and a child in different queues have different hash tags, so the completion of the
parent cannot release the child in the same script. The settle writes an outbox entry atomically;
the reaper delivers it (``flow_deliver``, idempotent) and removes it after. These tests kill a
process between delivery and removal, and run the same flow on a real three-master Redis Cluster.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import AsyncIterator

import anyio
import pytest
import redis

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.flows import FlowProducer
from asyncmq_otel.queues import Queue
from tests.support.invariants import check_flows
from tests.support.redis_cluster import queue_on
from tests.support.redis_server import RedisServer, delete_prefix, unique_prefix
from tests.support.worker_proc import REPO

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(120)]

TASK = "tests.flow_step"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[tuple[RedisBackend, str, str]]:
    prefix = unique_prefix()
    backend = RedisBackend(redis_url, prefix=prefix, retry_timeout=5.0)
    yield backend, redis_url, prefix
    await backend.close()
    delete_prefix(redis_url, prefix)


async def complete(backend: RedisBackend, queue: str, job_id: str) -> None:
    claimed = await backend.claim(queue, "w1", 100, 30.0)
    tokens = {str(job.id): str(job.token) for job in claimed.jobs}
    assert job_id in tokens
    assert (await backend.complete(queue, job_id, tokens[job_id], json.dumps(job_id))).ok


def outbox(url: str, prefix: str, queue: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.zrange(f"{prefix}:{{{queue}}}:outbox", 0, -1))
    finally:
        client.close()


_KILL_AFTER_DELIVER = textwrap.dedent(
    """
    import asyncio, os, sys
    from asyncmq_otel.backends.redis import RedisBackend, _scripts

    real = _scripts.call

    async def call(client, name, keys, args):
        reply = await real(client, name, keys, args)
        if name == "flow_deliver":
            os._exit(137)  # delivered, not yet removed from the outbox
        return reply

    _scripts.call = call

    async def main():
        backend = RedisBackend(sys.argv[1], prefix=sys.argv[2])
        await backend.reconcile_flows(sys.argv[3])

    asyncio.run(main())
    """
)


@pytest.mark.chaos
async def test_a_kill_between_delivery_and_removal_is_redelivered_harmlessly(
    shared: tuple[RedisBackend, str, str],
) -> None:
    backend, url, prefix = shared
    up, down = unique_prefix(), unique_prefix()
    await FlowProducer(backend).add_flow(
        down,
        [
            {"task_id": TASK, "job_id": "p", "queue": up},
            {"task_id": TASK, "job_id": "c", "depends_on": ["p"]},
            {"task_id": TASK, "job_id": "c2", "depends_on": ["p"]},
        ],
    )
    await complete(backend, up, "p")
    # the settle wrote the outbox atomically: until the reaper runs, the children wait
    assert len(outbox(url, prefix, up)) == 2
    assert await Queue(down, backend).get_job_state("c") == "blocked"

    with anyio.fail_after(60):
        killed = await anyio.run_process(
            [sys.executable, "-c", _KILL_AFTER_DELIVER, url, prefix, up],
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": ""},
            check=False,
        )
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]
    assert len(outbox(url, prefix, up)) == 2  # the delivered entry was not removed
    queue = Queue(down, backend)
    delivered_first = [job_id for job_id in ("c", "c2") if await queue.get_job_state(job_id) == "waiting"]
    assert len(delivered_first) == 1

    assert await backend.reconcile_flows(up) == 2  # the next pass delivers both, one of them again
    assert outbox(url, prefix, up) == []
    counts = await queue.counts()
    assert (counts["waiting"], counts["blocked"]) == (2, 0)  # released once each, never twice
    claimed = await backend.claim(down, "w2", 100, 30.0)
    assert sorted(job.id for job in claimed.jobs) == ["c", "c2"]
    assert check_flows(url, prefix, [(up, "p"), (down, "c"), (down, "c2")]) == []


async def test_a_parent_finishing_before_its_cross_queue_child_is_stored(
    shared: tuple[RedisBackend, str, str],
) -> None:
    """The producer links the child to its parent, then stores it: an outcome in between waits for it."""
    backend, url, prefix = shared
    up, down = unique_prefix(), unique_prefix()
    await Queue(up, backend).add(TASK, job_id="p")
    child_ref = f"{down}/c"
    assert await backend._flows._link(up, "p", child_ref) == (
        "pending",
        "p",
        True,
    )  # the parent took its own flow id
    await complete(backend, up, "p")
    assert await backend.reconcile_flows(up) == 0  # no child yet: the entry waits
    assert len(outbox(url, prefix, up)) == 1
    await Queue(down, backend).add(TASK, job_id="c", depends_on=[(up, "p")])
    assert await backend.reconcile_flows(up) == 1
    assert await Queue(down, backend).get_job_state("c") == "waiting"


async def test_a_reaper_pass_delivers_at_most_one_page_of_the_outbox(
    shared: tuple[RedisBackend, str, str],
) -> None:
    """The reconciler is bounded (100 entries per queue per pass) so a reap stays short: a parent
    with 150 children in another queue releases them over two passes."""
    backend, url, prefix = shared
    up, down = unique_prefix(), unique_prefix()
    await Queue(up, backend).add(TASK, job_id="p")
    children = Queue(down, backend)
    await children.add_bulk(
        [{"task_id": TASK, "job_id": f"c{i:03d}", "depends_on": [(up, "p")]} for i in range(150)]
    )
    await complete(backend, up, "p")
    assert len(outbox(url, prefix, up)) == 150
    # the flow pass runs at the start of a reap by the reaper: the first reap takes the role
    assert (await backend.reap(up, "r1", 3, 30.0)).is_reaper

    async def released() -> tuple[int, int, int]:
        counts = await children.counts()
        return len(outbox(url, prefix, up)), counts["waiting"], counts["blocked"]

    assert await released() == (150, 0, 150)
    await backend.reap(up, "r1", 3, 30.0)
    assert await released() == (50, 100, 50)  # one page
    await backend.reap(up, "r1", 3, 30.0)
    assert await released() == (0, 150, 0)  # the rest on the next pass


# -- a real three-master cluster -------------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.chaos
async def test_cross_queue_flow_on_a_three_master_cluster(three_masters: list[RedisServer]) -> None:
    backend = RedisBackend(three_masters[0].url, prefix="flows", cluster=True, retry_timeout=5.0)
    try:
        first, second, third = queue_on(0), queue_on(1), queue_on(2)
        await FlowProducer(backend).add_flow(
            first,
            [
                {"task_id": TASK, "job_id": "a"},
                {"task_id": TASK, "job_id": "b", "queue": second, "depends_on": ["a"]},
                {"task_id": TASK, "job_id": "c", "queue": third, "depends_on": ["a", "b"]},
                {"task_id": TASK, "job_id": "d", "depends_on": ["c"]},
            ],
        )
        nodes = {node.id: node.state for node in await Queue(third, backend).get_flow("c")}
        assert nodes == {"a": "waiting", "b": "blocked", "c": "blocked", "d": "blocked"}
        await complete(backend, first, "a")
        await backend.reconcile_flows(first)
        assert await Queue(second, backend).get_job_state("b") == "waiting"
        assert await Queue(third, backend).get_job_state("c") == "blocked"
        claimed = await backend.claim(second, "w1", 10, 30.0)
        job = claimed.jobs[0]
        assert (await backend.fail(second, "b", str(job.token), "failed")).ok
        await backend.reconcile_flows(second)  # c is dead for b; then d, in the first queue, for c
        await backend.reconcile_flows(third)
        assert await Queue(third, backend).get_job_state("c") == "failed"
        assert await Queue(first, backend).get_job_state("d") == "failed"
        assert await Queue(second, backend).retry_job("b")
        await backend.reconcile_flows(second)
        await backend.reconcile_flows(third)
        assert await Queue(third, backend).get_job_state("c") == "blocked"
        assert await Queue(first, backend).get_job_state("d") == "blocked"
    finally:
        await backend.close()

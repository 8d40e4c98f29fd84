"""A flow across queues is stored all or none on Redis: staged parts, a commit record, the reaper's recovery.

Each queue's part of the flow is staged (invisible) by one script, the commit record ``flow:<txn>``
is the commit point, and a second script per queue shows each part. These tests SIGKILL a producer
right before and right after the commit record (its ``flow_decide`` call), on one server and on a
real three-master cluster, and check that nothing of the flow is seen until the reaper's pass rolls
it back (nothing left, not even a link in a parent of another queue) or forward (every job, with
the outcomes its parents reached meanwhile). They also cover a key of another Redis type, which
``flow_enqueue`` now finds before its first write.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import redis

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.errors import BackendError, JobArgumentError
from asyncmq_otel.flows import FlowProducer
from asyncmq_otel.queues import Queue
from tests.support.invariants import check_flows, stuck_jobs
from tests.support.poll import eventually
from tests.support.redis_cluster import queue_on
from tests.support.redis_server import RedisServer, delete_prefix, unique_prefix
from tests.support.worker_proc import REPO

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(120)]

TASK = "tests.flow_step"
_STAGE_S = 0.2  # the killed producer's flow_stage_timeout: the reaper may resolve its parts soon


@dataclass
class Target:
    """Where a test runs: a server (or cluster), its key prefix and three queues (one per master)."""

    url: str
    prefix: str
    cluster: bool
    queues: tuple[str, str, str]
    backend: RedisBackend

    def client(self) -> Any:
        if self.cluster:
            return redis.RedisCluster.from_url(self.url)
        return redis.Redis.from_url(self.url)

    def key(self, queue: str, name: str) -> str:
        return f"{self.prefix}:{{{queue}}}:{name}"


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "single":
        url = str(request.getfixturevalue("redis_url"))
        queues = (unique_prefix(), unique_prefix(), unique_prefix())
    else:
        masters: list[RedisServer] = request.getfixturevalue("three_masters")
        url = masters[0].url
        queues = (queue_on(0), queue_on(1), queue_on(2))
    prefix = unique_prefix()
    cluster = request.param == "cluster"
    backend = RedisBackend(url, prefix=prefix, cluster=cluster, retry_timeout=5.0)
    yield Target(url, prefix, cluster, queues, backend)
    await backend.close()
    if not cluster:
        delete_prefix(url, prefix)


def flow(target: Target) -> list[dict[str, Any]]:
    """Four jobs over three queues (the first one twice), with a parent stored before in two of them."""
    _first, second, third = target.queues
    return [
        {"task_id": TASK, "job_id": "a"},
        {"task_id": TASK, "job_id": "b", "queue": second, "depends_on": ["a"]},
        {"task_id": TASK, "job_id": "c", "queue": third, "depends_on": ["a", "b", [second, "ext"]]},
        {"task_id": TASK, "job_id": "d", "depends_on": ["c", "home"]},  # home: stored before, in `first`
    ]


FLOW_JOBS = (("first", "a"), ("second", "b"), ("third", "c"), ("first", "d"))


def refs(target: Target) -> list[tuple[str, str]]:
    names = dict(zip(("first", "second", "third"), target.queues, strict=True))
    return [(names[where], job_id) for where, job_id in FLOW_JOBS]


_KILL_AT_COMMIT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from asyncmq_otel.backends.redis import RedisBackend, _scripts
    from asyncmq_otel.flows import FlowProducer

    url, prefix, cluster, point, queue, jobs = sys.argv[1:7]
    real = _scripts.call

    async def call(client, name, keys, args):
        if name == "flow_decide" and point == "staged":
            os._exit(137)  # every part is staged; no commit record
        reply = await real(client, name, keys, args)
        if name == "flow_decide" and point == "committed":
            os._exit(137)  # the commit record says commit; no part is shown yet
        return reply

    _scripts.call = call

    async def main():
        backend = RedisBackend(url, prefix=prefix, cluster=cluster == "1")
        backend.flow_stage_timeout = float(os.environ["STAGE_S"])
        await FlowProducer(backend).add_flow(queue, json.loads(jobs))

    asyncio.run(main())
    """
)


async def kill_producer(target: Target, point: str) -> None:
    """Run add_flow in a subprocess that is killed at ``point`` ('staged' or 'committed')."""
    args = [target.url, target.prefix, "1" if target.cluster else "0", point, target.queues[0]]
    with anyio.fail_after(60):
        killed = await anyio.run_process(
            [sys.executable, "-c", _KILL_AT_COMMIT, *args, json.dumps(flow(target))],
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "", "STAGE_S": str(_STAGE_S)},
            check=False,
        )
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]


async def run(backend: RedisBackend, queue: str, job_id: str) -> None:
    """Claim ``queue``'s ready jobs, which must be exactly ``job_id``, and complete it."""
    claimed = await backend.claim(queue, "w1", 100, 30.0)
    assert [job.id for job in claimed.jobs] == [job_id]
    assert (await backend.complete(queue, job_id, claimed.jobs[0].token, json.dumps(job_id))).ok


async def assert_flow_invisible(target: Target) -> None:
    """No worker, count, listing or read sees a job of the flow (only the parents stored before)."""
    backend = target.backend
    for queue, job_id in refs(target):
        assert await backend.get_job(queue, job_id) is None
    first, second, third = target.queues
    assert [sum((await backend.counts(queue)).values()) for queue in target.queues] == [1, 1, 0]
    assert [node.id for node in await Queue(second, backend).get_flow("ext")] == ["ext"]
    with pytest.raises(JobArgumentError, match="no job 'c'"):
        await Queue(third, backend).get_flow("c")
    assert await Queue(first, backend).cancel_job("a") is False  # nothing to cancel yet
    # nor can another job depend on one, in its queue or from another (it could be rolled back)
    for queue, parent in ((first, "a"), (third, (first, "a"))):
        with pytest.raises(JobArgumentError, match="'a' does not exist"):
            await Queue(queue, backend).add(TASK, job_id="late", depends_on=[parent])


def staged_left(target: Target) -> int:
    client = target.client()
    try:
        return sum(int(client.zcard(target.key(queue, "staged"))) for queue in target.queues)
    finally:
        client.close()


async def reconcile(target: Target) -> None:
    for queue in target.queues:
        await target.backend.reconcile_flows(queue)


async def setup_outside_parents(target: Target) -> None:
    await Queue(target.queues[0], target.backend).add(TASK, job_id="home")
    await Queue(target.queues[1], target.backend).add(TASK, job_id="ext")


async def complete_outside_parents(target: Target) -> None:
    """Both parents from outside finish while the flow is staged: their outcomes must wait for it."""
    first, second, _third = target.queues
    await run(target.backend, second, "ext")  # a staged job is never claimed: only ext is ready
    await run(target.backend, first, "home")
    client = target.client()
    try:
        deferred = [client.zrange(target.key(queue, "outbox"), 0, -1) for queue in (first, second)]
    finally:
        client.close()
    # home's child d is in home's queue, ext's child c in another: both outcomes wait in the outbox
    assert deferred == [
        [f"done|{first}/home|{first}/d".encode()],
        [f"done|{second}/ext|{target.queues[2]}/c".encode()],
    ]


@pytest.mark.chaos
async def test_a_producer_killed_before_the_commit_record_is_rolled_back(target: Target) -> None:
    await setup_outside_parents(target)
    await kill_producer(target, "staged")
    assert staged_left(target) == 4
    await assert_flow_invisible(target)
    await complete_outside_parents(target)
    first, second, third = target.queues
    if not target.cluster:  # the checker's client is a single-server one
        assert any(
            "neither committed" in found for found in check_flows(target.url, target.prefix, refs(target))
        )
        assert [stuck_jobs(target.url, target.prefix, queue) for queue in target.queues] == [[], [], []]

    async def rolled_back() -> bool:
        for queue in target.queues:  # the worker's reaper path: the role's holder runs the flow pass
            assert (await target.backend.reap(queue, "reaper-1", 3, 5.0)).is_reaper
        return staged_left(target) == 0

    await eventually(rolled_back, timeout=20, what="the reaper's pass rolls the staged parts back")
    if not target.cluster:
        assert check_flows(target.url, target.prefix, [(first, "home"), (second, "ext")]) == []
    client = target.client()
    try:
        for queue, job_id in refs(target):
            for name in ("job", "deps", "children", "failed_for"):
                assert not client.exists(target.key(queue, f"{name}:{job_id}")), (queue, name, job_id)
        # no link in a parent is left for a job that never existed, and no outcome waits for one
        for queue, parent in ((first, "home"), (second, "ext"), (first, "a")):
            assert client.hkeys(target.key(queue, f"children:{parent}")) == []
        assert [client.zcard(target.key(queue, "outbox")) for queue in target.queues] == [0, 0, 0]
    finally:
        client.close()
    await assert_flow_invisible(target)

    # the ids are free again: the same flow is stored whole and runs
    target.backend.flow_stage_timeout = 60.0
    await FlowProducer(target.backend).add_flow(first, flow(target))
    nodes = {node.id: node.state for node in await Queue(third, target.backend).get_flow("c")}
    assert nodes == {
        "a": "waiting", "b": "blocked", "c": "blocked", "d": "blocked", "ext": "completed", "home": "completed",
    }  # fmt: skip


@pytest.mark.chaos
async def test_a_producer_killed_after_the_commit_record_is_rolled_forward(target: Target) -> None:
    await setup_outside_parents(target)
    await kill_producer(target, "committed")
    await assert_flow_invisible(target)  # committed, but no part shown yet
    await complete_outside_parents(target)
    backend = target.backend
    first, second, third = target.queues

    async def rolled_forward() -> bool:
        await reconcile(target)
        client = target.client()
        try:
            outbox = sum(int(client.zcard(target.key(queue, "outbox"))) for queue in target.queues)
        finally:
            client.close()
        return staged_left(target) == 0 and outbox == 0

    await eventually(rolled_forward, timeout=20, what="the reaper's pass rolls the staged parts forward")
    if not target.cluster:  # every job sits in the index of its state (a script stopping halfway would not)
        assert [stuck_jobs(target.url, target.prefix, queue) for queue in target.queues] == [[], [], []]
    nodes = {node.id: node.state for node in await Queue(third, backend).get_flow("c")}
    assert nodes == {
        "a": "waiting", "b": "blocked", "c": "blocked", "d": "blocked", "ext": "completed", "home": "completed",
    }  # fmt: skip
    assert (await backend.counts(first))["waiting"] == 1
    # the deferred outcomes were applied: c waits for a and b only, d for c only
    await run(backend, first, "a")
    await reconcile(target)
    await run(backend, second, "b")
    await reconcile(target)
    await run(backend, third, "c")
    await reconcile(target)
    assert await Queue(first, backend).get_job_state("d") == "waiting"
    await run(backend, first, "d")
    if not target.cluster:  # the checker's client is a single-server one
        outside = [(first, "home"), (second, "ext")]
        assert check_flows(target.url, target.prefix, [*refs(target), *outside]) == []


async def test_a_failure_in_a_later_part_rolls_the_staged_parts_back(target: Target) -> None:
    """The producer itself aborts: a key of another type in the third queue stops the flow there."""
    await setup_outside_parents(target)
    client = target.client()
    try:
        client.set(target.key(target.queues[2], "job:c"), "not a hash")
    finally:
        client.close()
    with pytest.raises(BackendError, match="'c' holds another Redis type"):
        await FlowProducer(target.backend).add_flow(target.queues[0], flow(target))
    assert staged_left(target) == 0
    for queue, job_id in refs(target)[:2]:
        assert await target.backend.get_job(queue, job_id) is None
    client = target.client()
    try:
        assert client.hkeys(target.key(target.queues[0], "children:a")) == []
        assert client.hkeys(target.key(target.queues[1], "children:b")) == []
    finally:
        client.close()


async def test_a_slow_producer_whose_flow_was_rolled_back_is_told(target: Target) -> None:
    """A reaper that finds a part past its deadline writes 'abort' first: the commit then fails whole."""
    backend = target.backend
    backend.flow_stage_timeout = _STAGE_S
    first, _second, third = target.queues
    await setup_outside_parents(target)
    reconciled = False
    real = backend._flows._store_run

    async def slow_store(queue: str, items: Any, txn: str = "") -> Any:
        nonlocal reconciled
        if queue == third and not reconciled:  # the first parts are staged: let their deadline pass

            async def aborted() -> bool:
                await reconcile(target)
                return staged_left(target) == 0

            await eventually(aborted, timeout=20, what="a reaper rolls the late parts back")
            reconciled = True
        return await real(queue, items, txn)

    backend._flows._store_run = slow_store  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="rolled this flow back"):
        await FlowProducer(backend).add_flow(first, flow(target))
    assert reconciled
    assert staged_left(target) == 0
    for queue, job_id in refs(target):
        assert await backend.get_job(queue, job_id) is None


async def test_flow_enqueue_refuses_a_key_of_another_type_before_any_write(
    redis_url: str, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
    queue = Queue(unique_prefix(), backend)
    try:
        await queue.add(TASK, job_id="p")
        client = redis.Redis.from_url(redis_url)
        try:
            client.set(f"{redis_prefix}:{{{queue.name}}}:job:x", "not a hash")
            client.set(f"{redis_prefix}:{{{queue.name}}}:job:q", "not a hash")
            # the second job's key is a string: the first must not be stored, nor linked to its parent
            with pytest.raises(BackendError, match="'x' holds another Redis type"):
                await queue.add_bulk(
                    [
                        {"task_id": TASK, "job_id": "y", "depends_on": ["p"]},
                        {"task_id": TASK, "job_id": "x", "depends_on": ["p"]},
                    ]
                )
            assert await queue.get_job("y") is None
            assert client.hkeys(f"{redis_prefix}:{{{queue.name}}}:children:p") == []
            # a parent whose key is a string is named
            with pytest.raises(BackendError, match="'q' holds another Redis type"):
                await queue.add(TASK, job_id="z", depends_on=["q"])
            assert await queue.get_job("z") is None
        finally:
            client.close()
    finally:
        await backend.close()


async def test_a_parent_retried_from_the_dlq_while_its_child_is_staged(target: Target) -> None:
    """The child was staged dead-lettered for its dead parent; the parent's retry must reach it after the commit."""
    backend = target.backend
    first, second, _third = target.queues
    await Queue(first, backend).add(TASK, job_id="p")
    claimed = await backend.claim(first, "w1", 1, 30.0)
    assert (await backend.fail(first, "p", claimed.jobs[0].token, "failed")).ok
    real = backend._flows._decide

    async def decide(txn: str, wanted: str) -> tuple[str, bool]:
        if wanted == "commit":  # every part is staged: the parent leaves the DLQ now
            assert await Queue(first, backend).retry_job("p")
        return await real(txn, wanted)

    backend._flows._decide = decide  # type: ignore[method-assign]
    await FlowProducer(backend).add_flow(
        first,
        [
            {"task_id": TASK, "job_id": "x", "queue": second},
            {"task_id": TASK, "job_id": "c", "depends_on": [[first, "p"], [second, "x"]]},
        ],
    )
    # shown as it was staged (dead for p); the deferred retry is delivered by the next flow pass
    assert await Queue(first, backend).get_job_state("c") == "failed"

    async def reblocked() -> bool:
        await reconcile(target)
        return await Queue(first, backend).get_job_state("c") == "blocked"

    await eventually(reblocked, timeout=10, what="the deferred retry re-blocks the child")

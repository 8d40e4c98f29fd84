"""Job dependencies on every backend: blocked jobs, fan-out and fan-in, failure propagation, flows.

The transitions are driven through the port (claim, complete, fail, cancel, retry_dead) and the
producer API (``Queue.add(depends_on=...)``, ``FlowProducer.add_flow``), so each check reads the
state a backend stored, with no worker timing involved. Time is driven with :func:`elapse`: the
in-memory backend runs on a FakeClock, Redis' ``TIME`` is polled.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from asyncmq_otel.backends.base import Backend, ErrorInfo
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.errors import JobArgumentError
from asyncmq_otel.flows import FlowCycleError, FlowProducer
from asyncmq_otel.queues import Queue
from tests.backends.conformance import elapse
from tests.support.redis_server import (  # noqa: F401 - fixtures are registered by import
    RedisServer,
    delete_prefix,
    redis_cluster_server,
    redis_url,
    unique_prefix,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TASK = "tests.flow_step"
Factory = Callable[[], Backend]


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on asyncio only, so the whole suite does."""
    return "asyncio"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=[pytest.mark.redis, pytest.mark.cluster]),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind = str(request.param)
    if kind == "memory":
        yield InMemoryBackend(clock=FakeClock(start=time.time()))
        return
    from asyncmq_otel.backends.redis import RedisBackend

    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        server: RedisServer = request.getfixturevalue("redis_cluster_server")
        url = server.url
    prefix = unique_prefix()
    made = RedisBackend(url, prefix=prefix, cluster=kind == "cluster", retry_timeout=5.0)
    yield made
    await made.close()
    delete_prefix(url, prefix)


@pytest.fixture
def queue(backend: Backend) -> Queue:
    return Queue(unique_prefix(), backend)


async def add(queue: Queue, job_id: str, *parents: Any, **options: Any) -> str:
    return await queue.add(TASK, [job_id], job_id=job_id, depends_on=list(parents) or None, **options)


async def claim_all(backend: Backend, queue: str) -> dict[str, str]:
    """Every job ready now, leased to one worker: id -> token."""
    reply = await backend.claim(queue, "w1", 100, 30.0)
    return {job.id: job.token for job in reply.jobs}


async def run(backend: Backend, queue: str, job_id: str, *, result: Any = None, fail: bool = False) -> None:
    """Claim the ready jobs and settle ``job_id`` (the others go back to wait)."""
    held = await claim_all(backend, queue)
    assert job_id in held, f"{job_id} is not ready; ready: {sorted(held)}"
    for other, token in held.items():
        if other != job_id:
            assert (await backend.requeue(queue, other, token, 100)).ok
    token = held[job_id]
    if fail:
        reply = await backend.fail(queue, job_id, token, "failed", ErrorInfo("ValueError", "x"))
    else:
        reply = await backend.complete(queue, job_id, token, json.dumps(result))
    assert reply.ok


async def states(queue: Queue, *ids: str) -> dict[str, str | None]:
    return {job_id: await queue.get_job_state(job_id) for job_id in ids}


# -- same queue ---------------------------------------------------------------------------------------------
async def test_fan_out_fan_in(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "b", "a")
    await add(queue, "c", "a")
    await add(queue, "d", "b", "c")
    assert await states(queue, "a", "b", "c", "d") == {
        "a": "waiting",
        "b": "blocked",
        "c": "blocked",
        "d": "blocked",
    }
    counts = await queue.counts()
    assert counts["blocked"] == 3
    assert counts["waiting"] == 1
    assert {job["id"] for job in await queue.list_jobs("blocked")} == {"b", "c", "d"}
    stats = await queue.stats()
    assert stats.blocked == 3
    assert 0 <= stats.oldest_blocked_age < 60

    await run(backend, queue.name, "a", result={"rows": 3})
    assert await states(queue, "b", "c", "d") == {"b": "waiting", "c": "waiting", "d": "blocked"}
    await run(backend, queue.name, "b", result="B")
    assert await queue.get_job_state("d") == "blocked"  # one parent of two is not enough
    await run(backend, queue.name, "c", result="C")
    assert await queue.get_job_state("d") == "waiting"
    await run(backend, queue.name, "d")
    assert (await queue.counts())["blocked"] == 0


async def test_a_blocked_child_keeps_its_priority_and_ttl(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "low", "a", priority=9)
    await add(queue, "high", "a", priority=1, ttl=3600)
    await run(backend, queue.name, "a")
    held = await claim_all(backend, queue.name)
    assert list(held) == ["high", "low"]  # released in priority order, not enqueue order
    stored = await backend.get_job(queue.name, "high")
    assert stored is not None
    assert stored.job is not None
    assert stored.job.priority == 1
    assert stored.expires_at is not None


async def test_completed_parent_counts_as_done(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await run(backend, queue.name, "a")
    await add(queue, "b", "a")
    assert await queue.get_job_state("b") == "waiting"


async def test_missing_parent_is_refused_and_nothing_is_stored(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    with pytest.raises(JobArgumentError, match="does not exist"):
        await add(queue, "b", "a", "nope")
    assert await queue.get_job("b") is None
    assert (await queue.counts())["blocked"] == 0


async def test_bad_depends_on_is_refused(queue: Queue) -> None:
    with pytest.raises(JobArgumentError, match="itself"):
        await add(queue, "a", "a")
    with pytest.raises(JobArgumentError, match=r"depends_on\[0\]"):
        await add(queue, "b", 42)
    with pytest.raises(JobArgumentError, match="on_parent_failure"):
        await add(queue, "c", on_parent_failure="maybe")


async def test_failed_parent_dead_letters_descendants(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "b", "a")
    await add(queue, "c", "b")
    await add(queue, "r", "a", on_parent_failure="run")
    await run(backend, queue.name, "a", fail=True)
    assert await states(queue, "b", "c", "r") == {"b": "failed", "c": "failed", "r": "waiting"}
    dead = {job["id"]: job["dlq_reason"] for job in await queue.dlq()}
    assert dead == {"a": "failed", "b": "dependency_failed", "c": "dependency_failed"}
    assert (await queue.counts())["blocked"] == 0


async def test_cancelled_parent_dead_letters_children(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "b", "a")
    assert await queue.cancel_job("a")
    assert await queue.get_job_state("b") == "failed"
    raw = await queue.get_job("b")
    assert raw is not None
    assert raw["dlq_reason"] == "dependency_failed"


async def test_expired_parent_dead_letters_children(backend: Backend, queue: Queue) -> None:
    """A parent whose TTL passed before it ran expires at its claim (the worker's pickup check
    settles it ``fail(reason="expired")``): its blocked children are dead-lettered with it."""
    await add(queue, "a", ttl=0.05)
    await add(queue, "b", "a")
    await add(queue, "c", "b")
    await add(queue, "r", "a", on_parent_failure="run")
    await elapse(backend, 0.2)
    (held,) = (await backend.claim(queue.name, "w1", 10, 30.0)).jobs
    assert held.id == "a"
    assert held.job is not None
    assert held.job.expires_at is not None
    assert held.claimed_at > held.job.expires_at  # what the worker checks before it runs a job
    assert (await backend.fail(queue.name, "a", held.token, "expired")).ok
    assert await states(queue, "a", "b", "c", "r") == {
        "a": "expired",
        "b": "failed",
        "c": "failed",
        "r": "waiting",
    }
    dead = {job["id"]: job["dlq_reason"] for job in await queue.dlq()}
    assert dead == {"a": "expired", "b": "dependency_failed", "c": "dependency_failed"}
    assert (await queue.counts())["blocked"] == 0


async def test_child_of_dead_parent_is_dead_lettered_at_enqueue(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await run(backend, queue.name, "a", fail=True)
    await add(queue, "b", "a")
    assert await queue.get_job_state("b") == "failed"
    assert await queue.retry_job("a")
    assert await queue.get_job_state("b") == "blocked"


async def test_dlq_retry_of_parent_reblocks_descendants(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "x")
    await add(queue, "b", "a")
    await add(queue, "c", "b")
    await add(queue, "d", "a", "x")  # dead for a and then for x too
    await run(backend, queue.name, "a", fail=True)
    await run(backend, queue.name, "x", fail=True)
    assert await states(queue, "b", "c", "d") == {"b": "failed", "c": "failed", "d": "failed"}

    assert await queue.retry_job("a")
    # b and c were dead only for a; d is still dead for x
    assert await states(queue, "a", "b", "c", "d") == {
        "a": "waiting",
        "b": "blocked",
        "c": "blocked",
        "d": "failed",
    }
    assert {job["id"] for job in await queue.dlq()} == {"x", "d"}
    await run(backend, queue.name, "a")
    assert await states(queue, "b", "c") == {"b": "waiting", "c": "blocked"}
    await run(backend, queue.name, "b")
    assert await queue.get_job_state("c") == "waiting"

    assert await queue.retry_job("x")
    assert await queue.get_job_state("d") == "blocked"
    await run(backend, queue.name, "x")
    assert await queue.get_job_state("d") == "waiting"  # a completed earlier


# -- flows --------------------------------------------------------------------------------------------------
async def test_flow_is_stored_and_read_back(backend: Backend, queue: Queue) -> None:
    producer = FlowProducer(backend)
    ids = await producer.add_flow(
        queue.name,
        [
            {"task_id": TASK, "job_id": "extract"},
            {"task_id": TASK, "job_id": "t1", "depends_on": ["extract"]},
            {"task_id": TASK, "job_id": "t2", "depends_on": ["extract"]},
            {"task_id": TASK, "job_id": "load", "depends_on": ["t1", "t2"]},
        ],
    )
    assert ids == ["extract", "t1", "t2", "load"]
    await run(backend, queue.name, "extract")
    nodes = {node.id: node for node in await queue.get_flow("t1")}
    assert set(nodes) == {"extract", "t1", "t2", "load"}
    assert nodes["extract"].state == "completed"
    assert nodes["t1"].state == "waiting"
    assert nodes["load"].state == "blocked"
    assert set(nodes["load"].parents) == {(queue.name, "t1"), (queue.name, "t2")}


async def test_flow_with_a_cycle_stores_nothing(backend: Backend, queue: Queue) -> None:
    producer = FlowProducer(backend)
    with pytest.raises(FlowCycleError, match="cycle"):
        await producer.add_flow(
            queue.name,
            [
                {"task_id": TASK, "job_id": "root"},
                {"task_id": TASK, "job_id": "p", "depends_on": ["root", "q"]},
                {"task_id": TASK, "job_id": "q", "depends_on": ["p"]},
            ],
        )
    assert await states(queue, "root", "p", "q") == {"root": None, "p": None, "q": None}


async def test_flow_with_a_bad_job_stores_nothing(backend: Backend, queue: Queue) -> None:
    producer = FlowProducer(backend)
    with pytest.raises(JobArgumentError, match="does not exist"):
        await producer.add_flow(
            queue.name,
            [
                {"task_id": TASK, "job_id": "root"},
                {"task_id": TASK, "job_id": "p", "depends_on": ["root", "elsewhere"]},
            ],
        )
    assert await queue.get_job("root") is None


async def test_cross_queue_dependencies(backend: Backend) -> None:
    upstream, downstream = Queue(unique_prefix(), backend), Queue(unique_prefix(), backend)
    producer = FlowProducer(backend)
    await producer.add_flow(
        downstream.name,
        [
            {"task_id": TASK, "job_id": "fetch", "queue": upstream.name},
            {"task_id": TASK, "job_id": "fetch2", "queue": upstream.name},
            {"task_id": TASK, "job_id": "use", "depends_on": ["fetch", "fetch2"]},
            {"task_id": TASK, "job_id": "after", "queue": upstream.name, "depends_on": ["use"]},
        ],
    )
    assert await states(downstream, "use") == {"use": "blocked"}
    assert await states(upstream, "fetch", "after") == {"fetch": "waiting", "after": "blocked"}
    await run(backend, upstream.name, "fetch")
    await run(backend, upstream.name, "fetch2")
    await settle_flows(backend, downstream.name, "use", "waiting")
    await run(backend, downstream.name, "use", fail=True)
    await settle_flows(backend, upstream.name, "after", "failed")
    raw = await upstream.get_job("after")
    assert raw is not None
    assert raw["dlq_reason"] == "dependency_failed"
    assert await downstream.retry_job("use")
    await settle_flows(backend, upstream.name, "after", "blocked")


async def test_a_flow_across_queues_is_visible_whole_after_add_flow(backend: Backend) -> None:
    """Stored all or none: once add_flow returns, every job of every queue is in its state (Redis
    stages each queue's part, then commits; memory stores the graph under one lock)."""
    first, second, third = (Queue(unique_prefix(), backend) for _ in range(3))
    await second.add(TASK, ["x"], job_id="outside")
    await FlowProducer(backend).add_flow(
        first.name,
        [
            {"task_id": TASK, "job_id": "a"},
            {"task_id": TASK, "job_id": "b", "queue": second.name, "depends_on": ["a"]},
            {
                "task_id": TASK,
                "job_id": "c",
                "queue": third.name,
                "depends_on": ["b", (second.name, "outside")],
            },
            {"task_id": TASK, "job_id": "d", "depends_on": ["c"], "delay": 60},
            # two jobs of a later part of the first queue naming a parent of its first part
            {"task_id": TASK, "job_id": "e", "depends_on": ["a", "b"]},
            {"task_id": TASK, "job_id": "f", "depends_on": ["a", "b"]},
        ],
    )
    nodes = {node.id: node.state for node in await third.get_flow("c")}
    assert nodes == {
        "a": "waiting", "b": "blocked", "c": "blocked", "d": "blocked", "e": "blocked", "f": "blocked",
        "outside": "waiting",
    }  # fmt: skip
    counts = [await queue.counts() for queue in (first, second, third)]
    assert [(each["waiting"], each["blocked"]) for each in counts] == [(1, 3), (1, 1), (0, 1)]
    assert sum(sum(each.values()) for each in counts) == 7  # no job in any other state
    claimed = await claim_all(backend, first.name)
    assert sorted(claimed) == ["a"]


async def test_a_flow_across_queues_with_a_missing_parent_stores_nothing(backend: Backend) -> None:
    first, second, third = (Queue(unique_prefix(), backend) for _ in range(3))
    with pytest.raises(JobArgumentError, match="does not exist"):
        await FlowProducer(backend).add_flow(
            first.name,
            [
                {"task_id": TASK, "job_id": "a"},
                {"task_id": TASK, "job_id": "b", "queue": second.name, "depends_on": ["a"]},
                {
                    "task_id": TASK,
                    "job_id": "c",
                    "queue": third.name,
                    "depends_on": ["b", (third.name, "nope")],
                },
            ],
        )
    for queue, job_id in ((first, "a"), (second, "b"), (third, "c")):
        assert await queue.get_job(job_id) is None
        assert sum((await queue.counts()).values()) == 0


async def settle_flows(backend: Backend, queue: str, job_id: str, want: str) -> None:
    """Wait for a cross-queue step: Redis delivers it through the outbox (run the reconciler)."""
    from tests.support.poll import eventually

    reconcile = getattr(backend, "reconcile_flows", None)

    async def reached() -> bool:
        if reconcile is not None:
            await reconcile()
        raw = await backend.get_job(queue, job_id)
        return raw is not None and raw.state == want

    await eventually(reached, timeout=10)


async def test_add_bulk_children_may_name_parents_of_the_same_call(backend: Backend, queue: Queue) -> None:
    ids = await queue.add_bulk(
        [
            {"task_id": TASK, "job_id": "root"},
            {"task_id": TASK, "job_id": "leaf", "depends_on": ["root"], "delay": 3600},
        ]
    )
    assert ids == ["root", "leaf"]
    assert await states(queue, "root", "leaf") == {"root": "waiting", "leaf": "blocked"}
    await run(backend, queue.name, "root")
    assert await queue.get_job_state("leaf") == "delayed"  # released, then its delay applies
    with pytest.raises(JobArgumentError, match=r"depends_on"):
        await queue.add_bulk([{"task_id": TASK, "job_id": "x"}, {"task_id": TASK, "depends_on": ["gone"]}])
    assert await queue.get_job("x") is None  # the whole call was refused


# -- flow ids and the parents' spans (telemetry contract: asyncmq.flow.id, parent links) ----------------------
async def flow_id(backend: Backend, queue: str, job_id: str) -> str | None:
    stored = await backend.get_job(queue, job_id)
    assert stored is not None and stored.job is not None
    return stored.job.flow_id


async def test_flow_ids_follow_the_first_parent(backend: Backend, queue: Queue) -> None:
    await add(queue, "alone")
    await add(queue, "a")
    await add(queue, "b", "a")
    await add(queue, "c", "b")
    await add(queue, "z")
    await add(queue, "d", "z", "c")  # its first parent decides; a second parent keeps its own flow
    found = {
        job_id: await flow_id(backend, queue.name, job_id) for job_id in ("alone", "a", "b", "c", "z", "d")
    }
    # a parent without a flow id took its own; a child took its first parent's
    assert found == {"alone": None, "a": "a", "b": "a", "c": "a", "z": "z", "d": "z"}
    assert {node.id: node.flow_id for node in await queue.get_flow("d")} == {
        "a": "a", "b": "a", "c": "a", "z": "z", "d": "z",
    }  # fmt: skip


async def test_a_claimed_job_carries_its_flow_id(backend: Backend, queue: Queue) -> None:
    await add(queue, "a")
    await add(queue, "b", "a")
    reply = await backend.claim(queue.name, "w1", 10, 30.0)
    assert [(job.id, job.job and job.job.flow_id) for job in reply.jobs] == [("a", "a")]


async def test_add_flow_gives_the_whole_graph_one_flow_id(backend: Backend) -> None:
    upstream, downstream = Queue(unique_prefix(), backend), Queue(unique_prefix(), backend)
    await upstream.add(TASK, ["x"], job_id="outside")  # stored before: a parent from outside the graph
    await FlowProducer(backend).add_flow(
        downstream.name,
        [
            {"task_id": TASK, "job_id": "use", "depends_on": ["fetch", (upstream.name, "outside")]},
            {"task_id": TASK, "job_id": "fetch", "queue": upstream.name},
            {"task_id": TASK, "job_id": "after", "queue": upstream.name, "depends_on": ["use"]},
        ],
    )
    # the graph's id is the first job it stores (a job without a parent in the graph): "fetch"
    assert await flow_id(backend, upstream.name, "fetch") == "fetch"
    assert await flow_id(backend, downstream.name, "use") == "fetch"
    assert await flow_id(backend, upstream.name, "after") == "fetch"
    assert await flow_id(backend, upstream.name, "outside") == "outside"  # had none: took its own
    # a later depends_on child in another queue takes its first parent's flow id
    await downstream.add(TASK, ["y"], job_id="late", depends_on=[(upstream.name, "after")])
    assert await flow_id(backend, downstream.name, "late") == "fetch"


async def test_a_completed_jobs_span_is_read_back_for_its_children(backend: Backend) -> None:
    one, other = Queue(unique_prefix(), backend), Queue(unique_prefix(), backend)
    await one.add(TASK, [1], job_id="p1")
    await other.add(TASK, [2], job_id="p2")
    await other.add(TASK, [3], job_id="p3")
    span = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    unsampled = span[:-2] + "00"
    held = await claim_all(backend, one.name) | await claim_all(backend, other.name)
    assert (await backend.complete(one.name, "p1", held["p1"], "1", last_span=span)).ok
    assert (await backend.complete(other.name, "p2", held["p2"], "2")).ok  # none: a job outside any flow
    assert (await backend.complete(other.name, "p3", held["p3"], "3", last_span=unsampled)).ok
    refs = [(one.name, "p1"), (other.name, "p2"), (other.name, "p3"), (other.name, "gone")]
    assert await backend.last_spans(refs) == [span, None, unsampled, None]  # type: ignore[attr-defined]

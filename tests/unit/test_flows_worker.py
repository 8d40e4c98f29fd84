"""Flows run by a real worker: ``depends_on`` from ``@task`` enqueues, ``parent_results()``, failure."""

from __future__ import annotations

import pytest

from asyncmq_otel import FlowProducer, Queue, parent_results, task
from asyncmq_otel.backends.base import Backend
from asyncmq_otel.errors import JobArgumentError
from asyncmq_otel.events import LifecycleEvent
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings"), pytest.mark.timeout(60)]


@task("flowq", name="tflow.numbers")
async def numbers(n: int) -> list[int]:
    return list(range(n))


@task("flowq", name="tflow.total")
async def total() -> dict[str, object]:
    found = await parent_results()
    return {"sum": sum(sum(value) for value in found.values() if value), "parents": sorted(found)}


@task("flowq", name="tflow.boom")
async def boom() -> None:
    raise ValueError("upstream broke")


async def state_is(queue: Queue, job_id: str, state: str) -> bool:
    return await queue.get_job_state(job_id) == state


async def test_a_child_reads_its_parents_results(backend: Backend, unique_name: str) -> None:
    first = await numbers.using(queue=unique_name, backend=backend).enqueue(3)
    second = await numbers.enqueue(4, backend=backend, job_id=f"{unique_name}-b")  # in "flowq"
    child = await total.using(
        queue=unique_name, backend=backend, depends_on=[first, ("flowq", second)]
    ).enqueue()
    queue = Queue(unique_name, backend)
    assert await queue.get_job_state(child) == "blocked"
    async with running_worker([unique_name, "flowq"], backend):
        await eventually(lambda: state_is(queue, child, "completed"), timeout=20, what="child completed")
    assert await queue.get_job_result(child) == {
        "sum": 0 + 1 + 2 + 0 + 1 + 2 + 3,
        "parents": sorted([first, second]),
    }


async def test_parent_results_outside_a_handler_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="from a handler"):
        await parent_results()


async def test_task_enqueue_refuses_a_missing_parent(backend: Backend, unique_name: str) -> None:
    with pytest.raises(JobArgumentError, match="does not exist"):
        await total.enqueue(backend=backend, depends_on=[f"{unique_name}-missing"])


async def test_a_failing_parent_dead_letters_the_flow_below_it(
    backend: Backend, unique_name: str, events: list[LifecycleEvent]
) -> None:
    ids = await FlowProducer(backend).add_flow(
        unique_name,
        [
            {"task_id": "tflow.boom", "job_id": f"{unique_name}-p"},
            {"task_id": "tflow.total", "job_id": f"{unique_name}-c", "depends_on": [f"{unique_name}-p"]},
            {
                "task_id": "tflow.total",
                "job_id": f"{unique_name}-r",
                "depends_on": [f"{unique_name}-p"],
                "on_parent_failure": "run",
            },
        ],
    )
    queue = Queue(unique_name, backend)

    def reported() -> bool:  # the reaper reports children dead-lettered for a parent
        return any(e.name == "job:failed" and e.job_id == ids[1] for e in events)

    async with running_worker(unique_name, backend):
        await eventually(
            lambda: state_is(queue, ids[2], "completed"), timeout=20, what="run-anyway child ran"
        )
        await eventually(reported, timeout=20, what="job:failed for the dead-lettered child")
    failed = next(e for e in events if e.name == "job:failed" and e.job_id == ids[1])
    assert (failed.reason, failed.error_type) == ("dependency_failed", "dependency_failed")
    raw = await queue.get_job(ids[1])
    assert raw is not None
    assert (raw["state"], raw["dlq_reason"]) == ("failed", "dependency_failed")
    assert await queue.get_job_result(ids[2]) == {"sum": 0, "parents": [ids[0]]}

"""Flows run by a real worker: ``depends_on`` from ``@task`` enqueues, ``parent_results()``, failure."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from asyncmq_otel import FlowProducer, Queue, parent_results, task, telemetry
from asyncmq_otel.backends.base import Backend
from asyncmq_otel.errors import JobArgumentError
from asyncmq_otel.events import LifecycleEvent
from asyncmq_otel.testing import capture_telemetry
from tests.support.poll import eventually
from tests.support.running import running_worker
from tests.telemetry.spans import assert_process

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


def _process_span(spans: list[Any], job_id: str) -> Any:
    (found,) = [
        span
        for span in spans
        if span.name.startswith("process ") and (span.attributes or {}).get("messaging.message.id") == job_id
    ]
    return found


async def test_a_childs_process_span_links_to_its_parents_and_carries_the_flow_id(
    backend: Backend, unique_name: str
) -> None:
    """Real SDK spans: the child's process span links to both parents' (one in another queue)."""
    plain = await numbers.using(queue=unique_name, backend=backend).enqueue(1)  # never a parent
    with capture_telemetry() as captured:
        first = await numbers.using(queue=unique_name, backend=backend).enqueue(3)
        second = await numbers.enqueue(4, backend=backend, job_id=f"{unique_name}-b")  # in "flowq"
        child = await total.using(
            queue=unique_name, backend=backend, depends_on=[first, ("flowq", second)]
        ).enqueue()
        queue = Queue(unique_name, backend)
        async with running_worker([unique_name, "flowq"], backend):
            await eventually(lambda: state_is(queue, child, "completed"), timeout=20, what="child completed")
            await eventually(lambda: state_is(queue, plain, "completed"), timeout=20, what="plain completed")
        spans = captured.spans
        lines = captured.logs
    parents = {job_id: _process_span(spans, job_id) for job_id in (first, second)}
    child_span = _process_span(spans, child)
    assert_process(
        child_span, queue=unique_name, job_id=child, task="tflow.total", attempt=1, outcome="completed"
    )
    linked = {
        (link.context.trace_id, link.context.span_id)
        for link in child_span.links
        if (link.attributes or {}).get("asyncmq.link.type") == "parent"
    }
    assert linked == {(span.context.trace_id, span.context.span_id) for span in parents.values()}
    # the flow id: the first parent's, which took its own id when it was named as a parent
    assert child_span.attributes["asyncmq.flow.id"] == first
    assert parents[first].attributes["asyncmq.flow.id"] == first
    assert parents[second].attributes["asyncmq.flow.id"] == second
    plain_span = _process_span(spans, plain)
    assert "asyncmq.flow.id" not in (plain_span.attributes or {})
    assert not [
        link for link in plain_span.links if (link.attributes or {}).get("asyncmq.link.type") == "parent"
    ]
    flows = {
        line.get("asyncmq.flow.id")
        for line in lines
        if line.get("messaging.message.id") == child and line.get("event") in {"job.started", "job.completed"}
    }
    assert flows == {first}
    assert all("asyncmq.flow.id" not in line for line in lines if line.get("messaging.message.id") == plain)
    nodes = {node.id: node.flow_id for node in await queue.get_flow(child)}
    assert nodes == {first: first, second: second, child: first}


async def test_a_parent_that_was_not_sampled_gets_no_link(backend: Backend, unique_name: str) -> None:
    """The parent's attempt ran without a recording span: nothing is stored, so the child has no link to it."""
    parent = await numbers.using(queue=unique_name, backend=backend).enqueue(2)
    later = f"{unique_name}c"  # the child's queue: the first worker does not run it
    child = await total.using(queue=later, backend=backend, depends_on=[(unique_name, parent)]).enqueue()
    queue = Queue(unique_name, backend)
    provider = TracerProvider(sampler=ALWAYS_OFF)
    telemetry.instrument(tracer_provider=provider, metrics_addr="", log_level="WARNING")
    try:
        async with running_worker(unique_name, backend):
            await eventually(
                lambda: state_is(queue, parent, "completed"), timeout=20, what="parent completed"
            )
    finally:
        telemetry.uninstrument()
        provider.shutdown()
    assert await backend.last_spans([(unique_name, parent)]) == [None]  # type: ignore[attr-defined]
    with capture_telemetry() as captured:
        async with running_worker([unique_name, later], backend):  # Redis: the parent's reaper releases it
            await eventually(
                lambda: state_is(Queue(later, backend), child, "completed"),
                timeout=20,
                what="child completed",
            )
        child_span = _process_span(captured.spans, child)
    assert not [
        link for link in child_span.links if (link.attributes or {}).get("asyncmq.link.type") == "parent"
    ]
    assert child_span.attributes["asyncmq.flow.id"] == parent


async def test_add_flow_enqueued_events_carry_the_flow_id(
    backend: Backend, unique_name: str, events: list[LifecycleEvent]
) -> None:
    ids = await FlowProducer(backend).add_flow(
        unique_name,
        [
            {"task_id": "tflow.numbers", "job_id": f"{unique_name}-a", "args": [1]},
            {"task_id": "tflow.total", "job_id": f"{unique_name}-b", "depends_on": [f"{unique_name}-a"]},
        ],
    )
    enqueued = {e.job_id: e.flow_id for e in events if e.name == "job:enqueued"}
    assert enqueued == {ids[0]: ids[0], ids[1]: ids[0]}


async def test_a_dependency_failed_settle_span_carries_the_flow_id(
    backend: Backend, unique_name: str
) -> None:
    parent, child = f"{unique_name}-p", f"{unique_name}-c"
    with capture_telemetry() as captured:
        await FlowProducer(backend).add_flow(
            unique_name,
            [
                {"task_id": "tflow.boom", "job_id": parent},
                {"task_id": "tflow.total", "job_id": child, "depends_on": [parent]},
            ],
        )

        def reported() -> bool:  # the reaper reports the child dead-lettered for its parent
            return any(e.job_id == child for e in captured.events_named("job:failed"))

        async with running_worker(unique_name, backend):
            await eventually(reported, timeout=20, what="job:failed for the dead-lettered child")
        spans = captured.spans
    (settle,) = [
        s for s in spans if s.name.startswith("settle ") and s.attributes.get("messaging.message.id") == child
    ]
    assert settle.attributes["messaging.operation.name"] == "dead_letter"  # it never ran: no attempt either
    assert settle.attributes["asyncmq.flow.id"] == parent
    assert settle.attributes["error.type"] == "dependency_failed"
    assert _process_span(spans, parent).attributes["asyncmq.flow.id"] == parent

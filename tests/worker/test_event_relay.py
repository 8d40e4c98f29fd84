"""The worker's event relay: what it publishes, and that a failing publisher never touches a job.

End to end through Redis (another process hears the events) is tests/multiproc/test_cross_process_events.py;
here the backend is the in-memory one given a ``publish_events`` of its own, in-process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.clock import Clock, FakeClock, system_clock
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.settings import get_settings, override_settings
from asyncmq_otel.worker.relay import event_message
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = pytest.mark.anyio

QUEUE = "relay"


@task(QUEUE, name="relay.echo")
async def echo(value: object) -> object:
    return value


class PublishingBackend(InMemoryBackend):
    """An in-memory backend that can publish events: it keeps them, or fails every call."""

    def __init__(self, *, failing: bool = False, clock: Clock = system_clock) -> None:
        super().__init__(clock=clock)
        self.failing = failing
        self.published: list[dict[str, object]] = []
        self.calls = 0

    async def publish_events(self, messages: Sequence[str]) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("the events channel is down")
        self.published += [json.loads(message) for message in messages]


def test_a_message_carries_the_set_fields_and_nothing_process_local() -> None:
    event = LifecycleEvent(
        "job:failed",
        12.5,
        queue="q",
        job_id="j",
        error_type="ValueError",
        exception=ValueError("boom"),
        started_monotonic=3.0,
    )
    assert json.loads(event_message(event)) == {
        "name": "job:failed",
        "ts": 12.5,
        "queue": "q",
        "job_id": "j",
        "error_type": "ValueError",
    }


def test_a_large_result_is_left_out_and_says_so() -> None:
    small = json.loads(event_message(LifecycleEvent("job:completed", 1.0, result={"n": 1})))
    assert small["result"] == {"n": 1} and "result_omitted" not in small
    big = json.loads(event_message(LifecycleEvent("job:completed", 1.0, job_id="j", result="x" * 100_000)))
    assert big == {"name": "job:completed", "ts": 1.0, "job_id": "j", "result_omitted": True}


async def test_a_worker_publishes_its_own_events_in_order() -> None:
    backend = PublishingBackend()
    queue = Queue(QUEUE, backend=backend)
    async with running_worker(QUEUE, backend) as worker:
        job_id = await queue.add("relay.echo", [7])
        await eventually(
            lambda: any(e["name"] == "job:completed" for e in backend.published), what="completion published"
        )
    names = [(e["name"], e.get("job_id")) for e in backend.published]
    assert names[0] == ("worker:started", None)
    assert names.index(("job:started", job_id)) < names.index(("job:completed", job_id))
    assert names[-1] == ("worker:stopped", None)  # flushed by the shutdown tail
    assert {e["worker_id"] for e in backend.published} == {worker.worker_id}
    # events of the producer (no worker) are not this worker's to publish
    assert ("job:enqueued", job_id) not in names


async def test_a_failing_publisher_is_counted_and_never_fails_a_job(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    backend = PublishingBackend(failing=True, clock=clock)
    queue = Queue(QUEUE, backend=backend)
    before = bus.dropped["event", "adapter_error"]
    async with running_worker(QUEUE, backend):
        ids = [await queue.add("relay.echo", [i]) for i in range(20)]

        async def all_completed() -> bool:
            return (await queue.counts())["completed"] == len(ids)

        await eventually(all_completed, timeout=10, what="every job completed")
        await eventually(lambda: backend.calls >= 1, what="a publish failed")
        clock.advance(get_settings().heartbeat_interval)  # a heartbeat: one more event to publish
        await eventually(lambda: backend.calls >= 2, timeout=10, what="publishing retried")
    assert bus.dropped["event", "adapter_error"] > before
    assert sum("worker.event_relay_failed" in r.message for r in caplog.records) == 1  # logged once


async def test_publishing_can_be_turned_off() -> None:
    backend = PublishingBackend()
    queue = Queue(QUEUE, backend=backend)
    with override_settings(publish_events=False):
        async with running_worker(QUEUE, backend):
            await queue.add("relay.echo", [1])

            async def completed() -> bool:
                return (await queue.counts())["completed"] == 1

            await eventually(completed, what="job completed")
    assert backend.calls == 0 and backend.published == []

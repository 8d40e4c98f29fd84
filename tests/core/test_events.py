import threading
import time

import anyio
import pytest

from asyncmq_otel._writes import ObservedWrite
from asyncmq_otel.clock import FakeClock
from asyncmq_otel.events import _LIVE_FIELDS, EventBus, EventEmitter, LifecycleEvent
from tests.support.poll import eventually

pytestmark = pytest.mark.anyio


def ev(name: str, **fields) -> LifecycleEvent:
    return LifecycleEvent(name, time.time(), queue="q", **fields)


async def test_patterns_exact_family_and_star_deliver_once_per_listener():
    bus = EventBus()
    seen: list[str] = []

    def listener(event):
        seen.append(event.name)

    bus.on("job:failed", listener, inline=True)
    bus.on("job:*", listener, inline=True)
    bus.on("*", listener, inline=True)
    bus.emit(ev("job:failed"))
    bus.emit(ev("queue:paused"))
    assert seen == ["job:failed", "queue:paused"]


async def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown event pattern"):
        EventBus().on("job:finished", print)


async def test_once_and_off():
    bus = EventBus()
    seen: list[str] = []
    bus.once("job:started", lambda e: seen.append("once"), inline=True)

    def always(event):
        seen.append("always")

    bus.on("job:started", always, inline=True)
    bus.emit(ev("job:started"))
    bus.emit(ev("job:started"))
    bus.off("job:started", always)
    bus.emit(ev("job:started"))
    assert seen == ["once", "always", "always"]


async def test_raising_inline_listener_is_isolated_logged_once_and_counted(caplog):
    bus = EventBus()
    drops: list[tuple[str, str, int]] = []
    bus.add_drop_observer(lambda s, r, n: drops.append((s, r, n)))
    after: list[str] = []

    def broken(event):
        raise RuntimeError("adapter bug")

    bus.on("*", broken, inline=True, signal="span")
    bus.on("*", lambda e: after.append(e.name), inline=True)
    for _ in range(3):
        bus.emit(ev("job:completed"))
    assert after == ["job:completed"] * 3
    assert drops == [("span", "adapter_error", 1)] * 3
    assert bus.dropped["span", "adapter_error"] == 3
    assert (
        sum(
            "adapter bug" in (r.exc_text or "") or "telemetry.adapter_error" in r.getMessage()
            for r in caplog.records
        )
        == 1
    )


async def test_queued_listeners_sync_and_async_in_order_via_dispatcher():
    bus = EventBus()
    got: list[tuple[str, str]] = []
    threads: set[int] = set()

    def sync_listener(event):
        threads.add(threading.get_ident())
        got.append(("sync", event.job_id))

    async def async_listener(event):
        got.append(("async", event.job_id))

    bus.on("job:*", sync_listener)
    bus.on("job:*", async_listener)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run_dispatcher)
        for i in range(5):
            bus.emit(ev("job:enqueued", job_id=str(i)))
        await eventually(lambda: len(got) == 10)
        tg.cancel_scope.cancel()
    assert [j for kind, j in got if kind == "sync"] == [str(i) for i in range(5)]
    assert [j for kind, j in got if kind == "async"] == [str(i) for i in range(5)]
    assert threading.get_ident() not in threads  # sync listeners run in a worker thread


async def test_slow_queued_listener_never_blocks_emit_and_overflow_is_counted():
    bus = EventBus(queue_size=3)
    release = anyio.Event()
    got: list[str] = []

    async def slow(event):
        await release.wait()
        got.append(event.job_id)

    inline: list[str] = []
    bus.on("job:*", slow)
    bus.on("job:*", lambda e: inline.append(e.job_id), inline=True)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run_dispatcher)
        bus.emit(ev("job:enqueued", job_id="0"))
        await eventually(lambda: bus.pending() == 0)  # the dispatcher holds event 0 in the slow listener
        for i in range(1, 6):
            bus.emit(ev("job:enqueued", job_id=str(i)))
        assert inline == [str(i) for i in range(6)]  # inline delivery is never held up
        assert bus.dropped["event", "queue_full"] == 2
        release.set()
        await eventually(lambda: len(got) == 4)
        tg.cancel_scope.cancel()
    assert got == ["0", "1", "2", "3"]


async def test_raising_queued_listener_does_not_stop_dispatch():
    bus = EventBus()
    got: list[str] = []

    async def broken(event):
        raise ValueError("user bug")

    bus.on("job:*", broken)
    bus.on("job:*", lambda e: got.append(e.job_id))
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run_dispatcher)
        bus.emit(ev("job:failed", job_id="a"))
        bus.emit(ev("job:failed", job_id="b"))
        await eventually(lambda: got == ["a", "b"])
        tg.cancel_scope.cancel()
    assert bus.dropped["event", "adapter_error"] == 2


async def test_a_dispatcher_cancelled_mid_delivery_leaves_the_rest_to_drain_in_order():
    bus = EventBus()
    got: list[tuple[str, str | None]] = []
    in_first = threading.Event()
    release = threading.Event()

    def first(event):
        got.append(("first", event.job_id))
        if event.job_id == "0":
            in_first.set()
            release.wait(10)

    async def second(event):
        got.append(("second", event.job_id))

    bus.on("job:*", first)
    bus.on("job:*", second)
    for i in range(3):
        bus.emit(ev("job:enqueued", job_id=str(i)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(bus.run_dispatcher)
        await anyio.to_thread.run_sync(in_first.wait, 10)
        tg.cancel_scope.cancel()  # the dispatcher stops while "first" holds event 0
        release.set()
    assert got == [("first", "0")]
    await bus.drain(5.0)
    assert got == [(name, str(i)) for i in range(3) for name in ("first", "second")]


async def test_emitter_compat_emit_with_asyncmq_dict_and_mapping_access():
    bus = EventBus()
    emitter = EventEmitter(bus)
    seen: list[LifecycleEvent] = []
    emitter.on("job:progress", seen.append, inline=True)
    await emitter.emit("job:progress", {"id": "j1", "progress": 50.0, "queue": "q"})
    event = seen[0]
    assert event.job_id == "j1"
    assert event["id"] == "j1"
    assert event.get("progress") == 50.0
    assert event.get("missing", "x") == "x"
    assert "exception" not in event.as_dict()
    with pytest.raises(KeyError):
        event["nope"]


async def test_drain_delivers_pending_without_a_dispatcher():
    bus = EventBus()
    got: list[str] = []
    bus.on("worker:stopped", lambda e: got.append(e.name))
    bus.emit(ev("worker:stopped"))
    assert got == []
    await bus.drain(2.0)
    assert got == ["worker:stopped"]


async def test_wants_says_whether_an_event_would_reach_anyone():
    """Job events are only built when some listener would receive them (``bus.wants``)."""
    bus = EventBus()

    def listener(event):
        return None

    assert not bus.wants("job:enqueued")
    bus.on("job:*", listener)
    assert bus.wants("job:enqueued") and not bus.wants("queue:paused")
    bus.off("job:*", listener)
    assert not bus.wants("job:enqueued")
    bus.on("*", listener, inline=True)
    assert bus.wants("queue:paused")


class _Recorder:
    """A callable object listener (no ``async def``): the dispatcher runs it in a worker thread."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, event: LifecycleEvent) -> None:
        self.names.append(event.name)


@pytest.mark.usefixtures("fast_settings")
async def test_a_graceful_stop_delivers_every_event_to_every_queued_listener_in_order(unique_name):
    """Stopping the worker cancels its dispatcher; an event it had taken but not delivered is not lost."""
    from asyncmq_otel import Queue, Worker, task
    from asyncmq_otel.backends.memory import InMemoryBackend
    from asyncmq_otel.events import bus

    @task(unique_name, name=f"{unique_name}.quick")
    async def quick() -> str:
        return "done"

    started, completed, everything = _Recorder(), _Recorder(), _Recorder()
    bus.on("job:started", started)
    bus.on("job:completed", completed)
    bus.on("*", everything)
    backend = InMemoryBackend()
    queue = Queue(unique_name, backend=backend)
    job_id = await queue.add(f"{unique_name}.quick")
    worker = Worker(unique_name, backend=backend)
    # stop as soon as the job has started (inline, so before its job:started reaches a queued listener)
    bus.on("job:started", lambda _event: worker.stop(), inline=True)
    with anyio.fail_after(20):
        await worker.run()
    assert await queue.get_job_state(job_id) == "completed"
    assert started.names == ["job:started"]
    assert completed.names == ["job:completed"]
    assert everything.names == [
        "job:enqueued", "worker:started", "job:started", "job:completed", "worker:stopped"
    ]  # fmt: skip


def test_job_events_are_built_as_frozen_lifecycle_events_equal_to_the_dataclass_constructor():
    import dataclasses

    from asyncmq_otel._lifecycle import job_event
    from asyncmq_otel.events import make_event_unchecked
    from asyncmq_otel.jobs import Job

    job = Job(id="j1", task="t.x", queue="q", max_retries=2, priority=3)
    job.trace_context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    clock = FakeClock()
    built = job_event("job:started", job, attempt_number=1, clock=clock, worker_id="w", wait_s=0.5)
    expected = LifecycleEvent(
        name="job:started", ts=clock.time(), queue="q", job_id="j1", task="t.x", attempt=1, max_attempts=3,
        priority=3, enqueued_at=job.enqueued_at, eligible_at=job.eligible_at, worker_id="w", wait_s=0.5,
        trace_context=job.trace_context,
    )  # fmt: skip
    assert type(built) is LifecycleEvent
    assert built == expected
    assert built.trace_context is not job.trace_context  # a copy: listeners cannot change the job's
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.task = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        job_event("job:started", job, bogus=1)
    for taken in ("attempt", "queue"):  # the job's value would silently win over the caller's
        with pytest.raises(TypeError, match=f"the job fills the event field '{taken}'"):
            job_event("job:started", job, **{taken: 1})
    bare = make_event_unchecked({"name": "worker:heartbeat", "ts": 1.0})
    assert bare == LifecycleEvent("worker:heartbeat", 1.0)


def test_events_built_through_the_field_descriptors_are_the_same_events():
    # The path taken where a builder cannot become a LifecycleEvent by class assignment.
    from asyncmq_otel.events import _compile_event_builder, make_event

    values = {
        "name": "job:completed",
        "ts": 2.0,
        "queue": "q",
        "job_id": "j",
        "attempt": 1,
        "duration_s": 0.5,
    }
    slow = _compile_event_builder("make_event", "values", ["    get = values.get"], {}, swap=False)
    assert slow(dict(values)) == make_event(dict(values)) == LifecycleEvent(**values)
    assert type(slow(dict(values))) is LifecycleEvent
    with pytest.raises(TypeError):
        make_event({"name": "job:completed", "ts": 2.0, "bogus": 1})


async def test_a_snapshot_saves_every_field_of_the_bus_but_its_lock_and_running_dispatchers():
    bus = EventBus()
    # a field added to the bus later is saved too: the snapshot is taken from the instance itself
    assert set(bus.snapshot().fields) == set(vars(bus)) - _LIVE_FIELDS
    assert set(vars(bus)) >= _LIVE_FIELDS


async def test_restore_undoes_everything_added_since_the_snapshot_and_can_be_repeated():
    bus = EventBus()
    kept: list[str] = []
    bus.on("job:*", lambda e: kept.append(e.name), inline=True)
    saved = bus.snapshot()

    class Observer:  # has no write_finished: the bus must build an Operation for it
        def operation_started(self, operation: object) -> None: ...

        def operation_finished(self, operation: object) -> None: ...

    async def service(backend: object, queues: list[str]) -> None: ...

    for _ in range(2):
        added: list[str] = []
        bus.on(
            "job:started", added.append, inline=True, from_job=lambda *args, added=added: added.append("job")
        )
        bus.on("worker:*", added.append)  # queued: the event stays pending
        bus.add_observer(Observer())
        bus.add_drop_observer(lambda *drop, added=added: added.append("drop"))
        bus.add_service(service)
        bus.emit(ev("worker:started"))
        bus.record_drop("event", "queue_full")
        assert (len(bus.listeners()), bus.pending(), len(bus.services())) == (3, 1, 1)
        assert isinstance(bus.write("ack", "q", [], {}), ObservedWrite)
        assert added == ["drop"]
        bus.restore(saved)
        assert (len(bus.listeners()), bus.pending(), bus.observed, bus.services()) == (1, 0, False, [])
        assert bus.dropped == {}
        assert bus.route("worker:started") is None  # the cached route of the removed listener is gone
        bus.emit(ev("job:started"))  # along a fresh route: no from_job of the removed listener
        bus.record_drop("event", "queue_full")
        assert (added, kept[-1]) == (["drop"], "job:started")  # only the listener from before heard it
        assert not isinstance(bus.write("ack", "q", [], {}), ObservedWrite)  # only timed again

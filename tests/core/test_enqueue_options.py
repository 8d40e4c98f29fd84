"""The producer side: every value and option an enqueue takes, on both backends.

Bounds are refused before anything is sent; AsyncMQ options never become handler arguments; a job
that leaves an option unset gets its task's declared value from the worker; task names no worker
can run are flagged.

The in-memory variant runs on a FakeClock: its timeouts, delays and TTLs pass as the test moves it.
"""

from __future__ import annotations

import math
import os
import socket
import warnings

import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.base import Backend, ErrorInfo, WorkerInfo
from asyncmq_otel.clock import Clock, FakeClock, system_clock
from asyncmq_otel.errors import JobArgumentError, PayloadTooLarge, TaskNameWarning, UnsupportedOption
from asyncmq_otel.jobs import MAX_SECONDS
from asyncmq_otel.settings import get_settings
from tests.support.poll import clock_of, eventually, eventually_on
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings"), pytest.mark.timeout(60)]

seen: dict[str, list[object]] = {}
handler_clock: list[Clock] = [system_clock]


@task("opts", name="ptest.echo")
async def echo(value: object = None) -> object:
    seen.setdefault("echo", []).append(value)
    return value


@task("opts", name="ptest.retried", retries=2, backoff=0.01)
async def retried(key: str) -> None:
    seen.setdefault(key, []).append(1)
    raise ValueError("always")


@task("opts", name="ptest.slow", timeout=0.1)
async def slow(seconds: float) -> str:
    await handler_clock[0].sleep(seconds)  # on the worker's clock: its timeout is counted on the same one
    return "done"


@task("opts", name="ptest.short_lived", ttl=0.05)
async def short_lived() -> None:
    seen.setdefault("short_lived", []).append(1)


@task("opts", name="ptest.with_options")
async def with_options(timeout: float, depends_on: list[str] | None = None) -> list[object]:
    return [timeout, depends_on]


@task("cpu.only", name="ptest.tasks.crunchy_unique")
async def crunchy() -> None:
    return None


@pytest.fixture
def memory_clock() -> FakeClock:
    """The in-memory backend's clock (tests/support/fixtures.py): fake, moved only by the tests."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _reset() -> None:
    seen.clear()
    handler_clock[:] = [system_clock]


async def _stored(queue: Queue) -> int:
    return sum((await queue.counts()).values())


# -- bounds and types of the options (issue 13 items 1 and 9) -----------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", 1e300),
        ("delay", 1e300),
        ("timeout", 1e300),
        ("ttl", MAX_SECONDS + 1),
        ("delay", math.nan),
        ("ttl", math.inf),
        ("timeout", -math.inf),
        ("ttl", 0),
        ("delay", -1),
        ("delay", "5"),
        ("ttl", "5"),
        ("timeout", True),
        ("delay", 2**2000),
        ("priority", 2**70),
        ("priority", 501),
        ("priority", True),
        ("priority", 5.0),
        ("retries", 2**70),
        ("retries", -1),
        ("retries", "3"),
        ("backoff", 1e300),
        ("backoff", {"type": "exponential", "delay": 1, "max": math.nan}),
        ("backoff", 2**2000),
    ],
)
async def test_out_of_bounds_options_are_refused_naming_the_option(backend, unique_name, option, value):
    queue = Queue(unique_name, backend=backend)
    with pytest.raises(JobArgumentError) as info:
        await queue.add("ptest.echo", **{option: value})
    assert info.value.path == option
    assert isinstance(info.value, (TypeError, ValueError))
    with pytest.raises(JobArgumentError) as bulk:
        await queue.add_bulk([{"task_id": "ptest.echo"}, {"task_id": "ptest.echo", option: value}])
    assert bulk.value.path == f"jobs[1].{option}"
    assert await _stored(queue) == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ("cycle", None, "args[0][1]"),
        (None, "cycle", 'kwargs["x"]["self"]'),
        ("deep", None, "args[0]" + "[0]" * 63),  # args is the first of 64 levels
        (["ok", "bad \ud800 text"], None, "args[1]"),
        (None, {"x": ["\udfff"]}, 'kwargs["x"][0]'),
        (None, {"k\ud800": 1}, r'kwargs["k\ud800"]'),
    ],
)
async def test_unstorable_arguments_are_refused_naming_the_path(backend, unique_name, args, kwargs, path):
    if args == "cycle":
        loop: list[object] = [1]
        loop.append(loop)
        args = [loop]
    if kwargs == "cycle":
        inner: dict[str, object] = {}
        inner["self"] = inner
        kwargs = {"x": inner}
    if args == "deep":
        nested: list[object] = []
        for _ in range(10_000):
            nested = [nested]
        args = [nested]
    queue = Queue(unique_name, backend=backend)
    with pytest.raises(JobArgumentError) as info:
        await queue.add("ptest.echo", args, kwargs)
    assert info.value.path == path
    assert await _stored(queue) == 0


async def test_a_job_refused_for_its_size_sends_nothing_not_even_the_task_name_look_up(
    backend, unique_name, monkeypatch
):
    """Reliability row 20: ``PayloadTooLarge`` before any round trip; the task-name check runs after the store."""
    look_ups: list[str] = []
    list_workers = backend.list_workers

    async def counted_list_workers() -> list[WorkerInfo]:
        look_ups.append("list_workers")
        return await list_workers()

    monkeypatch.setattr(backend, "list_workers", counted_list_workers)
    queue = Queue(unique_name, backend=backend)
    oversized = "x" * (get_settings().max_payload_bytes + 1)
    unregistered = "remote.tasks.render"  # not declared here: only the live workers could say who serves it
    with pytest.raises(PayloadTooLarge):
        await queue.add(unregistered, [oversized])
    with pytest.raises(PayloadTooLarge):
        await queue.add_bulk([{"task_id": unregistered}, {"task_id": unregistered, "args": [oversized]}])
    assert look_ups == []
    assert await _stored(queue) == 0
    await queue.add(unregistered, ["fits"])
    assert look_ups == ["list_workers"]  # the stored job was checked
    assert await _stored(queue) == 1


async def test_the_largest_accepted_values_round_trip_and_run(backend, unique_name):
    """At the bounds a job is stored, read back and claimed like any other (Redis once stored 1e+303)."""
    queue = Queue(unique_name, backend=backend)
    far = await queue.add("ptest.echo", ["far"], ttl=MAX_SECONDS, timeout=MAX_SECONDS, priority=-500)
    later = await queue.add("ptest.echo", ["later"], delay=MAX_SECONDS, priority=500)
    assert (await queue.get_job(far))["expires_at"] > 0
    assert (await queue.get_job(later))["state"] == "delayed"
    async with running_worker(unique_name, backend):
        await eventually(
            lambda: _state_is(queue, far, "completed"), timeout=15, what="the far-ttl job completed"
        )
    assert await queue.get_job_state(later) == "delayed"


async def _state_is(queue: Queue, job_id: str, state: str) -> bool:
    return await queue.get_job_state(job_id) == state


# -- AsyncMQ options never become handler arguments (issue 12 item 7) ----------------------------------
@pytest.mark.parametrize(
    "option", ["repeat_every"]
)  # depends_on is supported: tests/backends/conformance/test_flows.py
async def test_asyncmq_only_options_are_refused_not_stored_as_arguments(backend, unique_name, option):
    with pytest.raises(UnsupportedOption, match="not supported yet") as info:
        await echo.enqueue(backend=backend, **{option: ["x"]})
    assert info.value.path == option
    assert await _stored(Queue("opts", backend=backend)) == 0
    with pytest.raises(UnsupportedOption) as bulk:
        await Queue(unique_name, backend=backend).add_bulk([{"task_id": "ptest.echo", option: ["x"]}])
    assert bulk.value.path == f"jobs[0][{option!r}]"


async def test_a_handler_argument_named_like_an_option_has_an_escape(backend, unique_name):
    queue = Queue(unique_name, backend=backend)
    via_using = await with_options.using(queue=unique_name, backend=backend).enqueue(1.5, depends_on=["a"])
    via_kwargs = await queue.add("ptest.with_options", kwargs={"timeout": 2, "depends_on": ["b"]})
    declared = await with_options.enqueue(timeout=3, backend=backend)  # the handler declares timeout
    assert (await queue.get_job(via_using))["kwargs"] == {"depends_on": ["a"]}
    assert (await queue.get_job(via_kwargs))["kwargs"] == {"timeout": 2, "depends_on": ["b"]}
    assert (await Queue("opts", backend=backend).get_job(declared))["kwargs"] == {"timeout": 3}
    with pytest.raises(JobArgumentError, match=r"using\(retries=") as info:
        await echo.enqueue(retries=3, backend=backend)  # echo has no retries argument
    assert info.value.path == "retries"


async def test_on_parent_failure_is_an_option_of_enqueue_not_a_handler_argument(backend):
    queue = Queue("opts", backend=backend)
    parent = await echo.enqueue("parent", backend=backend)
    child = await echo.enqueue("child", backend=backend, depends_on=[parent], on_parent_failure="run")
    stored = await queue.get_job(child)
    assert stored is not None
    assert (stored["args"], stored["kwargs"]) == (["child"], {})
    with pytest.raises(JobArgumentError) as info:
        await echo.enqueue(backend=backend, depends_on=[parent], on_parent_failure="maybe")
    assert info.value.path == "on_parent_failure"
    # the option took effect: the parent dead-letters and the child runs anyway
    (held,) = (await backend.claim("opts", "w1", 10, 30.0)).jobs
    assert held.id == parent
    assert (await backend.fail("opts", parent, held.token, "failed", ErrorInfo("ValueError", "boom"))).ok
    assert await queue.get_job_state(child) == "waiting"


# -- AsyncMQ spellings (issue 12 item 11) ------------------------------------------------------------
async def test_delay_and_send_are_enqueue(backend):
    queue = Queue("opts", backend=backend)
    first = await echo.delay("a", backend=backend)
    second = await echo.send("b", backend=backend, delay=30)
    assert (await queue.get_job(first))["args"] == ["a"]
    assert (await queue.get_job(second))["state"] == "delayed"


async def test_the_backend_may_come_first_as_in_asyncmq(backend):
    job_id = await echo.enqueue(backend, "first")
    assert (await Queue("opts", backend=backend).get_job(job_id))["args"] == ["first"]


def test_redis_backend_takes_asyncmq_redis_url():
    from asyncmq_otel.backends.redis import RedisBackend

    assert RedisBackend(redis_url="redis://127.0.0.1:6390/2").url == "redis://127.0.0.1:6390/2"
    with pytest.raises(TypeError, match="once"):
        RedisBackend("redis://127.0.0.1:6391/0", redis_url="redis://127.0.0.1:6390/2")


# -- a job that leaves an option unset gets its task's (issue 12 item 6) ------------------------------
async def test_unset_options_take_the_tasks_declared_values_explicit_ones_win(backend, unique_name):
    queue = Queue(unique_name, backend=backend)
    inherited = await queue.add("ptest.retried", ["inherited"])  # the task says retries=2
    explicit = await queue.add("ptest.retried", ["explicit"], retries=0)
    times_out = await queue.add("ptest.slow", [30])  # the task says timeout=0.1
    given_time = await queue.add("ptest.slow", [0.2], timeout=10)
    expires = await queue.add("ptest.short_lived", delay=0.3)  # the task says ttl=0.05
    clock = handler_clock[0] = clock_of(backend)
    async with running_worker(unique_name, backend):
        for job_id in (inherited, explicit, times_out, given_time, expires):
            await eventually_on(
                clock,
                lambda job_id=job_id: _finished(queue, job_id),
                timeout=20,
                what=f"job {job_id} finished",
            )
    assert seen["inherited"] == [1, 1, 1]
    assert seen["explicit"] == [1]
    timed_out = await queue.get_job(times_out)
    assert (timed_out["state"], timed_out["error"]["type"]) == ("failed", "asyncmq_otel.errors.JobTimeout")
    assert await queue.get_job_result(given_time) == "done"
    assert (await queue.get_job(expires))["state"] == "expired"
    assert "short_lived" not in seen


async def _finished(queue: Queue, job_id: str) -> bool:
    return await queue.get_job_state(job_id) in {"completed", "failed", "expired", "cancelled"}


# -- the task's queue, and names no worker runs (issue 12 item 6) -------------------------------------
async def _register(backend: Backend, tasks: dict[str, str], queues: list[str]) -> None:
    info = WorkerInfo(os.urandom(6).hex(), queues, socket.gethostname(), os.getpid(), 1, tasks=tasks)
    await backend.register_worker(info, 30.0)


async def test_for_task_finds_the_declared_queue(backend):
    assert (await Queue.for_task("ptest.tasks.crunchy_unique", backend)).name == "cpu.only"
    await _register(backend, {"remote.tasks.render": "gpu"}, ["gpu"])
    assert (await Queue.for_task("remote.tasks.render", backend)).name == "gpu"
    assert (await Queue.for_task("remote.tasks.unknown", backend)).name == "default"


async def test_workers_publish_their_tasks(backend, unique_name):
    async with running_worker(unique_name, backend):
        [info] = await backend.list_workers()
    assert info.tasks["ptest.echo"] == "opts"
    assert info.tasks["ptest.tasks.crunchy_unique"] == "cpu.only"


async def test_names_no_live_worker_serves_are_flagged(backend):
    await _register(backend, {"myapp.tasks.crunch": "cpu"}, ["cpu"])
    with pytest.warns(TaskNameWarning, match=r"did you mean 'myapp\.tasks\.crunch'"):
        short = await Queue("cpu", backend=backend).add("crunch")
    with pytest.warns(TaskNameWarning, match=r"consume \['cpu'\], not 'default'"):
        await Queue("default", backend=backend).add("myapp.tasks.crunch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await Queue("cpu", backend=backend).add("myapp.tasks.crunch")
    assert await Queue("cpu", backend=backend).get_job_state(short) == "waiting"  # stored all the same


async def test_names_only_this_process_knows_are_flagged(backend):
    with pytest.warns(TaskNameWarning, match=r"did you mean 'ptest\.tasks\.crunchy_unique'"):
        await Queue("cpu.only", backend=backend).add("crunchy_unique")
    if backend.url.startswith("memory:"):
        with warnings.catch_warnings():  # an in-process backend: its worker is this script
            warnings.simplefilter("error")
            await Queue("q", backend=backend).add("__main__.crunch")
    else:
        with pytest.warns(TaskNameWarning, match="script run directly"):
            await Queue("q", backend=backend).add("__main__.crunch")


async def test_a_worker_started_since_the_cached_look_up_is_seen_before_warning(backend, monkeypatch):
    from asyncmq_otel import queues

    await _register(backend, {"remote.tasks.other": "gpu"}, ["gpu"])
    with pytest.warns(TaskNameWarning, match="no live worker serves task 'remote.tasks.render'"):
        await Queue("gpu", backend=backend).add("remote.tasks.render")  # caches the live workers
    await _register(backend, {"remote.tasks.render": "gpu"}, ["gpu"])
    monkeypatch.setattr(queues, "_FRESH_ENOUGH", 0.0)  # as if the cached view were older than the bound
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await Queue("gpu", backend=backend).add("remote.tasks.render")

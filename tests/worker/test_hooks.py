"""Worker lifecycle hooks and task autodiscovery, as the seed documents them."""

from __future__ import annotations

import sys
import textwrap
import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from asyncmq_otel import Queue, Worker, run_hooks, run_hooks_safely
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.hooks import normalize_hooks
from asyncmq_otel.settings import override_settings
from asyncmq_otel.tasks import TASK_REGISTRY
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]


async def test_sync_async_single_and_list_hooks_get_the_context(backend, unique_name):
    calls: list[tuple[str, object, str, str]] = []

    async def async_start(backend, worker_id, queue):
        calls.append(("async_start", backend, worker_id, queue))

    def sync_start(backend, worker_id, queue):
        calls.append(("sync_start", backend, worker_id, queue))

    def single_stop(backend, worker_id, queue):
        calls.append(("stop", backend, worker_id, queue))

    with override_settings(worker_on_startup=(async_start, sync_start), worker_on_shutdown=single_stop):
        async with running_worker(unique_name, backend) as worker:
            assert [c[0] for c in calls] == ["async_start", "sync_start"]
    assert [c[0] for c in calls] == ["async_start", "sync_start", "stop"]
    for _name, hook_backend, worker_id, queue in calls:
        assert hook_backend is backend
        assert worker_id == worker.worker_id
        assert len(worker_id) == 36  # a UUID string
        assert queue == unique_name


async def test_startup_failure_propagates_and_the_worker_never_claims(backend, unique_name):
    def broken(backend, worker_id, queue):
        raise RuntimeError("database unreachable")

    q = Queue(unique_name, backend=backend)
    job_id = await q.add("t.none")
    with (
        override_settings(worker_on_startup=[broken]),
        pytest.raises(RuntimeError, match="database unreachable"),
    ):
        await Worker(unique_name, backend=backend).run()
    assert await q.get_job_state(job_id) == "waiting"
    assert await backend.list_workers() == []


async def test_shutdown_hook_failures_are_logged_and_swallowed(backend, unique_name, caplog):
    ran: list[str] = []

    def first(backend, worker_id, queue):
        raise ValueError("flush failed")

    async def second(backend, worker_id, queue):
        ran.append("second")

    with override_settings(worker_on_shutdown=[first, second]):
        async with running_worker(unique_name, backend) as worker:
            pass
    assert worker.state == "stopped"
    assert ran == ["second"]
    assert any("shutdown_hook_failed" in r.getMessage() for r in caplog.records)


async def test_shutdown_hooks_run_when_the_worker_is_cancelled_from_outside(backend, unique_name):
    ran: list[str] = []

    async def on_shutdown(backend, worker_id, queue):
        await anyio.lowlevel.checkpoint()  # the tail is shielded, so awaiting here still works
        ran.append(worker_id)

    with override_settings(worker_on_shutdown=on_shutdown):
        worker = Worker(unique_name, backend=backend)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await eventually(lambda: worker.state == "running")
            tg.cancel_scope.cancel()
    assert ran == [worker.worker_id]
    assert await backend.list_workers() == []  # deregistered in the tail too


@pytest.mark.timeout(60)
async def test_a_blocked_sync_shutdown_hook_runs_in_a_thread_and_a_second_stop_abandons_it(unique_name):
    loop_thread = threading.get_ident()
    hook_threads: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def stuck(backend, worker_id, queue):
        hook_threads.append(threading.get_ident())
        entered.set()
        release.wait(20)

    worker = Worker(unique_name, backend=InMemoryBackend())
    try:
        with override_settings(worker_on_shutdown=stuck), anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await eventually(lambda: worker.state == "running")
                worker.stop()
                await anyio.to_thread.run_sync(entered.wait, 10)
                assert worker.state == "stopping"  # the loop is free while the hook blocks
                worker.stop()
    finally:
        release.set()
    assert worker.state == "stopped"
    assert hook_threads and hook_threads[0] != loop_thread


async def test_run_hooks_helpers_directly():
    seen: list[str] = []

    def ok(backend, worker_id, queue):
        seen.append(queue)

    def bad(backend, worker_id, queue):
        raise KeyError("x")

    await run_hooks(ok, backend=None, worker_id="w", queue="q1")
    with pytest.raises(KeyError):
        await run_hooks([bad, ok], backend=None, worker_id="w", queue="q2")
    failures = await run_hooks_safely([bad, ok], backend=None, worker_id="w", queue="q3")
    assert seen == ["q1", "q3"]
    assert [type(f) for f in failures] == [KeyError]
    assert normalize_hooks(None) == []
    with pytest.raises(TypeError):
        normalize_hooks(["not callable"])


async def test_autodiscover_imports_every_module_of_the_task_packages(
    tmp_path, monkeypatch, backend, unique_name
):
    package = tmp_path / "discoapp"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text(
        textwrap.dedent(
            f"""
            from asyncmq_otel import task

            @task({unique_name!r}, name="disco.deep")
            async def deep(x):
                return x * 2
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    q = Queue(unique_name, backend=backend)
    job_id = await q.add("disco.deep", [21])
    assert "disco.deep" not in TASK_REGISTRY
    try:
        with override_settings(tasks=["discoapp"]):
            async with running_worker(unique_name, backend):
                await eventually(lambda: "disco.deep" in TASK_REGISTRY)

                async def done() -> bool:
                    return await q.get_job_result(job_id) == 42

                await eventually(done)
    finally:
        TASK_REGISTRY.pop("disco.deep", None)
        for name in [m for m in sys.modules if m.startswith("discoapp")]:
            del sys.modules[name]

"""The worker with ``settings.sandbox_enabled``: handlers run in warm child processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from asyncmq_otel import Queue, sandbox
from asyncmq_otel.settings import override_settings
from tests import sandbox_tasks  # noqa: F401 - registers the sandbox.* tasks in this process
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]


@pytest.fixture
async def sandboxed() -> AsyncIterator[None]:
    with override_settings(sandbox_enabled=True, sandbox_processes=1, sandbox_term_grace=0.3):
        try:
            yield
        finally:
            await sandbox.shutdown_sandbox()


async def settled(q: Queue, job_id: str) -> str:
    async def done() -> bool:
        return await q.get_job_state(job_id) in {"completed", "failed"}

    await eventually(done, timeout=15)
    return str(await q.get_job_state(job_id))


@pytest.mark.usefixtures("sandboxed")
async def test_sandboxed_jobs_complete_fail_time_out_and_report_progress(backend, unique_name, events):
    q = Queue(unique_name, backend=backend)
    ok = await q.add("sandbox.add", [2, 3])
    pid = await q.add("sandbox.pid")
    failing = await q.add("sandbox.fail", [7], retries=1)
    hanging = await q.add("sandbox.hang", timeout=0.3)
    progress = await q.add("sandbox.progress", kwargs={"steps": 2})
    async with running_worker(unique_name, backend, concurrency=1):
        for job_id in (ok, pid, failing, hanging, progress):
            await settled(q, job_id)
    assert await q.get_job_result(ok) == 5
    assert await q.get_job_result(pid) != os.getpid()  # it ran in a child process
    dead = {d["id"]: d for d in await q.dlq()}
    assert dead[failing]["error"]["type"] == "tests.sandbox_tasks.SandboxTestError"
    assert dead[hanging]["error"]["type"] == "asyncmq_otel.errors.SandboxTimeout"
    assert [e.name for e in events if e.job_id == failing][-3:] == [
        "job:retried",
        "job:started",
        "job:failed",
    ]
    assert next(e for e in events if e.job_id == failing and e.name == "job:failed").error_type == (
        "tests.sandbox_tasks.SandboxTestError"
    )
    assert [e.progress for e in events if e.job_id == progress and e.name == "job:progress"] == [
        0.0,
        50.0,
        100.0,
    ]

"""Queue's admin and inspection paths never create a queue, and the last progress report is stored.

Both run on both backends (the in-memory one and Redis under a unique prefix).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.base import Backend
from asyncmq_otel.cli.admin import queues_with_job
from asyncmq_otel.errors import InvalidName
from tests.support.poll import eventually
from tests.support.running import running_worker

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]


@task("progress_q", name="t.admin_reads.progress_to_the_end", progress=True)
async def progress_to_the_end(report_progress) -> str:
    report_progress(50.0)
    await anyio.lowlevel.checkpoint()  # lets the first write start, as any real await in a handler does
    report_progress(100.0)
    return "done"


@task("progress_q", name="t.admin_reads.sync_progress_to_the_end", progress=True)
def sync_progress_to_the_end(report_progress) -> str:
    for pct in (25.0, 50.0, 75.0, 100.0):
        report_progress(pct)
    return "done"


async def test_reading_an_unknown_queue_creates_nothing(backend: Backend, unique_name: str) -> None:
    typo = Queue(unique_name, backend=backend)
    assert await typo.exists() is False
    assert await typo.get_job("abc") is None
    assert await typo.get_job_state("abc") is None
    assert await typo.get_job_result("abc") is None
    assert set((await typo.counts()).values()) == {0}
    assert await typo.list_jobs("waiting") == []
    assert await typo.dlq() == []
    assert await typo.retry_job("abc") is False
    assert await typo.purge_dlq() == 0
    assert await typo.clean("completed") == 0
    assert await typo.cancel_job("abc") is False
    assert await typo.is_paused() is False
    assert (await typo.stats()).ready == 0
    await typo.resume()
    assert unique_name not in await backend.list_queues()
    assert await backend.has_queue(unique_name) is False
    assert await queues_with_job(backend, "abc") == []


async def test_bad_ids_and_states_are_refused_before_the_lookup(backend: Backend, unique_name: str) -> None:
    typo = Queue(unique_name, backend=backend)
    with pytest.raises(InvalidName):
        await typo.get_job("bad id!")
    with pytest.raises(InvalidName):
        await typo.retry_job("bad id!")
    with pytest.raises(ValueError, match="finished state"):
        await typo.clean("waiting")
    assert unique_name not in await backend.list_queues()


async def test_pause_creates_the_queue_paused_and_the_admin_paths_see_it(
    backend: Backend, unique_name: str
) -> None:
    paused = Queue(unique_name, backend=backend)
    await paused.pause()
    assert await backend.has_queue(unique_name)
    assert await Queue(unique_name, backend=backend).is_paused()
    job_id = await paused.add("t.admin_reads.progress_to_the_end")
    other = Queue(f"{unique_name}-2", backend=backend)
    await other.add("t.admin_reads.progress_to_the_end", job_id=job_id)
    assert await queues_with_job(backend, job_id) == sorted([unique_name, f"{unique_name}-2"])
    assert (await Queue(unique_name, backend=backend).get_job(job_id) or {}).get("state") == "waiting"


@pytest.mark.parametrize(
    "task_id", ["t.admin_reads.progress_to_the_end", "t.admin_reads.sync_progress_to_the_end"]
)
async def test_the_last_progress_report_is_stored(backend: Backend, unique_name: str, task_id: str) -> None:
    q = Queue(unique_name, backend=backend)
    job_id = await q.add(task_id)
    async with running_worker(unique_name, backend):

        async def completed() -> bool:
            return await q.get_job_state(job_id) == "completed"

        await eventually(completed, timeout=20, what="job completed")
    stored = await q.get_job(job_id)
    assert stored is not None
    assert stored["progress"] == 100.0

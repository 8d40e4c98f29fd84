"""The worker and exporter as real processes against Redis: SIGTERM drains, a second SIGINT stops at once."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.queues import Queue
from tests.support.poll import eventually
from tests.support.scrape import scrape

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

Spawn = Callable[..., tuple[subprocess.Popen[bytes], Path]]


def _worker_args(queue: str, url: str, prefix: str, *extra: str) -> list[str]:
    return [
        "worker",
        queue,
        "--app",
        "tests.cli.sample_app",
        "--backend",
        url,
        "--prefix",
        prefix,
        "--metrics-addr",
        "",
        "--log-format",
        "console",
        *extra,
    ]


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=timeout))


async def _active(queue: Queue, count: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async def reached() -> bool:
        assert proc.poll() is None, await anyio.Path(log).read_text()
        return (await queue.counts())["active"] == count

    await eventually(reached, timeout=30, what=f"{count} jobs active")


async def test_sigterm_drains_in_flight_jobs_and_claims_nothing_new(
    backend: RedisBackend, spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    queue = Queue(unique_name, backend=backend)
    ids = [await queue.add("clitest.hold", [str(release)]) for _ in range(6)]
    proc, log = spawn(
        *_worker_args(unique_name, redis_url, redis_prefix, "--concurrency", "2", "--shutdown-timeout", "40")
    )
    await _active(queue, 2, proc, log)

    proc.send_signal(signal.SIGTERM)
    await eventually(
        lambda: "SIGTERM received: draining" in log.read_text(), timeout=10, what="drain reported"
    )
    # A repeat within 1 s of the first (the OS merges two pending SIGTERMs, so send it once the first
    # was handled) is a duplicate: ignored, so this stays a drain.
    proc.send_signal(signal.SIGTERM)
    await eventually(lambda: "SIGTERM ignored" in log.read_text(), timeout=10, what="duplicate reported")
    assert proc.poll() is None  # still finishing its two jobs
    counts = await queue.counts()
    assert (counts["active"], counts["waiting"]) == (2, 4)

    release.touch()
    assert await _wait_exit(proc, 30) == 0, log.read_text()
    counts = await queue.counts()
    assert (counts["completed"], counts["waiting"], counts["active"]) == (2, 4, 0)
    jobs = [await queue.get_job(job_id) for job_id in ids]
    assert all(job is not None for job in jobs)  # nothing lost
    untouched = [job for job in jobs if job is not None and job["state"] == "waiting"]
    assert len(untouched) == 4
    assert all(job["attempts"] == 0 and job["interrupts"] == 0 for job in untouched)  # never claimed
    assert "stopped (drained): 2 completed" in log.read_text()


async def test_second_sigint_stops_at_once_and_requeues_in_flight_jobs(
    backend: RedisBackend, spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    never = tmp_path / "never-created"
    queue = Queue(unique_name, backend=backend)
    ids = [await queue.add("clitest.hold", [str(never)]) for _ in range(5)]
    proc, log = spawn(
        *_worker_args(unique_name, redis_url, redis_prefix, "--concurrency", "2", "--shutdown-timeout", "60")
    )
    await _active(queue, 2, proc, log)
    running = {job_id for job_id in ids if await queue.get_job_state(job_id) == "active"}

    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    await eventually(lambda: "draining" in log.read_text(), timeout=10, what="drain reported")
    await anyio.sleep(1.2)  # the scenario: a second signal counts only 1 s or more after the first
    assert proc.poll() is None  # the handlers never finish by themselves: it is draining
    proc.send_signal(signal.SIGINT)
    assert await _wait_exit(proc, 20) == 0, log.read_text()
    assert time.monotonic() - started < 15  # far less than the 60 s shutdown timeout

    counts = await queue.counts()
    assert (counts["waiting"], counts["active"], counts["completed"]) == (5, 0, 0)
    for job_id in running:
        job = await queue.get_job(job_id)
        assert job is not None
        assert job["state"] == "waiting"
        assert job["interrupts"] == 1
    text = log.read_text()
    assert "SIGINT received again: stopping now" in text
    assert "2 interrupted" in text


async def test_exporter_serves_queue_depth_until_sigterm(
    backend: RedisBackend, spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str
) -> None:
    queue = Queue(unique_name, backend=backend)
    await queue.add("clitest.echo", [1])
    await queue.add("clitest.echo", [2])
    proc, log = spawn(
        "exporter",
        "--backend",
        redis_url,
        "--prefix",
        redis_prefix,
        "--metrics-addr",
        "127.0.0.1:0",
        "--interval",
        "0.2",
        "--log-format",
        "console",
    )
    urls: list[str] = []

    def banner() -> bool:
        assert proc.poll() is None, log.read_text()
        urls.extend(re.findall(r"metrics (http://127\.0\.0\.1:\d+/metrics)", log.read_text()))
        return bool(urls)

    await eventually(banner, timeout=20, what="exporter banner")
    wanted = f'asyncmq_queue_depth{{messaging_destination_name="{unique_name}",messaging_system="asyncmq",state="ready"}} 2.0'

    async def exported() -> bool:
        return wanted in await anyio.to_thread.run_sync(scrape, urls[0])

    await eventually(exported, timeout=10, what="queue depth exported")
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc, 20) == 0, log.read_text()
    assert "exporter stopped" in log.read_text()

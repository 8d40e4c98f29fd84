"""Chaos rows 5-8: handlers that block, hang or spin, and sandbox results that are too large.

5. ``time.sleep`` in an async handler: the renewer thread keeps the lease while the loop is blocked
   for less than ``loop_block_limit`` (3 × lease: one execution, no stall); past the limit renewal
   stops, the job is reaped, run by the other worker and the blocked one is fenced (2 executions,
   1 accepted).
6. An async handler that hangs past its ``timeout``: ``JobTimeout`` at timeout ±10 %, retried per
   policy, the slot is freed, and jobs flowing beside it keep their latency.
7. A sandboxed handler that spins, or ignores SIGTERM: ``SandboxTimeout`` (SIGTERM, then SIGKILL
   after the grace), no zombie or orphan left, wall ≤ timeout + grace + 1 s.
8. A sandboxed 900 KiB result completes; a 10 MiB one fails ``ResultTooLarge`` in under 2 s.
47. A worker SIGKILLed while a sandboxed job runs takes its child and the child's descendants with it
    (one of them left the child's session), so the redelivered job never runs beside its first run.
48. A sandboxed job past its timeout whose handler forked a process that called ``setsid()`` and holds the
    reply pipe settles as a timeout at once (not when that process exits), and that process is killed.
   (The pool-level form of 7-8 and 48 is tests/worker/test_sandbox.py; these run a real CLI worker.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from asyncmq_otel import Queue, task
from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.settings import Settings, override_settings
from tests.chaos.helpers import queue_fixture, stop_all, wait_states
from tests.support.invariants import Enqueued, LeaseSampler, check_invariants, wait_quiescent
from tests.support.ledger import Ledger
from tests.support.poll import eventually
from tests.support.running import running_worker
from tests.support.worker_proc import StartWorker

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.chaos]

QUEUE = "hang"
KIB = 1024
MIB = 1024 * KIB
TIMEOUT = 1.0  # chaos.spin's and row6.hang's timeout
GRACE = 0.5

queue = queue_fixture(QUEUE)


# -- row 5 ----------------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_row5_a_loop_blocked_under_the_limit_keeps_its_lease(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str
) -> None:
    # 3 × lease of blocking; the limit allows it (the loop ticks once a second, so add that too)
    blocked = worker_proc(
        QUEUE, redis_url, redis_prefix, concurrency=1, env={**ledger.env, "ASYNCMQ_LOOP_BLOCK_LIMIT": "6"}
    )
    enqueued = Enqueued({await queue.add("chaos.block", [3.0], job_id="short-block")})
    await eventually(lambda: ledger.starts("short-block"), timeout=15, what="the blocking job started")
    other = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        await wait_states(queue, {"short-block": "completed"}, timeout=20)
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert await stop_all([blocked, other]) == [0, 0]
    job = await queue.get_job("short-block")
    assert job is not None
    assert (job["attempts"], job["stalls"]) == (1, 0)
    assert [run.pid for run in ledger.executions()["short-block"]] == [blocked.pid]
    assert not blocked.logged("worker.event_loop_blocked")
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert (report.executions, report.stalls) == (1, 0)


@pytest.mark.timeout(90)
async def test_row5_a_loop_blocked_past_the_limit_is_reclaimed_and_fenced(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # limit 2 s (test config): renewal stops after 2-3 s, the lease runs out 1 s later, the reaper
    # takes the job within 0.2 s; 7 s of blocking leaves the other worker time to finish it first
    blocked = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    once = tmp_path / "blocked-once"
    enqueued = Enqueued({await queue.add("chaos.block", [7.0, str(once)], job_id="long-block")})
    await eventually(lambda: ledger.starts("long-block"), timeout=15, what="the blocking job started")
    other = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=ledger.env)
    with LeaseSampler(redis_url, redis_prefix, QUEUE) as sampler:
        await wait_states(queue, {"long-block": "completed"}, timeout=20)
        await eventually(
            lambda: blocked.logged("job.stale_write") or blocked.logged("job.lease_lost"),
            timeout=20,
            what="the blocked worker learns it lost the job",
        )
        wait_quiescent(redis_url, redis_prefix, QUEUE)
    assert blocked.logged("worker.event_loop_blocked")
    assert await stop_all([blocked, other]) == [0, 0]
    job = await queue.get_job("long-block")
    assert job is not None
    runs = ledger.executions()["long-block"]
    assert [run.pid for run in runs] == [blocked.pid, other.pid]
    assert (job["state"], job["attempts"], job["stalls"]) == ("completed", 2, 1)
    assert job["result"] == {"t": runs[1].token, "r": 0.0}  # the other worker's run is the accepted one
    assert [s["status"] for s in ledger.settles() if s["pid"] == blocked.pid] in ([], ["stale"])
    report = check_invariants(
        redis_url, redis_prefix, QUEUE, enqueued, ledger, sampler=sampler, workers_stopped=True
    ).check()
    assert (report.executions, report.stalls) == (2, 1)


# -- row 6 ----------------------------------------------------------------------------------------------
@task("row6", name="row6.hang", retries=1, timeout=TIMEOUT)
async def hang() -> None:
    await anyio.sleep_forever()


@task("row6", name="row6.quick")
async def quick(hold: float = 0.0) -> float:
    await anyio.sleep(hold)
    return hold


@pytest.fixture
def fast() -> Iterator[Settings]:
    with override_settings(
        lease=1.0, renew_interval=0.3, reaper_interval=0.2, loop_block_limit=2.0, block_timeout=0.5
    ) as config:
        yield config


@pytest.mark.timeout(60)
async def test_row6_a_hung_handler_times_out_on_time_is_retried_and_frees_its_slot(
    fast: Settings, redis_url: str, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=10.0)
    queue = Queue("row6", backend=backend)
    events: list[LifecycleEvent] = []
    bus.on("job:*", events.append, inline=True)
    try:
        async with running_worker("row6", backend, concurrency=2):
            hung = await queue.add("row6.hang", retries=1, job_id="hung")
            beside: list[str] = []
            while await queue.get_job_state("hung") != "failed":  # jobs flow beside the hung one
                beside.append(await queue.add("row6.quick", job_id=f"q{len(beside)}"))
                assert len(beside) < 200, "the hung job never failed"
                await anyio.sleep(0.05)
            await wait_states(queue, dict.fromkeys(beside, "completed"), timeout=10)
            # the slot is free again: two held jobs run side by side
            pair = [await queue.add("row6.quick", [0.5], job_id=f"pair{i}") for i in range(2)]
            await wait_states(queue, dict.fromkeys(pair, "completed"), timeout=10)
    finally:
        bus.off("job:*", events.append)
        await backend.close()

    def of(job_id: str, *names: str) -> list[LifecycleEvent]:
        return [event for event in events if event.job_id == job_id and event.name in names]

    timeline = of(hung, "job:started", "job:retried", "job:failed")
    assert [event.name for event in timeline] == ["job:started", "job:retried", "job:started", "job:failed"]
    for started, ended in ((timeline[0], timeline[1]), (timeline[2], timeline[3])):
        assert ended.error_type == "asyncmq_otel.errors.JobTimeout"
        assert ended.duration_s is not None
        assert TIMEOUT * 0.9 <= ended.duration_s <= TIMEOUT * 1.1, ended.duration_s
        assert TIMEOUT * 0.9 <= ended.ts - started.ts <= TIMEOUT * 1.1
    job = await _stored(redis_url, redis_prefix, "row6", hung)
    assert (job["attempts"], job["dlq_reason"]) == (2, "failed")
    waits = [event.wait_s or 0.0 for job_id in beside for event in of(job_id, "job:started")]
    assert len(waits) == len(beside) >= 10
    assert max(waits) < 0.5, sorted(waits)[-5:]  # the hung job never held the other slot
    starts = [of(job_id, "job:started")[0] for job_id in pair]
    ends = [of(job_id, "job:completed")[0] for job_id in pair]
    assert max(s.ts for s in starts) < min(e.ts for e in ends)  # ran side by side: both slots free


async def _stored(url: str, prefix: str, queue: str, job_id: str) -> dict[str, Any]:
    backend = RedisBackend(url, prefix=prefix)
    try:
        job = await backend.get_job(queue, job_id)
    finally:
        await backend.close()
    assert job is not None
    return job.to_dict()


# -- rows 7 and 8 ---------------------------------------------------------------------------------------
SANDBOX_ENV = {
    "ASYNCMQ_SANDBOX_ENABLED": "1",
    "ASYNCMQ_SANDBOX_PROCESSES": "1",
    "ASYNCMQ_SANDBOX_TERM_GRACE": str(GRACE),
}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE and psutil.Process(pid).ppid() == 1
    except psutil.NoSuchProcess:
        return True


def _zombies(pid: int) -> list[int]:
    found = []
    for child in _descendants(pid):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.timeout(90)
async def test_rows7_8_sandbox_timeouts_kill_the_child_and_large_results_fail_fast(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env={**ledger.env, **SANDBOX_ENV})
    enqueued = Enqueued()
    for job_id, ignore in (("spin", False), ("spin-ign", True)):
        pid_path = tmp_path / f"{job_id}.pid"
        enqueued.ack(
            [await queue.add("chaos.spin", [str(pid_path)], {"ignore_sigterm": ignore}, job_id=job_id)]
        )
        await eventually(pid_path.exists, timeout=20, what=f"{job_id} runs in a sandbox child")
        await eventually(
            lambda pid_path=pid_path: pid_path.read_text().count(" ") == 1, timeout=5, what="the child's pid"
        )
        child_pid, handler_started = pid_path.read_text().split()
        child = int(child_pid)
        assert child in [proc.pid for proc in _descendants(worker.pid)]
        await wait_states(queue, {job_id: "failed"}, timeout=10)
        job = await queue.get_job(job_id)
        assert job is not None
        assert job["error"]["type"] == "asyncmq_otel.errors.SandboxTimeout", job["error"]
        assert ("SIGKILL" if ignore else "SIGTERM") in job["error"]["message"]
        assert (job["attempts"], job["dlq_reason"]) == (1, "failed")  # retries=0: not retried
        wall = float(job["finished_at"]) - float(handler_started)  # Redis TIME and the child share a clock
        low = TIMEOUT + (GRACE if ignore else 0.0)
        assert low <= wall <= TIMEOUT + GRACE + 1.0, wall
        await eventually(lambda child=child: _gone(child), timeout=5, what=f"child {child} is gone")
        assert _zombies(worker.pid) == []

    # the killed child's replacement is warm before the timed jobs (its start is not what row 8 times)
    enqueued.ack([await queue.add("chaos.big_result", [1], job_id="warm-up")])
    await wait_states(queue, {"warm-up": "completed"}, timeout=30)
    enqueued.ack([await queue.add("chaos.big_result", [900 * KIB], job_id="big-ok")])
    enqueued.ack([await queue.add("chaos.big_result", [10 * MIB], job_id="big-too")])
    await wait_states(queue, {"big-ok": "completed", "big-too": "failed"}, timeout=20)
    ok, too = await queue.get_job("big-ok"), await queue.get_job("big-too")
    assert ok is not None
    assert too is not None
    assert ok["result"] == "x" * (900 * KIB)
    assert too["error"]["type"] == "asyncmq_otel.errors.ResultTooLarge", too["error"]
    assert too["attempts"] == 1
    durations: dict[str, float] = {}

    def logged_both() -> bool:
        # the log line follows the settle that the state poll saw, so it may still be on its way
        durations.update(
            (line["messaging.message.id"], line["asyncmq.job.duration_s"])
            for line in worker.lines()
            if line.get("event") in {"job.completed", "job.failed"} and line.get("logger") == "asyncmq_otel"
        )
        return {"big-ok", "big-too"} <= durations.keys()

    await eventually(logged_both, timeout=5, what="the big-ok and big-too log lines")
    assert durations["big-too"] < 2.0, durations
    assert durations["big-ok"] < 2.0, durations

    children = [proc.pid for proc in _descendants(worker.pid)]
    assert await stop_all([worker]) == [0]
    await eventually(lambda: all(_gone(pid) for pid in children), timeout=5, what="no orphan left")
    wait_quiescent(redis_url, redis_prefix, QUEUE)
    check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()


# -- rows 47 and 48 -------------------------------------------------------------------------------------
SANDBOX_APP = ("--app", "tests.sandbox_tasks")  # the sandbox.* tasks, registered in the worker and its child


def _dead(pid: int) -> bool:
    """Not running: no such process, or a zombie (nothing of it runs; its parent may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.timeout(120)
async def test_row47_a_sigkilled_worker_takes_its_sandbox_child_and_its_descendants_along(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {**ledger.env, **SANDBOX_ENV}
    first = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=env, extra_args=SANDBOX_APP)
    lock, record = tmp_path / "exclusive.lock", tmp_path / "runs.jsonl"
    enqueued = Enqueued({await queue.add("sandbox.exclusive", [str(lock), str(record)], job_id="orphan")})
    await eventually(lambda: len(_records(record)) == 1, timeout=30, what="the first run started")
    (run,) = _records(record)
    tree = [run["pid"], run["escapee"]]
    assert run["exclusive"] is True
    assert run["pid"] in [proc.pid for proc in _descendants(first.pid)]
    assert not _dead(run["escapee"])

    first.kill9()
    second = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=env, extra_args=SANDBOX_APP)
    await eventually(
        lambda: all(_dead(pid) for pid in tree), timeout=10, what=f"the first run's tree {tree} died"
    )
    await wait_states(queue, {"orphan": "completed"}, timeout=30)
    runs = _records(record)
    assert len(runs) == 2
    assert runs[1]["pid"] in [proc.pid for proc in _descendants(second.pid)]
    # The lock was free: nothing of the first run held it when the redelivered job started.
    assert runs[1]["exclusive"] is True
    job = await queue.get_job("orphan")
    assert job is not None
    assert (job["result"], job["attempts"], job["stalls"]) == (True, 2, 1)
    assert await stop_all([second]) == [0]
    wait_quiescent(redis_url, redis_prefix, QUEUE)
    check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()


@pytest.mark.timeout(120)
async def test_row48_a_timeout_kills_an_escapee_holding_the_reply_pipe_and_settles_at_once(
    queue: Queue, worker_proc: StartWorker, ledger: Ledger, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {**ledger.env, **SANDBOX_ENV}
    worker = worker_proc(QUEUE, redis_url, redis_prefix, concurrency=1, env=env, extra_args=SANDBOX_APP)
    pid_path = tmp_path / "escape.pid"
    enqueued = Enqueued(
        {
            await queue.add(
                "sandbox.hang_with_escapee",
                kwargs={"pid_path": str(pid_path)},
                timeout=TIMEOUT,
                job_id="escape",
            )
        }
    )
    await eventually(lambda: " " in (pid_path.read_text() if pid_path.exists() else ""), timeout=30)
    tree = [int(pid) for pid in pid_path.read_text().split()]
    await wait_states(queue, {"escape": "failed"}, timeout=30)
    job = await queue.get_job("escape")
    assert job is not None
    assert job["error"]["type"] == "asyncmq_otel.errors.SandboxTimeout", job["error"]
    assert job["attempts"] == 1
    durations: list[float] = []

    def logged() -> bool:
        durations[:] = [
            line["asyncmq.job.duration_s"]
            for line in worker.lines()
            if line.get("event") == "job.failed" and line.get("messaging.message.id") == "escape"
        ]
        return bool(durations)

    await eventually(logged, timeout=5, what="the job.failed log line")
    # The escapee sleeps 60 s holding the reply pipe: the job settled at its timeout, not when it exits.
    assert durations[0] < TIMEOUT + GRACE + 5, durations
    await eventually(lambda: all(_dead(pid) for pid in tree), timeout=10, what=f"the job's tree {tree} died")
    assert await stop_all([worker]) == [0]
    wait_quiescent(redis_url, redis_prefix, QUEUE)
    check_invariants(redis_url, redis_prefix, QUEUE, enqueued, ledger, workers_stopped=True).check()

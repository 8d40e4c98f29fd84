"""The sandbox: warm children, typed errors, hard stops, bounded results (fault matrix rows 7-8 and 48)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest

from asyncmq_otel._exit_status import describe_exit
from asyncmq_otel.errors import (
    JobArgumentError,
    JobTimeout,
    ResultSerializationError,
    ResultTooLarge,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
    UnknownTask,
)
from asyncmq_otel.sandbox.child import Oversize, read_frame, write_frame
from asyncmq_otel.sandbox.pool import SandboxPool, SandboxTaskError, _ReplyPipe, run_handler, shutdown_sandbox
from asyncmq_otel.settings import Settings, override_settings
from asyncmq_otel.tasks import TASK_REGISTRY, TaskInfo, task
from tests import sandbox_tasks
from tests.support.poll import eventually, wait_until

GRACE = 0.5
KIB = 1024
MIB = 1024 * KIB


def sandbox_children() -> list[psutil.Process]:
    """Sandbox children of this process, zombies included (a zombie child is a failure whatever it was)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or "asyncmq_otel.sandbox.child" in proc.cmdline():
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie whose parent is init counts as gone: nothing of ours holds it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def sandbox_settings() -> Iterator[Settings]:
    with override_settings(sandbox_term_grace=GRACE, sandbox_processes=2) as current:
        yield current


@pytest.fixture
async def pool(sandbox_settings: Settings) -> AsyncIterator[SandboxPool]:
    sandbox = SandboxPool()
    try:
        yield sandbox
    finally:
        await sandbox.aclose()
    assert sandbox_children() == []


@pytest.fixture
async def default_pool(sandbox_settings: Settings) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await shutdown_sandbox()
    assert sandbox_children() == []


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[float, Any]] = []

    def __call__(self, pct: float, data: Any) -> None:
        self.reports.append((pct, data))

    async def first(self, key: str) -> Any:
        await eventually(lambda: bool(self.reports), what="a progress report")
        return self.reports[0][1][key]


# -- results ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def warm_pool() -> Iterator[SandboxPool]:
    """A pool shared by one test class; closed when the class is done."""
    sandbox = SandboxPool(processes=2)
    try:
        yield sandbox
    finally:
        anyio.run(sandbox.aclose)
    assert sandbox_children() == []


class TestWarmPool:
    """Tests that leave their child healthy share one pool, so they do not each pay for a child's start.

    The pool also outlives event loop runs: each test runs in a loop (and backend) of its own. It is closed
    when the class is done, before the tests below count the children left.
    """

    @pytest.mark.anyio
    async def test_sync_and_async_results(self, warm_pool: SandboxPool) -> None:
        assert await warm_pool.run("sandbox.add", [2, 3], {}, 10) == 5
        assert await warm_pool.run("sandbox.add", [2], {"b": 40}, 10) == 42
        assert await warm_pool.run("sandbox.async_add", [3, 4], {}, 10) == 7

    @pytest.mark.anyio
    async def test_children_are_warm_and_reused(self, warm_pool: SandboxPool) -> None:
        first = await warm_pool.run("sandbox.pid", [], {}, 10)
        second = await warm_pool.run("sandbox.pid", [], {}, 10)
        assert first == second
        assert first != os.getpid()

    @pytest.mark.anyio
    async def test_at_most_sandbox_processes_children(self, warm_pool: SandboxPool) -> None:
        pids: list[int] = []

        async def one() -> None:
            pids.append(await warm_pool.run("sandbox.sleep", [0.2], {}, 10))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        assert len(pids) == 4
        assert len(set(pids)) <= 2

    @pytest.mark.anyio
    async def test_handler_error_comes_back_typed(self, warm_pool: SandboxPool) -> None:
        with pytest.raises(SandboxTaskError) as caught:
            await warm_pool.run("sandbox.fail", [7], {}, 10)
        error = caught.value
        assert isinstance(error, SandboxError)
        assert error.error_type == "tests.sandbox_tasks.SandboxTestError"
        assert error.message == "boom 7"
        assert "raise SandboxTestError" in error.traceback
        assert error.traceback.rstrip().endswith("SandboxTestError: boom 7")
        assert str(error) == "tests.sandbox_tasks.SandboxTestError: boom 7"

        with pytest.raises(SandboxTaskError) as caught:
            await warm_pool.run("sandbox.async_fail", [], {}, 10)
        assert caught.value.error_type == "ValueError"
        assert caught.value.message == "async boom"

    @pytest.mark.anyio
    async def test_single_error_group_is_unwrapped(self, warm_pool: SandboxPool) -> None:
        with pytest.raises(SandboxTaskError) as caught:
            await warm_pool.run("sandbox.group_fail", [], {}, 10)
        assert caught.value.error_type == "KeyError"
        assert "inside a group" in caught.value.message

    @pytest.mark.anyio
    async def test_task_missing_in_the_child_is_unknown(self, warm_pool: SandboxPool) -> None:
        @task(sandbox_tasks.QUEUE, name="sandbox.defined_in_a_function")
        def local() -> int:
            return 1

        try:
            with pytest.raises(UnknownTask, match="not in its sandbox child"):
                await warm_pool.run("sandbox.defined_in_a_function", [], {}, 10)
        finally:
            del TASK_REGISTRY["sandbox.defined_in_a_function"]
        assert await warm_pool.run("sandbox.add", [1, 1], {}, 10) == 2

    @pytest.mark.anyio
    async def test_900_kib_result_succeeds(self, warm_pool: SandboxPool) -> None:
        await warm_pool.run("sandbox.pid", [], {}, 10)
        started = time.monotonic()
        assert await warm_pool.run("sandbox.big", [900 * KIB], {}, 30) == "x" * (900 * KIB)
        assert time.monotonic() - started < 2

    @pytest.mark.anyio
    async def test_10_mib_result_is_too_large_fast(self, warm_pool: SandboxPool) -> None:
        warm = await warm_pool.run("sandbox.pid", [], {}, 10)
        started = time.monotonic()
        with pytest.raises(ResultTooLarge) as caught:
            await warm_pool.run("sandbox.big", [10 * MIB], {}, 30)
        assert time.monotonic() - started < 2
        assert caught.value.limit == MIB
        assert caught.value.size >= 10 * MIB
        # The child refused it itself, so it stayed in step and is reused.
        assert await warm_pool.run("sandbox.pid", [], {}, 10) == warm

    @pytest.mark.anyio
    async def test_limit_follows_settings(self, warm_pool: SandboxPool) -> None:
        with override_settings(max_result_bytes=100):
            with pytest.raises(ResultTooLarge):
                await warm_pool.run("sandbox.big", [99], {}, 10)  # 101 bytes of JSON with its quotes
            # Exactly at the limit passes: the reply envelope does not count against the result.
            assert await warm_pool.run("sandbox.big", [98], {}, 10) == "x" * 98
            # An error's traceback is not a result: a tiny limit does not turn it into ResultTooLarge.
            with pytest.raises(SandboxTaskError):
                await warm_pool.run("sandbox.fail", [1], {}, 10)
        assert await warm_pool.run("sandbox.big", [200], {}, 10) == "x" * 200

    @pytest.mark.anyio
    async def test_unserializable_result(self, warm_pool: SandboxPool) -> None:
        warm = await warm_pool.run("sandbox.pid", [], {}, 10)
        with pytest.raises(ResultSerializationError, match=r"result\[\"when\"\]: object is not JSON"):
            await warm_pool.run("sandbox.unserializable", [], {}, 10)
        assert await warm_pool.run("sandbox.pid", [], {}, 10) == warm

    @pytest.mark.anyio
    async def test_progress_reaches_the_callback(self, warm_pool: SandboxPool) -> None:
        progress = Progress()
        assert await warm_pool.run("sandbox.progress", [], {"steps": 4}, 10, on_progress=progress) == "done"
        assert progress.reports == [
            (0.0, {"step": 0}),
            (25.0, {"step": 1}),
            (50.0, {"step": 2}),
            (75.0, {"step": 3}),
            (100.0, None),
        ]

    @pytest.mark.anyio
    async def test_async_and_failing_progress_callbacks(
        self, warm_pool: SandboxPool, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[float] = []

        async def record(pct: float, data: Any) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append(pct)

        assert await warm_pool.run("sandbox.progress", [], {"steps": 2}, 10, on_progress=record) == "done"
        assert seen == [0.0, 50.0, 100.0]

        def broken(pct: float, data: Any) -> None:
            raise RuntimeError("callback bug")

        with caplog.at_level(logging.ERROR, logger="asyncmq_otel.sandbox"):
            assert await warm_pool.run("sandbox.progress", [], {"steps": 2}, 10, on_progress=broken) == "done"
        assert any("progress callback failed" in record.getMessage() for record in caplog.records)

    @pytest.mark.anyio
    async def test_child_output_becomes_log_lines(
        self, warm_pool: SandboxPool, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="asyncmq_otel.sandbox")
        result = await warm_pool.run("sandbox.chatty", [], {}, 10)
        assert result["ok"] is True
        # The protocol is intact: the same child answers the next job.
        assert await warm_pool.run("sandbox.pid", [], {}, 10) == result["pid"]

        def logged(text: str, level: int) -> bool:
            return any(text in r.getMessage() and r.levelno == level for r in caplog.records)

        await eventually(
            lambda: logged("stdout: hello from the sandbox child", logging.INFO), what="stdout line"
        )
        await eventually(
            lambda: logged('stdout: \x00\x00\x00\x0b{"op":"ok"}', logging.INFO), what="frame-like bytes"
        )
        await eventually(lambda: logged("stderr: a complaint on stderr", logging.WARNING), what="stderr line")


@pytest.mark.anyio
async def test_start_prewarms_the_pool(pool: SandboxPool) -> None:
    await pool.start()
    assert len(sandbox_children()) == 2
    await pool.start()  # already full: nothing more starts
    assert len(sandbox_children()) == 2


# -- handler errors -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_task_starts_nothing(pool: SandboxPool) -> None:
    with pytest.raises(UnknownTask):
        await pool.run("sandbox.nope", [], {}, 10)
    assert sandbox_children() == []


@pytest.mark.anyio
async def test_module_the_child_cannot_import_is_logged(
    pool: SandboxPool, caplog: pytest.LogCaptureFixture
) -> None:
    def ghost() -> int:
        return 1

    ghost.__module__ = "tests.no_such_module"
    TASK_REGISTRY["sandbox.ghost"] = TaskInfo("sandbox.ghost", ghost, sandbox_tasks.QUEUE)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncmq_otel.sandbox"), pytest.raises(UnknownTask):
            await pool.run("sandbox.ghost", [], {}, 10)
    finally:
        del TASK_REGISTRY["sandbox.ghost"]
    assert any("could not import tests.no_such_module" in r.getMessage() for r in caplog.records)
    # The other tasks were imported all the same.
    assert await pool.run("sandbox.add", [1, 1], {}, 10) == 2


@pytest.mark.anyio
async def test_non_json_arguments_are_refused_before_running(pool: SandboxPool) -> None:
    with pytest.raises(JobArgumentError):
        await pool.run("sandbox.add", [object()], {}, 10)
    assert sandbox_children() == []


# -- timeouts and stops -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_spinning_handler_times_out(pool: SandboxPool) -> None:
    warm = await pool.run("sandbox.pid", [], {}, 10)
    progress = Progress()
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="SIGTERM") as caught:
        await pool.run("sandbox.spin", [], {}, 0.5, on_progress=progress)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, JobTimeout)
    assert 0.5 <= elapsed < 0.5 + GRACE + 1
    assert await progress.first("pid") == warm
    assert gone(warm)
    assert sandbox_children() == []


@pytest.mark.anyio
async def test_sigterm_ignored_gets_sigkill_and_nothing_remains(pool: SandboxPool) -> None:
    await pool.run("sandbox.pid", [], {}, 10)
    progress = Progress()
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="SIGKILL"):
        await pool.run("sandbox.spin", [], {"ignore_sigterm": True}, 0.5, on_progress=progress)
    elapsed = time.monotonic() - started
    assert 0.5 + GRACE <= elapsed < 0.5 + GRACE + 1
    assert gone(await progress.first("pid"))
    assert sandbox_children() == []


@pytest.mark.anyio
async def test_stop_reaches_processes_the_handler_started(pool: SandboxPool) -> None:
    progress = Progress()
    with pytest.raises(SandboxTimeout):
        await pool.run("sandbox.hang_with_grandchild", [], {}, 0.5, on_progress=progress)
    assert gone(await progress.first("pid"))
    grandchild = await progress.first("grandchild")
    await eventually(lambda: gone(grandchild), timeout=2, what="the handler's own child is killed")


@pytest.mark.anyio
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("ignore_sigterm", "orphan"), [(False, False), (True, True)], ids=["setsid", "ignores-sigterm-orphaned"]
)
async def test_timeout_kills_an_escapee_that_left_the_session_and_holds_the_pipe(
    pool: SandboxPool, ignore_sigterm: bool, orphan: bool
) -> None:
    # The escapee calls setsid(), so killpg misses it, and it holds the reply pipe open for 60 s: the
    # stop must find it by its ancestry and stop waiting on the pipe at the deadline. Orphaned (its parent
    # exited), it is found through the child, its subreaper; ignoring SIGTERM, it gets SIGKILL after the grace.
    progress = Progress()
    started = time.monotonic()
    kwargs = {"seconds": 60.0, "ignore_sigterm": ignore_sigterm, "orphan": orphan}
    with pytest.raises(SandboxTimeout):
        await pool.run("sandbox.hang_with_escapee", [], kwargs, 1.0, on_progress=progress)
    elapsed = time.monotonic() - started
    assert 1.0 + (GRACE if ignore_sigterm else 0.0) <= elapsed < 1.0 + GRACE + 5, elapsed
    assert gone(await progress.first("pid"))
    escapee = await progress.first("escapee")
    await eventually(lambda: gone(escapee), timeout=10, what="the escapee is killed")
    assert sandbox_children() == []


@pytest.mark.anyio
async def test_none_timeout_uses_the_default(pool: SandboxPool) -> None:
    with override_settings(sandbox_default_timeout=0.3), pytest.raises(SandboxTimeout, match=r"0\.3s"):
        await pool.run("sandbox.hang", [], {}, None)


@pytest.mark.anyio
async def test_cancellation_kills_the_child(pool: SandboxPool) -> None:
    progress = Progress()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_once_running() -> None:
                await progress.first("pid")
                scope.cancel()

            tg.start_soon(cancel_once_running)
            await pool.run("sandbox.hang", [], {}, 30, on_progress=progress)
            pytest.fail("the cancelled run returned")
    assert scope.cancelled_caught
    # Stopped and reaped before the cancellation reached us.
    assert gone(await progress.first("pid"))
    assert sandbox_children() == []
    assert await pool.run("sandbox.add", [1, 2], {}, 10) == 3


# -- crashes ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_crash_is_reported_and_the_child_replaced(pool: SandboxPool) -> None:
    progress = Progress()
    with pytest.raises(SandboxCrashed, match="exited with code 3"):
        await pool.run("sandbox.exit", [], {"code": 3}, 10, on_progress=progress)
    crashed = await progress.first("pid")
    assert gone(crashed)
    replacement = await pool.run("sandbox.pid", [], {}, 10)
    assert replacement != crashed

    with pytest.raises(SandboxCrashed, match="was killed by SIGKILL"):
        await pool.run("sandbox.kill_self", [], {}, 10)


@pytest.mark.anyio
async def test_crash_is_seen_even_when_a_forked_process_holds_the_pipe(pool: SandboxPool) -> None:
    progress = Progress()
    started = time.monotonic()
    with pytest.raises(SandboxCrashed, match="exited with code 4"):
        await pool.run("sandbox.exit_with_grandchild", [], {}, 30, on_progress=progress)
    assert time.monotonic() - started < 5
    grandchild = await progress.first("grandchild")
    await eventually(lambda: gone(grandchild), timeout=2, what="the orphaned grandchild is killed")


@pytest.mark.anyio
async def test_child_that_died_while_idle_is_replaced(pool: SandboxPool) -> None:
    first = await pool.run("sandbox.pid", [], {}, 10)
    os.kill(first, signal.SIGKILL)
    # Its exit status is ready, not just its main thread a zombie: the child has threads of its own, and a
    # process that still has a thread exiting is not reported to its parent yet.
    await eventually(
        lambda: os.waitid(os.P_PID, first, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None,
        what="the idle child dies",
    )
    second = await pool.run("sandbox.pid", [], {}, 10)
    assert second != first
    assert len(sandbox_children()) == 1


# -- results: size and type ---------------------------------------------------------------------------------


# -- progress and output ------------------------------------------------------------------------------------


# -- pool lifecycle -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_run_handler_uses_a_default_pool(default_pool: None) -> None:
    assert await run_handler("sandbox.add", [20, 22], {}, 10) == 42
    first = await run_handler("sandbox.pid", [], {}, 10)
    assert await run_handler("sandbox.pid", [], {}, None) == first
    with pytest.raises(UnknownTask):
        await run_handler("sandbox.nope", [], {}, 10)
    await shutdown_sandbox()
    assert sandbox_children() == []
    assert await run_handler("sandbox.pid", [], {}, 10) != first  # a fresh pool after shutdown


@pytest.mark.anyio
async def test_closed_pool_refuses_jobs(sandbox_settings: Settings) -> None:
    async with SandboxPool(processes=1) as sandbox:
        assert await sandbox.run("sandbox.add", [1, 1], {}, 10) == 2
    assert sandbox.closed
    assert sandbox_children() == []
    with pytest.raises(SandboxError, match="closed"):
        await sandbox.run("sandbox.add", [1, 1], {}, 10)


@pytest.mark.anyio
async def test_closing_the_pool_stops_busy_children(sandbox_settings: Settings) -> None:
    sandbox = SandboxPool(processes=1)
    progress = Progress()
    outcome: list[BaseException] = []

    async def busy() -> None:
        try:
            await sandbox.run("sandbox.hang", [], {}, 30, on_progress=progress)
        except SandboxCrashed as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        await progress.first("pid")
        await sandbox.aclose()
    assert len(outcome) == 1
    assert "pool was closed" in str(outcome[0])
    assert sandbox_children() == []


# -- frame codec --------------------------------------------------------------------------------------------


def test_oversized_frame_is_refused_from_its_header() -> None:
    read_end, write_end = os.pipe()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            write_frame(write_end, b"x" * (10 * MIB))
        except BrokenPipeError:
            pass  # the reader stopped at the header, as it should
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.close(write_end)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        started = time.monotonic()
        assert read_frame(read_end, limit=MIB) == Oversize(10 * MIB)
        assert time.monotonic() - started < 1
    finally:
        os.close(read_end)
    wait_until(lambda: not thread.is_alive(), what="the writer sees the closed pipe")
    thread.join()
    assert failures == []


def test_frames_round_trip_and_end_of_file() -> None:
    read_end, write_end = os.pipe()
    try:
        write_frame(write_end, b'{"op":"ready"}')
        write_frame(write_end, b"")
        os.write(write_end, b"\x00\x00\x00\x10partial")
        os.close(write_end)
        assert read_frame(read_end) == b'{"op":"ready"}'
        assert read_frame(read_end, limit=0) == b""
        assert read_frame(read_end) is None  # end of file inside a frame
        assert read_frame(read_end) is None
    finally:
        os.close(read_end)


@pytest.mark.anyio
async def test_reply_pipe_joins_split_frames_and_refuses_an_oversized_one_from_its_header() -> None:
    read_end, write_end = os.pipe()
    replies = _ReplyPipe(read_end)
    try:
        frames: list[object] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                os.write(write_end, b"\x00\x00\x00\x05he")

                async def read_two() -> None:
                    frames.append(await replies.read(limit=100))
                    frames.append(await replies.read(limit=100))

                tg.start_soon(read_two)
                await anyio.lowlevel.checkpoint()
                os.write(write_end, b"llo\x00\x10\x00\x00")
        assert frames == [b"hello", Oversize(0x100000)]
    finally:
        os.close(write_end)
        os.close(read_end)


@pytest.mark.anyio
async def test_reply_pipe_stop_ends_a_wait_while_another_process_holds_the_pipe_open() -> None:
    # A thread blocked in read() would wait for end of file, which never comes while a writer lives.
    read_end, write_end = os.pipe()
    replies = _ReplyPipe(read_end)
    try:
        os.write(write_end, b"\x00\x00\x00\x02{}\x00\x00")  # one whole frame, then half a header
        outcome: list[object] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def read_all() -> None:
                    outcome.append(await replies.read(limit=100))
                    outcome.append(await replies.read(limit=100))

                tg.start_soon(read_all)
                await eventually(lambda: bool(outcome), what="the whole frame")
                replies.stop()
        assert outcome == [b"{}", None]
    finally:
        os.close(write_end)
        os.close(read_end)


def test_an_exit_by_a_signal_the_enum_lacks_is_described_by_number() -> None:
    assert describe_exit(-signal.SIGRTMIN - 2) == f"was killed by signal {signal.SIGRTMIN + 2}"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(4) == "exited with code 4"

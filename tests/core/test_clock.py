"""The injectable clock: the real one by default, a FakeClock that only moves when told to."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.lowlevel
import pytest

from asyncmq_otel.clock import (
    Clock,
    FakeClock,
    as_clock,
    fail_after,
    move_on_after,
    system_clock,
    wait_in_thread,
)

pytestmark = pytest.mark.anyio


def test_both_clocks_are_clocks() -> None:
    assert isinstance(system_clock, Clock)
    assert isinstance(FakeClock(), Clock)


async def test_sleepers_wake_only_when_time_passes_their_deadline() -> None:
    clock = FakeClock(start=100.0, monotonic_start=5.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper, "short", 1.0)
        group.start_soon(sleeper, "long", 10.0)
        while clock.sleepers < 2:
            await anyio.lowlevel.checkpoint()
        clock.advance(0.5)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert woke == []
        clock.advance(0.5)
        while not woke:
            await anyio.lowlevel.checkpoint()
        assert woke == ["short"]
        clock.advance(9.0)
    assert woke == ["short", "long"]
    assert (clock.time(), clock.monotonic()) == (110.0, 15.0)
    assert clock.sleepers == 0


async def test_a_passed_deadline_returns_at_once_and_wall_time_can_jump_alone() -> None:
    clock = FakeClock(start=100.0, monotonic_start=5.0)
    with anyio.fail_after(1):
        await clock.sleep_until(4.0)
        await clock.sleep(0)
    clock.set_time(50.0)  # an NTP step back: monotonic time does not move
    assert (clock.time(), clock.monotonic()) == (50.0, 5.0)
    with pytest.raises(ValueError, match="advances"):
        clock.advance(-1)


async def test_a_cancelled_sleeper_leaves_no_trace() -> None:
    clock = FakeClock()
    async with anyio.create_task_group() as group:
        group.start_soon(clock.sleep, 60)
        while clock.sleepers < 1:
            await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert clock.sleepers == 0


async def test_move_on_after_and_fail_after_end_when_the_fake_clock_passes_their_deadline() -> None:
    clock = FakeClock()
    outcome: list[str] = []

    async def bounded() -> None:
        with move_on_after(clock, 30) as scope:
            await anyio.sleep_forever()
        outcome.append(f"moved on: {scope.cancelled_caught}")
        with pytest.raises(TimeoutError), fail_after(clock, 5):
            await anyio.sleep_forever()
        outcome.append("timed out")

    async with anyio.create_task_group() as group:
        group.start_soon(bounded)
        while clock.timers < 1:
            await anyio.lowlevel.checkpoint()
        clock.advance(29.5)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert outcome == []
        clock.advance(0.5)
        while clock.timers < 1 or not outcome:
            await anyio.lowlevel.checkpoint()
        clock.advance(5)
    assert outcome == ["moved on: True", "timed out"]
    assert clock.timers == 0


async def test_an_outer_cancel_is_not_a_fake_timeout_and_a_zero_budget_ends_at_once() -> None:
    clock = FakeClock()
    with anyio.CancelScope() as outer:
        with fail_after(clock, 60):
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    with move_on_after(clock, 0) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert clock.timers == 0


def test_a_thread_waits_on_the_fake_clock_until_it_advances_or_is_stopped() -> None:
    clock = FakeClock()
    stop = threading.Event()
    stopped: list[bool] = []
    thread = threading.Thread(target=lambda: stopped.append(wait_in_thread(clock, 10, stop)))
    thread.start()
    clock.advance(9)
    thread.join(0.1)
    assert thread.is_alive()  # 9 s of the clock are not 10, however long real time takes
    clock.advance(1)
    thread.join(5)
    assert stopped == [False]
    thread = threading.Thread(target=lambda: stopped.append(wait_in_thread(clock, 10, stop)))
    thread.start()
    stop.set()
    thread.join(5)
    assert stopped == [False, True]
    assert wait_in_thread(system_clock, 0.001, threading.Event()) is False


def test_a_bare_wall_time_callable_becomes_a_clock_with_real_monotonic_time() -> None:
    clock = as_clock(lambda: 42.0)
    assert isinstance(clock, Clock)
    assert clock.time() == 42.0
    assert abs(clock.monotonic() - time.monotonic()) < 1.0
    fake = FakeClock()
    assert as_clock(fake) is fake

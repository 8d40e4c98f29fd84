"""The injectable clock: the real one by default, a FakeClock that only moves when told to."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asyncmq_otel.clock import Clock, FakeClock, system_clock

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

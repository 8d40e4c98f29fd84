"""The telemetry sampler's election lock: one holder per prefix, extended by its holder, freed on release."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_one_holder_extends_and_hands_over_on_release(make_backend):
    first, second = make_backend(), make_backend()
    assert await first.acquire_sampler_lock("a", 5.0)
    assert not await second.acquire_sampler_lock("b", 5.0)
    assert await first.acquire_sampler_lock("a", 5.0)  # compare-and-extend by the holder
    await second.release_sampler_lock("b")  # not the holder: nothing happens
    assert not await second.acquire_sampler_lock("b", 5.0)
    await first.release_sampler_lock("a")
    assert await second.acquire_sampler_lock("b", 5.0)


async def test_the_lock_expires_when_its_holder_stops_renewing(make_backend):
    backend = make_backend()
    assert await backend.acquire_sampler_lock("gone", 0.05)
    from tests.support.poll import eventually

    async def free() -> bool:
        return await backend.acquire_sampler_lock("next", 5.0)

    await eventually(free, timeout=3)


async def test_redis_backend_reports_its_server_for_span_attributes(make_backend):
    backend = make_backend("redis://127.0.0.1:6379/0")
    assert (backend.server_address, backend.server_port) == ("127.0.0.1", 6379)

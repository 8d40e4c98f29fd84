"""The demo workload's tasks: fast and slow successes, flaky retries, terminal failures, progress.

``asyncmq-otel worker demo --app asyncmq_otel.demo.app`` serves them; the demo producer
(``asyncmq_otel.demo.run``) enqueues the mixed workload.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio

from ..tasks import task

__all__ = ["DEMO_QUEUE", "charge_card", "flaky_lookup", "render_report", "resize_image", "send_email"]

DEMO_QUEUE = "demo"


class CardDeclined(Exception):
    """A permanent failure: retrying will not help."""


class UpstreamTimeout(Exception):
    """A transient failure: the next attempt usually succeeds."""


@task(DEMO_QUEUE, name="demo.send_email")
async def send_email(to: str) -> str:
    """A fast job."""
    await anyio.sleep(random.uniform(0.005, 0.03))  # noqa: S311 - demo latency, not cryptography
    return f"sent to {to}"


@task(DEMO_QUEUE, name="demo.resize_image")
def resize_image(width: int, height: int) -> dict[str, int]:
    """A slow, synchronous job (runs in a worker thread)."""
    total = 0
    for value in range(20_000 + width * 10):
        total += value % (height + 1)
    return {"width": width // 2, "height": height // 2, "checksum": total % 1000}


@task(
    DEMO_QUEUE, name="demo.flaky_lookup", retries=3, backoff={"type": "exponential", "delay": 0.1, "max": 1.0}
)
async def flaky_lookup(key: str, fail_times: int) -> str:
    """Fails its first ``fail_times`` attempts (tracked in the key), then succeeds."""
    _attempts[key] = _attempts.get(key, 0) + 1
    await anyio.sleep(0.01)
    if _attempts[key] <= fail_times:
        raise UpstreamTimeout(f"upstream timed out for {key} (attempt {_attempts[key]})")
    return f"value-of-{key}"


_attempts: dict[str, int] = {}


@task(DEMO_QUEUE, name="demo.charge_card", retries=1, backoff=0.05)
async def charge_card(card: str, amount: int) -> str:
    """Always declined: exhausts its retries into the dead-letter queue."""
    await anyio.sleep(0.01)
    raise CardDeclined(f"card ending {card[-4:]} declined for {amount}")


@task(DEMO_QUEUE, name="demo.render_report", progress=True)
async def render_report(pages: int, report_progress: Callable[[float], None]) -> str:
    """A long job that reports progress."""
    for page in range(pages):
        await anyio.sleep(0.02)
        report_progress(100.0 * (page + 1) / pages)
    return f"{pages} pages"

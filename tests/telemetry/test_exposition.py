"""``/metrics`` after a demo workload: ``promtool check metrics`` is clean and every metric of the table is there."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request

import anyio
import anyio.to_thread
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from asyncmq_otel import telemetry
from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.queues import Queue
from asyncmq_otel.tasks import task
from tests.support.poll import eventually
from tests.support.running import running_worker

from .test_metrics import CONTRACT

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("fast_settings")]

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
demo_runs: dict[str, int] = {}


@task("demo", name="demo.ok")
async def ok(n: int) -> int:
    return n


@task("demo", name="demo.flaky", retries=2, backoff=0.01)
async def flaky(key: str) -> str:
    demo_runs[key] = demo_runs.get(key, 0) + 1
    if demo_runs[key] == 1:
        raise ConnectionError("transient")
    return key


@task("demo", name="demo.broken")
async def broken() -> None:
    raise ValueError("always")


@task("demo", name="demo.block")
async def block() -> None:
    await anyio.sleep_forever()


def scrape(url: str, accept: str = "") -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})  # noqa: S310 - local server
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - as above
        return response.read().decode()


async def demo_workload(unique_name: str) -> str:
    offset = [0.0]
    backend = InMemoryBackend(clock=lambda: time.time() + offset[0])
    q = Queue(unique_name, backend=backend)
    ids = [await q.add("demo.ok", args=[n]) for n in range(5)]
    ids.append(await q.add("demo.flaky", args=["f1"], retries=2, backoff=0.01))
    ids.append(await q.add("demo.broken"))
    expiring = await q.add("demo.ok", args=[99], ttl=0.01)
    cancelled = await q.add("demo.ok", args=[100], delay=30)
    assert await q.cancel_job(cancelled)
    offset[0] += 1.0  # the TTL of `expiring` has passed
    await q.upsert_repeatable("demo.ok", every=0.2, args=[7], key="demo-tick")  # the Schedules row
    url = telemetry.metrics_url()
    assert url is not None
    async with anyio.create_task_group() as group:
        group.start_soon(telemetry.run_queue_sampler, backend)
        async with running_worker(unique_name, backend, rate_limit=2, rate_interval=0.05) as worker:
            running = await q.add("demo.block")

            async def settled() -> bool:
                states = [await q.get_job_state(j) for j in (*ids, expiring)]
                return set(states) <= {"completed", "failed", "expired"} and "expired" in states

            await eventually(settled, timeout=10, what="the demo jobs settled")
            await eventually(
                lambda: "asyncmq_worker_heartbeat_timestamp_seconds{" in scrape(url), what="heartbeat"
            )
            await eventually(lambda: 'state="ready"' in scrape(url), what="queue gauges sampled")
            await eventually(
                lambda: (
                    re.search(
                        r'^asyncmq_schedule_fired_total\{[^}]*schedule="demo-tick"\} [1-9]',
                        scrape(url),
                        re.MULTILINE,
                    )
                    is not None
                    and "asyncmq_schedule_next_run_timestamp_seconds{" in scrape(url)
                ),
                what="a schedule fired and sampled",
            )
            assert await q.cancel_job(running)
            await eventually(lambda: 'outcome="cancelled"' in scrape(url), what="the running job cancelled")
            text = await anyio.to_thread.run_sync(scrape, url)
            assert worker.state == "running"
        group.cancel_scope.cancel()
    return text


async def test_scrape_passes_promtool_and_has_every_contract_metric(unique_name) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # pragma: no cover - .ci/run installs Debian's prometheus package
        pytest.fail("promtool is missing: apt-get install -y prometheus")
    provider = TracerProvider(sampler=ALWAYS_ON)
    telemetry.instrument(
        tracer_provider=provider, metrics_addr="127.0.0.1:0", logs=False, queue_sample_interval_s=0.5
    )
    text = await demo_workload(unique_name)

    checked = await anyio.run_process([promtool, "check", "metrics"], input=text.encode(), check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b"")

    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples: dict[str, set[tuple[str, ...]]] = {}
    for name, labels in re.findall(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}", text, re.MULTILINE):
        samples.setdefault(name, set()).add(tuple(sorted(re.findall(r'(\w+)="', labels))))
    for number, (name, kind, labels, _buckets) in CONTRACT.items():
        assert types.get(name) == kind, (number, name)  # the text format names counters with _total
        sample_name = f"{name}_bucket" if kind == "histogram" else name
        if number == 24:  # only a fenced (stale) write creates a series
            assert sample_name not in samples
            continue
        expected = labels if number == 20 else ("messaging_system", *labels)
        if kind == "histogram":
            expected = (*expected, "le")
        assert samples.get(sample_name) == {tuple(sorted(expected))}, (number, name, samples.get(sample_name))

    for outcome in ("completed", "retried", "failed", "expired", "cancelled"):
        assert f'outcome="{outcome}"' in text
    assert re.search(r"^asyncmq_ratelimit_throttled_total\{[^}]*\} [1-9]", text, re.MULTILINE)

    openmetrics = scrape(telemetry.metrics_url() or "", OPENMETRICS)
    assert re.search(
        r'^messaging_process_duration_seconds_bucket\{.*\} \S+ # \{trace_id="[0-9a-f]{32}"\}',
        openmetrics,
        re.MULTILINE,
    )
    telemetry.uninstrument()
    provider.shutdown()

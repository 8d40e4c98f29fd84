"""The pytest plugin users test their own tasks with: jobs and listeners never leak between tests."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import anyio
import pytest

from asyncmq_otel import Queue, Worker, event_emitter, task
from asyncmq_otel.events import bus

pytestmark = pytest.mark.anyio

seen = []


@pytest.fixture
def anyio_backend():
    return "asyncio"


@task("emails", retries=1)
async def send_welcome(address):
    return f"sent to {address}"


async def test_a_delayed_job_stays_in_its_test(asyncmq_backend):
    event_emitter.on("job:completed", lambda *args: seen.append(args))
    await send_welcome.enqueue("later@example.com", delay=0.3)
    assert (await Queue("emails").counts())["delayed"] == 1


async def test_the_next_test_starts_empty(asyncmq_backend):
    assert await Queue("emails").counts() == await Queue("nothing").counts()
    assert bus.listeners("job:completed") == []


async def test_a_worker_runs_the_task_and_telemetry_is_captured(asyncmq_telemetry):
    await send_welcome.enqueue("ada@example.com")
    await Worker("emails", burst=True).run()
    assert asyncmq_telemetry.metric_value("asyncmq_job_outcomes_total", outcome="completed") == 1
    assert asyncmq_telemetry.spans_named("process emails")
    assert seen == []
"""


@pytest.mark.timeout(120)
def test_fixtures_isolate_each_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_tasks=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=3)


@pytest.mark.timeout(120)
def test_without_the_fixture_the_default_backend_is_shared(pytester: pytest.Pytester) -> None:
    """What the fixture prevents: the same two tests without it see each other's job."""
    pytester.makepyfile(
        test_user_tasks=USER_TESTS.replace("(asyncmq_backend)", "()").replace(
            "(asyncmq_telemetry)", "(asyncmq_backend)"
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-k", "delayed or empty")
    result.assert_outcomes(passed=1, failed=1)

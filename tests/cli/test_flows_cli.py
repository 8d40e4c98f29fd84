"""``asyncmq-otel queues`` shows jobs waiting for their parents (flows) on Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from click.testing import CliRunner

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.cli import main
from asyncmq_otel.queues import Queue
from tests.support.redis_server import delete_prefix, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = unique_prefix()
    yield name
    delete_prefix(redis_url, name)


def test_queues_lists_blocked_jobs(redis_url: str, prefix: str) -> None:
    queue_name = unique_prefix()

    async def store() -> None:
        backend = RedisBackend(redis_url, prefix=prefix, retry_timeout=5.0)
        try:
            queue = Queue(queue_name, backend)
            await queue.add("tests.flow_step", job_id="parent")
            await queue.add("tests.flow_step", job_id="child", depends_on=["parent"])
        finally:
            await backend.close()

    anyio.run(store)
    target = ["--backend", redis_url, "--prefix", prefix]
    rows = json.loads(CliRunner().invoke(main, ["queues", "--json", *target]).stdout)
    row = next(r for r in rows if r["queue"] == queue_name)
    assert (row["waiting"], row["blocked"]) == (1, 1)
    table = CliRunner().invoke(main, ["queues", *target]).stdout.splitlines()
    header = table[0].split()
    line = next(line.split() for line in table[1:] if line.startswith(queue_name))
    assert line[header.index("BLOCKED")] == "1"

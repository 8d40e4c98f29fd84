"""``asyncmq-otel queues`` shows a queue's shared rate limit (table and ``--json``) on Redis."""

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


def test_queues_shows_the_shared_rate_limit(redis_url: str, prefix: str) -> None:
    limited, free = unique_prefix(), unique_prefix()

    async def store() -> None:
        backend = RedisBackend(redis_url, prefix=prefix, retry_timeout=5.0)
        try:
            await Queue(limited, backend).set_rate_limit(50, 1.0)
            await Queue(free, backend).pause()  # exists, without a limit
        finally:
            await backend.close()

    anyio.run(store)
    target = ["--backend", redis_url, "--prefix", prefix]
    rows = {r["queue"]: r for r in json.loads(CliRunner().invoke(main, ["queues", "--json", *target]).stdout)}
    assert rows[limited]["rate_limit"] == {"limit": 50, "interval": 1.0}
    assert rows[free]["rate_limit"] is None
    table = CliRunner().invoke(main, ["queues", *target]).stdout.splitlines()
    header = table[0].split()
    cells = {line.split()[0]: line.split() for line in table[1:]}
    assert cells[limited][header.index("LIMIT")] == "50/1s"
    assert cells[free][header.index("LIMIT")] == "-"

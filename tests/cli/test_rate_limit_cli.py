"""``asyncmq-otel queues`` shows a queue's shared rate limit and ``queue rate-limit`` sets, shows and clears it, on Redis."""

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


def _stored(redis_url: str, prefix: str, name: str) -> tuple[int, float] | None:
    async def read() -> tuple[int, float] | None:
        backend = RedisBackend(redis_url, prefix=prefix, retry_timeout=5.0)
        try:
            limit = await Queue(name, backend).get_rate_limit()
        finally:
            await backend.close()
        return None if limit is None else (limit.limit, limit.interval)

    return anyio.run(read)


async def _create_queue(redis_url: str, prefix: str, name: str) -> None:
    backend = RedisBackend(redis_url, prefix=prefix, retry_timeout=5.0)
    try:
        await Queue(name, backend).pause()  # makes the queue exist, without a limit
    finally:
        await backend.close()


def test_queue_rate_limit_sets_shows_and_clears_the_shared_limit(redis_url: str, prefix: str) -> None:
    name = unique_prefix()
    target = ["--backend", redis_url, "--prefix", prefix]

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["queue", "rate-limit", name, *args, *target])
        assert result.exit_code == 0, result.output
        return result.stdout

    anyio.run(_create_queue, redis_url, prefix, name)
    assert "has no shared rate limit" in run()
    assert f"queue {name} rate limit set: 50 job(s) per 1s" in run("50/1s")
    assert _stored(redis_url, prefix, name) == (50, 1.0)
    assert run() == f"queue {name}: 50 job(s) per 1s, shared by every worker\n"
    rows = json.loads(CliRunner().invoke(main, ["queues", "--json", *target]).stdout)
    assert [row["rate_limit"] for row in rows] == [{"limit": 50, "interval": 1.0}]
    assert run("--clear") == f"queue {name} rate limit cleared\n"
    assert _stored(redis_url, prefix, name) is None
    assert run("--clear") == f"queue {name} had no shared rate limit\n"  # clearing twice is not an error


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("100/500ms", (100, 0.5)),
        ("600/1m", (600, 60.0)),
        ("10/2.5", (10, 2.5)),
        ("7", (7, 1.0)),
        ("3/1h", (3, 3600.0)),
    ],
)
def test_queue_rate_limit_reads_the_interval_units(
    redis_url: str, prefix: str, text: str, stored: tuple[int, float]
) -> None:
    name = unique_prefix()
    args = ["queue", "rate-limit", name, text, "--create", "--backend", redis_url, "--prefix", prefix]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "(created)" in result.stdout
    assert _stored(redis_url, prefix, name) == stored


def test_setting_a_limit_on_an_unknown_queue_needs_create(redis_url: str, prefix: str) -> None:
    name = unique_prefix()
    target = ["--backend", redis_url, "--prefix", prefix]
    refused = CliRunner().invoke(main, ["queue", "rate-limit", name, "5/1s", *target])
    assert refused.exit_code == 2, refused.output
    assert f"no such queue {name!r}" in refused.stderr
    assert "pass --create to create it with this limit" in refused.stderr
    assert json.loads(CliRunner().invoke(main, ["queues", "--json", *target]).stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0/1s"], "pass --clear to remove the limit"),
        (["fifty/1s"], "is not N/INTERVAL"),
        (["50/1x"], "is not N/INTERVAL"),
        (["1.5/1s"], "is not N/INTERVAL"),
        (["50/0.5ms"], "interval: must be at least 0.001 seconds"),
        (["2000000/1s"], "limit: must be between 1 and 1000000"),
        (["50/1s", "--clear"], "not both"),
        (["--create"], "--create goes with N/INTERVAL"),
    ],
)
def test_bad_limits_exit_2_before_the_backend_is_asked(
    closed_url: str, args: list[str], message: str
) -> None:
    # closed_url answers nothing: a backend that was asked would exit 3
    result = CliRunner().invoke(main, ["queue", "rate-limit", "webhooks", *args, "--backend", closed_url])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output

"""Admin commands and the demo against the real Redis on 127.0.0.1:6379, each test under its own prefix."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from click.testing import CliRunner, Result

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.cli import main
from tests.support.poll import wait_until

pytestmark = pytest.mark.redis

NO_TELEMETRY = ["--metrics-addr", ""]


def _counts(url: str, prefix: str, queue: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        backend = RedisBackend(url, prefix=prefix, retry_timeout=5.0)
        try:
            return await backend.counts(queue)
        finally:
            await backend.close()

    return anyio.run(read)


class _CLI:
    def __init__(self, runner: CliRunner, url: str, prefix: str) -> None:
        self.runner = runner
        self.target = ["--backend", url, "--prefix", prefix]

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(main, [*args, *self.target])
        assert result.exit_code == code, (args, result.output)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(runner: CliRunner, redis_url: str, redis_prefix: str) -> _CLI:
    return _CLI(runner, redis_url, redis_prefix)


def test_enqueue_queues_job_and_dlq_round_trip(cli: _CLI, unique_name: str) -> None:
    ok_id = cli("enqueue", "clitest.echo", "--queue", unique_name, "--args", '[{"n": 1}]').stdout.strip()
    bad_id = cli(
        "enqueue", "clitest.fail", "-q", unique_name, "--kwargs", '{"message": "nope"}'
    ).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", ok_id)
    again = cli("enqueue", "clitest.echo", "-q", unique_name, "--job-id", "fixed-1", "--args", "[2]").stdout
    assert (
        cli("enqueue", "clitest.echo", "-q", unique_name, "--job-id", "fixed-1", "--args", "[2]").stdout
        == again
    )

    rows = cli.json("queues")
    row = next(r for r in rows if r["queue"] == unique_name)
    assert (row["waiting"], row["active"], row["paused"], row["workers"]) == (3, 0, False, 0)
    table = cli("queues").stdout.splitlines()
    assert table[0].split()[:4] == ["QUEUE", "WAITING", "DELAYED", "ACTIVE"]
    assert any(line.startswith(unique_name) for line in table[1:])

    shown = cli("job", "show", ok_id, "--queue", unique_name).stdout
    assert re.search(r"state\s+waiting", shown)
    assert re.search(r"task\s+clitest.echo", shown)

    cli("queue", "pause", unique_name)
    assert next(r for r in cli.json("queues") if r["queue"] == unique_name)["paused"] is True
    cli("queue", "resume", unique_name)

    burst = cli("worker", unique_name, "--app", "tests.cli.sample_app", "--burst", *NO_TELEMETRY)
    assert "stopped (burst done): 2 completed, 1 failed" in burst.stderr
    done = cli.json("job", "show", ok_id, "--queue", unique_name)
    assert done["state"] == "completed"
    assert done["result"] == {"n": 1}

    dead = cli.json("dlq", "list", unique_name)
    assert [entry["id"] for entry in dead] == [bad_id]
    listing = cli("dlq", "list", unique_name).stdout
    assert "RuntimeError: nope" in listing
    assert "failed" in listing

    retried = cli("dlq", "retry", unique_name, bad_id)
    assert "1 job(s)" in retried.stdout
    missing = cli("job", "retry", bad_id, "--queue", unique_name, code=1)
    assert "it is waiting, not dead-lettered" in missing.stderr
    cli("worker", unique_name, "--app", "tests.cli.sample_app", "--burst", *NO_TELEMETRY)
    assert "1 job(s)" in cli("dlq", "retry", unique_name, "--all").stdout
    cli("worker", unique_name, "--app", "tests.cli.sample_app", "--burst", *NO_TELEMETRY)
    assert "1 dead-lettered job(s)" in cli("dlq", "purge", unique_name, "--yes").stdout
    assert "is empty" in cli("dlq", "list", unique_name).stdout

    assert "2 completed job(s) deleted" in cli("queue", "clean", unique_name, "--yes").stdout
    gone = cli("job", "show", ok_id, "--queue", unique_name, code=1).stderr
    assert gone.startswith(f"error: there is no job {ok_id} in queue {unique_name}")
    assert cli("job", "show", ok_id, code=1).stderr.startswith(f"error: there is no job {ok_id} in any queue")


def _keys(url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


@pytest.mark.parametrize(
    "args",
    [
        ["job", "show", "abc", "-q", "{queue}"],
        ["job", "cancel", "abc", "-q", "{queue}"],
        ["job", "retry", "abc", "-q", "{queue}"],
        ["dlq", "list", "{queue}"],
        ["dlq", "retry", "{queue}", "--all"],
        ["dlq", "retry", "{queue}", "abc"],
        ["dlq", "purge", "{queue}", "--yes"],
        ["queue", "clean", "{queue}", "--yes"],
        ["queue", "drain", "{queue}", "--yes"],
        ["queue", "pause", "{queue}"],
        ["queue", "resume", "{queue}"],
        ["queue", "rate-limit", "{queue}"],
        ["queue", "rate-limit", "{queue}", "50/1s"],
        ["queue", "rate-limit", "{queue}", "--clear"],
    ],
)
def test_commands_on_an_unknown_queue_create_nothing(
    cli: _CLI, redis_url: str, redis_prefix: str, unique_name: str, args: list[str]
) -> None:
    cli("enqueue", "clitest.echo", "-q", f"{unique_name}-real")
    before = _keys(redis_url, redis_prefix)
    result = cli(*[arg.format(queue=f"{unique_name}-rea") for arg in args], code=2)
    assert f"no such queue '{unique_name}-rea': did you mean '{unique_name}-real'?" in result.stderr
    assert "Traceback" not in result.output
    assert _keys(redis_url, redis_prefix) == before
    assert [row["queue"] for row in cli.json("queues")] == [f"{unique_name}-real"]


def test_pause_of_an_unknown_queue_needs_create(cli: _CLI, unique_name: str) -> None:
    refused = cli("queue", "pause", unique_name, code=2)
    assert "pass --create to create it paused" in refused.stderr
    assert cli.json("queues") == []
    assert "(created)" in cli("queue", "pause", unique_name, "--create").stdout
    assert [(row["queue"], row["paused"]) for row in cli.json("queues")] == [(unique_name, True)]
    assert "(created)" not in cli("queue", "pause", unique_name).stdout


def test_job_commands_find_the_queue_from_the_id(cli: _CLI, unique_name: str) -> None:
    job_id = cli("enqueue", "clitest.echo", "-q", unique_name).stdout.strip()
    shown = cli.json("job", "show", job_id)
    assert (shown["queue"], shown["state"]) == (unique_name, "waiting")
    assert f"job {job_id} cancelled" in cli("job", "cancel", job_id).stdout
    cli("enqueue", "clitest.echo", "-q", f"{unique_name}-a", "--job-id", "twice")
    cli("enqueue", "clitest.echo", "-q", f"{unique_name}-b", "--job-id", "twice")
    ambiguous = cli("job", "show", "twice", code=2)
    assert "pass --queue to pick one" in ambiguous.stderr
    assert cli.json("job", "show", "twice", "-q", f"{unique_name}-b")["queue"] == f"{unique_name}-b"


def test_job_show_counts_an_interrupted_attempt_apart(
    cli: _CLI, redis_url: str, redis_prefix: str, unique_name: str
) -> None:
    job_id = cli("enqueue", "clitest.echo", "-q", unique_name, "--retries", "0").stdout.strip()

    async def interrupt_then_claim_again() -> None:
        backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
        try:
            first = await backend.claim(unique_name, "w1", 1, 30.0)
            await backend.requeue(unique_name, job_id, first.jobs[0].token, 5)
            second = await backend.claim(unique_name, "w2", 1, 30.0)
            assert [claimed.id for claimed in second.jobs] == [job_id]
        finally:
            await backend.close()

    anyio.run(interrupt_then_claim_again)
    shown = cli("job", "show", job_id).stdout
    assert re.search(r"attempts\s+2 \(1 interrupted\)\n", shown), shown
    assert re.search(r"retries\s+0 of 0 used\n", shown), shown


def test_drain_cancels_waiting_and_delayed_jobs(cli: _CLI, unique_name: str) -> None:
    waiting = cli("enqueue", "clitest.echo", "-q", unique_name).stdout.strip()
    cli("enqueue", "clitest.echo", "-q", unique_name, "--delay", "300")
    refused = cli("queue", "drain", unique_name, code=2)
    assert "pass --yes" in refused.stderr
    assert "2 job(s) cancelled" in cli("queue", "drain", unique_name, "--yes").stdout
    row = next(r for r in cli.json("queues") if r["queue"] == unique_name)
    assert (row["waiting"], row["delayed"], row["cancelled"]) == (0, 0, 2)
    again = cli("job", "cancel", waiting, "--queue", unique_name, code=1)
    assert "it is already cancelled" in again.stderr


def test_job_cancel_of_a_waiting_job(cli: _CLI, unique_name: str) -> None:
    job_id = cli("enqueue", "clitest.echo", "-q", unique_name).stdout.strip()
    assert f"job {job_id} cancelled" in cli("job", "cancel", job_id, "-q", unique_name).stdout


def test_bad_queue_name_exits_2(cli: _CLI) -> None:
    result = cli("enqueue", "clitest.echo", "-q", "no spaces allowed", code=2)
    assert "fix the argument" in result.stderr


def test_workers_lists_nothing_without_workers(cli: _CLI) -> None:
    assert cli("workers").stdout.startswith("no live workers")
    assert cli.json("workers") == []


def test_auth_failure_exits_3_without_leaking_the_password(runner: CliRunner, redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:hunter2@")
    result = runner.invoke(main, ["queues", "--backend", url])
    assert result.exit_code == 3, result.output
    assert "hunter2" not in result.output
    # said once, with the server's own words, not the typed error's message nested in the CLI's
    assert result.stderr.count("rejected the credentials") == 1, result.stderr


def _summary(text: str) -> dict[str, tuple[int, int]]:
    rows: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in {
            "completed",
            "failed",
            "expired",
            "cancelled",
            "unsettled",
            "total",
        }:
            rows[parts[0]] = (int(parts[1]), int(parts[2]))
    return rows


def test_demo_on_redis_matches_what_the_backend_reports(cli: _CLI, redis_url: str, redis_prefix: str) -> None:
    result = cli("demo", "--jobs", "20", *NO_TELEMETRY)
    rows = _summary(result.stdout)
    fired = re.search(r"scheduled (\d+) jobs fired by the schedule", result.stdout)
    total = 20 + (int(fired.group(1)) if fired else 0)
    assert rows["total"] == (total, total)
    stored = _counts(redis_url, redis_prefix, "demo")
    for outcome in ("completed", "failed", "expired", "cancelled"):
        assert rows[outcome] == (stored[outcome], stored[outcome]), (outcome, result.stdout)
    assert stored["waiting"] == stored["delayed"] == stored["active"] == 0
    assert "Redis 7" in result.stdout
    assert f"prefix {redis_prefix}" in result.stdout


def test_demo_producer_and_worker_roles(cli: _CLI, redis_url: str, redis_prefix: str) -> None:
    produced = cli(
        "demo",
        "--role",
        "producer",
        "--jobs",
        "12",
        "--duration",
        "1",
        "--log-format",
        "console",
        *NO_TELEMETRY,
    )
    match = re.search(r"producer done: (\d+) jobs enqueued", produced.stderr)
    assert match is not None, produced.output
    enqueued = int(match.group(1))
    assert enqueued >= 12
    served = cli("demo", "--role", "worker", "--duration", "3", "--log-format", "console", *NO_TELEMETRY)
    assert "asyncmq-otel demo:" in served.stdout
    stored = _counts(redis_url, redis_prefix, "demo")
    assert sum(stored.values()) == enqueued
    settled = sum(stored[s] for s in ("completed", "failed", "expired", "cancelled"))
    assert _summary(served.stdout)["total"][0] <= settled + stored["active"]


def test_check_is_healthy_while_a_worker_runs(
    cli: _CLI, spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]], unique_name: str
) -> None:
    proc, log = spawn(
        "worker",
        unique_name,
        "--app",
        "tests.cli.sample_app",
        *cli.target,
        "--metrics-addr",
        "127.0.0.1:0",
        "--log-format",
        "console",
    )
    found: list[str] = []

    def started() -> bool:
        assert proc.poll() is None, log.read_text()
        found.extend(re.findall(r"metrics http://(127\.0\.0\.1:\d+)/metrics", log.read_text()))
        return bool(found)

    wait_until(started, timeout=20, what="worker banner")
    healthy = cli("worker", unique_name, "--check", "--metrics-addr", found[0])
    assert healthy.stdout.startswith("healthy: backend answered in")
    assert "/healthz ok" in healthy.stdout
    by_registry = cli("worker", unique_name, "--check", "--metrics-addr", "")
    assert "live worker(s) on" in by_registry.stdout
    assert next(r for r in cli.json("workers"))["queues"] == [unique_name]
    assert "running" in cli("workers").stdout
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()
    gone = cli("worker", unique_name, "--check", "--metrics-addr", found[0], code=1)
    assert gone.stdout.startswith("unhealthy: no worker answers on")


def test_enqueue_by_name_takes_the_tasks_queue_and_leaves_its_retries_to_the_worker(
    cli: _CLI, unique_name: str, redis_url: str, redis_prefix: str
) -> None:
    from asyncmq_otel.tasks import TASK_REGISTRY, task

    @task(unique_name, retries=2, name=f"{unique_name}.crunch")
    async def crunch() -> None:
        return None

    try:
        job_id = cli("enqueue", f"{unique_name}.crunch").stdout.strip()
        shown = cli("job", "show", job_id).stdout
    finally:
        TASK_REGISTRY.pop(f"{unique_name}.crunch", None)
    assert _counts(redis_url, redis_prefix, unique_name)["waiting"] == 1
    assert f"queue         {unique_name}" in shown
    assert "retries       0 of 2 used" in shown  # the task's declaration, not a stored 0
    unknown = cli("enqueue", "other.task", "-q", unique_name).stdout.strip()
    assert _counts(redis_url, redis_prefix, unique_name)["waiting"] == 2
    assert "retries       0 of the task's declared retries used" in cli("job", "show", unknown).stdout


def test_schedules_list_pause_resume_remove(
    cli: _CLI, redis_url: str, redis_prefix: str, unique_name: str
) -> None:
    async def upsert() -> None:
        from asyncmq_otel.queues import Queue

        backend = RedisBackend(redis_url, prefix=redis_prefix, retry_timeout=5.0)
        try:
            await Queue(unique_name, backend=backend).upsert_repeatable(
                "clitest.echo", cron="0 7 * * 1", timezone="Europe/Paris", key="weekly"
            )
        finally:
            await backend.close()

    anyio.run(upsert)
    [row] = cli.json("schedules", "list", "--queue", unique_name)
    assert (row["key"], row["task"], row["cron"], row["paused"]) == (
        "weekly",
        "clitest.echo",
        "0 7 * * 1",
        False,
    )
    table = cli("schedules", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["QUEUE", "KEY", "TASK"]
    assert any("weekly" in line and "0 7 * * 1 Europe/Paris" in line for line in table[1:])
    cli("schedules", "pause", "weekly", "-q", unique_name)
    assert cli.json("schedules", "list", "-q", unique_name)[0]["paused"] is True
    cli("schedules", "resume", "weekly", "-q", unique_name)
    assert cli.json("schedules", "list", "-q", unique_name)[0]["paused"] is False
    cli("schedules", "remove", "weekly", "-q", unique_name)
    assert cli.json("schedules", "list", "-q", unique_name) == []
    missing = cli("schedules", "remove", "weekly", "-q", unique_name, code=2)
    assert "no schedule 'weekly'" in missing.output

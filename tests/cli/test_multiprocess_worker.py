"""``asyncmq-otel worker --processes 2``: real processes, real Redis, ``/metrics`` scraped over HTTP.

The supervisor starts two worker processes in a fresh ``PROMETHEUS_MULTIPROC_DIR`` of its own and serves
their merged metrics. The test drains a queue through both (every job runs exactly once), checks the
merged exposition with promtool (counters summed over the processes, ``asyncmq_worker_up`` summing to 2),
SIGKILLs one process (its live gauges disappear, a replacement starts, the counters keep its work), and
finally SIGTERMs the supervisor: everything exits 0 and the directory is gone.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from asyncmq_otel.backends.redis import RedisBackend
from asyncmq_otel.cli import main
from asyncmq_otel.cli._exit import ExitCode, exit_code_for
from asyncmq_otel.cli._output import Reporter
from asyncmq_otel.cli.worker import worker_command
from asyncmq_otel.errors import ConfigError, TelemetryConfigError
from asyncmq_otel.queues import Queue
from asyncmq_otel.telemetry._multiprocess import MergedMetrics
from asyncmq_otel.worker.supervisor import SPEC_ENVVAR, Supervisor, WorkerSpec
from tests.cli.conftest import cli_env
from tests.support.poll import eventually
from tests.support.redis_server import free_port
from tests.support.scrape import scrape

pytestmark = pytest.mark.redis

Spawn = Callable[..., tuple[subprocess.Popen[bytes], Path]]
JOBS = 200


def _total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _spec(**changes: object) -> WorkerSpec:
    """A spec with every option at its command-line default, but for ``changes``."""
    defaults: dict[str, object] = {
        "queues": ("q",), "apps": (), "backend_url": None, "prefix": None, "connect_timeout": 5.0,
        "concurrency": None, "rate_limit": None, "rate_interval": None, "metrics_addr": "",
        "otlp_endpoint": None, "log_format": None, "shutdown_timeout": None, "burst": False,
        "queue_sampler": "elected",
    }  # fmt: skip
    return WorkerSpec(**{**defaults, **changes})  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_two(
    spawn: Spawn, tmp_path: Path, unique_name: str, redis_url: str, redis_prefix: str, *options: str
) -> tuple[subprocess.Popen[bytes], Path, Path, str]:
    """``worker --processes 2`` on the test app, with a multiprocess directory and a metrics address of its own.

    Returns the supervisor, its log, the directory and the address.
    """
    base = tmp_path / "multiproc"
    base.mkdir()
    address = f"127.0.0.1:{free_port()}"
    proc, log = spawn(
        "worker", unique_name, "--processes", "2", "--app", "tests.cli.multiprocess_app",
        "--backend", redis_url, "--prefix", redis_prefix, "--metrics-addr", address, "--log-format", "console",
        *options, env=cli_env(PROMETHEUS_MULTIPROC_DIR=str(base)),
    )  # fmt: skip
    return proc, log, base, address


@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_two_processes_drain_once_merge_metrics_survive_a_kill_and_stop_cleanly(
    backend: RedisBackend, spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    queue = Queue(unique_name, backend=backend)
    ledger = tmp_path / "ledger"
    for number in range(JOBS):
        await queue.add("mptest.record", [str(ledger), number])
    proc, log, base, address = _start_two(
        spawn, tmp_path, unique_name, redis_url, redis_prefix, "--concurrency", "4", "--shutdown-timeout", "20"
    )  # fmt: skip
    url = f"http://{address}/metrics"

    def output() -> str:
        return log.read_text(encoding="utf-8", errors="replace")

    scraped: list[str] = []

    async def scrape_until(predicate: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        async def reached() -> bool:
            assert proc.poll() is None, output()
            try:
                text = await anyio.to_thread.run_sync(scrape, url)
            except OSError:
                return False  # not listening yet
            scraped[:] = [text]
            return predicate(text)

        await eventually(reached, timeout=timeout, interval=0.05, what=f"{what}\n{output()}")
        return scraped[0]

    # -- every job runs exactly once, shared by the two processes ------------------------------------------
    async def drained() -> bool:
        assert proc.poll() is None, output()
        return (await queue.counts())["completed"] == JOBS

    await eventually(drained, timeout=90, interval=0.1, what="the queue drained")
    lines = ledger.read_text().split()
    runs = Counter(int(number) for number in lines[0::2])
    assert runs == dict.fromkeys(range(JOBS), 1)
    by_pid = Counter(int(pid) for pid in lines[1::2])
    assert len(by_pid) == 2, by_pid  # both processes ran jobs, so the totals below are sums
    (instance,) = [path for path in base.iterdir() if path.is_dir()]
    assert {f"counter_{pid}.db" for pid in by_pid} <= {path.name for path in instance.iterdir()}

    # -- the merged /metrics ---------------------------------------------------------------------------------
    def merged(text: str) -> bool:
        completed = _total(text, "asyncmq_job_outcomes_total", outcome="completed")
        return completed == JOBS and _total(text, "asyncmq_worker_up") == 2

    text = await scrape_until(merged, "2 processes up and every job counted")
    checked = await anyio.run_process(["promtool", "check", "metrics"], input=text.encode(), check=False)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, b"", b""), checked
    assert _total(text, "messaging_client_consumed_messages_total") == JOBS
    assert _total(text, "asyncmq_worker_concurrency") == 8
    assert _total(text, "asyncmq_job_wait_duration_seconds_count") == JOBS
    assert "# {" not in text  # no exemplars in this mode

    # -- a killed process: its live gauges go, a replacement comes, its counts stay ------------------------
    victim = next(iter(by_pid))
    os.kill(victim, signal.SIGKILL)
    await scrape_until(lambda t: _total(t, "asyncmq_worker_up") == 1, "the killed process no longer up")
    assert not (instance / f"gauge_livesum_{victim}.db").exists()  # mark_process_dead
    assert not (instance / f"gauge_max_{victim}.db").exists()
    text = await scrape_until(lambda t: _total(t, "asyncmq_worker_up") == 2, "a replacement up")
    assert _total(text, "asyncmq_job_outcomes_total", outcome="completed") == JOBS
    assert "restarting it in" in output()
    children = {int(path.stem.rsplit("_", 1)[1]) for path in instance.glob("gauge_livesum_*.db")}
    assert len(children) == 2 and victim not in children, children

    # -- SIGTERM: the processes drain, everything exits 0, the directory is removed --------------------------
    proc.send_signal(signal.SIGTERM)
    code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
    assert code == 0, output()
    assert not any(_alive(pid) for pid in children), children
    assert list(base.iterdir()) == []
    text = output()
    assert text.count("stopped (drained)") == 2, text
    assert "worker supervisor stopped: exit 0" in text


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_past_the_restart_limit_a_crash_stops_the_instance_with_the_crash_code(
    spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    proc, log, base, address = _start_two(
        spawn, tmp_path, unique_name, redis_url, redis_prefix, "--max-restarts", "0"
    )

    async def both_up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            text = await anyio.to_thread.run_sync(scrape, f"http://{address}/metrics")
        except OSError:
            return False
        return _total(text, "asyncmq_worker_up") == 2

    await eventually(both_up, timeout=60, interval=0.05, what="both processes up")
    (instance,) = [path for path in base.iterdir() if path.is_dir()]
    victim, survivor = sorted(
        int(path.stem.rsplit("_", 1)[1]) for path in instance.glob("gauge_livesum_*.db")
    )
    os.kill(victim, signal.SIGKILL)
    code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
    text = log.read_text()
    assert code == 1, text  # the worst code: the crash; the survivor drained with 0
    assert "0 restart(s) within 60s already" in text
    assert "stopped (drained)" in text
    assert not _alive(survivor)
    assert list(base.iterdir()) == []


@pytest.mark.anyio
@pytest.mark.timeout(150)
async def test_a_process_that_exits_0_unasked_is_replaced_and_never_leaves_the_instance_empty(
    spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    """A child stopped by a signal sent to it alone exits 0: the supervisor replaces it (not --burst),
    and past the restart limit it stops the instance with a non-zero code instead of exiting 0.
    """
    proc, log, base, address = _start_two(
        spawn, tmp_path, unique_name, redis_url, redis_prefix, "--max-restarts", "1", "--shutdown-timeout", "5"
    )  # fmt: skip
    children: set[int] = set()

    async def up(pids_excluded: set[int]) -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            text = await anyio.to_thread.run_sync(scrape, f"http://{address}/metrics")
        except OSError:
            return False
        instances = [path for path in base.iterdir() if path.is_dir()]
        live = {int(path.stem.rsplit("_", 1)[1]) for d in instances for path in d.glob("gauge_livesum_*.db")}
        children.clear()
        children.update(live)
        return _total(text, "asyncmq_worker_up") == 2 and len(live) == 2 and not live & pids_excluded

    await eventually(lambda: up(set()), timeout=60, interval=0.05, what="both processes up")
    first_victim = min(children)
    os.kill(first_victim, signal.SIGTERM)  # to the child alone: it drains and exits 0
    await eventually(lambda: up({first_victim}), timeout=60, interval=0.05, what="a replacement up")
    assert "without being asked to stop; restarting it" in log.read_text()

    second_victim = min(children)
    os.kill(second_victim, signal.SIGTERM)  # past --max-restarts 1: the instance stops
    code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
    text = log.read_text()
    assert code == 1, text
    assert "1 restart(s) within 60s already" in text
    assert not any(_alive(pid) for pid in children)
    assert list(base.iterdir()) == []


def test_processes_need_a_shared_backend(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "q", "--processes", "2", "--backend", "memory://"])
    assert result.exit_code == 2, result.output
    assert "--processes 2 needs a backend the processes share" in result.stderr


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_busy_metrics_address_is_a_usage_error_that_leaves_no_directory(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        supervisor = Supervisor(
            Reporter(stream=io.StringIO()).say,
            _spec(),
            processes=2,
            max_restarts=0,
            open_metrics=functools.partial(MergedMetrics, metrics_addr=address),
        )
        with (
            mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}),
            pytest.raises(TelemetryConfigError) as raised,
        ):
            await supervisor.run()
    assert exit_code_for(raised.value) is ExitCode.USAGE
    assert f"cannot serve /metrics on {address}" in str(raised.value)
    # the per-instance directory, made before the bind failed, is gone
    assert [entry async for entry in anyio.Path(tmp_path).iterdir()] == []


# Options of the supervisor itself and of the probe: a worker process never runs with them.
NOT_WORKER_OPTIONS = {"processes", "max_restarts", "supervised_by", "check"}


def test_every_worker_option_of_the_command_line_is_carried_in_the_spec() -> None:
    """A new ``worker`` option that the spec lacks would silently never reach ``--processes`` children."""
    options = {param.name for param in worker_command.params} - NOT_WORKER_OPTIONS
    assert options == {field.name for field in dataclasses.fields(WorkerSpec)}


def test_the_spec_travels_as_json_and_a_damaged_one_is_a_usage_error() -> None:
    spec = _spec(queues=("a", "b"), apps=("m",), concurrency=3, rate_interval=2.5, burst=True)
    assert WorkerSpec.from_json(spec.to_json()) == spec
    data = json.loads(spec.to_json())
    for damaged in (
        "[]",
        "{not json",
        json.dumps({**data, "concurrency": "3"}),
        json.dumps({**data, "concurrency": True}),
        json.dumps({**data, "queues": [1]}),
        json.dumps({**data, "extra": 1}),
        json.dumps({k: v for k, v in data.items() if k != "burst"}),
    ):
        with pytest.raises(ConfigError, match=SPEC_ENVVAR):
            WorkerSpec.from_json(damaged)
    assert WorkerSpec.from_json(json.dumps({**data, "connect_timeout": 7})).connect_timeout == 7


def test_supervised_by_without_a_spec_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "--supervised-by", "1"], env={SPEC_ENVVAR: None})
    assert result.exit_code == 2, result.output
    assert f"{SPEC_ENVVAR} is not set" in result.stderr


def test_queues_are_still_required_unless_supervised(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "--backend", "memory://"])
    assert result.exit_code == 2, result.output
    assert "Missing argument 'QUEUES...'" in result.stderr


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_children_run_with_the_non_default_options_given_to_the_supervisor(
    spawn: Spawn, redis_url: str, redis_prefix: str, unique_name: str, tmp_path: Path
) -> None:
    """``--burst`` on an empty queue: both children start (their ``worker.started`` record shows the
    options they run with), find nothing and exit 0, and so does the supervisor.
    """
    proc, log = spawn(
        "worker", unique_name, "--processes", "2", "--app", "tests.cli.multiprocess_app",
        "--backend", redis_url, "--prefix", redis_prefix, "--metrics-addr", "", "--log-format", "json",
        "--burst", "--concurrency", "3", "--rate-limit", "7", "--rate-interval", "2.5",
        "--shutdown-timeout", "4", "--queue-sampler", "off",
        env=cli_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
    )  # fmt: skip
    code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))
    text = log.read_text()
    assert code == 0, text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    records = [line for line in lines if line["logger"] == "asyncmq_otel.cli"]  # the command's, not the jobs'
    started = [record for record in records if record["event"] == "worker.started"]
    assert len(started) == 2, text
    for record in started:
        assert record["queues"] == [unique_name]
        assert (record["concurrency"], record["rate_limit"], record["rate_interval"]) == (3, 7, 2.5)
        assert record["shutdown_timeout"] == 4
        assert "mptest.record" in record["tasks"]  # --app reached it
        assert f"prefix {redis_prefix}" in record["backend_details"]
        assert record["metrics_url"].startswith("served by the supervisor")
    assert [r["event"] for r in records].count("worker.exited") == 2

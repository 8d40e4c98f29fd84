"""The command line without Redis: arguments, exit codes, precedence, banner, colours and signals."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from asyncmq_otel.backends.memory import InMemoryBackend
from asyncmq_otel.cli import COMMANDS, main
from asyncmq_otel.cli._banner import Banner
from asyncmq_otel.cli._exit import CLIError, ExitCode, cli_error_for, exit_code_for
from asyncmq_otel.cli._output import Reporter, format_age, format_table, json_logs, mask_url, paint, use_color
from asyncmq_otel.cli._signals import StopSignals
from asyncmq_otel.errors import BackendAuthError, BackendUnavailable, ConfigError
from asyncmq_otel.queues import Queue
from asyncmq_otel.settings import override_settings, reload_settings

from .conftest import REPO, cli_env

NO_TELEMETRY = ["--metrics-addr", ""]


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- help and usage errors -------------------------------------------------------------------------------
def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("worker", "enqueue", "queues", "queue", "job", "dlq", "workers", "exporter", "demo"):
        assert f"  {command} " in result.stdout
    assert "3 backend unreachable" in result.stdout


def test_worker_help_shows_the_environment_variables(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    for variable in (
        "ASYNCMQ_BACKEND",
        "ASYNCMQ_WORKER_CONCURRENCY",
        "ASYNCMQ_RATE_LIMIT",
        "ASYNCMQ_METRICS_ADDR",
        "ASYNCMQ_SHUTDOWN_TIMEOUT",
        "ASYNCMQ_LOG_FORMAT",
    ):
        assert variable in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["worker"],  # no queue
        ["worker", "q", "--concurrency", "0"],
        ["worker", "q", "--rate-limit", "fast"],
        ["worker", "q", "--log-format", "xml"],
        ["enqueue", "t.t", "--args", "{"],
        ["enqueue", "t.t", "--args", '{"a": 1}'],
        ["enqueue", "t.t", "--kwargs", "[1]"],
        ["no-such-command"],
        ["dlq", "retry", "q"],  # neither ids nor --all
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == ExitCode.USAGE, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["enqueue", ""], "give the task's dotted name"),
        (["enqueue", "t.t", "--delay", "nan"], "'nan' is not a finite number of seconds"),
        (["enqueue", "t.t", "--delay", "inf"], "'inf' is not a finite number of seconds"),
        (["enqueue", "t.t", "--delay", "-1"], "'-1' must be >= 0 seconds"),
        (["enqueue", "t.t", "--ttl", "nan"], "'nan' is not a finite number of seconds"),
        (["enqueue", "t.t", "--ttl", "-1"], "'-1' must be > 0 seconds"),
        (["enqueue", "t.t", "--timeout", "inf"], "'inf' is not a finite number of seconds"),
        (["enqueue", "t.t", "--timeout", "0"], "'0' must be > 0 seconds"),
        (["enqueue", "t.t", "--priority", "1e23"], "--priority"),
        (["enqueue", "t.t", "--priority", str(10**23)], "--priority"),
        (["job", "show", "bad id!"], "must match [A-Za-z0-9._-]"),
        (["job", "retry", "bad id!"], "must match [A-Za-z0-9._-]"),
        (["job", "cancel", "bad id!"], "must match [A-Za-z0-9._-]"),
        (["dlq", "retry", "q", "ok-id", "bad id!"], "must match [A-Za-z0-9._-]"),
        (["queue", "clean", "q", "--older-than", "nan"], "'nan' is not a finite number of seconds"),
        (["queues", "--connect-timeout", "inf"], "'inf' is not a finite number of seconds"),
        (["worker", "q", "--shutdown-timeout", "nan"], "'nan' is not a finite number of seconds"),
        (["worker", "q", "--rate-interval", "inf"], "'inf' is not a finite number of seconds"),
        (["exporter", "--interval", "nan"], "'nan' is not a finite number of seconds"),
    ],
)
def test_bad_values_are_usage_errors_before_the_backend_is_asked(
    runner: CliRunner, closed_url: str, args: list[str], says: str
) -> None:
    # with a backend that does not answer, anything that got past validation would exit 3
    quick = [] if "--connect-timeout" in args else ["--connect-timeout", "0.2"]
    result = runner.invoke(main, [*args, "--backend", closed_url, *quick])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert says in result.stderr
    assert "Traceback" not in result.output


def test_only_enqueue_says_that_running_it_again_is_safe(runner: CliRunner, closed_url: str) -> None:
    listing = runner.invoke(main, ["queues", "--backend", closed_url, "--connect-timeout", "0.2"])
    assert listing.exit_code == ExitCode.BACKEND_UNREACHABLE
    assert "cannot reach Redis" in listing.stderr
    assert "retrying enqueue" not in listing.stderr
    assert "safe" not in listing.stderr


def test_help_summaries_are_the_commands_own_first_lines(runner: CliRunner) -> None:
    context = click.Context(main)
    for name, (_module, _attribute, summary) in COMMANDS.items():
        command = main.get_command(context, name)
        assert command is not None
        assert command.name == name
        first_line = (command.help or "").strip().splitlines()[0]
        assert re.sub(r" \([^)]*\)", "", first_line) == summary, name


def _modules_after(code: str) -> set[str]:
    """Top-level packages imported by a fresh interpreter that runs ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(proc.stdout.split())


_HEAVY = {"opentelemetry", "prometheus_client", "redis", "structlog"}


def test_help_and_the_admin_commands_do_not_import_the_telemetry_sdks_or_redis() -> None:
    # start-up time is what these imports cost (≈ 0.6 s): guard the import set, not the wall time
    helped = _modules_after(
        "from click.testing import CliRunner\nfrom asyncmq_otel.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0"
    )
    assert not helped & _HEAVY, helped & _HEAVY
    admin = _modules_after("import asyncmq_otel.cli.admin")
    assert not admin & _HEAVY, admin & _HEAVY
    deep = _modules_after(
        "import sys\nimport asyncmq_otel.cli\n"
        "assert not [m for m in sys.modules if m.startswith(('asyncmq_otel.cli.worker', 'asyncmq_otel.cli.demo', "
        "'asyncmq_otel.worker.', 'asyncmq_otel.telemetry'))], 'a command module was imported eagerly'"
    )
    assert "asyncmq_otel" in deep


def test_settings_module_imports_from_the_current_directory(tmp_path: Path, closed_url: str) -> None:
    # the console script (unlike python -m) does not put the current directory on sys.path
    app = tmp_path / "cwd_settings_app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "settings.py").write_text(f"backend = {closed_url!r}\nworker_concurency = 3\n")
    script = Path(sys.executable).with_name("asyncmq-otel")
    proc = subprocess.run(
        [str(script), "queues", "--connect-timeout", "0.2"],
        cwd=tmp_path,
        env=cli_env(ASYNCMQ_SETTINGS_MODULE="cwd_settings_app.settings"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # the module was read: its backend is the one that does not answer
    assert proc.returncode == ExitCode.BACKEND_UNREACHABLE, proc.stderr
    assert closed_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0] in proc.stderr
    # a misspelt setting is one plain line naming the setting it resembles
    assert (
        "warning: cwd_settings_app.settings: 'worker_concurency' is not a setting and is ignored; "
        "did you mean 'worker_concurrency'?\n"
    ) in proc.stderr
    assert "SettingsWarning" not in proc.stderr


def test_bad_json_says_what_is_wrong(runner: CliRunner) -> None:
    result = runner.invoke(main, ["enqueue", "t.t", "--args", '{"a": 1}'])
    assert result.exit_code == 2
    assert "expected a JSON list" in result.stderr


def test_bad_app_exits_2_with_a_next_step(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "q", "--app", "no_such_module_here", *NO_TELEMETRY])
    assert result.exit_code == ExitCode.USAGE
    assert "cannot import --app 'no_such_module_here'" in result.stderr
    assert "PYTHONPATH" in result.stderr


def test_app_that_raises_on_import_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "q", "--app", "tests.cli.broken_app", *NO_TELEMETRY])
    assert result.exit_code == ExitCode.USAGE
    assert "RuntimeError: this module is broken on purpose" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ASYNCMQ_LEASE", "soon", "ASYNCMQ_LEASE"),
        ("ASYNCMQ_LEASE", "nan", "lease must be a finite number of seconds"),
        ("ASYNCMQ_BLOCK_TIMEOUT", "nan", "block_timeout must be a finite number of seconds"),
        ("ASYNCMQ_KEEP_FAILED_AGE", "inf", "keep_failed_age must be a finite number of seconds"),
    ],
)
def test_config_error_in_the_environment_exits_2(variable: str, value: str, says: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncmq_otel", "worker", "q", "--burst", *NO_TELEMETRY],
        cwd=REPO,
        env=cli_env(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "invalid configuration" in proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_admin_commands_refuse_the_private_memory_backend(runner: CliRunner) -> None:
    result = runner.invoke(main, ["queues", "--backend", "memory://"])
    assert result.exit_code == ExitCode.USAGE
    assert "--backend redis://" in result.stderr


def test_unknown_backend_scheme_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(main, ["queues", "--backend", "kafka://broker:9092"])
    assert result.exit_code == ExitCode.USAGE
    assert "use memory://, redis:// or rediss://" in result.stderr


def test_demo_roles_need_a_shared_backend(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--role", "producer", *NO_TELEMETRY])
    assert result.exit_code == ExitCode.USAGE
    assert "--backend redis://" in result.stderr


# -- unreachable backend -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["worker", "q", "--app", "tests.cli.sample_app", *NO_TELEMETRY],
        ["queues"],
        ["enqueue", "clitest.echo", "--args", "[1]"],
        ["demo", "--jobs", "12", *NO_TELEMETRY],
        ["exporter", "--metrics-addr", "127.0.0.1:0"],
    ],
)
def test_unreachable_backend_exits_3_and_says_what_to_do(
    runner: CliRunner, closed_url: str, args: list[str]
) -> None:
    result = runner.invoke(main, [*args, "--backend", closed_url, "--connect-timeout", "1"])
    assert result.exit_code == ExitCode.BACKEND_UNREACHABLE, result.output
    assert f"cannot reach Redis at {closed_url}: is it running?" in result.stderr
    assert "redis-server --daemonize yes" in result.stderr


def test_unreachable_backend_masks_the_password(runner: CliRunner, closed_url: str) -> None:
    url = closed_url.replace("redis://", "redis://app:hunter2@")
    result = runner.invoke(main, ["worker", "q", *NO_TELEMETRY, "--backend", url, "--connect-timeout", "0.5"])
    assert result.exit_code == ExitCode.BACKEND_UNREACHABLE
    assert "hunter2" not in result.output
    assert "app:****@" in result.stderr


def test_check_is_unhealthy_when_the_backend_is_down(runner: CliRunner, closed_url: str) -> None:
    result = runner.invoke(
        main, ["worker", "q", "--check", *NO_TELEMETRY, "--backend", closed_url, "--connect-timeout", "0.5"]
    )
    assert result.exit_code == ExitCode.CRASH
    assert result.stdout.startswith("unhealthy: cannot reach Redis")


def test_check_is_unhealthy_when_no_worker_serves_healthz(runner: CliRunner) -> None:
    from tests.support.redis_server import free_port

    result = runner.invoke(main, ["worker", "q", "--check", "--metrics-addr", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == ExitCode.CRASH
    assert "no worker answers on http://127.0.0.1:" in result.stdout


# -- the worker on the in-memory backend -------------------------------------------------------------------
def test_burst_worker_runs_the_queued_jobs_and_exits_0(runner: CliRunner, unique_name: str) -> None:
    import anyio

    backend = InMemoryBackend()
    queue = Queue(unique_name, backend=backend)

    async def enqueue() -> list[str]:
        return [
            await queue.add("clitest.echo", [1]),
            await queue.add("clitest.fail", ["no"]),
        ]

    ok_id, failing_id = anyio.run(enqueue)
    with override_settings(backend=backend):
        result = runner.invoke(
            main,
            [
                "worker",
                unique_name,
                "--app",
                "tests.cli.sample_app",
                "--burst",
                "--log-format",
                "console",
                *NO_TELEMETRY,
            ],
        )
    assert result.exit_code == ExitCode.OK, result.output
    assert anyio.run(queue.get_job_state, ok_id) == "completed"
    assert anyio.run(queue.get_job_state, failing_id) == "failed"
    assert "stopped (burst done): 1 completed, 1 failed" in result.stderr


def test_banner_goes_to_stderr_with_the_facts(runner: CliRunner, unique_name: str) -> None:
    result = runner.invoke(
        main,
        [
            "worker",
            unique_name,
            "other",
            "--app",
            "tests.cli.sample_app",
            "--burst",
            "--concurrency",
            "4",
            "--rate-limit",
            "50",
            "--rate-interval",
            "2",
            "--shutdown-timeout",
            "11",
            "--log-format",
            "console",
            *NO_TELEMETRY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("asyncmq-otel 0.1.0 · worker ")
    text = result.stderr
    assert "backend      memory://  in-memory, this process only" in text
    assert f"queues       {unique_name}, other" in text
    assert "concurrency  4 · rate limit 50/2s · lease 30s · shutdown timeout 11s" in text
    assert "telemetry    metrics off · otlp off" in text
    assert "clitest.echo, clitest.fail, clitest.hold" in text
    assert "\x1b[" not in text  # not a TTY: no colour


def test_json_banner_is_the_worker_started_record(runner: CliRunner, unique_name: str) -> None:
    result = runner.invoke(
        main,
        [
            "worker",
            unique_name,
            "--burst",
            "--log-format",
            "json",
            "--app",
            "tests.cli.sample_app",
            *NO_TELEMETRY,
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    started = next(r for r in records if r["event"] == "worker.started" and r["logger"] == "asyncmq_otel.cli")
    assert started["queues"] == [unique_name]
    assert started["backend"] == "memory://"
    assert "clitest.echo" in started["tasks"]
    assert any(r["event"] == "worker.exited" for r in records)


@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [
        ({}, [], "concurrency  10 "),  # the default
        ({"ASYNCMQ_SETTINGS_MODULE": "tests.cli.settings_cli"}, [], "concurrency  7 "),  # settings module
        (
            {"ASYNCMQ_SETTINGS_MODULE": "tests.cli.settings_cli", "ASYNCMQ_WORKER_CONCURRENCY": "5"},
            [],
            "concurrency  5 ",
        ),  # variable over module
        (
            {"ASYNCMQ_WORKER_CONCURRENCY": "5"},
            ["--concurrency", "3"],
            "concurrency  3 ",
        ),  # flag over variable
    ],
)
def test_precedence_flag_then_variable_then_settings_module_then_default(
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    unique_name: str,
    env: dict[str, str],
    flag: list[str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    result = runner.invoke(
        main, ["worker", unique_name, "--burst", "--log-format", "console", *flag, *NO_TELEMETRY]
    )
    assert result.exit_code == 0, result.output
    assert expected in result.stderr


def test_settings_module_value_reaches_the_banner(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, unique_name: str
) -> None:
    monkeypatch.setenv("ASYNCMQ_SETTINGS_MODULE", "tests.cli.settings_cli")
    reload_settings()
    result = runner.invoke(main, ["worker", unique_name, "--burst", "--log-format", "console", *NO_TELEMETRY])
    assert "shutdown timeout 9s" in result.stderr


def test_rate_limit_none_means_unlimited(runner: CliRunner, unique_name: str) -> None:
    result = runner.invoke(
        main,
        ["worker", unique_name, "--burst", "--rate-limit", "none", "--log-format", "console", *NO_TELEMETRY],
    )
    assert result.exit_code == 0, result.output
    assert "rate limit none" in result.stderr


def test_worker_serves_metrics_when_asked(runner: CliRunner, unique_name: str) -> None:
    result = runner.invoke(
        main, ["worker", unique_name, "--burst", "--log-format", "console", "--metrics-addr", "127.0.0.1:0"]
    )
    assert result.exit_code == 0, result.output
    assert "telemetry    metrics http://127.0.0.1:" in result.stderr


def test_busy_metrics_port_exits_2_with_a_next_step(runner: CliRunner, unique_name: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(
            main, ["worker", unique_name, "--burst", "--metrics-addr", f"127.0.0.1:{port}"]
        )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in result.stderr
    assert "port 0 picks one" in result.stderr


# -- the demo on the in-memory backend ---------------------------------------------------------------------
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


def _ticks(stdout: str) -> int:
    """How many jobs the demo's own schedule fired (counted among the totals)."""
    fired = re.search(r"scheduled (\d+) jobs fired by the schedule", stdout)
    return int(fired.group(1)) if fired else 0


def test_demo_runs_to_completion_and_its_counts_match_the_backend(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--jobs", "20", *NO_TELEMETRY])
    assert result.exit_code == 0, result.output
    rows = _summary(result.stdout)
    total = 20 + _ticks(result.stdout)
    assert rows["total"] == (total, total)
    for outcome in ("completed", "failed", "expired", "cancelled"):
        seen, stored = rows[outcome]
        assert seen == stored, (outcome, result.stdout)
    assert rows["failed"][0] >= 1
    assert rows["expired"][0] == 1
    assert rows["cancelled"][0] == 1
    assert "unsettled" not in rows
    assert "p50" in result.stdout
    assert "p95" in result.stdout
    assert "trace of retried job" in result.stdout
    assert "process demo  CONSUMER  ERROR" in result.stdout
    assert "\r" not in result.stdout  # no progress line off a TTY


def test_demo_serves_metrics_while_it_runs(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio.to_thread

    from asyncmq_otel import telemetry
    from asyncmq_otel.cli import demo as demo_module
    from asyncmq_otel.demo.run import DemoResult
    from tests.support.scrape import scrape

    scraped: list[str] = []
    original = demo_module.run_demo

    async def scraping_run_demo(**kwargs: object) -> DemoResult:
        url = telemetry.metrics_url()
        assert url is not None
        scraped.append(await anyio.to_thread.run_sync(scrape, url))
        return await original(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo_module, "run_demo", scraping_run_demo)
    result = runner.invoke(main, ["demo", "--jobs", "12", "--metrics-addr", "127.0.0.1:0"])
    assert result.exit_code == 0, result.output
    assert "metrics http://127.0.0.1:" in result.stdout
    assert "asyncmq_" in scraped[0]
    assert telemetry.metrics_url() is None  # stopped with the demo


def test_demo_falls_back_to_a_free_port_when_the_default_is_busy(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from asyncmq_otel.cli import demo as demo_module

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = f"127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setattr(demo_module, "DEFAULT_METRICS_ADDR", busy)
        command = demo_module.demo_command
        option = next(p for p in command.params if p.name == "metrics_addr")
        monkeypatch.setattr(option, "default", busy)
        result = runner.invoke(main, ["demo", "--jobs", "12"])
    assert result.exit_code == 0, result.output
    assert f"{busy} is busy" in result.stderr
    assert "metrics http://127.0.0.1:" in result.stdout


def test_demo_progress_line_only_on_a_tty() -> None:
    import anyio

    from asyncmq_otel.cli.demo import run_demo

    tty = _TTY()
    result = anyio.run(lambda: run_demo(jobs=12, backend=InMemoryBackend(), out=tty))
    assert result.settled
    assert "\r\x1b[2K  " in tty.getvalue()
    assert "jobs settled" in tty.getvalue()


# -- output helpers ----------------------------------------------------------------------------------------
def test_colour_only_on_a_tty_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(_TTY())
    assert not use_color(io.StringIO())
    assert paint("x", "red", _TTY()) != "x"
    assert paint("x", "red", io.StringIO()) == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(_TTY())
    assert paint("x", "red", _TTY()) == "x"


def test_banner_is_coloured_on_a_tty_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    banner = Banner("worker", "5f3c9a1e-aaaa", 4121, "api-7", "redis://app:****@redis:6379/0", "Redis 7.2.4")
    assert any("\x1b[" in line for line in banner.lines(_TTY()))
    plain = banner.lines(io.StringIO())
    assert plain[0] == "asyncmq-otel 0.1.0 · worker 5f3c9a1e (pid 4121, host api-7)"
    assert not any("\x1b[" in line for line in plain)


def test_json_logs_follows_the_telemetry_rule() -> None:
    assert json_logs("json", _TTY())
    assert not json_logs("console", io.StringIO())
    assert json_logs(None, io.StringIO())
    assert not json_logs("auto", _TTY())


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://app:s3cret@redis:6379/0", "redis://app:****@redis:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:****@redis:6379/0"),
        (
            "rediss://redis:6380/0?password=x&ssl_ca_certs=/ca.pem",
            "rediss://redis:6380/0?password=****&ssl_ca_certs=****",
        ),
        ("redis://user@redis/0", "redis://user@redis/0"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_format_helpers() -> None:
    assert format_age(None) == "-"
    assert format_age(0.25) == "250ms"
    assert format_age(12.34) == "12.3s"
    assert format_age(245) == "4m05s"
    assert format_age(7800) == "2h10m"
    assert format_age(3 * 86400 + 4 * 3600) == "3d04h"
    assert format_table(["A", "N"], [["x", 1], ["long", 20]]) == ["A      N", "x      1", "long  20"]


def test_reporter_json_lines() -> None:
    stream = io.StringIO()
    Reporter(json_lines=True, stream=stream).say("x.y", "hello", level="warning", n=1)
    record = json.loads(stream.getvalue())
    assert record["event"] == "x.y"
    assert record["message"] == "hello"
    assert record["level"] == "warning"
    assert record["n"] == 1


# -- exit codes --------------------------------------------------------------------------------------------
def test_exit_codes_map_from_exceptions() -> None:
    assert exit_code_for(ConfigError("x")) is ExitCode.USAGE
    assert exit_code_for(BackendUnavailable("x")) is ExitCode.BACKEND_UNREACHABLE
    assert exit_code_for(BackendAuthError("x")) is ExitCode.BACKEND_UNREACHABLE
    assert exit_code_for(RuntimeError("x")) is ExitCode.CRASH
    assert exit_code_for(CLIError("x", ExitCode.USAGE)) is ExitCode.USAGE
    auth = cli_error_for(BackendAuthError("WRONGPASS"), "redis://u:p@h:6379/0")
    assert auth.exit_code == 3
    assert "u:****@h" in auth.format_message()
    assert "check the user and password" in auth.format_message()
    remote = cli_error_for(BackendUnavailable("refused"), "redis://redis.internal:6379/0")
    assert "check that redis.internal:6379 is reachable" in remote.format_message()


# -- signals -----------------------------------------------------------------------------------------------
def test_signals_first_drains_second_stops_duplicates_are_ignored() -> None:
    import signal

    now = [100.0]
    calls: list[str] = []
    stream = io.StringIO()
    signals = StopSignals(
        lambda: calls.append("drain"),
        lambda: calls.append("now"),
        Reporter(stream=stream),
        clock=lambda: now[0],
    )
    assert signals.handle(signal.SIGTERM) == "drain"
    now[0] += 0.4
    assert signals.handle(signal.SIGTERM) == "duplicate"
    now[0] += 0.7  # 1.1 s after the first accepted signal
    assert signals.handle(signal.SIGINT) == "now"
    now[0] += 5
    assert signals.handle(signal.SIGINT) == "stopping"
    assert calls == ["drain", "now"]
    text = stream.getvalue()
    assert "SIGTERM received: draining" in text
    assert "SIGTERM ignored" in text
    assert "SIGINT received again: stopping now" in text


def test_demo_that_runs_out_of_time_exits_1_and_reports_unsettled_jobs(runner: CliRunner) -> None:
    result = runner.invoke(main, ["demo", "--jobs", "12", "--duration", "0.05", *NO_TELEMETRY])
    assert result.exit_code == ExitCode.CRASH, result.output
    assert "unsettled" in result.stdout


def test_failed_requeue_at_shutdown_exits_1(tmp_path: Path) -> None:
    import signal
    import time

    from tests.support.poll import wait_until

    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asyncmq_otel",
                "worker",
                "stale",
                "--log-format",
                "console",
                *NO_TELEMETRY,
            ],
            cwd=REPO,
            env=cli_env(ASYNCMQ_SETTINGS_MODULE="tests.cli.stale_app"),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: log.read_text().count("stale.hold started") == 2, timeout=30, what="both jobs running"
        )
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining" in log.read_text(), timeout=10, what="drain reported")
        time.sleep(1.2)  # the scenario: a second signal counts only 1 s or more after the first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == ExitCode.CRASH, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert "2 job(s) could not be returned to the queue" in log.read_text()


def test_worker_crash_exits_1_with_the_traceback(runner: CliRunner, unique_name: str) -> None:
    def refuse(**_context: object) -> None:
        raise RuntimeError("startup hook refuses")

    with override_settings(worker_on_startup=[refuse]):
        result = runner.invoke(
            main, ["worker", unique_name, "--burst", "--log-format", "console", *NO_TELEMETRY]
        )
    assert result.exit_code == ExitCode.CRASH, result.output
    assert "Traceback" in result.stderr
    assert "RuntimeError: startup hook refuses" in result.stderr
    assert "fix the cause, restart" in result.stderr


def test_bad_queue_name_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(main, ["worker", "no spaces", "--burst", *NO_TELEMETRY])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "fix the argument" in result.stderr

"""The ``asyncmq-otel`` command line."""

from __future__ import annotations

import anyio
import click

from .._version import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asyncmq-otel")
def main() -> None:
    """asyncmq-otel: an observability-first async job queue."""


@main.command()
@click.option("--jobs", default=80, show_default=True, type=click.IntRange(min=12), help="Jobs to enqueue.")
@click.option("--duration", default=60.0, show_default=True, type=float, help="Stop after this many seconds.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(min=1))
def demo(jobs: int, duration: float, concurrency: int) -> None:
    """Run a worker on the embedded in-memory backend over a mixed demo workload."""
    from .demo import run_demo  # noqa: PLC0415 - keep `--help` fast

    result = anyio.run(lambda: run_demo(jobs=jobs, duration=duration, concurrency=concurrency))
    if len(result.outcomes) < len(result.enqueued):
        raise SystemExit(1)

"""Tasks the CLI tests pass as ``--app tests.cli.sample_app``."""

from __future__ import annotations

import anyio

from asyncmq_otel.tasks import task


@task("clitest", name="clitest.echo")
async def echo(value: object) -> object:
    return value


@task("clitest", name="clitest.fail")
async def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


@task("clitest", name="clitest.hold")
async def hold(release_path: str) -> str:
    """Runs until the file at ``release_path`` exists: the test decides when in-flight jobs finish."""
    path = anyio.Path(release_path)
    while not await path.exists():
        await anyio.sleep(0.02)
    return "released"

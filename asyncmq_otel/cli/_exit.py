"""Exit codes, and the one place where exceptions become an exit code and a message.

| Exit | Meaning |
|---|---|
| 0 | clean drain, ``--burst`` finished, or ``--check`` healthy |
| 1 | crash: an unexpected exception, a failed requeue at shutdown, or ``--check`` unhealthy |
| 2 | usage or import error: a usage error, ``--app`` failed to import, ``ConfigError``, no such queue |
| 3 | backend unreachable at startup (connection, AUTH, TLS), or data loss under ``on_data_loss="halt"`` |

Every message says what to do next.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import IO
from urllib.parse import urlsplit

import click

from .._exit_status import ExitCode
from ..errors import (
    BackendAuthError,
    BackendTLSError,
    BackendUnavailable,
    ConfigError,
    DataLossDetected,
    DuplicateJob,
    InvalidName,
    JobArgumentError,
    PayloadTooLarge,
)
from ._output import mask_url, paint

__all__ = ["CLIError", "ExitCode", "cli_error_for", "exit_code_for", "translate_errors"]


class CLIError(click.ClickException):
    """An error the command line reports as one line on stderr before it exits with ``code``.

    Args:
        message: what went wrong and what to do next.
        code: the exit code.

    """

    def __init__(self, message: str, code: ExitCode = ExitCode.CRASH) -> None:
        super().__init__(message)
        self.code = ExitCode(code)
        # click declares `exit_code` a class variable and reads it from the instance on exit.
        self.__dict__["exit_code"] = int(code)

    def show(self, file: IO[str] | None = None) -> None:
        """Write ``error: <message>`` to stderr (red on a colour terminal)."""
        stream = file if file is not None else sys.stderr
        click.echo(f"{paint('error:', 'red', stream, bold=True)} {self.format_message()}", file=stream)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of ``exc`` when it ends a command."""
    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, (click.UsageError, *_INPUT_ERRORS)):
        return ExitCode.USAGE
    if isinstance(exc, (BackendUnavailable, DataLossDetected)):
        return ExitCode.BACKEND_UNREACHABLE
    return ExitCode.CRASH


_INPUT_ERRORS = (ConfigError, InvalidName, JobArgumentError, PayloadTooLarge)
"""Errors in what the user typed or configured: exit 2."""


def _is_redis(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme.lower() in {"redis", "rediss"}


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return f"{host}:{parts.port or 6379}"


def _unreachable_message(exc: BaseException, url: str | None, *, idempotent: bool) -> str:
    where = mask_url(url) if url else "the backend"
    # quote the server's, the socket's or the TLS layer's own words: the typed error's text also
    # gives a producer's advice that is wrong for the other commands
    cause = exc.__cause__ or exc
    if isinstance(exc, BackendAuthError):
        return (
            f"Redis at {where} rejected the credentials ({cause}): check the user and password in "
            "--backend (or ASYNCMQ_BACKEND) and the ACL of that user"
        )
    if isinstance(exc, BackendTLSError):
        return (
            f"the TLS handshake with {where} failed ({cause}): check that the server speaks TLS on that "
            "port, that its certificate matches the host name and that your CA bundle trusts it"
        )
    if _is_redis(url) and url is not None:
        local = urlsplit(url).hostname in {None, "127.0.0.1", "localhost", "::1"}
        start = (
            "start it with `redis-server --daemonize yes`"
            if local
            else f"check that {_host_port(url)} is reachable from this host"
        )
        retry = "; running the command again is safe (enqueue is idempotent)" if idempotent else ""
        return f"cannot reach Redis at {where}: is it running? {start} (details: {cause}){retry}"
    return f"cannot reach the backend at {where}: {cause}; check --backend (or ASYNCMQ_BACKEND)"


def cli_error_for(
    exc: BaseException, backend_url: str | None = None, *, idempotent: bool = False
) -> CLIError:
    """The :class:`CLIError` that reports ``exc`` with its exit code and a next step.

    ``idempotent``: the command may simply be run again (enqueue), which an unreachable backend's
    message then says.
    """
    if isinstance(exc, CLIError):
        return exc
    if isinstance(exc, ConfigError):
        return CLIError(
            f"invalid configuration: {exc}; fix the flag, the ASYNCMQ_* variable or the settings "
            "module (ASYNCMQ_SETTINGS_MODULE) and run again",
            ExitCode.USAGE,
        )
    if isinstance(exc, InvalidName | JobArgumentError | PayloadTooLarge):
        return CLIError(f"{exc}; fix the argument and run again", ExitCode.USAGE)
    if isinstance(exc, BackendUnavailable | DataLossDetected):
        message = (
            str(exc)
            if isinstance(exc, DataLossDetected)
            else _unreachable_message(exc, backend_url, idempotent=idempotent)
        )
        return CLIError(message, ExitCode.BACKEND_UNREACHABLE)
    if isinstance(exc, DuplicateJob):
        return CLIError(f"{exc}; pick another --job-id or leave it out", ExitCode.CRASH)
    return CLIError(
        f"unexpected {type(exc).__name__}: {exc}; this is a bug if it repeats, please report it "
        "with the command line you ran",
        ExitCode.CRASH,
    )


@contextlib.contextmanager
def translate_errors(backend_url: str | None = None, *, idempotent: bool = False) -> Iterator[None]:
    """Turn the package's typed errors raised in the block into :class:`CLIError` exits.

    ``idempotent`` as for :func:`cli_error_for`.

    ``click`` exceptions pass through (click reports them itself: usage errors exit 2); so do
    exceptions this module does not know, which :func:`cli_error_for` callers handle as crashes.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (*_INPUT_ERRORS, BackendUnavailable, DuplicateJob) as exc:
        raise cli_error_for(exc, backend_url, idempotent=idempotent) from exc

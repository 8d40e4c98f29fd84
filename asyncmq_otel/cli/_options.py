"""Click options that several commands share, each declared once here.

What differs between commands (a default, a variable, the help text) is a parameter, so the
commands' ``--help`` says what the option means for that command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = [
    "LOG_FORMATS",
    "env_option",
    "log_format_option",
    "metrics_addr_option",
    "otlp_endpoint_option",
]

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMATS = ("json", "console", "auto")


def env_option(*param_decls: str, envvar: str, **attrs: Any) -> Callable[[F], F]:  # noqa: ANN401 - click's
    """A ``click.option`` that also reads ``envvar`` (below the flag), which ``--help`` shows."""
    return click.option(*param_decls, envvar=envvar, show_envvar=True, **attrs)


def metrics_addr_option(*, default: str, envvar: str, help_text: str) -> Callable[[F], F]:
    """``--metrics-addr HOST:PORT``: where ``/metrics`` and ``/healthz`` are served."""
    return env_option(
        "--metrics-addr",
        envvar=envvar,
        default=default,
        show_default=True,
        metavar="HOST:PORT",
        help=help_text,
    )


def otlp_endpoint_option(help_text: str) -> Callable[[F], F]:
    """``--otlp-endpoint URL`` (``ASYNCMQ_OTLP_ENDPOINT``): the OTLP/HTTP base URL."""
    return env_option("--otlp-endpoint", envvar="ASYNCMQ_OTLP_ENDPOINT", metavar="URL", help=help_text)


def log_format_option(help_text: str) -> Callable[[F], F]:
    """``--log-format json|console|auto`` (``ASYNCMQ_LOG_FORMAT``)."""
    return env_option(
        "--log-format", envvar="ASYNCMQ_LOG_FORMAT", type=click.Choice(list(LOG_FORMATS)), help=help_text
    )

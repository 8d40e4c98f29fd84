"""Click options that several commands share, each declared once here.

What differs between commands (a default, a variable, the help text) is a parameter, so the
commands' ``--help`` says what the option means for that command.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = [
    "LOG_FORMATS",
    "PRIORITY_BOUND",
    "Seconds",
    "env_option",
    "log_format_option",
    "metrics_addr_option",
    "otlp_endpoint_option",
]

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMATS = ("json", "console", "auto")
PRIORITY_BOUND = 500
"""``--priority`` takes -500..500: the range in which the Redis backend keeps FIFO order within a priority."""


class Seconds(click.ParamType[float, Any]):
    """A finite number of seconds: > 0, or >= 0 with ``allow_zero``, or >= ``minimum`` when given.

    ``nan``, ``inf`` and negatives are usage errors (exit 2) with the reason, never a traceback further down.
    """

    name = "seconds"

    def __init__(self, *, allow_zero: bool = False, minimum: float | None = None) -> None:
        self.allow_zero = allow_zero
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:  # noqa: ANN401 - click's
        """Parse and check ``value``."""
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{value!r} must be >= {self.minimum:g} seconds", param, ctx)
        if number < 0 or (number == 0 and not self.allow_zero):
            relation = ">= 0" if self.allow_zero else "> 0"
            self.fail(f"{value!r} must be {relation} seconds", param, ctx)
        return number


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

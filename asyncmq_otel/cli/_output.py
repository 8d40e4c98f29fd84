"""Terminal output that also suits a log collector: colour only on a TTY (and never with ``NO_COLOR``).

Tables are plain aligned columns, so they read the same in a terminal, a pipe and a CI log.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from .._terminal import format_table, is_tty, paint, use_color

__all__ = [
    "Reporter",
    "format_age",
    "format_table",
    "json_logs",
    "mask_url",
    "paint",
    "use_color",
]


_MINUTE = 60
_DAY_HOURS = 24


def json_logs(log_format: str | None, stream: IO[str] | None = None) -> bool:
    """Whether ``--log-format`` means JSON lines: ``json``, or ``auto``/unset when stderr is not a TTY.

    This is the telemetry's own rule, so the command's messages and the job log lines agree.
    """
    if log_format in {"json", "console"}:
        return log_format == "json"
    return not is_tty(stream if stream is not None else sys.stderr)


def mask_url(url: str) -> str:
    """``url`` with its password and every query value replaced by ``****``.

    Example:
        >>> mask_url("redis://app:s3cret@redis:6379/0?password=x")
        'redis://app:****@redis:6379/0?password=****'

    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _secret = userinfo.partition(":")
        netloc = f"{user}:****@{host}" if has_password else f"{user}@{host}"
    query = "&".join(f"{key}=****" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def format_age(seconds: float | None) -> str:
    """A short human age: ``-``, ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``, ``3d04h``."""
    if seconds is None:
        return "-"
    value = max(float(seconds), 0.0)
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < _MINUTE:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), _MINUTE)
    if minutes < _MINUTE:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, _MINUTE)
    if hours < _DAY_HOURS:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, _DAY_HOURS)
    return f"{days}d{hours:02d}h"


class Reporter:
    """The command's own messages on stderr: plain lines, or JSON lines with ``--log-format json``.

    Args:
        json_lines: write one JSON object per message (a log collector's format).
        stream: where to write; the current ``sys.stderr`` by default.

    """

    def __init__(self, *, json_lines: bool = False, stream: IO[str] | None = None) -> None:
        self.json_lines = json_lines
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        """Where messages go."""
        return self._stream if self._stream is not None else sys.stderr

    def say(self, event: str, message: str, *, level: str = "info", **fields: Any) -> None:  # noqa: ANN401 - JSON fields
        """Write ``message`` (console) or ``{"event": event, "message": message, **fields}`` (JSON)."""
        stream = self.stream
        if self.json_lines:
            record: dict[str, Any] = {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "level": level,
                "logger": "asyncmq_otel.cli",
                "event": event,
                "message": message,
            }
            record.update(fields)
            stream.write(json.dumps(record, default=str) + "\n")
        else:
            color = {"warning": "yellow", "error": "red"}.get(level)
            prefix = paint(f"{level}: ", color, stream, bold=True) if color else ""
            stream.write(f"{prefix}{message}\n")
        stream.flush()

    def record(self, event: str, fields: Mapping[str, Any]) -> None:
        """Write a structured record (JSON mode only; console output is the caller's)."""
        if self.json_lines:
            self.say(event, event, **dict(fields))

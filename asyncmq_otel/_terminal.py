"""Terminal text without a terminal library: colour only on a TTY (never with ``NO_COLOR``), aligned tables.

The command line and the demo's report both print through these, so what a person reads in a terminal
and what a pipe or a CI log receives differ only by colour.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO

__all__ = ["format_table", "is_tty", "paint", "use_color"]

_COLORS = {
    "black": 30,
    "red": 31,
    "green": 32,
    "yellow": 33,
    "blue": 34,
    "magenta": 35,
    "cyan": 36,
    "white": 37,
}


def is_tty(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a closed stream, or one without ``isatty``, is not)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def use_color(stream: IO[str] | None = None) -> bool:
    """Whether to colour ``stream``: a TTY, and ``NO_COLOR`` unset or empty (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return is_tty(stream if stream is not None else sys.stdout)


def paint(text: str, color: str, stream: IO[str] | None = None, *, bold: bool = False) -> str:
    """``text`` in ``color`` (and bold) when ``stream`` takes colour, else unchanged."""
    if not use_color(stream):
        return text
    codes = f"\x1b[{_COLORS[color]}m" + ("\x1b[1m" if bold else "")
    return f"{codes}{text}\x1b[0m"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: str = "") -> list[str]:
    """Rows under ``headers`` as aligned lines; numbers are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    numeric = [all(_is_number(row[index]) for row in rows) and bool(rows) for index in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        out = [
            value.rjust(widths[index]) if numeric[index] else value.ljust(widths[index])
            for index, value in enumerate(values)
        ]
        return (indent + "  ".join(out)).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

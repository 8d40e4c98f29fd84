"""A module no worker may ever import: a job naming ``tests.chaos.trap.run`` must not load it (row 22).

Importing it touches the file named by ``CHAOS_SENTINEL``, which the test then finds.
"""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("CHAOS_SENTINEL"):
    Path(os.environ["CHAOS_SENTINEL"]).touch()


def run() -> None:
    """Never called."""

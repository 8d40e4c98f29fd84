"""The §4 test configuration of reliability.md as settings values, for in-process workers.

Subprocess workers get the same values as environment variables (``worker_proc.TEST_CONFIG``).
"""

from __future__ import annotations

__all__ = ["TEST_TIMINGS"]

TEST_TIMINGS: dict[str, float] = {
    "lease": 1.0,
    "renew_interval": 0.3,
    "reaper_interval": 0.2,
    "loop_block_limit": 2.0,
    "block_timeout": 0.5,
}

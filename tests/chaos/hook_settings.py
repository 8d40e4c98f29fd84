"""A settings module with sync lifecycle hooks that block (``ASYNCMQ_SETTINGS_MODULE=tests.chaos.hook_settings``).

``HOOK_MARK_DIR``: each hook touches ``<dir>/startup`` or ``<dir>/shutdown`` when it starts.
``HOOK_BLOCK``: ``startup`` or ``shutdown``: that hook then blocks (``time.sleep``) for good.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _hook(name: str) -> None:
    Path(os.environ["HOOK_MARK_DIR"], name).touch()
    if os.environ.get("HOOK_BLOCK") == name:
        time.sleep(1000)  # a sync hook stuck on I/O without a timeout


def on_startup(backend: object, worker_id: str, queue: str) -> None:
    _hook("startup")


def on_shutdown(backend: object, worker_id: str, queue: str) -> None:
    _hook("shutdown")


worker_on_startup = [on_startup]
worker_on_shutdown = [on_shutdown]

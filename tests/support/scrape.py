"""Read a Prometheus ``/metrics`` page that a test's own process serves on 127.0.0.1."""

from __future__ import annotations

import urllib.request


def scrape(url: str) -> str:
    """The text of the page at ``url`` (an ``OSError`` while nothing listens there yet)."""
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - a test's process on 127.0.0.1
        return str(reply.read().decode())

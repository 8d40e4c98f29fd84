"""A real three-master Redis Cluster (``redis-cli --cluster create``) and queue names placed on each master.

The conformance suite's ``redis_cluster_server`` is one node holding every slot; flows across queues
need queues on different masters, so that a script can only ever touch one of them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from tests.support.poll import wait_until
from tests.support.redis_server import RedisServer, unique_prefix

__all__ = ["queue_on", "three_masters"]


class _Master(RedisServer):
    """A cluster-enabled server that gets its slots from ``redis-cli --cluster create``."""

    def _make_cluster(self) -> None:
        """Slots are assigned for all three masters at once."""


@pytest.fixture(scope="module")
def three_masters() -> Iterator[list[RedisServer]]:
    """Three masters sharing the 16384 slots, for one test module."""
    masters = [_Master(cluster=True) for _ in range(3)]
    try:
        for master in masters:
            master.start()
        addresses = [f"127.0.0.1:{master.port}" for master in masters]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=True,
        )

        def ready() -> bool:
            for master in masters:
                info = master.client().execute_command("CLUSTER", "INFO")
                if b"cluster_state:ok" not in info:
                    return False
            return True

        wait_until(ready, timeout=30, what="the three-master cluster is ok")
        yield masters
    finally:
        for master in masters:
            master.stop()


def queue_on(node: int) -> str:
    """A queue name whose hash tag lands on master ``node`` (slots split in three by --cluster create)."""
    while True:
        name = unique_prefix()
        if key_slot(name.encode()) * 3 // 16384 == node:
            return name

"""Key names: ``<prefix>:{<queue>}:<name>``, one hash tag per queue so every script touches one slot."""

from __future__ import annotations

import re

from ...errors import ConfigError
from ...jobs import check_queue_name

__all__ = ["Keys", "QueueKeys"]

_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class QueueKeys:
    """Every key of one queue. Job and claim keys are built per call; the rest once."""

    __slots__ = (
        "base",
        "blocked",
        "cancelled",
        "completed",
        "delayed",
        "dlq",
        "expired",
        "failed",
        "flow_failed",
        "leases",
        "meta",
        "name",
        "outbox",
        "rate",
        "ready",
        "reaper",
        "signal",
        "staged",
    )

    def __init__(self, prefix: str, queue: str) -> None:
        self.name = queue
        self.base = f"{prefix}:{{{queue}}}:"
        self.meta = self.base + "meta"
        self.ready = self.base + "ready"
        self.delayed = self.base + "delayed"
        self.leases = self.base + "leases"
        self.signal = self.base + "signal"
        self.reaper = self.base + "reaper"
        self.completed = self.base + "completed"
        self.cancelled = self.base + "cancelled"
        self.failed = self.base + "failed"
        self.expired = self.base + "expired"
        self.dlq = self.base + "dlq"
        self.blocked = self.base + "blocked"  # jobs waiting for their parents (flows)
        self.outbox = self.base + "outbox"  # parents' outcomes for children in other queues (flows)
        self.flow_failed = self.base + "flow_failed"  # children dead-lettered for a parent, to report
        self.staged = self.base + "staged"  # jobs of a flow across queues, not committed yet (flows)
        self.rate = self.base + "rate"  # claim times under the queue's shared rate limit (sliding log)

    def job(self, job_id: str) -> str:
        """The hash of one job."""
        return f"{self.base}job:{job_id}"

    def children(self, job_id: str) -> str:
        """The refs (``<queue>/<id>``) of a job's children (flows)."""
        return f"{self.base}children:{job_id}"

    def flow(self, txn_id: str) -> str:
        """The commit record of a flow across queues whose first queue is this one (flows)."""
        return f"{self.base}flow:{txn_id}"

    def claim(self, nonce: str) -> str:
        """The replay record of one claim call."""
        return f"{self.base}claim:{nonce}"

    def state_index(self, state: str) -> str:
        """The sorted set indexing jobs in ``state`` (``waiting``: ``ready``, ``active``: ``leases``)."""
        return {
            "waiting": self.ready,
            "delayed": self.delayed,
            "blocked": self.blocked,
            "active": self.leases,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "expired": self.expired,
        }[state]


class Keys:
    """The keys under one prefix. Global keys carry the ``{@}`` tag, which no queue name can take."""

    __slots__ = (
        "_queues",
        "control",
        "events",
        "prefix",
        "queues",
        "sampler_lock",
        "workers",
        "workers_info",
    )

    def __init__(self, prefix: str) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(f"redis prefix {prefix!r} must match [A-Za-z0-9._:-]{{1,64}}")
        self.prefix = prefix
        self.queues = f"{prefix}:{{@}}:queues"
        self.workers = f"{prefix}:{{@}}:workers"
        self.workers_info = f"{prefix}:{{@}}:workers:info"
        self.events = f"{prefix}:events"
        # cancel hints have their own channel: a worker's hint reader would otherwise receive (and
        # pay for) every lifecycle event that every worker relays on `events`
        self.control = f"{prefix}:control"
        self.sampler_lock = f"{prefix}:telemetry:sampler"
        self._queues: dict[str, QueueKeys] = {}

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue ``name`` (validated once, so no name can break the hash tag)."""
        keys = self._queues.get(name)
        if keys is None:
            keys = self._queues[name] = QueueKeys(self.prefix, check_queue_name(name))
        return keys

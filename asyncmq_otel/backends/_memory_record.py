"""The in-memory backend's stored job (``_Record``) and queue (``_Queue``), with the fence check.

Apart from ``memory.py`` so that module keeps room under the module size limit.
"""

from __future__ import annotations

import collections
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio

from .base import RawJob, SettleReply, SettleStatus, StoredJob

__all__ = ["_BOOKKEEPING", "_Queue", "_Record", "_owned"]

_BOOKKEEPING = (  # merged over the envelope, as Redis' decode does
    *("state", "attempts", "retries", "stalls", "interrupts", "token", "owner", "cancel_requested", "error"),
    *("dlq_reason", "finished_at", "enqueued_at", "eligible_at", "delay_until", "expires_at", "progress"),
)


@dataclass(slots=True)
class _Record:
    job_id: str
    payload: str
    envelope: dict[str, Any] | None  # None when the payload does not decode to an object
    priority: int
    seq: int
    nonce: str
    state: str = ""
    attempts: int = 0
    retries: int = 0
    stalls: int = 0
    interrupts: int = 0
    token: str | None = None
    owner: str | None = None
    settled_token: str | None = None
    cancel_requested: bool = False
    result: str | None = None
    error: dict[str, Any] | None = None
    dlq_reason: str | None = None
    finished_at: float | None = None
    enqueued_at: float = 0.0
    eligible_at: float = 0.0
    delay_until: float | None = None
    expires_at: float | None = None
    progress: float | None = None
    prev_attempt: str | None = None
    flow_id: str | None = None
    last_span: str | None = None  # a parent's traceparent at completion, for its children's links
    due: float = 0.0
    payload_error: str = "stored payload is not a JSON object"

    def raw(self, queue: str) -> RawJob:
        """The job as a worker or an admin sees it: the envelope plus the bookkeeping."""
        if self.envelope is None:
            return {
                "id": self.job_id,
                "queue": queue,
                "token": self.token,
                "attempts": self.attempts,
                "state": self.state,
                "dlq_reason": self.dlq_reason,
                "error": self.error,
                "finished_at": self.finished_at,
                "payload_error": self.payload_error,
                "payload_preview": self.payload[:256],
            }
        out = dict(self.envelope)
        for name in _BOOKKEEPING:
            out[name] = getattr(self, name)
        out["id"] = self.job_id
        out["result"] = None if self.result is None else json.loads(self.result)
        if self.prev_attempt is not None:
            context = dict(out.get("trace_context") or {})
            context["prev_attempt"] = self.prev_attempt
            out["trace_context"] = context
        if self.flow_id is not None:
            out["flow_id"] = self.flow_id
        return out

    def stored(self, queue: str) -> StoredJob:
        """The job decoded for the port."""
        return StoredJob.from_fields(queue, self.raw(queue))


@dataclass(slots=True)
class _Queue:
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    paused: bool = False
    seq: int = 0
    jobs: dict[str, _Record] = field(default_factory=dict)
    ready: list[tuple[int, int, str]] = field(default_factory=list)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    leases: dict[str, float] = field(default_factory=dict)
    completed: collections.OrderedDict[str, float] = field(default_factory=collections.OrderedDict)
    cancelled: collections.OrderedDict[str, float] = field(default_factory=collections.OrderedDict)
    dlq: collections.OrderedDict[str, float] = field(default_factory=collections.OrderedDict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    signal: int = 0
    waiters: list[anyio.Event] = field(default_factory=list)
    reaper: tuple[str, float] | None = None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def _owned(record: _Record | None, token: str) -> _Record | SettleReply:
    """The record when ``token`` holds its lease; else ``GONE``, or ``STALE`` naming the owner."""
    if record is None:
        return SettleReply(SettleStatus.GONE)
    if record.state != "active" or record.token != token:
        return SettleReply(SettleStatus.STALE, owner=record.owner, state=record.state)
    return record

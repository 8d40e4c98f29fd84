"""The backend port: one Protocol, its reply types, and nothing else.

Every method is one atomic state transition (on Redis, one Lua script). Transitions of a
claimed job are fenced on the claim token: a worker that lost its lease gets ``STALE`` back
and nothing is written. Backends move bytes; they never emit lifecycle events (the queue
and the worker do that, once, after the transition succeeded).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from ..errors import MalformedJob
from ..jobs import Job

__all__ = [
    "Backend",
    "CancelStatus",
    "ClaimReply",
    "ClaimedJob",
    "DataLossCallback",
    "EnqueueItem",
    "EnqueueReply",
    "ErrorInfo",
    "FireReply",
    "FlowNode",
    "LeaseRenewer",
    "QueueRateLimit",
    "QueueStats",
    "ReapReply",
    "RenewStatus",
    "SettleReply",
    "SettleStatus",
    "StoredJob",
    "WorkerInfo",
]

RawJob = dict[str, Any]
"""The stored form an adapter builds internally (envelope plus bookkeeping); never crosses the port."""
_PREVIEW_CHARS = 256  # as much of a stored job that does not decode as an admin read shows
DataLossCallback = Callable[[str, "str | None", str], None]
"""Called as ``(queue, old_epoch, new_epoch)`` when a backend finds that a queue's data was lost."""


@dataclass(frozen=True, slots=True)
class EnqueueItem:
    """One job to store: its id, the encoded envelope, a relative delay and the idempotency nonce.

    ``priority`` and ``ttl`` (seconds) repeat the envelope's fields for producers that know them,
    so the backend need not decode the payload to find them. With ``priority`` None the backend
    reads both from the payload (``ttl`` is then ignored). An empty ``nonce`` makes the backend
    give the item one of its call (a re-send of the call replays, anything else is a duplicate).
    ``depends_on`` names the parents as ``(queue, job_id)``: the job is stored ``blocked`` until they
    have all completed; ``on_parent_failure`` is ``"fail"`` (dead-letter it when a parent dies) or
    ``"run"`` (a dead parent counts as finished). ``flow_id`` is the flow a ``FlowProducer`` gives
    every job of a graph; without it a job with parents takes its first parent's (see ``flows``).
    """

    job_id: str
    payload: str
    delay: float = 0.0
    nonce: str = ""
    priority: int | None = None
    ttl: float | None = None
    depends_on: tuple[tuple[str, str], ...] = ()
    on_parent_failure: str = "fail"
    flow_id: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueReply:
    """``duplicate`` is true when the id was already stored by another enqueue (``state`` is its state)."""

    job_id: str
    state: str
    duplicate: bool
    enqueued_at: float
    eligible_at: float


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an attempt failed, as a worker hands it to :meth:`Backend.retry` and :meth:`Backend.fail`.

    ``type`` is the exception's type name (or a reason such as ``malformed_payload``), ``message``
    its text and ``traceback`` the formatted traceback (empty when there is none). Backends store
    :meth:`to_dict` as the job's ``error`` JSON.
    """

    type: str
    message: str
    traceback: str = ""

    def to_dict(self) -> dict[str, str]:
        """The stored JSON form: ``{"type", "message", "traceback"}``."""
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


def _decode(fields: Mapping[str, Any]) -> tuple[Job | None, str | None]:
    """The job and ``None``, or ``None`` and why the stored form cannot be decoded (never raises)."""
    why = fields.get("payload_error")
    if why is not None:  # the adapter found no envelope at all
        return None, str(why)
    try:
        return Job.from_dict(fields), None
    except MalformedJob as exc:
        return None, str(exc)


def _optional_float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _parents(value: object) -> tuple[tuple[str, str], ...]:
    """The envelope's ``depends_on`` as ``(queue, job_id)`` pairs (entries of another shape are skipped)."""
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(
        (str(item[0]), str(item[1]))
        for item in value
        if isinstance(item, (list, tuple)) and len(item) == 2  # noqa: PLR2004 - a pair
    )


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a claim moved to ``active`` for this worker, decoded by the backend.

    ``job`` is ``None`` when the stored job cannot be decoded; ``decode_error`` then says why, and
    the worker dead-letters it as ``malformed_payload`` without running it. ``task`` is the
    envelope's task name when it has one (telemetry names it even for a malformed job);
    ``retries_set`` is whether the producer stored ``max_retries`` (0 is a value: a task's default
    applies only when it is unset); ``parents`` are the envelope's ``depends_on`` (flows).
    """

    id: str
    token: str
    attempts: int
    claimed_at: float
    job: Job | None
    decode_error: str | None = None
    task: str = ""
    retries_set: bool = False
    parents: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], claimed_at: float) -> ClaimedJob:
        """Decode a claimed job from its stored form (envelope plus bookkeeping); never raises.

        Adapters call it at the port; ``handle_job`` calls it for a raw job dict passed by hand.
        """
        job, why = _decode(fields)
        task = fields.get("task")
        return cls(
            id=str(fields.get("id")),
            token=str(fields.get("token") or ""),
            attempts=_count(fields.get("attempts")),
            claimed_at=claimed_at,
            job=job,
            decode_error=why,
            task=task if isinstance(task, str) else "",
            retries_set="max_retries" in fields,
            parents=_parents(fields.get("depends_on")),
        )


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A stored job as a backend returns it from a settle, a reap or an admin read.

    ``job`` is the decoded job (``None`` when the stored job cannot be decoded: ``decode_error``
    says why and ``payload_preview`` shows the start of what is stored). The other fields are the
    backend's bookkeeping, typed, and the envelope keys the decoded job does not hold
    (``retries_set``: whether the producer stored ``max_retries``; ``parents`` and
    ``on_parent_failure``: a flow job's ``depends_on`` and its stored policy, ``None`` when absent).
    :meth:`to_dict` builds the stored form from them (the envelope with the bookkeeping merged on
    top) that ``Queue.get_job`` and the admin commands show.
    """

    id: str
    queue: str
    state: str
    job: Job | None
    decode_error: str | None = None
    attempts: int = 0
    retries: int = 0
    stalls: int = 0
    interrupts: int = 0
    token: str | None = None
    owner: str | None = None
    cancel_requested: bool = False
    result: object = None
    error: object = None
    dlq_reason: str | None = None
    enqueued_at: float = 0.0
    eligible_at: float = 0.0
    delay_until: float | None = None
    expires_at: float | None = None
    finished_at: float | None = None
    progress: float | None = None
    payload_preview: str | None = None
    parents: tuple[tuple[str, str], ...] = ()
    retries_set: bool = False
    on_parent_failure: str | None = None

    @classmethod
    def from_fields(cls, queue: str, fields: Mapping[str, Any]) -> StoredJob:
        """Decode a stored job from its stored form; never raises (adapters call it at the port)."""
        job, why = _decode(fields)
        preview = _optional_text(fields.get("payload_preview"))
        if job is None and preview is None:  # an envelope that parsed but does not decode to a job
            preview = json.dumps(dict(fields), default=str, separators=(",", ":"))[:_PREVIEW_CHARS]
        return cls(
            id=str(fields.get("id")),
            queue=queue,
            state=str(fields.get("state") or ""),
            job=job,
            decode_error=why,
            attempts=_count(fields.get("attempts")),
            retries=_count(fields.get("retries")),
            stalls=_count(fields.get("stalls")),
            interrupts=_count(fields.get("interrupts")),
            token=_optional_text(fields.get("token")),
            owner=_optional_text(fields.get("owner")),
            cancel_requested=fields.get("cancel_requested") is True,
            result=fields.get("result"),
            error=fields.get("error"),
            dlq_reason=_optional_text(fields.get("dlq_reason")),
            enqueued_at=_optional_float(fields.get("enqueued_at")) or 0.0,
            eligible_at=_optional_float(fields.get("eligible_at")) or 0.0,
            delay_until=_optional_float(fields.get("delay_until")),
            expires_at=_optional_float(fields.get("expires_at")),
            finished_at=_optional_float(fields.get("finished_at")),
            progress=_optional_float(fields.get("progress")),
            payload_preview=preview,
            parents=_parents(fields.get("depends_on")),
            retries_set="max_retries" in fields,
            on_parent_failure=_optional_text(fields.get("on_parent_failure")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form, as ``Queue.get_job`` returns it: the envelope with the bookkeeping on top.

        Built from the typed fields, a new dict on each call. A job that cannot be decoded has
        ``id``, ``queue``, ``token``, ``attempts``, ``state``, ``dlq_reason``, ``error``,
        ``finished_at``, ``payload_error`` and ``payload_preview``.
        """
        job = self.job
        if job is None:
            return {
                "id": self.id,
                "queue": self.queue,
                "token": self.token,
                "attempts": self.attempts,
                "state": self.state,
                "dlq_reason": self.dlq_reason,
                "error": self.error,
                "finished_at": self.finished_at,
                "payload_error": self.decode_error,
                "payload_preview": self.payload_preview,
            }
        out = job.envelope()
        if not self.retries_set:  # the producer left it unset: the task's declared value applies
            del out["max_retries"]
        if self.parents:
            out["depends_on"] = [list(parent) for parent in self.parents]
        if self.on_parent_failure is not None:
            out["on_parent_failure"] = self.on_parent_failure
        out.update(
            id=self.id,
            state=self.state,
            attempts=self.attempts,
            retries=self.retries,
            stalls=self.stalls,
            interrupts=self.interrupts,
            token=self.token,
            owner=self.owner,
            cancel_requested=self.cancel_requested,
            result=self.result,
            error=self.error,
            dlq_reason=self.dlq_reason,
            enqueued_at=self.enqueued_at,
            eligible_at=self.eligible_at,
            delay_until=self.delay_until,
            expires_at=self.expires_at,
            finished_at=self.finished_at,
            progress=self.progress,
        )
        if job.flow_id is not None:
            out["flow_id"] = job.flow_id
        return out


@dataclass(frozen=True, slots=True)
class FlowNode:
    """One job of a flow as :meth:`Queue.get_flow <asyncmq_otel.queues.Queue.get_flow>` returns it."""

    queue: str
    id: str
    state: str | None  # None: the job no longer exists (trimmed by retention)
    task: str | None
    parents: tuple[tuple[str, str], ...]  # (queue, job_id) of each parent
    dlq_reason: str | None = None
    flow_id: str | None = None  # the flow the job belongs to (the rule is in the flows module's docstring)


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """Jobs moved to ``active`` for this worker, each decoded, with its claim ``token``.

    With nothing ready, ``next_due_in`` is the number of seconds until the next delayed job is
    due (``None`` when there is none).
    """

    jobs: list[ClaimedJob]
    paused: bool = False
    next_due_in: float | None = None
    now: float = 0.0
    throttled_for: float | None = None
    """Set when the queue's shared rate limit held this claim back (fewer jobs than asked, or none,
    while more were ready): seconds until its next token frees (see :class:`RateLimitStore`)."""


class SettleStatus(str, Enum):
    """The answer of a fenced transition."""

    OK = "OK"
    STALE = "STALE"  # the lease was lost: another worker owns the job now, nothing was written
    GONE = "GONE"  # the job no longer exists (cleaned or the dataset was lost)
    TOO_LARGE = "TOO_LARGE"  # the result is over the backend's max_result_bytes; nothing was written


@dataclass(frozen=True, slots=True)
class SettleReply:
    """``job``: the job as stored after the transition (on ``OK``); ``owner``: the owner on ``STALE``."""

    status: SettleStatus
    job: StoredJob | None = None
    owner: str | None = None
    state: str | None = None

    @property
    def ok(self) -> bool:
        """True when the transition was applied (or was a replay of an applied one)."""
        return self.status is SettleStatus.OK


class CancelStatus(str, Enum):
    """The answer of :meth:`Backend.cancel`."""

    CANCELLED = "OK"  # a queued job was cancelled: it will never run
    RUNNING = "RUNNING"  # a running job was asked to stop; its worker settles it as cancelled
    FINISHED = "FINISHED"  # the job had already finished
    GONE = "GONE"  # no such job


class RenewStatus(str, Enum):
    """Per-job answer of a lease renewal."""

    OK = "OK"
    LOST = "LOST"  # the lease was reaped: stop the handler, its writes will be rejected
    CANCEL = "CANCEL"  # cancellation was requested: stop the handler and settle it as cancelled


@dataclass(frozen=True, slots=True)
class ReapReply:
    """Expired leases recovered by the reaper: back to ``waiting`` (stalled) or dead-lettered."""

    is_reaper: bool
    stalled: list[StoredJob] = field(default_factory=list)
    dead: list[StoredJob] = field(default_factory=list)
    more: bool = False
    late: bool = False
    """The request reached the backend later than ``max_delay`` after it was sent (it was held up by
    an outage): nothing was revoked, and the caller should give renewals time to land first."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the queue sampler exports: depth by state, the oldest ready job's age, the paused flag."""

    ready: int
    scheduled: int
    active: int
    dead: int
    oldest_ready_age: float
    paused: bool
    blocked: int = 0  # jobs waiting for their parents (flows)
    oldest_blocked_age: float = 0.0  # seconds since the longest-blocked job was stored (0 when none)


@dataclass(slots=True)
class WorkerInfo:
    """A live worker, as ``asyncmq-otel workers`` lists it."""

    worker_id: str
    queues: list[str]
    host: str
    pid: int
    concurrency: int
    group: str = "default"
    active: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    state: str = "running"
    tasks: dict[str, str] = field(default_factory=dict)  # the task ids it can run -> their declared queue

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored by backends."""
        return {
            "worker_id": self.worker_id,
            "queues": list(self.queues),
            "host": self.host,
            "pid": self.pid,
            "concurrency": self.concurrency,
            "group": self.group,
            "active": self.active,
            "started_at": self.started_at,
            "heartbeat_at": self.heartbeat_at,
            "state": self.state,
            "tasks": dict(self.tasks),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> WorkerInfo:
        """Decode the stored form."""
        return cls(
            worker_id=str(raw["worker_id"]),
            queues=[str(q) for q in raw.get("queues", [])],
            host=str(raw.get("host", "")),
            pid=int(raw.get("pid", 0)),
            concurrency=int(raw.get("concurrency", 0)),
            group=str(raw.get("group", "default")),
            active=int(raw.get("active", 0)),
            started_at=float(raw.get("started_at", 0.0)),
            heartbeat_at=float(raw.get("heartbeat_at", 0.0)),
            state=str(raw.get("state", "running")),
            tasks={str(task): str(queue) for task, queue in dict(raw.get("tasks") or {}).items()},
        )


class LeaseRenewer(Protocol):
    """A synchronous renewal channel, used from the worker's renewer thread.

    It must not share a connection with the event loop, so a handler that blocks the loop
    does not stop its lease from being renewed.
    """

    def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend the leases ``{job_id: token}`` by ``lease`` seconds from the backend's clock."""
        ...

    def close(self) -> None:
        """Release the channel's resources."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Where jobs live. ``InMemoryBackend`` and ``RedisBackend`` implement it; so can you."""

    url: str
    on_data_loss: DataLossCallback | None

    # -- time and lifecycle -------------------------------------------------------------------
    async def now(self) -> float:
        """The backend's clock in unix seconds (Redis ``TIME``): the only clock that decides due times."""
        ...

    async def close(self) -> None:
        """Release connections. The backend may be used again afterwards (it reconnects lazily)."""
        ...

    # -- producer -------------------------------------------------------------------------------
    async def enqueue(self, queue: str, item: EnqueueItem) -> EnqueueReply:
        """Store one job (idempotent by id and nonce)."""
        ...

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs in one round trip, each as :meth:`enqueue` would."""
        ...

    # -- worker ---------------------------------------------------------------------------------
    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then move up to ``count`` ready jobs to ``active`` under a lease.

        A backend with :class:`RateLimitStore` claims no more than the queue's shared rate limit has
        left, in the same atomic step (``ClaimReply.throttled_for`` then says when to ask again).
        """
        ...

    async def wait_for_work(self, queue: str, timeout: float) -> bool:
        """Block until a wake token arrives (True) or ``timeout`` seconds pass (False). Never polls."""
        ...

    async def complete(
        self,
        queue: str,
        job_id: str,
        token: str,
        result: str,
        *,
        want_job: bool = True,
        last_span: str | None = None,
    ) -> SettleReply:
        """``active`` → ``completed`` with the JSON-encoded ``result``.

        With ``want_job=False`` the reply's ``job`` is ``None``: a smaller reply, all a worker needs.
        ``last_span`` (a job of a flow: the ``traceparent`` of its attempt's span) is stored with the
        job, for its children's span links (``last_spans`` of a flow backend).
        """
        ...

    async def retry(
        self,
        queue: str,
        job_id: str,
        token: str,
        backoff: float,
        error: ErrorInfo,
        prev_attempt: str | None = None,
    ) -> SettleReply:
        """``active`` → ``delayed`` until now + ``backoff``, ``retries`` + 1 (reply: ``eligible_at``)."""
        ...

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: ErrorInfo | None = None
    ) -> SettleReply:
        """``active`` → DLQ with ``reason`` (state ``expired`` for reason ``expired``, else ``failed``)."""
        ...

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``delayed`` until its ``delay_until``, the claim's attempt given back."""
        ...

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled`` (the owner stops a job whose cancellation was requested)."""
        ...

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """``active`` → ``waiting`` at its place, ``interrupts`` + 1; past the limit → DLQ ``interrupted``."""
        ...

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Store the running job's progress (fenced like a settle)."""
        ...

    async def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Async form of :meth:`LeaseRenewer.renew`."""
        ...

    def lease_renewer(self) -> LeaseRenewer:
        """A synchronous renewal channel for the renewer thread."""
        ...

    async def reap(
        self, queue: str, worker_id: str, max_stalls: int, hold: float, max_delay: float | None = None
    ) -> ReapReply:
        """If this worker holds (or can take for ``hold`` s) the reaper role, recover expired leases.

        With ``max_delay``, a request that reaches a remote backend more than ``max_delay`` seconds after
        it was sent revokes nothing and answers ``late`` (outage grace: a reap held in
        transit by an outage must not run before the renewals that the same outage held up).
        """
        ...

    # -- queue control ----------------------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Stop claims on the queue (jobs can still be enqueued)."""
        ...

    async def resume(self, queue: str) -> None:
        """Allow claims again and wake the idle workers."""
        ...

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
        ...

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job, or ask the owner of a running one to stop it."""
        ...

    # -- inspection and admin --------------------------------------------------------------------
    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job with its state, or ``None``."""
        ...

    async def counts(self, queue: str) -> dict[str, int]:
        """The number of jobs in each state (O(1) per state)."""
        ...

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``: ready order if waiting, due order if delayed, else newest first."""
        ...

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of dead-lettered jobs (``failed`` and ``expired``), newest first, with ``dlq_reason``."""
        ...

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """Move a dead-lettered job back to ``waiting`` with fresh retry counters."""
        ...

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job; return how many."""
        ...

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete finished jobs in ``state`` that finished more than ``older_than`` seconds ago."""
        ...

    async def queue_stats(self, queue: str) -> QueueStats:
        """Depths, oldest ready age and paused flag, from O(1)/O(log N) reads only."""
        ...

    async def list_queues(self) -> list[str]:
        """Every queue this backend has seen."""
        ...

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue exists (it was enqueued to, paused or consumed), without creating it."""
        ...

    # -- workers ------------------------------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a live worker; it disappears ``ttl`` seconds after its last heartbeat."""
        ...

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration (``info.active`` and ``info.state`` are stored)."""
        ...

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration."""
        ...

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers."""
        ...

    def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(queue, job_id)`` as soon as a running job's cancellation is requested."""
        ...

    def remove_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        ...


@dataclass(frozen=True, slots=True)
class FireReply:
    """The answer to :meth:`ScheduleStore.schedule_fire`.

    ``status``: ``OK`` (fired: the jobs are stored and the next due time too), ``CHANGED`` (another
    caller fired it first, or it was redefined), ``NOT_DUE`` (the backend's clock says not yet),
    ``PAUSED`` or ``GONE``; nothing was written unless ``OK``. ``stored`` lists the job ids this call
    stored; ``duplicates`` the ids that existed already (a tick never makes two jobs).
    """

    status: str
    now_ms: int
    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueRateLimit:
    """A queue's shared rate limit: at most ``limit`` claims in any window of ``interval`` seconds."""

    limit: int
    interval: float


def __getattr__(name: str) -> Any:  # noqa: ANN401 - the moved Protocol classes
    """``ScheduleStore`` and ``RateLimitStore``, importable from here as before they moved.

    They live in ``capabilities`` (optional parts of the port), which imports this module: a lazy
    lookup keeps the old import path without an import cycle.
    """
    if name in {"ScheduleStore", "RateLimitStore"}:
        from . import capabilities  # noqa: PLC0415 - lazy: capabilities imports this module

        return getattr(capabilities, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The backend port: one Protocol, its reply types, and nothing else.

Every method is one atomic state transition (on Redis, one Lua script). Transitions of a
claimed job are fenced on the claim token: a worker that lost its lease gets ``STALE`` back
and nothing is written. Backends move bytes; they never emit lifecycle events (the queue
and the worker do that, once, after the transition succeeded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..schedules import ScheduleRecord

__all__ = [
    "Backend",
    "CancelStatus",
    "ClaimReply",
    "DataLossCallback",
    "EnqueueItem",
    "EnqueueReply",
    "FireReply",
    "LeaseRenewer",
    "QueueRateLimit",
    "QueueStats",
    "RateLimitStore",
    "ReapReply",
    "RenewStatus",
    "ScheduleStore",
    "SettleReply",
    "SettleStatus",
    "WorkerInfo",
]

RawJob = dict[str, Any]
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
class ClaimReply:
    """Jobs moved to ``active`` for this worker, each a raw stored job with ``token`` set.

    A raw job whose envelope could not be decoded carries ``id``, ``queue``, ``token``,
    ``attempts`` and ``payload_error`` only. With nothing ready, ``next_due_in`` is the number of
    seconds until the next delayed job is due (``None`` when there is none).
    """

    jobs: list[RawJob]
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
    job: RawJob | None = None
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
    stalled: list[RawJob] = field(default_factory=list)
    dead: list[RawJob] = field(default_factory=list)
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
        error: Mapping[str, Any],
        prev_attempt: str | None = None,
    ) -> SettleReply:
        """``active`` → ``delayed`` until now + ``backoff``, ``retries`` + 1 (reply: ``eligible_at``)."""
        ...

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: Mapping[str, Any] | None = None
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
    async def get_job(self, queue: str, job_id: str) -> RawJob | None:
        """The stored job with its state, or ``None``."""
        ...

    async def counts(self, queue: str) -> dict[str, int]:
        """The number of jobs in each state (O(1) per state)."""
        ...

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[RawJob]:
        """A page of jobs in ``state``: ready order if waiting, due order if delayed, else newest first."""
        ...

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[RawJob]:
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

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers consuming each of ``queues`` (0 for none), O(log N) per queue, never a scan."""
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


@runtime_checkable
class ScheduleStore(Protocol):
    """An optional backend capability: durable schedules (periodic jobs) and firing their ticks.

    Both built-in backends have it; a backend without it still runs every other job. Times are
    integer milliseconds of the backend's clock.
    """

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store a schedule unless one with the same key and revision exists; True when written.

        A redefined schedule keeps its paused flag and its last run.
        """
        ...

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        ...

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule of the queue, soonest first (paused ones last)."""
        ...

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule (its fired jobs stay); False when absent."""
        ...

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume with a new next due time; False when absent."""
        ...

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """The backend's time, up to ``limit`` due schedules, and the earliest next due time."""
        ...

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Fire a tick: store the jobs (skipping ids that exist) and the next due time, atomically.

        Only if ``key`` still has revision ``rev`` and next due ``expected_due_ms``, and every job's
        due time has passed on the backend's clock; otherwise nothing is written.
        """
        ...


@dataclass(frozen=True, slots=True)
class QueueRateLimit:
    """A queue's shared rate limit: at most ``limit`` claims in any window of ``interval`` seconds."""

    limit: int
    interval: float


@runtime_checkable
class RateLimitStore(Protocol):
    """An optional backend capability: a rate limit per queue, shared by every worker of the queue.

    The limit is stored with the queue; :meth:`Backend.claim` enforces it in the claim's own atomic
    step, from a sliding log of claim times on the backend's clock, so no window of ``interval``
    seconds ever holds more than ``limit`` claims, whatever the number of workers.
    """

    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Store (or replace) the queue's limit; claims already made keep counting in their window."""
        ...

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit (and the log of claims it counted); False when it had none."""
        ...

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None``."""
        ...

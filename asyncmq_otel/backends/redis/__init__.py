"""``RedisBackend``: the distributed backend. Every transition is one Lua script on one slot.

Keys are ``<prefix>:{<queue>}:<name>`` (see ``_keys.py``), so a queue's scripts run unchanged on
Redis Cluster. Each script checks the queue's epoch, validates, and only then writes; transitions
of a claimed job are fenced on its claim token. Time comes from Redis ``TIME`` inside the
scripts. Replies are decoded to the same typed records as ``InMemoryBackend`` returns.

``RedisBackend`` is the port's face; the work is done by collaborators it owns, one per
responsibility (``_jobs``, ``_admin``, ``_registry``, ``_events``, ``_schedules``, ``_flows``,
``_ratelimit``), which share one ``_store.Store``: connections, keys, limits and the epoch-checked
script call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...settings import get_settings
from ..base import (
    CancelStatus,
    ClaimReply,
    DataLossCallback,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    FireReply,
    FlowNode,
    QueueRateLimit,
    QueueStats,
    ReapReply,
    RenewStatus,
    SettleReply,
    StoredJob,
    WorkerInfo,
)
from ._admin import Admin
from ._connection import Connections, ConnectionSettings, mask_url, probe_server
from ._events import Channel, EventChannel, EventSubscription
from ._flows import OUTBOX_PAGE, FlowStore
from ._jobs import JobStore
from ._keys import Keys
from ._ratelimit import RateLimits
from ._registry import Registry, server_of
from ._renewer import RedisLeaseRenewer
from ._schedules import Schedules
from ._store import Limits, Store

if TYPE_CHECKING:
    from ...schedules import ScheduleRecord

__all__ = ["DEFAULT_URL", "RedisBackend"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisBackend:
    """Jobs in Redis (or a Redis Cluster), shared by every worker and producer that uses the prefix.

    Args:
        url: ``redis://[user:password@]host:port/db``, or ``rediss://`` for TLS (verified).
        prefix: the key prefix; separate tenants by prefix and ACL user. Default from settings.
        cluster: use redis-py's cluster client.
        max_payload_bytes: largest envelope accepted (checked here and again in the script).
        max_result_bytes: largest encoded result accepted at completion.
        keep_completed: completed and cancelled jobs kept, by count ...
        keep_completed_age: ... and by age in seconds.
        keep_failed: dead-lettered jobs kept, by count ...
        keep_failed_age: ... and by age in seconds.
        block_timeout: the longest single ``BLPOP`` of :meth:`wait_for_work`.
        socket_timeout: seconds before a command is abandoned and retried.
        connect_timeout: seconds to connect.
        retry_timeout: seconds of retrying transient failures before :class:`BackendUnavailable`.
        ssl_ca_certs: CA bundle for ``rediss://``.
        ssl_certfile: client certificate (mTLS).
        ssl_keyfile: client key (mTLS).
        max_connections: bound of the connection pool.
        client_name: ``CLIENT SETNAME`` of every connection.
        redis_url: the same as ``url`` (AsyncMQ's name for it).

    Defaults not given come from :func:`asyncmq_otel.settings.get_settings`.

    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str | None = None,
        cluster: bool = False,
        max_payload_bytes: int | None = None,
        max_result_bytes: int | None = None,
        keep_completed: int | None = None,
        keep_completed_age: float | None = None,
        keep_failed: int | None = None,
        keep_failed_age: float | None = None,
        block_timeout: float | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        retry_timeout: float = 20.0,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        max_connections: int | None = None,
        client_name: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        settings = get_settings()
        if redis_url is not None:  # AsyncMQ's spelling of ``url``
            if url not in {DEFAULT_URL, redis_url}:
                raise TypeError("pass the URL once: as url or as redis_url (AsyncMQ's name)")
            url = redis_url
        self.url = url
        self.keys = Keys(prefix if prefix is not None else settings.redis_prefix)
        self.prefix = self.keys.prefix
        self.cluster = cluster
        self.limits = Limits(
            max_payload_bytes=max_payload_bytes
            if max_payload_bytes is not None
            else settings.max_payload_bytes,
            max_result_bytes=max_result_bytes if max_result_bytes is not None else settings.max_result_bytes,
            keep_completed=keep_completed if keep_completed is not None else settings.keep_completed,
            keep_completed_age=(
                keep_completed_age if keep_completed_age is not None else settings.keep_completed_age
            ),
            keep_failed=keep_failed if keep_failed is not None else settings.keep_failed,
            keep_failed_age=keep_failed_age if keep_failed_age is not None else settings.keep_failed_age,
            block_timeout=block_timeout if block_timeout is not None else settings.block_timeout,
        )
        self.connections = Connections(
            ConnectionSettings(
                url,
                cluster=cluster,
                socket_timeout=socket_timeout,
                connect_timeout=connect_timeout,
                block_timeout=self.limits.block_timeout,
                retry_timeout=retry_timeout,
                ssl_ca_certs=ssl_ca_certs,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                max_connections=max_connections,
                client_name=client_name,
            )
        )
        self.server_address, self.server_port = server_of(url)
        self._store = Store(self.keys, self.connections, self.limits)
        self.origin = self._store.origin
        self._events = EventChannel(self._store)
        self._flows = FlowStore(self._store)
        self._jobs = JobStore(self._store, self._flows, self._events)
        self._admin = Admin(self._store)
        self._registry = Registry(self._store)
        self._schedules = Schedules(self._store, self._events)
        self._rate_limits = RateLimits(self._store)

    def __repr__(self) -> str:
        return f"RedisBackend({mask_url(self.url)!r}, prefix={self.prefix!r}, cluster={self.cluster})"

    # -- settings kept by the collaborators -----------------------------------------------------------
    @property
    def on_data_loss(self) -> DataLossCallback | None:
        """Called as ``(queue, old_epoch, new_epoch)`` when a queue's data was lost."""
        return self._store.on_data_loss

    @on_data_loss.setter
    def on_data_loss(self, callback: DataLossCallback | None) -> None:
        self._store.on_data_loss = callback

    @property
    def flow_stage_timeout(self) -> float:
        """Seconds a part of a flow across queues may stay staged before a reaper resolves it.

        A producer slower than this between its first part and its commit record finds its flow rolled back.
        """
        return self._flows.flow_stage_timeout

    @flow_stage_timeout.setter
    def flow_stage_timeout(self, seconds: float) -> None:
        self._flows.flow_stage_timeout = seconds

    @property
    def max_payload_bytes(self) -> int:
        """The largest envelope accepted."""
        return self.limits.max_payload_bytes

    @property
    def max_result_bytes(self) -> int:
        """The largest encoded result accepted at completion."""
        return self.limits.max_result_bytes

    @property
    def keep_completed(self) -> int:
        """Completed and cancelled jobs kept, by count."""
        return self.limits.keep_completed

    @property
    def keep_completed_age(self) -> float:
        """Completed and cancelled jobs kept, by age in seconds."""
        return self.limits.keep_completed_age

    @property
    def keep_failed(self) -> int:
        """Dead-lettered jobs kept, by count."""
        return self.limits.keep_failed

    @property
    def keep_failed_age(self) -> float:
        """Dead-lettered jobs kept, by age in seconds."""
        return self.limits.keep_failed_age

    @property
    def block_timeout(self) -> float:
        """The longest single ``BLPOP`` of :meth:`wait_for_work`."""
        return self.limits.block_timeout

    # -- epochs (data loss) ----------------------------------------------------------------------------
    @staticmethod
    def new_epoch() -> str:
        """A random 128-bit epoch."""
        return Store.new_epoch()

    def cached_epoch(self, queue: str) -> str | None:
        """The epoch this process last saw for ``queue``."""
        return self._store.cached_epoch(queue)

    def adopt_epoch(self, queue: str, old: str | None, new: str) -> None:
        """Record ``new`` as the queue's epoch; report a data loss when it replaced ``old``."""
        self._store.adopt_epoch(queue, old, new)

    # -- time and lifecycle -------------------------------------------------------------------------
    async def now(self) -> float:
        """Redis ``TIME`` in unix seconds."""
        seconds, micros = await self.connections.run(lambda client: client.time())
        return float(seconds) + float(micros) / 1_000_000

    async def close(self) -> None:
        """Close every connection; the backend reconnects on its next call."""
        await self._store.hints.aclose()
        await self.connections.aclose()

    async def probe(self) -> dict[str, Any]:
        """Read ``INFO`` for the startup banner and its warnings (version, eviction policy, persistence).

        Raises:
            BackendAuthError: wrong credentials (never retried).
            BackendTLSError: the TLS handshake failed.
            BackendUnavailable: Redis did not answer within ``retry_timeout``.

        """
        return await probe_server(self.connections)

    def lease_renewer(self) -> RedisLeaseRenewer:
        """A synchronous renewal channel with its own connection, for the renewer thread."""
        return RedisLeaseRenewer(self._store)

    # -- jobs (JobStore) --------------------------------------------------------------------------
    async def enqueue(self, queue: str, item: EnqueueItem) -> EnqueueReply:
        """Store one job (idempotent by id and nonce)."""
        return await self._jobs.enqueue(queue, item)

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs in one round trip (script calls of up to 500 jobs, pipelined)."""
        return await self._jobs.enqueue_bulk(queue, items)

    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then move up to ``count`` ready jobs to ``active`` under a lease."""
        return await self._jobs.claim(queue, worker_id, count, lease)

    async def wait_for_work(self, queue: str, timeout: float) -> bool:
        """``BLPOP`` a wake token on the blocking connection, in slices of at most ``block_timeout``."""
        return await self._jobs.wait_for_work(queue, timeout)

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
        """``active`` → ``completed`` with the JSON-encoded ``result`` (the job too, if ``want_job``)."""
        return await self._jobs.complete(queue, job_id, token, result, want_job=want_job, last_span=last_span)

    async def retry(
        self,
        queue: str,
        job_id: str,
        token: str,
        backoff: float,
        error: ErrorInfo,
        prev_attempt: str | None = None,
    ) -> SettleReply:
        """``active`` → ``delayed`` until Redis time + ``backoff`` (``waiting`` at the back when 0)."""
        return await self._jobs.retry(queue, job_id, token, backoff, error, prev_attempt)

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: ErrorInfo | None = None
    ) -> SettleReply:
        """``active`` → DLQ with ``reason`` (state ``expired`` for reason ``expired``, else ``failed``)."""
        return await self._jobs.fail(queue, job_id, token, reason, error)

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``delayed`` until its ``delay_until``, the claim's attempt given back."""
        return await self._jobs.defer(queue, job_id, token)

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled``."""
        return await self._jobs.settle_cancelled(queue, job_id, token)

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """``active`` → ``waiting`` at its original place, ``interrupts`` + 1; past the limit → DLQ."""
        return await self._jobs.requeue(queue, job_id, token, max_interrupts)

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Store the running job's progress (fenced like a settle)."""
        return await self._jobs.report_progress(queue, job_id, token, progress)

    async def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend every lease whose token still matches, even past its deadline."""
        return await self._jobs.renew(queue, leases, lease)

    async def reap(
        self, queue: str, worker_id: str, max_stalls: int, hold: float, max_delay: float | None = None
    ) -> ReapReply:
        """Take or keep the reaper role for ``hold`` seconds, then recover up to 100 expired leases."""
        return await self._jobs.reap(queue, worker_id, max_stalls, hold, max_delay)

    async def pause(self, queue: str) -> None:
        """Stop claims on the queue (jobs can still be enqueued)."""
        return await self._jobs.pause(queue)

    async def resume(self, queue: str) -> None:
        """Allow claims again and wake idle workers, one token per ready job."""
        return await self._jobs.resume(queue)

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
        return await self._jobs.is_queue_paused(queue)

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job, or flag a running one and tell its owner at once (cancel hint)."""
        return await self._jobs.cancel(queue, job_id)

    # -- inspection and admin (Admin) -------------------------------------------------------------
    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job with its state, or ``None``."""
        return await self._admin.get_job(queue, job_id)

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state: one ``ZCARD`` per state index, in one pipeline."""
        return await self._admin.counts(queue)

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``: ready order, due order, lease order, or newest first when finished."""
        return await self._admin.list_jobs(queue, state, offset, limit)

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of dead-lettered jobs, newest first, with ``dlq_reason``."""
        return await self._admin.list_dlq(queue, offset, limit)

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """Move a dead-lettered job back to ``waiting`` (at the back) with fresh counters."""
        return await self._admin.retry_dead(queue, job_id)

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job, 500 per script call; return how many."""
        return await self._admin.purge_dlq(queue)

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete jobs in a finished ``state`` that finished at least ``older_than`` seconds ago."""
        return await self._admin.clean(queue, state, older_than)

    async def queue_stats(self, queue: str) -> QueueStats:
        """Depths, the age of the job at the head of the ready order, and the paused flag (one script)."""
        return await self._admin.queue_stats(queue)

    async def list_queues(self) -> list[str]:
        """Every queue registered under the prefix."""
        return await self._admin.list_queues()

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue is registered or has its meta hash; reads only (no epoch is minted)."""
        return await self._admin.has_queue(queue)

    async def queues_with_job(self, job_id: str) -> list[str]:
        """The registered queues holding a job with this id (one ``EXISTS`` per queue, pipelined)."""
        return await self._admin.queues_with_job(job_id)

    # -- workers and the sampler lock (Registry) --------------------------------------------------
    async def acquire_sampler_lock(self, owner: str, ttl: float) -> bool:
        """Take the sampler lock when it is free, or extend it when ``owner`` holds it."""
        return await self._registry.acquire_sampler_lock(owner, ttl)

    async def release_sampler_lock(self, owner: str) -> None:
        """Free the sampler lock if ``owner`` holds it."""
        return await self._registry.release_sampler_lock(owner)

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        """Record a live worker; it disappears ``ttl`` seconds after its last heartbeat."""
        return await self._registry.register_worker(info, ttl)

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        """Refresh a worker's registration; ``info.heartbeat_at`` becomes Redis time."""
        return await self._registry.heartbeat(info, ttl)

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove a worker's registration (and its entries in the per-queue consumer sets)."""
        return await self._registry.deregister_worker(worker_id)

    async def consumer_counts(self, queues: Sequence[str]) -> dict[str, int]:
        """Live workers consuming each of ``queues``: a prune and a ``ZCARD`` per queue, in one round trip."""
        return await self._registry.consumer_counts(queues)

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers whose registration has not expired."""
        return await self._registry.list_workers()

    # -- events and cancel hints (EventChannel) ---------------------------------------------------
    def add_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(queue, job_id)`` as soon as a running job's cancellation is requested."""
        return self._events.add_cancel_listener(listener)

    def remove_cancel_listener(self, listener: Callable[[str, str], None]) -> None:
        """Undo :meth:`add_cancel_listener`."""
        return self._events.remove_cancel_listener(listener)

    async def publish_event(self, event: Mapping[str, Any], *, channel: Channel = "events") -> int:
        """Publish one event (a JSON object); return how many subscribers got it."""
        return await self._events.publish_event(event, channel=channel)

    async def publish_events(self, messages: Sequence[str]) -> None:
        """Publish JSON messages on ``<prefix>:events``, in order, in one round trip."""
        return await self._events.publish_events(messages)

    async def subscribe_events(
        self, names: Collection[str] | None = None, *, channel: Channel = "events"
    ) -> EventSubscription:
        """Subscribe to ``<prefix>:events`` (or ``control``: the cancel hints); live on return."""
        return await self._events.subscribe_events(names, channel=channel)

    # -- schedules (Schedules) --------------------------------------------------------------------
    def watch_schedules(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every change of a schedule, here or in another process."""
        return self._schedules.watch_schedules(callback)

    async def schedule_upsert(self, queue: str, record: ScheduleRecord) -> bool:
        """Store unless the same revision is stored (``SAME``); True when written."""
        return await self._schedules.schedule_upsert(queue, record)

    async def schedule_get(self, queue: str, key: str) -> ScheduleRecord | None:
        """One stored schedule."""
        return await self._schedules.schedule_get(queue, key)

    async def schedule_list(self, queue: str) -> list[ScheduleRecord]:
        """Every schedule, soonest first, paused last (one pipeline: the ZSET, then the hashes)."""
        return await self._schedules.schedule_list(queue)

    async def schedule_remove(self, queue: str, key: str) -> bool:
        """Delete a schedule; False when absent."""
        return await self._schedules.schedule_remove(queue, key)

    async def schedule_set_paused(
        self, queue: str, key: str, *, paused: bool, next_due_ms: int | None
    ) -> bool:
        """Pause, or resume from ``next_due_ms``."""
        return await self._schedules.schedule_set_paused(queue, key, paused=paused, next_due_ms=next_due_ms)

    async def schedule_peek(self, queue: str, limit: int) -> tuple[int, list[ScheduleRecord], int | None]:
        """Redis ``TIME``, up to ``limit`` due schedules and the earliest next due time, in one call."""
        return await self._schedules.schedule_peek(queue, limit)

    async def schedule_fire(
        self,
        queue: str,
        key: str,
        rev: str,
        expected_due_ms: int,
        jobs: Sequence[tuple[int, EnqueueItem]],
        next_due_ms: int,
    ) -> FireReply:
        """Fire: store the jobs and the next due time if the schedule is still as read (one script)."""
        return await self._schedules.schedule_fire(queue, key, rev, expected_due_ms, jobs, next_due_ms)

    # -- flows (FlowStore) ------------------------------------------------------------------------
    async def add_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> list[EnqueueReply]:
        """Store jobs with parents, parents first, all or none: one script call per run of one queue."""
        return await self._flows.add_flow(items)

    async def reconcile_flows(self, queue: str | None = None, limit: int = OUTBOX_PAGE) -> int:
        """Deliver up to ``limit`` outbox entries of ``queue`` (every queue when None); return how many."""
        return await self._flows.reconcile_flows(queue, limit)

    async def get_flow(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """Every job linked to ``queue/job_id`` through parents and children (up to 10,000)."""
        return await self._flows.get_flow(queue, job_id)

    async def last_spans(self, parents: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ``last_span`` each ``(queue, job_id)`` stored at completion (``None``: none, or gone)."""
        return await self._flows.last_spans(parents)

    # -- shared rate limits (RateLimits) ----------------------------------------------------------
    async def set_rate_limit(self, queue: str, limit: int, interval: float) -> None:
        """Allow at most ``limit`` claims of the queue in any window of ``interval`` seconds (1 ms steps)."""
        return await self._rate_limits.set_rate_limit(queue, limit, interval)

    async def clear_rate_limit(self, queue: str) -> bool:
        """Remove the queue's limit and its log of claims; False when it had none."""
        return await self._rate_limits.clear_rate_limit(queue)

    async def get_rate_limit(self, queue: str) -> QueueRateLimit | None:
        """The queue's limit, or ``None`` (also for a hand-written value that is not an integer)."""
        return await self._rate_limits.get_rate_limit(queue)

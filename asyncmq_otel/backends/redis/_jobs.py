"""The jobs of :class:`RedisBackend`: storing, claiming, settling, renewing, reaping, queue control.

Every transition is one Lua script on the queue's slot, called with the queue's epoch.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, PayloadTooLarge
from ...jobs import DLQ_REASONS, check_job_id
from ..base import (
    CancelStatus,
    ClaimedJob,
    ClaimReply,
    EnqueueItem,
    EnqueueReply,
    ErrorInfo,
    ReapReply,
    RenewStatus,
    SettleReply,
)
from . import _scripts
from ._batch import CompleteBatcher, PendingComplete
from ._connection import AsyncClient
from ._decode import (
    claimed_attempts,
    decode_batch_settle,
    decode_settle,
    decode_stored,
    decode_values,
    dumps,
    loads,
)
from ._events import hint

if TYPE_CHECKING:
    from ._events import EventChannel
    from ._flows import FlowStore
    from ._store import Store

__all__ = ["JobStore"]

_PROMOTE_LIMIT = 100
_REAP_LIMIT = 100
_BULK_CHUNK = 500  # jobs per enqueue script call: long enough to amortise, short enough not to stall Redis
_PRIORITY_BOUND = 500  # |priority| past this would lose FIFO precision in the ready score (2^44 per step)

_Prepared = tuple[
    str, str, int, str
]  # job id, payload, delay in ms, '<delay_ms>,<priority>,<ttl_ms>,<nonce>'


def _envelope_priority_ttl(payload: str) -> tuple[object, object]:
    """The envelope's ``priority`` (5 when absent) and ``ttl``.

    A payload that is not a JSON object gives ``(5, None)``: it is stored as is, and the worker
    dead-letters it as malformed_payload.
    """
    try:
        envelope = loads(payload)
    except (ValueError, RecursionError):  # a malformed payload is stored as is (see above)
        return 5, None
    if not isinstance(envelope, dict):
        return 5, None
    return envelope.get("priority", 5), envelope.get("ttl")


class JobStore:
    """The job transitions of :class:`RedisBackend`: store, claim, settle, renew, reap, pause, cancel."""

    def __init__(self, store: Store, flows: FlowStore, events: EventChannel) -> None:
        self._store = store
        self._flows = flows
        self._events = events
        self.keys = store.keys
        self.connections = store.connections
        self._limits = store.limits
        self._completions = CompleteBatcher(self._complete_batch)
        self._reap_clock: float | None = None  # see reap()

    # -- producer -----------------------------------------------------------------------------------
    def _item_args(self, item: EnqueueItem, call_nonce: str, index: int) -> _Prepared:
        """``(id, payload, delay_ms, '<delay_ms>,<priority>,<ttl_ms>,<nonce>')`` after the local checks.

        Priority and TTL come from the item when the producer set them, else from the payload.
        """
        check_job_id(item.job_id)
        payload = item.payload
        # the size in bytes: the length itself for ASCII text (the usual case), no encoding needed
        size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        if size > self._limits.max_payload_bytes:
            raise PayloadTooLarge(size, self._limits.max_payload_bytes)
        priority: object = item.priority
        ttl: object = item.ttl
        if priority is None:
            priority, ttl = _envelope_priority_ttl(payload)
        if type(priority) is not int:
            priority = 5 if not isinstance(priority, int) or isinstance(priority, bool) else int(priority)
        if priority != 5:  # noqa: PLR2004 - the default priority
            priority = max(-_PRIORITY_BOUND, min(_PRIORITY_BOUND, priority))
        ttl_ms = ""
        if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and math.isfinite(ttl):
            ttl_ms = str(round(ttl * 1000))
        delay = item.delay
        delay_ms = _scripts.ms(delay) if delay else 0
        # without a caller's nonce, one per item of this call: a re-send of the call replays,
        # another call (or the same id twice in one batch) is a duplicate
        nonce = item.nonce or f"{call_nonce}.{index}"
        return item.job_id, payload, delay_ms, f"{delay_ms},{priority},{ttl_ms},{nonce}"

    async def enqueue(self, queue: str, item: EnqueueItem) -> EnqueueReply:
        """Store one job (idempotent by id and nonce)."""
        return (await self.enqueue_bulk(queue, [item]))[0]

    async def enqueue_bulk(self, queue: str, items: Sequence[EnqueueItem]) -> list[EnqueueReply]:
        """Store several jobs in one round trip (script calls of up to 500 jobs, pipelined)."""
        if any(item.depends_on for item in items):  # parents are checked and linked first
            return await self._flows.add_flow([(queue, item) for item in items])
        keys = self.keys.queue(queue)
        # a nonce of the call only for items without their own (Queue gives every item one)
        call_nonce = "" if all(item.nonce for item in items) else os.urandom(16).hex()
        prepared = [self._item_args(item, call_nonce, index) for index, item in enumerate(items)]
        if not prepared:
            return []
        chunks = [prepared[start : start + _BULK_CHUNK] for start in range(0, len(prepared), _BULK_CHUNK)]
        calls = []
        for chunk in chunks:
            script_keys = [keys.meta, keys.ready, keys.delayed, keys.signal]
            args: list[Any] = [self._limits.max_payload_bytes]
            for job_id, payload, _delay, spec in chunk:
                script_keys.append(keys.job(job_id))
                args += (payload, spec)
            calls.append((script_keys, args))
        # chunks already stored replay by nonce if a data loss makes the store send them again
        replies = await self._store.transitions(keys, "enqueue", calls)
        return self._enqueue_replies(chunks, replies)

    def _enqueue_replies(
        self, chunks: Sequence[Sequence[_Prepared]], replies: Sequence[Any]
    ) -> list[EnqueueReply]:
        """One reply per job: jobs the script did not list were stored now (state and times follow)."""
        out: list[EnqueueReply] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if reply[0] == b"TOO_LARGE":  # only when max_payload_bytes differs between producers
                raise PayloadTooLarge(int(reply[2]), self._limits.max_payload_bytes)
            if reply[0] == b"NOT_A_HASH":  # another program wrote over the key: nothing was stored
                job_id = chunk[int(reply[1]) - 1][0]
                raise BackendError(
                    f"the key of job {job_id!r} holds another Redis type, not a job hash; nothing of "
                    "this batch was stored (delete the key or use another id)"
                )
            now = int(reply[1])
            held = {int(other[0]): other for other in reply[2]}
            for index, (job_id, _payload, delay_ms, _spec) in enumerate(chunk, start=1):
                other = held.get(index)
                if other is None:  # stored now
                    state = "delayed" if delay_ms > 0 else "waiting"
                    out.append(
                        EnqueueReply(
                            job_id,
                            state,
                            duplicate=False,
                            enqueued_at=now / 1000.0,
                            eligible_at=(now + delay_ms) / 1000.0,
                        )
                    )
                else:
                    _index, code, state_bytes, enqueued_at, eligible_at = other
                    out.append(
                        EnqueueReply(
                            job_id,
                            _scripts.text(state_bytes),
                            code == b"DUPLICATE",
                            int(enqueued_at) / 1000.0,
                            int(eligible_at) / 1000.0,
                        )
                    )
        return out

    # -- worker -------------------------------------------------------------------------------------
    async def claim(self, queue: str, worker_id: str, count: int, lease: float) -> ClaimReply:
        """Promote due delayed jobs, then move up to ``count`` ready jobs to ``active`` under a lease."""
        keys = self.keys.queue(queue)
        nonce = uuid.uuid4().hex
        reply = await self._store.transition(
            keys,
            "claim",
            [keys.meta, keys.ready, keys.delayed, keys.leases, keys.signal, keys.claim(nonce), keys.rate],
            [worker_id, max(count, 0), max(_scripts.ms(lease), 1), nonce, _PROMOTE_LIMIT],
        )
        code, now = reply[0], int(reply[1]) / 1000.0
        if code == b"PAUSED":
            return ClaimReply([], paused=True, now=now)
        if code == b"EMPTY":
            wait = int(reply[2])
            return ClaimReply([], next_due_in=None if wait < 0 else wait / 1000.0, now=now)
        if code == b"THROTTLED":  # the queue's shared rate limit has no token left
            return ClaimReply([], now=now, throttled_for=int(reply[2]) / 1000.0)
        if not int(reply[3]):  # a replayed claim: the values are as stored after it
            return ClaimReply(
                [
                    ClaimedJob.from_fields(decode_values(queue, _scripts.text(job_id), values), now)
                    for job_id, values in reply[2]
                ],
                now=now,
            )
        jobs = []
        for index, (job_id, values) in enumerate(reply[2]):
            # the values were read before the claim wrote; apply what it wrote, as the script did
            overlay = {
                "state": "active",
                "token": f"{nonce}.{index}",
                "owner": worker_id,
                "attempts": claimed_attempts(values[2]),
                "cancel_requested": False,
            }
            raw = decode_values(queue, job_id.decode("utf-8", "replace"), values, overlay)
            jobs.append(ClaimedJob.from_fields(raw, now))
        cut = int(reply[4])  # the shared rate limit cut the claim short: ms until a token frees
        return ClaimReply(jobs, now=now, throttled_for=None if cut < 0 else cut / 1000.0)

    async def wait_for_work(self, queue: str, timeout: float) -> bool:
        """``BLPOP`` a wake token on the blocking connection, in slices of at most ``block_timeout``."""
        keys = self.keys.queue(queue)
        self._store.hints.ensure_reader()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                popped = await self.connections.run(lambda client: client.lpop(keys.signal))
                return popped is not None
            block = max(min(remaining, self._limits.block_timeout), 0.01)

            async def pop(client: AsyncClient, block: float = block) -> Any:  # noqa: ANN401 - RESP
                return await client.blpop([keys.signal], timeout=block)

            got = await self.connections.run(pop, blocking=True)
            if got:
                return True
            if deadline - time.monotonic() <= 0.005:  # noqa: PLR2004 - BLPOP rounds to its clock tick
                return False

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
        """``active`` → ``completed`` with the JSON-encoded ``result`` (the job too, if ``want_job``).

        Concurrent completions of a queue share one script call (each job its own fenced transition).
        """
        return await self._completions.submit(
            queue, job_id, token, result, want_job=want_job, last_span=last_span or ""
        )

    async def _complete_batch(
        self, queue: str, batch: list[PendingComplete]
    ) -> list[SettleReply | Exception]:
        """One ``complete`` script call for a batch of completions; one reply per job, in order."""
        keys = self.keys.queue(queue)
        script_keys = [keys.meta, keys.leases, keys.completed]
        args: list[Any] = [
            self._limits.max_result_bytes,
            self._limits.keep_completed,
            _scripts.ms(self._limits.keep_completed_age),
        ]
        for entry in batch:
            script_keys.append(keys.job(entry.job_id))
            args += (entry.token, entry.result, "1" if entry.want_job else "", entry.last_span)
        reply = await self._store.transition(keys, "complete", script_keys, args)
        if reply[0] != b"BATCH":
            raise BackendError(f"unexpected reply {reply!r} from Redis")
        return [decode_batch_settle(queue, each) for each in reply[1:]]

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
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "retry",
            [keys.meta, keys.job(job_id), keys.leases, keys.ready, keys.delayed, keys.signal],
            [
                token,
                job_id,
                _scripts.ms(backoff) if backoff > 0 else 0,
                dumps(error.to_dict()),
                prev_attempt or "",
            ],
        )
        return decode_settle(queue, reply)

    async def fail(
        self, queue: str, job_id: str, token: str, reason: str, error: ErrorInfo | None = None
    ) -> SettleReply:
        """``active`` → DLQ with ``reason`` (state ``expired`` for reason ``expired``, else ``failed``)."""
        if reason not in DLQ_REASONS:
            raise ValueError(f"unknown DLQ reason {reason!r}; one of {sorted(DLQ_REASONS)}")
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "fail",
            [keys.meta, keys.job(job_id), keys.leases, keys.dlq, keys.failed, keys.expired],
            [
                token,
                job_id,
                reason,
                "" if error is None else dumps(error.to_dict()),
                self._limits.keep_failed,
                _scripts.ms(self._limits.keep_failed_age),
            ],
        )
        return decode_settle(queue, reply)

    async def defer(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``delayed`` until its ``delay_until``, the claim's attempt given back."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "defer",
            [keys.meta, keys.job(job_id), keys.leases, keys.ready, keys.delayed, keys.signal],
            [token, job_id],
        )
        return decode_settle(queue, reply)

    async def settle_cancelled(self, queue: str, job_id: str, token: str) -> SettleReply:
        """``active`` → ``cancelled``."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "settle_cancelled",
            [keys.meta, keys.job(job_id), keys.leases, keys.cancelled],
            [token, job_id, self._limits.keep_completed, _scripts.ms(self._limits.keep_completed_age)],
        )
        return decode_settle(queue, reply)

    async def requeue(self, queue: str, job_id: str, token: str, max_interrupts: int) -> SettleReply:
        """``active`` → ``waiting`` at its original place, ``interrupts`` + 1; past the limit → DLQ."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "requeue",
            [
                keys.meta,
                keys.job(job_id),
                keys.leases,
                keys.ready,
                keys.signal,
                keys.dlq,
                keys.failed,
                keys.expired,
            ],
            [
                token,
                job_id,
                max_interrupts,
                self._limits.keep_failed,
                _scripts.ms(self._limits.keep_failed_age),
            ],
        )
        return decode_settle(queue, reply)

    async def report_progress(self, queue: str, job_id: str, token: str, progress: float) -> SettleReply:
        """Store the running job's progress (fenced like a settle)."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys, "progress", [keys.meta, keys.job(job_id)], [token, repr(float(progress))]
        )
        return decode_settle(queue, reply)

    async def renew(self, queue: str, leases: Mapping[str, str], lease: float) -> dict[str, RenewStatus]:
        """Extend every lease whose token still matches, even past its deadline."""
        if not leases:
            return {}
        keys = self.keys.queue(queue)
        ids = list(leases)
        args: list[Any] = [max(_scripts.ms(lease), 1)]
        for job_id in ids:
            args += [job_id, leases[job_id]]
        reply = await self._store.transition(keys, "renew", [keys.meta, keys.leases], args)
        return {
            job_id: RenewStatus(_scripts.text(status)) for job_id, status in zip(ids, reply[1], strict=True)
        }

    async def reap(
        self, queue: str, worker_id: str, max_stalls: int, hold: float, max_delay: float | None = None
    ) -> ReapReply:
        """Take or keep the reaper role for ``hold`` seconds, then recover up to 100 expired leases.

        With ``max_delay``, the call carries when it was sent, in Redis time (estimated from the last
        reap's reply and the local monotonic clock, so worker clock skew does not matter); a call that
        arrives later than that revokes nothing and the reply says ``late``.
        """
        keys = self.keys.queue(queue)
        sent_at: int | str = ""
        if max_delay is not None and self._reap_clock is not None:
            sent_at = round(self._reap_clock + time.monotonic() * 1000)
        flow_dead = await self._flows.flow_pass(keys, queue)  # first, so the reap's reply is never delayed
        reply = await self._store.transition(
            keys,
            "reap",
            [
                keys.meta,
                keys.leases,
                keys.ready,
                keys.signal,
                keys.reaper,
                keys.dlq,
                keys.failed,
                keys.expired,
            ],
            [
                worker_id,
                max(_scripts.ms(hold), 1),
                max_stalls,
                _REAP_LIMIT,
                self._limits.keep_failed,
                _scripts.ms(self._limits.keep_failed_age),
                sent_at,
                _scripts.ms(max_delay) if max_delay is not None else "",
            ],
            retry=False,  # outage grace: a reap is never replayed across a reconnect
        )
        # Redis TIME minus the local monotonic clock, in ms (early by half a round trip: a safe side)
        self._reap_clock = int(reply[-1]) - time.monotonic() * 1000
        if reply[0] == b"LATE":
            return ReapReply(is_reaper=False, late=True)
        if reply[0] == b"NOT_REAPER":
            self._flows.reapers.discard(queue)
            return ReapReply(is_reaper=False, dead=flow_dead)
        self._flows.reapers.add(queue)
        return ReapReply(
            is_reaper=True,
            stalled=decode_stored(queue, reply[2]),
            dead=decode_stored(queue, reply[3]) + flow_dead,
            more=bool(reply[1]),
        )

    # -- queue control ------------------------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Stop claims on the queue (jobs can still be enqueued)."""
        keys = self.keys.queue(queue)
        await self._store.transition(keys, "control", [keys.meta, keys.ready, keys.signal], ["pause"])

    async def resume(self, queue: str) -> None:
        """Allow claims again and wake idle workers, one token per ready job."""
        keys = self.keys.queue(queue)
        await self._store.transition(keys, "control", [keys.meta, keys.ready, keys.signal], ["resume"])

    async def is_queue_paused(self, queue: str) -> bool:
        """Whether the queue is paused."""
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)
        return bool(await self.connections.run(lambda client: client.hget(keys.meta, "paused")) == b"1")

    async def cancel(self, queue: str, job_id: str) -> CancelStatus:
        """Cancel a queued job, or flag a running one and tell its owner at once (cancel hint)."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "cancel",
            [keys.meta, keys.job(job_id), keys.ready, keys.delayed, keys.cancelled],
            [job_id, self._limits.keep_completed, _scripts.ms(self._limits.keep_completed_age)],
        )
        code = reply[0]
        if code == b"RUNNING":
            self._store.hints.notify(queue, job_id)
            await self._events.publish_event(hint(queue, job_id, self._store.origin), channel="control")
            return CancelStatus.RUNNING
        if code == b"OK":
            return CancelStatus.CANCELLED
        if code == b"FINISHED":
            return CancelStatus.FINISHED
        return CancelStatus.GONE

"""Inspection and admin of :class:`RedisBackend`: jobs by id and state, counts, the DLQ, cleaning.

Every read pipelines its commands into one round trip; deletions go page by page, so neither the
queue size nor the retention bounds how long one script holds Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...jobs import TERMINAL_STATES, JobState, check_job_id
from ..base import QueueStats, StoredJob
from . import _scripts
from ._connection import AsyncClient
from ._decode import JOB_FIELDS, decode_values, not_a_hash
from ._keys import QueueKeys

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["Admin"]

_DELETE_PAGE = 500
_STATES = tuple(state.value for state in JobState)


class Admin:
    """Reads and clean-ups over one queue's keys (and, for ``list_queues``, the prefix's registry)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.keys = store.keys
        self.connections = store.connections

    async def get_job(self, queue: str, job_id: str) -> StoredJob | None:
        """The stored job with its state, or ``None``."""
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - the values, or the error of a key of another type
            pipe = client.pipeline(transaction=False)
            pipe.hmget(keys.job(job_id), JOB_FIELDS)
            return (await pipe.execute(raise_on_error=False))[0]

        values = await self.connections.run(op)
        if isinstance(values, ResponseError):  # written over by another program: shown, not raised
            return StoredJob.from_fields(queue, not_a_hash(queue, job_id))
        if values[JOB_FIELDS.index("state")] == b"staged":  # its flow is not committed: not stored yet
            return None
        if not any(v is not None for v in values):
            return None
        return StoredJob.from_fields(queue, decode_values(queue, job_id, values))

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs per state: one ``ZCARD`` per state index, in one pipeline."""
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)

        async def op(client: AsyncClient) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for state in _STATES:
                pipe.zcard(keys.state_index(state))
            found: list[int] = await pipe.execute()
            return found

        return dict(zip(_STATES, await self.connections.run(op), strict=True))

    async def _page(
        self, queue: str, index: str, offset: int, limit: int, *, newest_first: bool
    ) -> list[StoredJob]:
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)
        if limit <= 0 or offset < 0:
            return []
        end = offset + limit - 1

        async def op(client: AsyncClient) -> list[StoredJob]:
            if newest_first:
                ids = await client.zrevrange(index, offset, end)
            else:
                ids = await client.zrange(index, offset, end)
            if not ids:
                return []
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(_scripts.text(job_id)), JOB_FIELDS)
            # a key of another type answers an error for that job alone (shown as malformed)
            found = await pipe.execute(raise_on_error=False)
            return [
                StoredJob.from_fields(
                    queue,
                    not_a_hash(queue, _scripts.text(job_id))
                    if isinstance(values, ResponseError)
                    else decode_values(queue, _scripts.text(job_id), values),
                )
                for job_id, values in zip(ids, found, strict=True)
                if isinstance(values, ResponseError) or any(v is not None for v in values)
            ]

        return await self.connections.run(op)

    async def list_jobs(self, queue: str, state: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of jobs in ``state``: ready order, due order, lease order, or newest first when finished."""
        wanted = JobState(state)
        index = self.keys.queue(queue).state_index(wanted.value)
        return await self._page(queue, index, offset, limit, newest_first=wanted in TERMINAL_STATES)

    async def list_dlq(self, queue: str, offset: int = 0, limit: int = 100) -> list[StoredJob]:
        """A page of dead-lettered jobs, newest first, with ``dlq_reason``."""
        return await self._page(queue, self.keys.queue(queue).dlq, offset, limit, newest_first=True)

    async def retry_dead(self, queue: str, job_id: str) -> bool:
        """Move a dead-lettered job back to ``waiting`` (at the back) with fresh counters."""
        keys = self.keys.queue(queue)
        reply = await self._store.transition(
            keys,
            "retry_dead",
            [keys.meta, keys.job(job_id), keys.ready, keys.signal, keys.dlq, keys.failed, keys.expired],
            [job_id],
        )
        return bool(reply[0] == b"OK")

    async def _delete_finished(self, keys: QueueKeys, indexes: Sequence[str], older_than_ms: str) -> int:
        deleted = 0
        while True:
            reply = await self._store.transition(
                keys, "delete_finished", [keys.meta, *indexes], [older_than_ms, _DELETE_PAGE]
            )
            deleted += int(reply[1])
            if not int(reply[2]):
                return deleted

    async def purge_dlq(self, queue: str) -> int:
        """Delete every dead-lettered job, 500 per script call; return how many."""
        keys = self.keys.queue(queue)
        return await self._delete_finished(keys, [keys.dlq, keys.failed, keys.expired], "")

    async def clean(self, queue: str, state: str, older_than: float) -> int:
        """Delete jobs in a finished ``state`` that finished at least ``older_than`` seconds ago."""
        wanted = JobState(state)
        if wanted not in TERMINAL_STATES:
            raise ValueError(
                f"clean takes a finished state (completed, failed, expired, cancelled), not {state!r}"
            )
        keys = self.keys.queue(queue)
        indexes = [keys.state_index(wanted.value)]
        if wanted in {JobState.FAILED, JobState.EXPIRED}:
            indexes.append(keys.dlq)
        return await self._delete_finished(keys, indexes, str(max(round(older_than * 1000), 0)))

    async def queue_stats(self, queue: str) -> QueueStats:
        """Depths, the age of the job at the head of the ready order, and the paused flag (one script)."""
        keys = self.keys.queue(queue)
        await self._store.epoch(keys)
        reply = await self.connections.run(
            lambda client: _scripts.call(
                client, "stats", [keys.meta, keys.ready, keys.delayed, keys.leases, keys.dlq], []
            )
        )
        _, now, ready, delayed, active, dead, paused, eligible = reply
        age = 0.0 if int(eligible) < 0 else max((int(now) - int(eligible)) / 1000.0, 0.0)
        blocked = await self._blocked_stats(keys, int(now))  # flows: one more read, at sampling pace only
        return QueueStats(int(ready), int(delayed), int(active), int(dead), age, bool(int(paused)), *blocked)

    async def list_queues(self) -> list[str]:
        """Every queue registered under the prefix."""
        return await self._store.queue_names()

    async def has_queue(self, queue: str) -> bool:
        """Whether the queue is registered or has its meta hash; reads only (no epoch is minted)."""
        keys = self.keys.queue(queue)

        async def op(client: AsyncClient) -> bool:
            registered = await client.zscore(self.keys.queues, queue)
            return registered is not None or bool(await client.exists(keys.meta))

        return await self.connections.run(op)

    async def queues_with_job(self, job_id: str) -> list[str]:
        """The registered queues holding a job with this id (one ``EXISTS`` per queue, pipelined).

        An optional capability: ``asyncmq-otel job show ID`` uses it to find the job's queue, and
        asks every queue in turn on a backend without it.
        """
        check_job_id(job_id)
        names = await self.list_queues()
        if not names:
            return []

        async def op(client: AsyncClient) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.exists(self.keys.queue(name).job(job_id))
            found: list[int] = await pipe.execute()
            return found

        return [name for name, hit in zip(names, await self.connections.run(op), strict=True) if hit]

    async def _blocked_stats(self, keys: QueueKeys, now_ms: int) -> tuple[int, float]:
        """Blocked jobs of a queue and the age in seconds of the longest-blocked one (0 when none)."""

        async def op(client: AsyncClient) -> tuple[int, list[tuple[bytes, float]]]:
            pipe = client.pipeline(transaction=False)
            pipe.zcard(keys.blocked)
            pipe.zrange(keys.blocked, 0, 0, withscores=True)
            count, oldest = await pipe.execute()
            return int(count), list(oldest)

        count, oldest = await self.connections.run(op)
        return count, max((now_ms - oldest[0][1]) / 1000, 0.0) if oldest else 0.0

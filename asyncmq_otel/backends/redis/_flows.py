"""Job dependencies on Redis: storing jobs with parents, flows, the flow graph and the outbox pass.

A parent and its child in one queue share a hash tag, so the script that settles the parent
releases or dead-letters the child in the same step. A child in another queue lives in another
slot: the settling script records ``<outcome>|<parent ref>|<child ref>`` in the parent queue's
``outbox`` (atomically with the settle), and the reaper's pass delivers each entry to the child's
queue with ``flow_deliver`` (idempotent) and only then removes it. A crash between the two steps
leaves the entry in place, so the next pass delivers it again: no child stays blocked.

Storing a child whose parent is in another queue links it there first (``flow_link``), then
stores it; a parent that finishes in between leaves an outbox entry that waits for the child.

A flow across queues is stored in two phases (a flow in one queue is one script call, atomic
already). Phase 1 stores each queue's part ``staged``: in the queue's ``staged`` ZSET scored by a
deadline, in no state index, so no worker, count or listing sees it, and outcomes of parents wait
in the outbox. The commit point is the commit record ``flow:<txn>`` in the first queue's hash tag
(``flow_decide``: the first of ``commit`` and ``abort`` wins). Phase 2 shows each part
(``flow_commit``). A producer that dies leaves staged parts past their deadline: the reaper rolls
them forward when the record says ``commit``, else writes ``abort`` and deletes them
(``flow_rollback``), with their links in parents of other queues.

Flow ids (the rule is in ``flows.py``) are the ``flow_id`` field of a job's hash, written by
``flow_enqueue`` and stamped on parents by it or ``flow_link``; ``complete`` writes ``last_span``,
which :meth:`FlowStore.last_spans` reads for a child's span links.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, JobArgumentError, PayloadTooLarge
from ..base import EnqueueItem, EnqueueReply, FlowNode, StoredJob
from . import _scripts
from ._decode import JOB_FIELDS, decode_values, loads

if TYPE_CHECKING:
    from ._connection import AsyncClient
    from ._keys import QueueKeys
    from ._store import Store

__all__ = ["OUTBOX_PAGE", "FlowStore"]

OUTBOX_PAGE = 100  # entries delivered per queue per reaper pass: the pass stays short
_ORPHAN_GRACE_MS = (
    10 * 60 * 1000
)  # an entry for a child never stored (its producer died) is dropped after this
_MAX_FLOW_NODES = 10_000
_REPORT_PAGE = 100
_STAGED_PAGE = 100  # staged jobs past their deadline resolved per queue per reaper pass
_DECISION_TTL_MS = 7 * 24 * 3600 * 1000  # a commit record outlives every staged part of its flow


class FlowStore:
    """The flows of :class:`RedisBackend`: jobs with parents, the flow graph and the reaper's outbox pass."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.keys = store.keys
        self.connections = store.connections
        self._limits = store.limits
        #: Seconds a part of a flow across queues may stay staged before a reaper resolves it; a producer
        #: slower than this between its first part and its commit record finds its flow rolled back.
        self.flow_stage_timeout = 60.0
        #: The queues whose reaper role this backend held at its last reap (their outbox pass is due).
        self.reapers: set[str] = set()

    async def add_flow(self, items: Sequence[tuple[str, EnqueueItem]]) -> list[EnqueueReply]:
        """Store jobs with parents, parents first, all or none: one script call per run of one queue.

        Every parent outside ``items`` is checked to exist before anything is written. Jobs of one
        queue are stored by one script; jobs of several queues in two phases (see the module).

        Raises:
            BackendError: a job's key holds another Redis type, or a reaper rolled the flow back
                (the producer took longer than ``flow_stage_timeout``); nothing was stored.

        """
        for _queue, item in items:
            size = len(item.payload.encode("utf-8"))
            if size > self._limits.max_payload_bytes:
                raise PayloadTooLarge(size, self._limits.max_payload_bytes)
        ours = {(queue, item.job_id) for queue, item in items}
        outside = {parent for _queue, item in items for parent in item.depends_on if parent not in ours}
        for parent_queue, parent_id in sorted(outside):
            key = self.keys.queue(parent_queue).job(parent_id)

            async def exists(client: AsyncClient, key: str = key) -> int:
                found: int = await client.exists(key)
                return found

            if not await self.connections.run(exists):
                raise JobArgumentError(
                    "depends_on",
                    f"parent job {parent_id!r} does not exist in queue {parent_queue!r}; "
                    "enqueue the parent first (or use FlowProducer.add_flow for a whole graph)",
                )
        runs: list[tuple[str, list[EnqueueItem]]] = []
        for queue, item in items:
            if runs and runs[-1][0] == queue:
                runs[-1][1].append(item)
            else:
                runs.append((queue, [item]))
        if len(runs) == 1:  # one queue: one script, atomic already
            return await self._store_run(*runs[0])
        return await self._add_staged(runs)

    async def _add_staged(self, runs: Sequence[tuple[str, list[EnqueueItem]]]) -> list[EnqueueReply]:
        """The two phases of a flow across queues (see the module)."""
        txn = f"{runs[0][0]}/{os.urandom(12).hex()}"
        staged: dict[str, list[str]] = {}  # queue -> ids this call staged
        replies: list[EnqueueReply] = []
        try:
            for queue, run in runs:
                stored = await self._store_run(queue, run, txn)
                staged.setdefault(queue, []).extend(reply.job_id for reply in stored if not reply.duplicate)
                replies += stored
        except Exception as error:
            ours = True
            with contextlib.suppress(Exception):  # the error that stopped us is the one to raise
                ours = (await self._decide(txn, "abort"))[1]
                await self._roll(txn, staged, forward=False)
            if not ours:  # a reaper aborted first: a parent of this flow it deleted reads as missing
                raise self._rolled_back() from error
            raise
        if (await self._decide(txn, "commit"))[0] != "commit":
            await self._roll(txn, staged, forward=False)
            raise self._rolled_back()
        await self._roll(txn, staged, forward=True)
        await self.connections.run(lambda client: client.delete(self._decision_key(txn)))
        return replies

    def _rolled_back(self) -> BackendError:
        return BackendError(
            f"a reaper rolled this flow back: storing it took longer than flow_stage_timeout "
            f"({self.flow_stage_timeout:g} s); nothing of it was stored, add it again"
        )

    def _decision_key(self, txn: str) -> str:
        queue, _, txn_id = txn.partition("/")
        return self.keys.queue(queue).flow(txn_id)

    async def _decide(self, txn: str, wanted: str) -> tuple[str, bool]:
        """Write ``wanted`` as the commit record unless one is there; the record, and whether we wrote it."""
        key = self._decision_key(txn)

        async def op(client: AsyncClient) -> Any:  # noqa: ANN401 - RESP
            return await _scripts.call(client, "flow_decide", [key], [wanted, _DECISION_TTL_MS])

        decision, wrote = await self.connections.run(op)
        return _scripts.text(decision), bool(wrote)

    async def _roll(self, txn: str, staged: dict[str, list[str]], *, forward: bool) -> None:
        """Show (``forward``) or delete the staged jobs ``staged`` (queue -> ids) of flow ``txn``."""
        for queue, ids in staged.items():
            if not ids:
                continue
            keys = self.keys.queue(queue)
            if forward:
                await self._store.transition(keys, "flow_commit", [keys.meta, keys.staged], [txn, *ids])
                continue
            await self._unlink_elsewhere(keys, txn, ids)
            await self._store.transition(
                keys, "flow_rollback", [keys.meta, keys.staged, keys.outbox], [txn, *ids]
            )

    async def _unlink_elsewhere(self, keys: QueueKeys, txn: str, ids: Sequence[str]) -> None:
        """Remove staged jobs' links (and deferred outcomes) in parents of other queues, before them.

        Each step is idempotent and touches one key: a crash in between leaves the staged job, whose
        rollback is then done again.
        """

        async def read(client: AsyncClient) -> list[list[bytes | None]]:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), ["state", "flow_txn", "parents"])
            found: list[Any] = await pipe.execute(raise_on_error=False)
            return [values if isinstance(values, list) else [None, None, None] for values in found]

        for job_id, (state, owner, parents) in zip(ids, await self.connections.run(read), strict=True):
            if state != b"staged" or _scripts.text(owner or b"") != txn:
                continue
            for ref in _scripts.text(parents or b"").split(","):
                if ref and ref.partition("/")[0] != keys.name:  # flow_rollback unlinks those of its queue
                    await self._unlink(f"{keys.name}/{job_id}", ref)

    async def _unlink(self, child: str, parent: str) -> None:
        """Remove the link to ``child`` in ``parent`` (refs) and the outcomes deferred for it there."""
        parent_queue, _, parent_id = parent.partition("/")
        other = self.keys.queue(parent_queue)
        deferred = [f"{outcome}|{parent}|{child}" for outcome in ("done", "dead", "retried")]

        async def op(client: AsyncClient) -> None:
            await client.hdel(other.children(parent_id), child)
            await client.zrem(other.outbox, *deferred)

        await self.connections.run(op)

    async def _resolve_staged(self, keys: QueueKeys) -> None:
        """Roll forward or back the staged jobs of a queue past their deadline (the reaper's pass)."""
        reply = await self._store.transition(keys, "flow_staged", [keys.meta, keys.staged], [_STAGED_PAGE])
        by_txn: dict[str, list[str]] = collections.defaultdict(list)
        for job_id, txn in reply[1]:
            by_txn[_scripts.text(txn)].append(_scripts.text(job_id))
        for txn, ids in by_txn.items():
            forward = bool(txn) and (await self._decide(txn, "abort"))[0] == "commit"
            await self._roll(txn, {keys.name: ids}, forward=forward)

    async def _store_run(self, queue: str, items: Sequence[EnqueueItem], txn: str = "") -> list[EnqueueReply]:
        keys = self.keys.queue(queue)
        script_keys = [keys.meta, keys.ready, keys.delayed, keys.signal, keys.blocked, keys.dlq, keys.failed]
        stage = f",{txn},{max(int(self.flow_stage_timeout * 1000), 1)}" if txn else ""
        args: list[Any] = [f"{self._limits.max_payload_bytes}{stage}"]
        nonce = f"{time.time_ns():x}"
        linked: list[
            tuple[str, str]
        ] = []  # (child, parent) links this call added: undone if nothing is stored
        for index, item in enumerate(items):
            parents = []
            flow = item.flow_id or ""  # empty: the script takes the first parent's (flows.py)
            for number, (parent_queue, parent_id) in enumerate(item.depends_on):
                found = ""
                if parent_queue != queue:
                    child = f"{queue}/{item.job_id}"
                    try:
                        found, parent_flow, new = await self._link(parent_queue, parent_id, child, txn)
                    except JobArgumentError:
                        await self._unlink_all(linked)
                        raise
                    if new:
                        linked.append((child, f"{parent_queue}/{parent_id}"))
                    flow = flow or (parent_flow if number == 0 else "")
                parents.append(f"{parent_queue}/{parent_id}={found}")
            priority = item.priority if item.priority is not None else 5
            ttl_ms = "" if item.ttl is None else max(int(item.ttl * 1000), 1)
            delay_ms = max(int(item.delay * 1000 + 0.999), 0) if item.delay else 0
            job_nonce = item.nonce or f"{nonce}.{index}"
            spec = f"{delay_ms},{priority},{ttl_ms},{item.on_parent_failure},{flow},{job_nonce}"
            script_keys.append(keys.job(item.job_id))
            args += (item.payload, spec, ",".join(parents))
        reply = await self._store.transition(keys, "flow_enqueue", script_keys, args)
        if reply[0] != b"OK":
            await self._unlink_all(linked)
            raise self._refusal(items, reply)
        return self._run_replies(items, reply)

    def _refusal(self, items: Sequence[EnqueueItem], reply: Any) -> Exception:  # noqa: ANN401 - RESP
        """The error of a flow_enqueue reply that stored nothing."""
        code = reply[0]
        if code == b"TOO_LARGE":
            return PayloadTooLarge(int(reply[2]), self._limits.max_payload_bytes)
        if code == b"NOT_A_HASH":  # another program wrote over the key: nothing of this call was stored
            job_id = _scripts.text(reply[2]).partition("/")[2] or items[int(reply[1]) - 1].job_id
            return BackendError(
                f"the key of job {job_id!r} holds another Redis type, not a job hash; nothing of this "
                "flow was stored (delete the key or use another id)"
            )
        if code == b"MISSING":
            parent_queue, _, parent_id = _scripts.text(reply[2]).partition("/")
            return JobArgumentError(
                "depends_on",
                f"parent job {parent_id!r} does not exist in queue {parent_queue!r}; enqueue the parent "
                "first (or use FlowProducer.add_flow for a whole graph)",
            )
        return BackendError(f"unexpected reply from flow_enqueue: {_scripts.text(code)}")

    @staticmethod
    def _run_replies(items: Sequence[EnqueueItem], reply: Any) -> list[EnqueueReply]:  # noqa: ANN401 - RESP
        """One reply per job of a flow_enqueue call that answered OK."""
        now = int(reply[1]) / 1000
        others = {int(other[0]): other for other in reply[2]}
        stored = {int(entry[0]): _scripts.text(entry[1]) for entry in reply[3]}
        out = []
        for index, item in enumerate(items, start=1):
            other = others.get(index)
            if other is not None:
                out.append(
                    EnqueueReply(
                        item.job_id,
                        _scripts.text(other[2]),
                        other[1] == b"DUPLICATE",
                        int(other[3]) / 1000,
                        int(other[4]) / 1000,
                    )
                )
                continue
            state = stored[index]
            eligible = now + item.delay if state == "delayed" else now
            out.append(
                EnqueueReply(item.job_id, state, duplicate=False, enqueued_at=now, eligible_at=eligible)
            )
        return out

    async def _unlink_all(self, linked: Sequence[tuple[str, str]]) -> None:
        """Undo the links of children a refused call did not store (best effort: a leftover is harmless)."""
        with contextlib.suppress(Exception):
            for child, parent in linked:
                await self._unlink(child, parent)

    async def _link(
        self, parent_queue: str, parent_id: str, child_ref: str, txn: str = ""
    ) -> tuple[str, str, bool]:
        """Tell a parent of another queue about its child.

        Returns what the parent is (done, dead or pending), its flow id, and whether the link is new.
        """
        keys = self.keys.queue(parent_queue)
        reply = await self._store.transition(
            keys, "flow_link", [keys.meta, keys.job(parent_id)], [parent_id, child_ref, txn]
        )
        if reply[0] == b"MISSING":
            raise JobArgumentError(
                "depends_on", f"parent job {parent_id!r} does not exist in queue {parent_queue!r}"
            )
        return _scripts.text(reply[1]), _scripts.text(reply[2]), len(reply) > 3 and reply[3] == 1  # noqa: PLR2004

    async def reconcile_flows(self, queue: str | None = None, limit: int = OUTBOX_PAGE) -> int:
        """Deliver up to ``limit`` outbox entries of ``queue`` (every queue when None); return how many.

        The reaper calls it after each reap. Each entry is applied to the child's queue first and
        removed second, so a crash in between redelivers it (``flow_deliver`` is idempotent).
        """
        delivered = 0
        for name in [queue] if queue is not None else await self._store.queue_names():
            keys = self.keys.queue(name)

            async def page(client: AsyncClient, keys: QueueKeys = keys) -> list[tuple[bytes, float]]:
                found: list[tuple[bytes, float]] = await client.zrange(
                    keys.outbox, 0, limit - 1, withscores=True
                )
                return found

            await self._resolve_staged(keys)  # first: a part rolled forward may take outcomes below
            entries = await self.connections.run(page)
            if not entries:
                continue
            now_ms = time.time() * 1000
            for raw, score in entries:
                entry = _scripts.text(raw)
                outcome, parent_ref, child_ref = entry.split("|")
                child_queue, _, child_id = child_ref.partition("/")
                child_keys = self.keys.queue(child_queue)
                reply = await self._store.transition(
                    child_keys,
                    "flow_deliver",
                    [child_keys.meta, child_keys.job(child_id)],
                    [child_id, parent_ref, outcome],
                )
                # a child not stored yet is waited for (its producer links before it stores);
                # one never stored (the producer died in between) is given up after the grace;
                # a staged one waits for its flow's commit (a rollback removes the entry)
                if reply[0] == b"STAGED" or (
                    reply[0] == b"MISSING" and now_ms - float(score) < _ORPHAN_GRACE_MS
                ):
                    continue

                async def remove(client: AsyncClient, keys: QueueKeys = keys, raw: bytes = raw) -> None:
                    await client.zrem(keys.outbox, raw)

                await self.connections.run(remove)
                delivered += 1
        return delivered

    async def flow_pass(self, keys: QueueKeys, queue: str) -> list[StoredJob]:
        """The reaper's flow work, done at the start of its next reap (so the reap's reply never waits).

        Delivers up to 100 outbox entries and returns up to 100 children dead-lettered for a parent
        since the last pass: their ``job:failed`` is due.
        """
        if queue not in self.reapers:
            return []
        await self.reconcile_flows(queue)
        return await self._drain_flow_failed(keys, queue)

    async def _drain_flow_failed(self, keys: QueueKeys, queue: str) -> list[StoredJob]:
        """Up to 100 children dead-lettered for a parent since the last call (their ``job:failed`` is due).

        The scripts that dead-letter them append their ids to ``flow_failed`` (capped); the reaper
        reports them. A reaper killed between this read and its events loses those events only.
        """

        async def op(client: AsyncClient) -> list[tuple[str, list[Any]]]:
            ids = await client.lpop(keys.flow_failed, _REPORT_PAGE) or []
            if not ids:
                return []
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(_scripts.text(job_id)), JOB_FIELDS)
            found = await pipe.execute()
            return [(_scripts.text(job_id), values) for job_id, values in zip(ids, found, strict=True)]

        return [
            StoredJob.from_fields(queue, decode_values(queue, job_id, values))
            for job_id, values in await self.connections.run(op)
            if any(value is not None for value in values)
        ]

    async def get_flow(self, queue: str, job_id: str) -> list[FlowNode] | None:
        """Every job linked to ``queue/job_id`` through parents and children (up to 10,000)."""
        start = (queue, job_id)
        seen = {start}
        work = collections.deque([start])
        nodes: list[FlowNode] = []
        while work:
            node_queue, node_id = work.popleft()
            keys = self.keys.queue(node_queue)

            async def op(client: Any, keys: QueueKeys = keys, node_id: str = node_id) -> Any:  # noqa: ANN401 - RESP
                values = await client.hmget(
                    keys.job(node_id), ["state", "parents", "payload", "dlq_reason", "flow_id"]
                )
                children = await client.hkeys(keys.children(node_id))
                return values, children

            (state, parents, payload, dlq_reason, flow_id), children = await self.connections.run(op)
            if (node_queue, node_id) == start and state in (None, b"staged"):
                return None
            if state == b"staged":  # a job of a flow not committed yet: not shown, as if not stored
                continue
            parent_refs = [ref for ref in _scripts.text(parents or b"").split(",") if ref]
            nodes.append(
                FlowNode(
                    queue=node_queue,
                    id=node_id,
                    state=None if state is None else _scripts.text(state),
                    task=_task_of(payload),
                    parents=tuple((ref.partition("/")[0], ref.partition("/")[2]) for ref in parent_refs),
                    dlq_reason=_scripts.text(dlq_reason) if dlq_reason else None,
                    flow_id=_scripts.text(flow_id) if flow_id else None,
                )
            )
            for ref in [*parent_refs, *(_scripts.text(child) for child in children)]:
                other_queue, _, other_id = ref.partition("/")
                if (other_queue, other_id) not in seen and len(seen) < _MAX_FLOW_NODES:
                    seen.add((other_queue, other_id))
                    work.append((other_queue, other_id))
        return sorted(nodes, key=lambda node: (node.queue, node.id))

    async def last_spans(self, parents: Sequence[tuple[str, str]]) -> list[str | None]:
        """The ``last_span`` each ``(queue, job_id)`` stored at completion (``None``: none, or gone)."""
        keys = [self.keys.queue(parent_queue).job(parent_id) for parent_queue, parent_id in parents]

        async def op(client: AsyncClient) -> list[bytes | None]:
            pipe = client.pipeline(transaction=False)  # parents may live in other slots: one command each
            for key in keys:
                pipe.hget(key, "last_span")
            found: list[bytes | None] = await pipe.execute(raise_on_error=False)
            return found

        # a key another program wrote over (an error reply) reads as no span: a missing link, not a failed job
        return [
            _scripts.text(value) if isinstance(value, bytes) else None
            for value in await self.connections.run(op)
        ]


def _task_of(payload: bytes | None) -> str | None:
    if not payload:
        return None
    try:
        envelope = loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    task = envelope.get("task") if isinstance(envelope, dict) else None
    return task if isinstance(task, str) else None

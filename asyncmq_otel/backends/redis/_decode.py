"""Turn a stored job hash into the raw job dict every backend returns.

The hash keeps the producer's envelope as JSON text in ``payload`` and the bookkeeping in its own
fields, times as integer milliseconds of Redis ``TIME``. ``claim`` replies a job as its id and
the values of :data:`JOB_FIELDS` as an array (hiredis, a dependency of the ``redis`` extra, parses
it in C, and packing costs Redis more than the array); the other scripts reply the values packed
into one string (see ``pack()`` in ``_fence.lua`` and :func:`unpack`). The raw job is the
envelope with the bookkeeping merged on top (seconds as floats), exactly as ``InMemoryBackend``
builds it, so ``Job.from_dict`` decodes it. A payload that is not a JSON object is never decoded
further: the job comes back as ``{id, queue, token, attempts, state, payload_error,
payload_preview}`` and the worker dead-letters it as ``malformed_payload`` (P8).
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Sequence
from typing import Any, cast

from redis.exceptions import ResponseError

from ...errors import BackendError
from ..base import RawJob, SettleReply, SettleStatus
from ._scripts import text

__all__ = [
    "JOB_FIELDS",
    "decode_batch_settle",
    "decode_job",
    "decode_jobs",
    "decode_settle",
    "decode_values",
    "loads",
    "ms_to_s",
    "unpack",
]

JOB_FIELDS = (
    "payload",
    "state",
    "attempts",
    "retries",
    "stalls",
    "interrupts",
    "token",
    "owner",
    "cancel_requested",
    "result",
    "error",
    "dlq_reason",
    "enqueued_at",
    "eligible_at",
    "delay_until",
    "expires_at",
    "finished_at",
    "progress",
    "prev_attempt",
)
"""The order of ``JOB_FIELDS`` in ``_fence.lua``: the two lists must stay equal (a test checks)."""

_PREVIEW_BYTES = 256
_ABSENT = ord("-")
Value = bytes | None


_scan = json.scanner.make_scanner(cast("Any", json.JSONDecoder()))  # the stub types the context oddly


def dumps(value: object) -> str:
    """Compact JSON for Redis (errors, events); a value JSON cannot take is written as its ``str``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def loads(data: bytes | str) -> Any:  # noqa: ANN401 - any JSON value
    """``json.loads`` for the common case of compact UTF-8 JSON, about twice as fast.

    The scanner reads one value from the start; anything else (leading or trailing whitespace, a
    byte-order mark, another encoding, invalid JSON) goes to ``json.loads``, which decides.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value, end = _scan(text, 0)
    except (StopIteration, UnicodeDecodeError):
        return json.loads(data)
    if end != len(text):
        return json.loads(data)
    return value


def ms_to_s(value: bytes | str | int | None) -> float | None:
    """Integer milliseconds (bytes, str or int; empty for none) as float seconds."""
    if value is None or value in {b"", ""}:
        return None
    return int(value) / 1000.0


def _text(value: Value) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def _int(value: Value) -> int:
    return int(value) if value else 0


def _json(value: Value) -> Any:  # noqa: ANN401 - any JSON value
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def decode_values(
    queue: str, job_id: str, values: Sequence[Value], overlay: dict[str, Any] | None = None
) -> RawJob:
    """Decode the :data:`JOB_FIELDS` values of one job; ``overlay`` replaces decoded bookkeeping."""
    (
        payload,
        state,
        attempts,
        retries,
        stalls,
        interrupts,
        token,
        owner,
        cancel_requested,
        result,
        error,
        dlq_reason,
        enqueued_at,
        eligible_at,
        delay_until,
        expires_at,
        finished_at,
        progress,
        prev_attempt,
    ) = values
    envelope: Any = None
    if payload:
        try:
            envelope = loads(payload)
        except (ValueError, UnicodeDecodeError):
            envelope = None
    if not isinstance(envelope, dict):
        out: RawJob = {
            "id": job_id,
            "queue": queue,
            "token": _text(token),
            "attempts": _int(attempts),
            "state": _text(state) or "",
            # what an operator listing the DLQ needs, as for any other job
            "dlq_reason": _text(dlq_reason),
            "error": _json(error),
            "finished_at": ms_to_s(finished_at),
            "payload_error": "stored payload is not a JSON object",
            "payload_preview": (payload or b"")[:_PREVIEW_BYTES].decode("utf-8", "replace"),
        }
        if overlay:
            out.update((key, overlay[key]) for key in ("token", "attempts", "state") if key in overlay)
        return out
    out = envelope
    out["attempts"] = _int(attempts)
    out["retries"] = _int(retries)
    out["stalls"] = _int(stalls)
    out["interrupts"] = _int(interrupts)
    out["state"] = _text(state) or ""
    out["token"] = _text(token)
    out["owner"] = _text(owner)
    out["cancel_requested"] = cancel_requested == b"1"
    out["error"] = _json(error)
    out["dlq_reason"] = _text(dlq_reason)
    out["enqueued_at"] = ms_to_s(enqueued_at) or 0.0
    out["eligible_at"] = ms_to_s(eligible_at) or 0.0
    out["delay_until"] = ms_to_s(delay_until)
    out["expires_at"] = ms_to_s(expires_at)
    out["finished_at"] = ms_to_s(finished_at)
    out["progress"] = float(progress) if progress else None
    out["id"] = job_id
    out["result"] = _json(result)
    if prev_attempt:
        context = dict(out.get("trace_context") or {})
        context["prev_attempt"] = prev_attempt.decode("utf-8", "replace")
        out["trace_context"] = context
    if overlay:
        out.update(overlay)
    return out


def unpack(blob: bytes) -> list[Value]:
    """Split the ``pack()`` of ``_fence.lua``: ``'<length>:<bytes>'`` per field, ``'-'`` when absent."""
    values: list[Value] = []
    position = 0
    for _ in JOB_FIELDS:
        if blob[position] == _ABSENT:
            values.append(None)
            position += 1
            continue
        colon = blob.index(b":", position)
        start = colon + 1
        end = start + int(blob[position:colon])
        values.append(blob[start:end])
        position = end
    return values


def decode_job(queue: str, reply: Sequence[Any], overlay: dict[str, Any] | None = None) -> RawJob:
    """Decode ``{id, packed values}`` as the scripts reply a job."""
    job_id = reply[0].decode("utf-8", "replace") if isinstance(reply[0], bytes) else str(reply[0])
    return decode_values(queue, job_id, unpack(reply[1]), overlay)


def decode_jobs(queue: str, replies: Sequence[Any]) -> list[RawJob]:
    """Decode a list of ``{id, values}`` replies."""
    return [decode_job(queue, reply) for reply in replies]


_SETTLED_OK = SettleReply(SettleStatus.OK)


def decode_settle(queue: str, reply: Any) -> SettleReply:  # noqa: ANN401 - a RESP reply
    """The reply of a fenced transition: ``OK`` (with the job when the script sent it), ``STALE``, ..."""
    code = reply[0]
    if code == b"OK":
        return SettleReply(SettleStatus.OK, decode_job(queue, reply[1]) if len(reply) > 1 else None)
    if code == b"STALE":
        return SettleReply(SettleStatus.STALE, owner=text(reply[2]) or None, state=text(reply[1]))
    if code == b"GONE":
        return SettleReply(SettleStatus.GONE)
    if code == b"TOO_LARGE":
        return SettleReply(SettleStatus.TOO_LARGE)
    raise BackendError(f"unexpected reply {reply!r} from Redis")


def decode_batch_settle(queue: str, reply: Any) -> SettleReply | Exception:  # noqa: ANN401 - a RESP reply
    """One job's reply in a batched ``complete``: the bare ``'OK'``, ``{'ERR', message}`` or as above."""
    if reply == b"OK":
        return _SETTLED_OK
    if reply[0] == b"ERR":  # this job's key is not a job hash: the error a lone call would raise
        return ResponseError(text(reply[1]))
    return decode_settle(queue, reply)

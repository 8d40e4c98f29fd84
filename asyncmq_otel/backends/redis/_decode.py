"""Turn a stored job hash into the raw job dict every backend returns.

The hash keeps the producer's envelope as JSON text in ``payload`` and the bookkeeping in its own
fields, times as integer milliseconds of Redis ``TIME``. ``claim`` replies a job as its id and
the values of :data:`JOB_FIELDS` as an array (hiredis, a dependency of the ``redis`` extra, parses
it in C, and packing costs Redis more than the array); the other scripts reply the values packed
into one string (see ``pack()`` in ``_fence.lua`` and :func:`unpack`). The raw job is the
envelope with the bookkeeping merged on top (seconds as floats), exactly as ``InMemoryBackend``
builds it, so ``Job.from_dict`` decodes it. A payload that is not a JSON object is never decoded
further: the job comes back as ``{id, queue, token, attempts, state, payload_error,
payload_preview}`` and the worker dead-letters it as ``malformed_payload`` (bad input never runs).
The same holds for a job whose bookkeeping cannot be decoded (no known state, a count or time that is
not an integer of at most 15 digits, a payload nested deeper than
:data:`~asyncmq_otel._stored.MAX_STORED_DEPTH`): decoding is total, so one such job never raises in a
claim, a reap or ``job show`` (bad input never stops a worker).
"""

from __future__ import annotations

import json
import json.scanner
import math
from collections.abc import Sequence
from typing import Any, cast

from ..._stored import MAX_STORED_DEPTH, nested_too_deep, reject_constant
from ...errors import BackendError
from ...jobs import JobState
from ..base import RawJob, SettleReply, SettleStatus
from ._scripts import text

__all__ = [
    "JOB_FIELDS",
    "claimed_attempts",
    "decode_batch_settle",
    "decode_job",
    "decode_jobs",
    "decode_settle",
    "decode_values",
    "loads",
    "ms_to_s",
    "not_a_hash",
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
    "flow_id",
)
"""The order of ``JOB_FIELDS`` in ``_fence.lua``: the two lists must stay equal (a test checks)."""

_PREVIEW_BYTES = 256
_ABSENT = ord("-")
Value = bytes | None


# NaN and Infinity are not JSON (bad input never runs): a stored payload holding them is malformed
_scan = json.scanner.make_scanner(cast("Any", json.JSONDecoder(parse_constant=reject_constant)))


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
        return json.loads(data, parse_constant=reject_constant)
    if end != len(text):
        return json.loads(data, parse_constant=reject_constant)
    return value


def ms_to_s(value: bytes | str | int | None) -> float | None:
    """Integer milliseconds (bytes, str or int; empty for none) as float seconds."""
    if value is None or value in {b"", ""}:
        return None
    return int(value) / 1000.0


_STATES = frozenset(state.value.encode() for state in JobState)
_NOT_AN_OBJECT = "stored payload is not a JSON object"


class _Undecodable(Exception):
    """One field of a stored job cannot be decoded; the message says which, for ``payload_error``."""


def _bad(name: str, value: bytes) -> _Undecodable:
    return _Undecodable(f"stored field {name!r} is not valid: {value[:64]!r}")


def _text(value: Value) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def _count(name: str, value: Value) -> int:
    """A stored integer (a count, or milliseconds); empty or absent reads as 0.

    ASCII digits and an optional '-', at most 15 digits: what the scripts write and exactly what they
    accept (int_field in _fence.lua), so a value a script leaves as found never decodes here.
    """
    if not value:
        return 0
    if len(value) <= 15 and value.isdigit():  # noqa: PLR2004 - the 15 digits above
        return int(value)
    if value[:1] == b"-" and len(value) <= 16 and value[1:].isdigit():  # noqa: PLR2004 - as above
        return int(value)
    raise _bad(name, value)


def _seconds(name: str, value: Value) -> float | None:
    """Stored integer milliseconds as float seconds; empty or absent is ``None``."""
    return _count(name, value) / 1000.0 if value else None


def _progress(value: Value) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise _bad("progress", value) from None
    if not math.isfinite(number):
        raise _bad("progress", value)
    return number


def _json(value: Value) -> Any:  # noqa: ANN401 - any JSON value
    """A stored JSON field (result, error); text that does not decode comes back as text."""
    if not value:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value.decode("utf-8", "replace")


def claimed_attempts(value: Value) -> int:
    """The attempts a fresh claim wrote, from the value it read: +1, or 1 when that was not a count.

    ``claim.lua`` leaves an attempts value that is not an integer as it found it, and the decode
    makes that job malformed; the overlay must not raise on it.
    """
    try:
        return _count("attempts", value) + 1
    except _Undecodable:
        return 1


def _envelope(payload: Value, error: Value) -> dict[str, Any]:
    """The decoded envelope, or :class:`_Undecodable` saying why there is none."""
    if not payload:
        # a quarantined key (see quarantine() in _fence.lua) has no payload and says why in error
        found = _json(error)
        if isinstance(found, dict) and found.get("type") == "malformed_payload":
            raise _Undecodable(str(found.get("message")))
        raise _Undecodable(_NOT_AN_OBJECT)
    try:
        envelope = loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise _Undecodable(_NOT_AN_OBJECT) from None
    except RecursionError:
        raise _Undecodable(f"stored payload nests deeper than {MAX_STORED_DEPTH} levels") from None
    if not isinstance(envelope, dict):
        raise _Undecodable(_NOT_AN_OBJECT)
    if nested_too_deep(payload, envelope):
        raise _Undecodable(f"stored payload nests deeper than {MAX_STORED_DEPTH} levels")
    return envelope


def decode_values(
    queue: str, job_id: str, values: Sequence[Value], overlay: dict[str, Any] | None = None
) -> RawJob:
    """Decode the :data:`JOB_FIELDS` values of one job; ``overlay`` replaces decoded bookkeeping.

    Never raises on what is stored: a job that cannot be decoded comes back malformed, with
    ``payload_error`` saying why.
    """
    try:
        return _decode_values(job_id, values, overlay)
    except _Undecodable as exc:
        return _malformed(queue, job_id, values, overlay, str(exc))


def not_a_hash(queue: str, job_id: str) -> RawJob:
    """A job whose key another program wrote over with another type, as inspection shows it."""
    values: list[Value] = [None] * len(JOB_FIELDS)
    return _malformed(queue, job_id, values, None, "the job key holds another Redis type, not a job hash")


def _malformed(
    queue: str, job_id: str, values: Sequence[Value], overlay: dict[str, Any] | None, why: str
) -> RawJob:
    """What an operator and the worker need of a job that cannot be decoded (each field read safely)."""
    payload, state, attempts = values[0], values[1], values[2]
    token, dlq_reason, error, finished_at = values[6], values[11], values[10], values[16]
    try:
        finished = _seconds("finished_at", finished_at)
    except _Undecodable:
        finished = None
    out: RawJob = {
        "id": job_id,
        "queue": queue,
        "token": _text(token),
        "attempts": claimed_attempts(attempts) - 1,
        "state": _text(state) or "",
        # what an operator listing the DLQ needs, as for any other job
        "dlq_reason": _text(dlq_reason),
        "error": _json(error),
        "finished_at": finished,
        "payload_error": why,
        "payload_preview": (payload or b"")[:_PREVIEW_BYTES].decode("utf-8", "replace"),
    }
    if overlay:
        out.update((key, overlay[key]) for key in ("token", "attempts", "state") if key in overlay)
    return out


def _decode_values(job_id: str, values: Sequence[Value], overlay: dict[str, Any] | None) -> RawJob:
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
        flow_id,
    ) = values
    out = _envelope(payload, error)
    if state not in _STATES:
        raise _Undecodable(
            "stored job has no state" if not state else f"stored job has an unknown state {state!r}"
        )
    # a count or time absent (the usual case for a fresh job) costs no call
    out["attempts"] = _count("attempts", attempts) if attempts else 0
    out["retries"] = _count("retries", retries) if retries else 0
    out["stalls"] = _count("stalls", stalls) if stalls else 0
    out["interrupts"] = _count("interrupts", interrupts) if interrupts else 0
    out["state"] = state.decode()  # None is not in _STATES
    out["token"] = _text(token)
    out["owner"] = _text(owner)
    out["cancel_requested"] = cancel_requested == b"1"
    out["error"] = _json(error)
    out["dlq_reason"] = _text(dlq_reason)
    out["enqueued_at"] = _count("enqueued_at", enqueued_at) / 1000.0 if enqueued_at else 0.0
    out["eligible_at"] = _count("eligible_at", eligible_at) / 1000.0 if eligible_at else 0.0
    out["delay_until"] = _count("delay_until", delay_until) / 1000.0 if delay_until else None
    out["expires_at"] = _count("expires_at", expires_at) / 1000.0 if expires_at else None
    out["finished_at"] = _count("finished_at", finished_at) / 1000.0 if finished_at else None
    out["progress"] = _progress(progress)
    out["id"] = job_id
    out["result"] = _json(result)
    if prev_attempt:
        context = out.get("trace_context") or {}
        if not isinstance(context, dict):
            raise _Undecodable(f"stored field 'trace_context' is not an object: {context!r:.64}")
        context = dict(context)
        context["prev_attempt"] = prev_attempt.decode("utf-8", "replace")
        out["trace_context"] = context
    if flow_id:
        out["flow_id"] = flow_id.decode("utf-8", "replace")
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
    """One job's reply in a batched ``complete``: the bare ``'OK'``, or as :func:`decode_settle`."""
    if reply == b"OK":
        return _SETTLED_OK
    return decode_settle(queue, reply)

"""The job model: states, DLQ reasons, retry backoff, the stored envelope and the JSON checks."""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, cast

from .errors import InvalidName, JobArgumentError, MalformedJob, PayloadTooLarge

__all__ = [
    "DLQ_REASONS",
    "ENVELOPE_VERSION",
    "MAX_NESTING",
    "MAX_PRIORITY",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "TERMINAL_STATES",
    "Backoff",
    "BackoffSpec",
    "DLQReason",
    "Job",
    "JobState",
    "check_int_option",
    "check_job_id",
    "check_json",
    "check_queue_name",
    "check_seconds",
    "dumps",
    "encode_payload",
    "error_type_name",
    "new_job_id",
    "priority_class",
]

ENVELOPE_VERSION = 1
MAX_SAFE_INT = 2**53 - 1
# Bounds of what a producer may store (reliability: bad input). Every stored time is a whole number
# of milliseconds near "now", so durations stay far below 2**53 ms and round-trip exactly.
MAX_SECONDS = 10 * 365 * 86_400  # delay, ttl, timeout and backoff: ten years
MAX_RETRIES = 10_000
MAX_PRIORITY = 500  # |priority|: the Redis ready score keeps FIFO order within a priority up to this
MAX_NESTING = 64  # levels of lists and dicts in args, kwargs and results (the decode bound is larger)
_QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class JobState(str, Enum):
    """Where a job is in its life. The last four are terminal; ``blocked`` waits for its parents."""

    WAITING = "waiting"
    DELAYED = "delayed"
    BLOCKED = "blocked"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.EXPIRED, JobState.CANCELLED})

DLQReason = Literal[
    "failed",
    "expired",
    "unknown_task",
    "malformed_payload",
    "worker_lost",
    "interrupted",
    "dependency_failed",
]
DLQ_REASONS: frozenset[str] = frozenset(
    {
        "failed",
        "expired",
        "unknown_task",
        "malformed_payload",
        "worker_lost",
        "interrupted",
        "dependency_failed",
    }
)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits of a UUID
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_job_id() -> str:
    """Return a fresh job id (uuid4 hex), the form producers use unless the caller supplies one.

    The same 122 random bits as ``uuid.uuid4().hex``, without building a ``UUID`` object (a bulk
    enqueue makes one id per job).
    """
    return "%032x" % (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET)


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidName(f"queue name {name!r} must match [A-Za-z0-9._-]{{1,64}}")
    return name


def check_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a valid job id, else raise :class:`InvalidName`."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidName(f"job id {job_id!r} must match [A-Za-z0-9._-]{{1,128}}")
    return job_id


def priority_class(priority: int) -> str:
    """Bucket a priority into a bounded label value: lower runs first."""
    if priority < 5:  # noqa: PLR2004 - 5 is the documented default priority
        return "high"
    return "normal" if priority == 5 else "low"  # noqa: PLR2004 - as above


def error_type_name(exc: BaseException | type[BaseException]) -> str:
    """Return the qualified type name of an exception with ``builtins.`` dropped."""
    cls = exc if isinstance(exc, type) else type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def check_json(value: object, path: str = "value") -> Any:  # noqa: ANN401 - returns the JSON form of any value
    """Walk ``value`` and return its JSON form (tuples become lists).

    Raises:
        JobArgumentError: naming the path of the first value JSON cannot carry faithfully, of a
            list or dict nested more than :data:`MAX_NESTING` levels, or of one that contains itself.

    """
    try:
        return _checked(value, path, MAX_NESTING)
    except _TooDeep as deep:
        cycle = _cycle_path(value, path, [])
        if cycle is not None:
            raise JobArgumentError(cycle, "contains itself (a cycle); JSON cannot carry it") from None
        raise JobArgumentError(
            deep.path, f"nested more than {MAX_NESTING} levels deep; flatten it or store it elsewhere"
        ) from None


class _TooDeep(Exception):
    """Raised by the walk at the first container past the nesting bound."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _checked(value: object, path: str, room: int) -> Any:  # noqa: ANN401, C901 - one branch per JSON type
    """:func:`check_json` with ``room`` levels of nesting left."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return value
        raise JobArgumentError(path, f"integer {value} is outside ±(2**53-1); pass it as a string")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise JobArgumentError(path, f"float {value!r} is not JSON; pass None or a string")
    if isinstance(value, (list, tuple)):
        if room <= 0:
            raise _TooDeep(path)
        # plain scalars pass as they are; the path of an item is only built to look further
        return [
            item if _plain(item) else _checked(item, f"{path}[{index}]", room - 1)
            for index, item in enumerate(value)
        ]
    if isinstance(value, dict):
        if room <= 0:
            raise _TooDeep(path)
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise JobArgumentError(
                    f"{path}[{key!r}]", f"dict key of type {type(key).__name__} is not JSON; use str keys"
                )
            out[key] = item if _plain(item) else _checked(item, f"{path}[{json.dumps(key)}]", room - 1)
        return out
    hint = "pass an ISO string" if type(value).__name__ in {"datetime", "date", "time"} else "pass JSON data"
    raise JobArgumentError(path, f"{type(value).__name__} is not JSON; {hint}")


def _cycle_path(value: object, path: str, parents: list[int]) -> str | None:
    """The path of the first list or dict inside ``value`` that is one of its own parents, if any.

    Only run after the walk found too deep a nesting, down to that depth (the recursion is bounded).
    """
    if not isinstance(value, (list, tuple, dict)) or len(parents) > MAX_NESTING:
        return None
    if id(value) in parents:
        return path
    parents.append(id(value))
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        found = _cycle_path(item, f"{path}[{json.dumps(key) if isinstance(key, str) else key}]", parents)
        if found is not None:
            return found
    parents.pop()
    return None


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain(value: object) -> bool:
    """A value of exactly str, bool, None, a safe int or a finite float: JSON as it is."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return kind is int and -MAX_SAFE_INT <= value <= MAX_SAFE_INT  # type: ignore[operator]


def _c_encoder() -> Any:  # noqa: ANN401 - the C encoder, or None
    """The C encoder ``_ENCODER.encode`` builds on every call, built once; None where there is none."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:  # the arguments JSONEncoder.iterencode passes, without its cycle check (markers=None)
        sort_keys = skip_keys = allow_nan = False
        return make(
            None,
            _ENCODER.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            sort_keys,
            skip_keys,
            allow_nan,
        )
    except TypeError:  # another interpreter's signature: the plain encoder does the same work
        return None


_C_ENCODE = _c_encoder()


def dumps(value: object) -> str:
    """Encode JSON compactly; callers have already checked the value with :func:`check_json`."""
    return _ENCODER.encode(value)  # one encoder for all calls: json.dumps builds one per call


def _dumps_envelope(envelope: Mapping[str, Any]) -> str:
    """:func:`dumps` of an envelope built from checked values (no cycles: check_json walked them)."""
    if _C_ENCODE is not None and type(envelope) is dict:
        return "".join(_C_ENCODE(envelope, 0))
    return _ENCODER.encode(envelope)


def encode_payload(payload: Mapping[str, Any], limit: int) -> str:
    """Encode a job envelope and refuse it when it is over ``limit`` bytes.

    Raises:
        JobArgumentError: a string holds a lone surrogate (not UTF-8); the message names its path.
        PayloadTooLarge: the encoded envelope is over ``limit`` bytes.

    """
    text = _dumps_envelope(payload)
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            path = _unencodable_path(payload, "") or "payload"
            raise JobArgumentError(
                path, "string holds a lone surrogate, which UTF-8 cannot store; pass valid text"
            ) from None
    if size > limit:
        raise PayloadTooLarge(size, limit)
    return text


def _unencodable_path(value: object, path: str) -> str | None:
    """The path of the first string (or dict key) in ``value`` that UTF-8 cannot encode.

    The envelope's own keys are named bare (``args[0]``, ``task``), as the producer's arguments are.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = key if not path else f"{path}[{json.dumps(key)}]"
            if _unencodable_path(key, inner) is not None:
                return inner
            found = _unencodable_path(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unencodable_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def check_seconds(option: str, value: object, *, zero_ok: bool = False) -> float:
    """Return the duration option ``value`` as float seconds.

    A real number (not a bool, not a string) that is finite and at most :data:`MAX_SECONDS`;
    ``zero_ok`` admits 0 (a delay), otherwise it must be positive (a ttl or timeout).

    Raises:
        JobArgumentError: naming ``option``.

    """
    kind = type(value)
    exact = kind is float or kind is int
    if not exact and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise JobArgumentError(option, f"must be a number of seconds, not {kind.__name__} {value!r:.40}")
    low_ok = value >= 0 if zero_ok else value > 0  # type: ignore[operator]
    if not (low_ok and value <= MAX_SECONDS):  # type: ignore[operator]
        floor = ">= 0" if zero_ok else "> 0"
        bounds = f"{floor} and at most {MAX_SECONDS} (ten years)"
        raise JobArgumentError(option, f"must be a finite number of seconds {bounds}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int_option(option: str, value: object, low: int, high: int) -> int:
    """Return the integer option ``value`` when it is a real int (not a bool) within [low, high].

    Raises:
        JobArgumentError: naming ``option``.

    """
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise JobArgumentError(option, f"must be an int, not {type(value).__name__} {value!r:.40}")
    if not low <= value <= high:
        raise JobArgumentError(option, f"must be between {low} and {high}, not {value}")
    return int(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry backoff: ``fixed`` waits ``delay`` each time; ``exponential`` doubles it per retry.

    ``max_delay`` caps the delay; ``jitter`` draws it uniformly from [delay/2, delay] so that
    many jobs failing together do not retry together.
    """

    kind: Literal["fixed", "exponential"] = "exponential"
    delay: float = 1.0
    max_delay: float | None = None
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.kind not in {"fixed", "exponential"}:
            raise ValueError(f"backoff kind must be 'fixed' or 'exponential', not {self.kind!r}")
        # a retry's delay becomes a stored due time: the same bound as a job's delay
        if not (0 <= self.delay <= MAX_SECONDS):
            raise ValueError(f"backoff delay must be seconds in [0, {MAX_SECONDS}], not {self.delay!r}")
        if self.max_delay is not None and not (0 <= self.max_delay <= MAX_SECONDS):
            raise ValueError(
                f"backoff max_delay must be a number of seconds in [0, {MAX_SECONDS}], not {self.max_delay!r}"
            )

    @classmethod
    def parse(cls, spec: BackoffSpec) -> Backoff | None:
        """Accept ``None``, seconds (fixed), ``"exponential"``/``"fixed"``, a mapping or a Backoff."""
        if spec is None or isinstance(spec, Backoff):
            return spec
        if isinstance(spec, bool):
            raise TypeError("backoff must be seconds, 'fixed', 'exponential', a mapping or a Backoff")
        if isinstance(spec, (int, float)):
            return cls("fixed", float(spec))
        if isinstance(spec, str):
            if spec not in {"fixed", "exponential"}:
                raise ValueError(f"backoff must be 'fixed' or 'exponential', not {spec!r}")
            return cls(cast("Literal['fixed', 'exponential']", spec))
        if isinstance(spec, Mapping):
            known = {"type", "kind", "delay", "max", "max_delay", "jitter"}
            unknown = set(spec) - known
            if unknown:
                raise ValueError(f"unknown backoff keys {sorted(unknown)}; use type, delay, max, jitter")
            kind = spec.get("type", spec.get("kind", "exponential"))
            max_delay = spec.get("max", spec.get("max_delay"))
            return cls(
                kind,
                float(spec.get("delay", 1.0)),
                None if max_delay is None else float(max_delay),
                bool(spec.get("jitter", False)),
            )
        raise TypeError(f"backoff of type {type(spec).__name__} is not supported")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored with the job."""
        return {"type": self.kind, "delay": self.delay, "max": self.max_delay, "jitter": self.jitter}

    def delay_for(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based)."""
        # 2**64 already carries any delay past MAX_SECONDS; a larger power would overflow the float
        doublings = min(max(retry_number - 1, 0), 64)
        delay = self.delay if self.kind == "fixed" else self.delay * 2.0**doublings
        delay = min(delay, MAX_SECONDS if self.max_delay is None else self.max_delay)
        if self.jitter and delay > 0:
            delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not cryptography
        return delay


BackoffSpec = Backoff | float | int | str | Mapping[str, Any] | None


@dataclass(slots=True)
class Job:
    """A job as stored by a backend: the producer's envelope plus the backend's bookkeeping.

    ``attempts`` counts handler runs as recorded by the backend's claim; ``retries`` counts
    retries already scheduled; ``stalls`` and ``interrupts`` count redeliveries.
    """

    id: str
    task: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_retries: int = 0
    ttl: float | None = None
    backoff: dict[str, Any] | None = None
    priority: int = 5
    timeout: float | None = None
    trace_context: dict[str, str] | None = None
    enqueued_at: float = 0.0
    eligible_at: float = 0.0
    delay_until: float | None = None
    expires_at: float | None = None
    state: JobState = JobState.WAITING
    attempts: int = 0
    retries: int = 0
    stalls: int = 0
    interrupts: int = 0
    token: str | None = None
    owner: str | None = None
    cancel_requested: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    dlq_reason: str | None = None
    finished_at: float | None = None
    progress: float | None = None
    schedule: str | None = None  # the key of the schedule that fired this job, with its due time
    schedule_due: float | None = None
    flow_id: str | None = None  # the flow the job belongs to (flows), set by the backend

    @property
    def max_attempts(self) -> int:
        """``max_retries + 1``."""
        return self.max_retries + 1

    def next_retry_delay(self) -> float:
        """Seconds before the next retry, from the job's backoff and the retries already used."""
        backoff = Backoff.parse(self.backoff)
        if backoff is None:
            return 0.0
        return backoff.delay_for(self.retries + 1)

    def envelope(self) -> dict[str, Any]:
        """The producer-owned part of the job, as stored at enqueue."""
        out: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "args": self.args,
            "kwargs": self.kwargs,
            "max_retries": self.max_retries,
            "priority": self.priority,
        }
        if self.ttl is not None:
            out["ttl"] = self.ttl
        if self.backoff is not None:
            out["backoff"] = self.backoff
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.trace_context:
            out["trace_context"] = self.trace_context
        if self.schedule is not None:
            out["schedule"] = self.schedule
            out["schedule_due"] = self.schedule_due
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (``state`` as its string value)."""
        return {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "args": self.args,
            "kwargs": self.kwargs,
            "max_retries": self.max_retries,
            "ttl": self.ttl,
            "backoff": self.backoff,
            "priority": self.priority,
            "timeout": self.timeout,
            "trace_context": self.trace_context,
            "enqueued_at": self.enqueued_at,
            "eligible_at": self.eligible_at,
            "delay_until": self.delay_until,
            "expires_at": self.expires_at,
            "state": self.state.value,
            "attempts": self.attempts,
            "retries": self.retries,
            "stalls": self.stalls,
            "interrupts": self.interrupts,
            "token": self.token,
            "owner": self.owner,
            "cancel_requested": self.cancel_requested,
            "result": self.result,
            "error": self.error,
            "dlq_reason": self.dlq_reason,
            "finished_at": self.finished_at,
            "progress": self.progress,
            "schedule": self.schedule,
            "schedule_due": self.schedule_due,
            "flow_id": self.flow_id,
        }

    @classmethod
    def from_dict(cls, raw: object) -> Job:
        """Decode a stored job, validating every field.

        Raises:
            MalformedJob: when ``raw`` is not an object of the expected shape and version.

        """
        if type(raw) is dict:
            fast = _decode_well_formed(cls, raw)
            if fast is not None:
                return _with_valid_backoff(fast)
        if isinstance(raw, (bytes, str)):
            try:
                raw = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise MalformedJob(f"stored job is not JSON: {_preview(raw)}") from exc
        if not isinstance(raw, Mapping):
            raise MalformedJob(f"stored job is not a JSON object but {type(raw).__name__}")
        if raw.get("v", ENVELOPE_VERSION) != ENVELOPE_VERSION:
            raise MalformedJob(f"unknown envelope version {raw.get('v')!r}")
        try:
            job = cls(
                id=_typed(raw, "id", str),
                task=_typed(raw, "task", str),
                queue=_typed(raw, "queue", str),
                args=_typed(raw, "args", list, []),
                kwargs=_typed(raw, "kwargs", dict, {}),
                max_retries=_typed(raw, "max_retries", int, 0),
                ttl=_number_or_none(raw, "ttl"),
                backoff=_typed(raw, "backoff", dict, None),
                priority=_typed(raw, "priority", int, 5),
                timeout=_number_or_none(raw, "timeout"),
                trace_context=_string_map_or_none(raw, "trace_context"),
                enqueued_at=_number_or_none(raw, "enqueued_at") or 0.0,
                eligible_at=_number_or_none(raw, "eligible_at") or 0.0,
                delay_until=_number_or_none(raw, "delay_until"),
                expires_at=_number_or_none(raw, "expires_at"),
                state=JobState(raw.get("state", "waiting")),
                attempts=_typed(raw, "attempts", int, 0),
                retries=_typed(raw, "retries", int, 0),
                stalls=_typed(raw, "stalls", int, 0),
                interrupts=_typed(raw, "interrupts", int, 0),
                token=_typed(raw, "token", str, None),
                owner=_typed(raw, "owner", str, None),
                cancel_requested=bool(raw.get("cancel_requested", False)),
                result=raw.get("result"),
                error=_typed(raw, "error", dict, None),
                dlq_reason=_typed(raw, "dlq_reason", str, None),
                finished_at=_number_or_none(raw, "finished_at"),
                progress=_number_or_none(raw, "progress"),
                schedule=_typed(raw, "schedule", str, None),
                schedule_due=_number_or_none(raw, "schedule_due"),
                flow_id=_typed(raw, "flow_id", str, None),
            )
        except (TypeError, ValueError) as exc:
            raise MalformedJob(f"stored job has a bad field: {exc}") from exc
        if not all(isinstance(key, str) for key in job.kwargs):
            raise MalformedJob("stored job kwargs have non-string keys")
        return _with_valid_backoff(job)


def _with_valid_backoff(job: Job) -> Job:
    """``job``, once its stored backoff parses: a bad one would only fail at its first retry."""
    if job.backoff is not None:
        try:
            Backoff.parse(job.backoff)
        except (TypeError, ValueError) as exc:
            raise MalformedJob(f"stored job has a bad backoff: {exc}") from exc
    return job


_STATE_BY_VALUE: dict[str, JobState] = {state.value: state for state in JobState}


def _opt_number(value: object) -> float | None:
    """A JSON number as float, ``None`` as is; raises ``_Unusual`` for anything else."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[return-value]
    if kind is int:
        return float(value)  # type: ignore[arg-type]
    if value is None:
        return None
    raise _Unusual


def _opt(value: object, kind: type) -> Any:  # noqa: ANN401 - the value, typed by the caller
    """``value`` when it is exactly of ``kind`` or ``None``; raises ``_Unusual`` for anything else."""
    if value is None or type(value) is kind:
        return value
    raise _Unusual


class _Unusual(Exception):
    """Raised by the fast decode on anything it does not handle; the full decode then decides."""


def _exact_str(value: object) -> str:
    if type(value) is not str:
        raise _Unusual
    return value


def _str_keyed(value: object) -> dict[str, Any] | None:
    """A dict whose keys are all exactly ``str``, or ``None``."""
    found: dict[str, Any] | None = _opt(value, dict)
    if found is not None:
        for key in found:
            if type(key) is not str:
                raise _Unusual
    return found


def _decode_well_formed(cls: type[Job], raw: dict[str, Any]) -> Job | None:
    """The decode of a well-formed stored job, as :meth:`Job.from_dict` would do it, or ``None``.

    Every field must have exactly its expected type (no subclasses, no bools for numbers); on
    anything else this returns ``None`` and the validating decode runs, raising its precise error.
    """
    get = raw.get
    if get("v", ENVELOPE_VERSION) != ENVELOPE_VERSION:
        return None
    found = get("state", "waiting")
    state = _STATE_BY_VALUE.get(found) if type(found) is str else None
    if state is None:
        return None
    try:
        context = _str_keyed(get("trace_context"))
        if context is not None:
            context = {key: _exact_str(value) for key, value in context.items()}
        args = _opt(get("args"), list)
        kwargs = _str_keyed(get("kwargs"))
        max_retries = _opt(get("max_retries"), int)
        priority = _opt(get("priority"), int)
        attempts = _opt(get("attempts"), int)
        retries = _opt(get("retries"), int)
        stalls = _opt(get("stalls"), int)
        interrupts = _opt(get("interrupts"), int)
        return cls(
            id=_exact_str(get("id")),
            task=_exact_str(get("task")),
            queue=_exact_str(get("queue")),
            args=[] if args is None else args,
            kwargs={} if kwargs is None else kwargs,
            max_retries=0 if max_retries is None else max_retries,
            ttl=_opt_number(get("ttl")),
            backoff=_opt(get("backoff"), dict),
            priority=5 if priority is None else priority,
            timeout=_opt_number(get("timeout")),
            trace_context=context,
            enqueued_at=_opt_number(get("enqueued_at")) or 0.0,
            eligible_at=_opt_number(get("eligible_at")) or 0.0,
            delay_until=_opt_number(get("delay_until")),
            expires_at=_opt_number(get("expires_at")),
            state=state,
            attempts=0 if attempts is None else attempts,
            retries=0 if retries is None else retries,
            stalls=0 if stalls is None else stalls,
            interrupts=0 if interrupts is None else interrupts,
            token=_opt(get("token"), str),
            owner=_opt(get("owner"), str),
            cancel_requested=bool(get("cancel_requested", False)),
            result=get("result"),
            error=_opt(get("error"), dict),
            dlq_reason=_opt(get("dlq_reason"), str),
            finished_at=_opt_number(get("finished_at")),
            progress=_opt_number(get("progress")),
            schedule=_opt(get("schedule"), str),
            schedule_due=_opt_number(get("schedule_due")),
            flow_id=_opt(get("flow_id"), str),
        )
    except (_Unusual, TypeError):
        return None


def _preview(raw: object) -> str:
    """At most 256 bytes of a bad payload, escaped, for logs and error messages."""
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
    return repr(data[:256])


_MISSING: Any = object()


def _typed(raw: Mapping[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:  # noqa: ANN401
    value = raw.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise ValueError(f"missing field {key!r}")
        return default
    if kind is int and isinstance(value, bool):
        raise TypeError(f"field {key!r} must be int, not bool")
    if not isinstance(value, kind):
        raise TypeError(f"field {key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _number_or_none(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"field {key!r} must be a number, not {type(value).__name__}")
    return float(value)


def _string_map_or_none(raw: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"field {key!r} must be an object of strings")
    return dict(value)

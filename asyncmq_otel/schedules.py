"""Durable periodic jobs: the schedule model, its ticks (interval or cron) and catch-up.

A schedule is stored by its backend with its next due time. Every worker's scheduler sleeps until
the earliest due time of its queues, then asks the backend to *fire* a due schedule: one atomic
call that checks the due time it read is still the stored one, stores the tick's job (its id is
derived from the schedule key and the due time, so a tick can never make two jobs) and stores the
next due time. Whichever worker comes first fires; the others find the due time moved on. No
leader, no lock to lose.

Times are integer milliseconds of the backend's clock (Redis ``TIME``), so hosts' clocks never
decide when a tick is due. Cron expressions are evaluated by ``cronsim`` in the schedule's
timezone, with its DST rules: a time skipped by a spring-forward change runs right after the
change, a time repeated by a fall-back change runs once.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidSchedule
from .jobs import Backoff, BackoffSpec, Job, check_json

__all__ = [
    "CATCH_UP_POLICIES",
    "DEFAULT_MAX_CATCH_UP",
    "CatchUp",
    "FirePlan",
    "ScheduleRecord",
    "ScheduleSpec",
    "check_schedule_key",
    "plan_fire",
    "schedule_job",
    "schedule_job_id",
]

CatchUp = Literal["latest", "all", "none"]
CATCH_UP_POLICIES: tuple[str, ...] = ("latest", "all", "none")
DEFAULT_MAX_CATCH_UP = 100
_KEY = re.compile(r"[A-Za-z0-9._-]{1,100}")
_OPTIONS = frozenset({"retries", "ttl", "backoff", "priority", "timeout"})
_MIN_EVERY = 0.001
_COUNT_BOUND = 100_000  # cron ticks counted for the skipped figure; beyond that the count is a floor


def check_schedule_key(key: object) -> str:
    """A schedule key: ``[A-Za-z0-9._-]{1,100}``, so a job id built from it stays a valid id."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidSchedule(f"schedule key {key!r} must match [A-Za-z0-9._-]{{1,100}}")
    return key


def schedule_job_id(key: str, due_ms: int) -> str:
    """The id of the job fired for the tick of ``key`` due at ``due_ms``: the tick's idempotency key."""
    return f"sch.{key}.{due_ms}"


def _check_options(opts: Mapping[str, Any]) -> None:
    for name in ("retries", "priority"):
        value = opts.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidSchedule(f"{name} must be an int, not {value!r}")
    if opts.get("retries", 0) is not None and opts.get("retries", 0) < 0:
        raise InvalidSchedule(f"retries must be >= 0, not {opts['retries']!r}")
    for name in ("ttl", "timeout"):
        value = opts.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)
        ):
            raise InvalidSchedule(f"{name} must be a positive number of seconds, not {value!r}")


def _check_timing(every: object, cron: object, timezone: object) -> None:
    if (every is None) == (cron is None):
        raise InvalidSchedule("give exactly one of every= (seconds) or cron= (an expression)")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, float)):
            raise InvalidSchedule(f"every must be a number of seconds, not {every!r}")
        if not (math.isfinite(every) and every >= _MIN_EVERY):
            raise InvalidSchedule(f"every must be a finite number of seconds >= 0.001, not {every!r}")
    if not isinstance(timezone, str):
        raise InvalidSchedule(f"timezone must be an IANA name, not {timezone!r}")
    zone = _zone(timezone)
    if cron is not None:
        if not isinstance(cron, str):
            raise InvalidSchedule(f"cron must be a string, not {cron!r}")
        try:
            CronSim(cron, datetime.now(zone))
        except CronSimError as exc:
            raise InvalidSchedule(f"invalid cron expression {cron!r}: {exc}") from exc


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(f"unknown timezone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What a schedule fires and when: the part a deploy declares (upserted by ``key``)."""

    key: str
    queue: str
    task: str
    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "latest"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        queue: str,
        task: str,
        *,
        every: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        key: str | None = None,
        catch_up: str = "latest",
        max_catch_up: int = DEFAULT_MAX_CATCH_UP,
        options: Mapping[str, Any] | None = None,
    ) -> ScheduleSpec:
        """Validate every argument; raise :class:`InvalidSchedule` (nothing stored) when one is bad."""
        given: dict[str, object] = {"task": task, "max_catch_up": max_catch_up}  # callers may be untyped
        if not isinstance(given["task"], str) or not task:
            raise InvalidSchedule(f"task must be a non-empty string, not {task!r}")
        _check_timing(every, cron, timezone)
        if catch_up not in CATCH_UP_POLICIES:
            raise InvalidSchedule(f"catch_up must be one of {CATCH_UP_POLICIES}, not {catch_up!r}")
        limit = given["max_catch_up"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidSchedule(f"max_catch_up must be an int >= 1, not {max_catch_up!r}")
        opts = dict(options or {})
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise InvalidSchedule(f"unknown job options {sorted(unknown)}; allowed: {sorted(_OPTIONS)}")
        _check_options(opts)
        if "backoff" in opts:
            backoff: BackoffSpec = opts["backoff"]
            parsed = Backoff.parse(backoff)
            opts["backoff"] = None if parsed is None else parsed.to_dict()
        return cls(
            key=check_schedule_key(key if key is not None else task),
            queue=queue,
            task=task,
            every=None if every is None else float(every),
            cron=cron,
            timezone=timezone,
            args=check_json(list(args or ()), "args"),
            kwargs=check_json(dict(kwargs or {}), "kwargs"),
            catch_up=catch_up,
            max_catch_up=max_catch_up,
            options=check_json({k: v for k, v in opts.items() if v is not None}, "options"),
        )

    # -- storage ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The definition as JSON-ready data."""
        return {
            "key": self.key,
            "queue": self.queue,
            "task": self.task,
            "every": self.every,
            "cron": self.cron,
            "timezone": self.timezone,
            "args": self.args,
            "kwargs": self.kwargs,
            "catch_up": self.catch_up,
            "max_catch_up": self.max_catch_up,
            "options": self.options,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal definitions give equal text and revision."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ScheduleSpec:
        """Decode a stored definition (validated again, so a damaged one raises InvalidSchedule)."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidSchedule("stored schedule definition is not JSON") from exc
        if not isinstance(raw, dict):
            raise InvalidSchedule("stored schedule definition is not an object")
        try:
            return cls.build(
                raw["queue"],
                raw["task"],
                every=raw.get("every"),
                cron=raw.get("cron"),
                timezone=raw.get("timezone", "UTC"),
                args=raw.get("args"),
                kwargs=raw.get("kwargs"),
                key=raw.get("key"),
                catch_up=raw.get("catch_up", "latest"),
                max_catch_up=raw.get("max_catch_up", DEFAULT_MAX_CATCH_UP),
                options=raw.get("options"),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidSchedule(f"stored schedule definition lacks {exc}") from exc

    @property
    def rev(self) -> str:
        """A digest of the definition: an upsert with the same revision changes nothing."""
        return hashlib.sha1(self.to_json().encode("utf-8"), usedforsecurity=False).hexdigest()[:16]

    @property
    def every_ms(self) -> int | None:
        """The interval in whole milliseconds (at least 1)."""
        return None if self.every is None else max(round(self.every * 1000), 1)

    # -- ticks -----------------------------------------------------------------------------------------
    def at(self, ms: int) -> datetime:
        """A time in milliseconds as an aware datetime in the schedule's timezone."""
        return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(_zone(self.timezone))

    def next_after(self, after_ms: int, anchor_ms: int) -> int:
        """The first tick strictly after ``after_ms`` (interval ticks are ``anchor + k * every``)."""
        every = self.every_ms
        if every is not None:
            steps = max((after_ms - anchor_ms) // every + 1, 1)
            return anchor_ms + steps * every
        return next(self.cron_ticks(after_ms))

    def cron_ticks(self, after_ms: int) -> Iterator[int]:
        """The cron ticks strictly after ``after_ms``, strictly increasing.

        Started inside a repeated (fall-back) hour, cronsim can answer a time that is not after its
        start on the UTC line; such answers are passed over, so a tick never comes twice.
        """
        assert self.cron is not None  # noqa: S101 - build() requires one of the two
        last = after_ms
        for moment in CronSim(self.cron, self.at(after_ms)):
            tick = _to_ms(moment)
            if tick > last:
                last = tick
                yield tick

    def ticks_back(self, upto_ms: int, since_ms: int, limit: int, anchor_ms: int) -> list[int]:
        """Up to ``limit`` ticks in ``[since_ms, upto_ms]``, the latest ones, oldest first."""
        every = self.every_ms
        if every is not None:
            if upto_ms < since_ms:
                return []
            last = anchor_ms + ((upto_ms - anchor_ms) // every) * every
            found: list[int] = []
            tick = last
            while tick >= since_ms and len(found) < limit:
                found.append(tick)
                tick -= every
            return found[::-1]
        # forward from since_ms (reverse iteration misses ticks in a repeated hour), keeping the last
        recent: collections.deque[int] = collections.deque(maxlen=limit)
        for count, tick in enumerate(self.cron_ticks(since_ms - 1)):
            if tick > upto_ms:
                break
            if count >= _COUNT_BOUND:  # a very long outage: the latest ticks are what is kept anyway
                recent.clear()
                for back in CronSim(self.cron or "", self.at(upto_ms + 1), reverse=True):
                    if len(recent) == limit or _to_ms(back) < since_ms:
                        break
                    recent.appendleft(_to_ms(back))
                break
            recent.append(tick)
        return list(recent)


def _to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A stored schedule: its definition and its state (what ``list_repeatables`` shows)."""

    spec: ScheduleSpec
    rev: str
    anchor_ms: int
    next_due_ms: int
    paused: bool = False
    last_due_ms: int | None = None
    last_job_id: str | None = None
    last_fired_ms: int | None = None

    @classmethod
    def new(cls, spec: ScheduleSpec, now_ms: int) -> ScheduleRecord:
        """A schedule created at ``now_ms``: its first tick is the first one after now."""
        return cls(spec, spec.rev, now_ms, spec.next_after(now_ms, now_ms))

    def to_dict(self) -> dict[str, Any]:
        """The listing: definition, next and last run (unix seconds), last job id, paused."""
        out = self.spec.to_dict()
        out.update(
            next_run=self.next_due_ms / 1000,
            last_run=None if self.last_due_ms is None else self.last_due_ms / 1000,
            last_job_id=self.last_job_id,
            last_fired_at=None if self.last_fired_ms is None else self.last_fired_ms / 1000,
            paused=self.paused,
            rev=self.rev,
        )
        return out


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one fire call does: the due times to enqueue (oldest first), the next due time, ticks skipped."""

    dues: list[int]
    next_due_ms: int
    skipped: int


def plan_fire(record: ScheduleRecord, now_ms: int) -> FirePlan | None:
    """The fire of a schedule due by ``now_ms`` under its catch-up policy; None when not due.

    Ticks from the stored next due time up to now are due. With one due tick every policy fires
    it. With more (the fleet was down or busy): ``latest`` fires the latest one only, ``all`` fires
    each, at most ``max_catch_up`` (the latest ones), and ``none`` fires none. The next due time is
    always the first tick after now, so a fire never leaves a due tick behind.
    """
    spec = record.spec
    due = record.next_due_ms
    if due > now_ms:
        return None
    next_due = spec.next_after(now_ms, record.anchor_ms)
    limit = spec.max_catch_up if spec.catch_up == "all" else 2
    recent = spec.ticks_back(now_ms, due, limit, record.anchor_ms)
    if not recent:  # the stored due time is not a tick of this definition: treat it as one
        recent = [due]
    total = _count_ticks(spec, record, due, now_ms, recent)
    if spec.catch_up == "all":
        dues = recent
    elif spec.catch_up == "latest" or total == 1:
        dues = recent[-1:]
    else:  # "none" with missed ticks
        dues = []
    return FirePlan(dues, next_due, total - len(dues))


def _count_ticks(spec: ScheduleSpec, record: ScheduleRecord, due: int, now_ms: int, recent: list[int]) -> int:
    """How many ticks lie in ``[due, now]``: exact for intervals, bounded counting for cron."""
    every = spec.every_ms
    if every is not None:
        first = due if (due - record.anchor_ms) % every == 0 else spec.next_after(due, record.anchor_ms)
        return max((now_ms - first) // every + 1, len(recent))
    if len(recent) < (spec.max_catch_up if spec.catch_up == "all" else 2):
        return len(recent)  # fewer than asked for: these are all of them
    count = 0
    for tick in spec.cron_ticks(due - 1):
        if tick > now_ms or count >= _COUNT_BOUND:
            break
        count += 1
    return max(count, len(recent))


def schedule_job(spec: ScheduleSpec, due_ms: int) -> Job:
    """The job a tick fires: the schedule's task, arguments and options, id from key and due time."""
    opts = spec.options
    return Job(
        id=schedule_job_id(spec.key, due_ms),
        task=spec.task,
        queue=spec.queue,
        args=list(spec.args),
        kwargs=dict(spec.kwargs),
        max_retries=int(opts.get("retries", 0)),
        ttl=opts.get("ttl"),
        backoff=opts.get("backoff"),
        priority=int(opts.get("priority", 5)),
        timeout=opts.get("timeout"),
        schedule=spec.key,
        schedule_due=due_ms / 1000,
    )

"""The invariant checker every chaos test calls at the end (reliability.md §14).

It reads the producers' records (:class:`Enqueued`), the ledger of the worker subprocesses and
the Redis data of one queue, once the run is quiescent, and checks:

1. **One terminal state.** Every acknowledged id is in exactly one terminal state and in no other
   index. A "maybe" id (its enqueue raised) passes every check when it exists and is not lost when
   absent.
2. **Bounded runs.** ``executions(id) <= 1 + retries + stalls + interrupts``, each term within its
   limit. Untracked duplicates (executions beyond the bound, summed) and lost jobs must both be 0.
3. **No two live leases.** :class:`LeaseSampler` reads ``leases`` and the tokens every 100 ms (one
   atomic script): every leased id is ``active`` with a token and in no ready/delayed index.
   Afterwards at most one execution per id had a terminal settle accepted, and of two executions of
   an id that overlap in ``CLOCK_MONOTONIC``, at most one had a settle accepted.
4. **Tokens and results.** A token appears in at most one execution; a completed job's stored
   result names the token of an execution that ran it (and the accepted one, when its settle
   record survived).
5. **Counters agree.** Rejected settles in the ledger equal the stale-write counter when one is
   given; ``job:stalled`` events equal the ``stalls`` totals (or are at most that, when a reaper may
   have been killed between its reap and its event).
6. **Flows** (:func:`check_flows`). No job is blocked while all its parents have completed (beyond
   undelivered outbox entries); no job ran before its parents finished; a ``dependency_failed`` job
   has a dead parent.

Every job read back must also sit in the index of its state and in no other: a ``waiting`` job
outside ``ready`` is never claimed, an ``active`` one without a ``leases`` entry is never reaped
(a script that failed halfway leaves such jobs). :func:`stuck_jobs` finds them among every job hash
of a queue, including jobs no producer acknowledged (written straight into Redis by a test).

:func:`check_schedules` adds the schedule invariants: one job per (schedule, due time); each fired
job's stored schedule and due time match its id; dues lie on the schedule's tick grid; the stored
next due time is strictly after the last fired due and the last run names that job; with
``catch_up="all"`` no tick between the first and the last fired one is missing; with another
policy a missing tick lies inside an outage window the test names.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from asyncmq_otel.backends.redis._keys import Keys, QueueKeys
from tests.support.ledger import Execution, Ledger
from tests.support.poll import wait_until

__all__ = [
    "Enqueued",
    "LeaseSampler",
    "Report",
    "ScheduleReport",
    "check_invariants",
    "check_schedules",
    "stuck_jobs",
    "wait_quiescent",
]

TERMINAL = ("completed", "failed", "expired", "cancelled")
_INDEX_OF_STATE = {
    "waiting": "ready",
    "delayed": "delayed",
    "active": "leases",
    "completed": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
    "expired": "expired",
}
_INDEXES = ("ready", "delayed", "blocked", "leases", "completed", "cancelled", "failed", "expired", "dlq")
_FIELDS = ("state", "attempts", "retries", "stalls", "interrupts", "result", "dlq_reason", "payload", "token")
_TERMINAL_OPS = {"complete", "fail", "settle_cancelled"}

_SAMPLE_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local bad = {}
for _, id in ipairs(ids) do
  local st = redis.call('HMGET', ARGV[1] .. 'job:' .. id, 'state', 'token')
  if st[1] ~= 'active' or not st[2] or st[2] == '' then
    bad[#bad + 1] = id .. ' leased in state ' .. tostring(st[1]) .. ' token ' .. tostring(st[2])
  end
  if redis.call('ZSCORE', KEYS[2], id) or redis.call('ZSCORE', KEYS[3], id) then
    bad[#bad + 1] = id .. ' leased and ready/delayed at once'
  end
end
return {#ids, bad}
"""


@dataclass
class Enqueued:
    """What the producers were told: acknowledged ids, and "maybe" ids whose enqueue raised."""

    acknowledged: set[str] = field(default_factory=set)
    maybe: set[str] = field(default_factory=set)

    def ack(self, ids: Iterable[str]) -> None:
        self.acknowledged.update(ids)

    def unsure(self, ids: Iterable[str]) -> None:
        self.maybe.update(ids)


def queue_keys(prefix: str, queue: str) -> QueueKeys:
    return Keys(prefix).queue(queue)


class LeaseSampler:
    """Checks the live leases of one queue every ``interval`` seconds in a thread (§14.3).

    Use it as a context manager around the run. Rounds that fail (Redis restarting) are counted,
    not treated as violations.
    """

    def __init__(self, url: str, prefix: str, queue: str, interval: float = 0.1) -> None:
        self.keys = queue_keys(prefix, queue)
        self.url = url
        self.interval = interval
        self.samples = 0
        self.failed_rounds = 0
        self.max_leases = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)

    def __enter__(self) -> LeaseSampler:  # noqa: PYI034 - a plain class, never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            while not self._stop.wait(self.interval):
                try:
                    count, bad = client.eval(
                        _SAMPLE_LUA, 3, self.keys.leases, self.keys.ready, self.keys.delayed, self.keys.base
                    )
                except redis.RedisError:
                    self.failed_rounds += 1
                    continue
                self.samples += 1
                self.max_leases = max(self.max_leases, int(count))
                self.violations.extend(item.decode() for item in bad)
        finally:
            client.close()


def wait_quiescent(url: str, prefix: str, queue: str, *, timeout: float = 60.0, settle: float = 0.4) -> None:
    """Wait until ``ready``, due ``delayed`` and ``leases`` stay empty for ``settle`` seconds (2 × reaper)."""
    keys = queue_keys(prefix, queue)
    client = redis.Redis.from_url(url, socket_timeout=5)
    quiet_since: list[float] = []

    def idle() -> bool:
        now_s, now_us = client.time()
        now_ms = now_s * 1000 + now_us // 1000
        pipe = client.pipeline(transaction=False)
        pipe.zcard(keys.ready)
        pipe.zcount(keys.delayed, "-inf", now_ms)
        pipe.zcard(keys.leases)
        busy = any(pipe.execute())
        if busy:
            quiet_since.clear()
            return False
        if not quiet_since:
            quiet_since.append(time.monotonic())
        return time.monotonic() - quiet_since[0] >= settle

    try:
        wait_until(idle, timeout=timeout, interval=0.05, what=f"queue {queue} quiescent")
    finally:
        client.close()


@dataclass
class Report:
    """What the checker found; :meth:`check` asserts there is no problem."""

    jobs: int = 0
    states: dict[str, int] = field(default_factory=dict)
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    lost: list[str] = field(default_factory=list)
    untracked_duplicates: int = 0
    stalls: int = 0
    retries: int = 0
    interrupts: int = 0
    redelivered_jobs: int = 0
    rejected_settles: int = 0
    stalled_events: int = 0
    lease_samples: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self) -> Report:
        if self.problems or self.lost or self.untracked_duplicates:
            shown = "\n  ".join(self.problems[:40])
            more = f"\n  ... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
            raise AssertionError(
                f"invariants violated: lost={len(self.lost)} {self.lost[:10]}, "
                f"untracked duplicates={self.untracked_duplicates}\n  {shown}{more}"
            )
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "states": self.states,
            "dlq_reasons": self.dlq_reasons,
            "executions": self.executions,
            "lost": len(self.lost),
            "untracked_duplicates": self.untracked_duplicates,
            "stalls": self.stalls,
            "retries": self.retries,
            "interrupts": self.interrupts,
            "redelivered_jobs": self.redelivered_jobs,
            "rejected_settles": self.rejected_settles,
            "stalled_events": self.stalled_events,
            "lease_samples": self.lease_samples,
        }


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _int(value: bytes | None) -> int:
    """A stored count; one that is not an integer (a corrupt job, dead-lettered as such) reads as 0."""
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _read_jobs(url: str, keys: QueueKeys, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Fields and index memberships of ``ids``, in pipelines of 2,000 jobs."""
    client = redis.Redis.from_url(url, socket_timeout=30)
    out: dict[str, dict[str, Any]] = {}
    try:
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            pipe = client.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(keys.job(job_id), _FIELDS)
                for index in _INDEXES:
                    pipe.zscore(getattr(keys, index), job_id)
            replies = pipe.execute()
            step = 1 + len(_INDEXES)
            for offset, job_id in enumerate(chunk):
                values = replies[offset * step]
                scores = replies[offset * step + 1 : (offset + 1) * step]
                if all(value is None for value in values):
                    continue
                job = dict(zip(_FIELDS, values, strict=True))
                out[job_id] = {
                    "state": _text(job["state"]),
                    "attempts": _int(job["attempts"]),
                    "retries": _int(job["retries"]),
                    "stalls": _int(job["stalls"]),
                    "interrupts": _int(job["interrupts"]),
                    "result": _text(job["result"]),
                    "dlq_reason": _text(job["dlq_reason"]),
                    "payload": job["payload"],
                    "token": _text(job["token"]),
                    "indexes": {
                        index for index, score in zip(_INDEXES, scores, strict=True) if score is not None
                    },
                }
    finally:
        client.close()
    return out


def _max_retries(payload: bytes | None) -> int | None:
    try:
        envelope = json.loads(payload or b"")
    except (ValueError, RecursionError):  # a malformed payload, dead-lettered as such
        return None
    value = envelope.get("max_retries") if isinstance(envelope, dict) else None
    return value if isinstance(value, int) else None


@dataclass
class _Limits:
    max_stalls: int
    max_interrupts: int


class _Checker:
    """One run of the checks over the jobs read back from Redis and the ledger's executions."""

    def __init__(
        self,
        enqueued: Enqueued,
        jobs: dict[str, dict[str, Any]],
        executions: dict[str, list[Execution]],
        limits: _Limits,
    ) -> None:
        self.enqueued = enqueued
        self.jobs = jobs
        self.executions = executions
        self.limits = limits
        self.report = Report()
        self.problems = self.report.problems
        self.tokens_seen: dict[str, str] = {}

    def terminal_state(self, job_id: str, *, workers_stopped: bool) -> None:
        """§14.1: exactly one terminal state, and only its own index."""
        report, job = self.report, self.jobs.get(job_id)
        if job is None:
            if job_id in self.enqueued.acknowledged:
                report.lost.append(job_id)
            return
        report.jobs += 1
        state = job["state"]
        report.states[state] = report.states.get(state, 0) + 1
        if state not in TERMINAL:
            if job_id in self.enqueued.acknowledged or workers_stopped:
                report.lost.append(job_id)
                self.problems.append(f"{job_id}: state {state}, not terminal")
            expected_index = _INDEX_OF_STATE.get(state)
            if job["indexes"] != ({expected_index} if expected_index else set()):
                self.problems.append(
                    f"{job_id}: state {state} but in indexes {sorted(job['indexes'])} (stuck)"
                )
            return
        expected = {_INDEX_OF_STATE[state]} | ({"dlq"} if state in {"failed", "expired"} else set())
        if job["indexes"] != expected:
            self.problems.append(f"{job_id}: state {state} but in indexes {sorted(job['indexes'])}")
        if state in {"failed", "expired"}:
            reason = job["dlq_reason"] or "?"
            report.dlq_reasons[reason] = report.dlq_reasons.get(reason, 0) + 1

    def bounded_runs(self, job_id: str, job: dict[str, Any], runs: list[Execution]) -> None:
        """§14.2: executions within 1 + redeliveries, each term within its limit."""
        report, limits = self.report, self.limits
        retries, stalls, interrupts = job["retries"], job["stalls"], job["interrupts"]
        report.stalls += stalls
        report.retries += retries
        report.interrupts += interrupts
        if stalls or interrupts or retries:
            report.redelivered_jobs += 1
        limit = _max_retries(job["payload"])
        if limit is not None and retries > limit:
            self.problems.append(f"{job_id}: retries {retries} > max_retries {limit}")
        if stalls > limits.max_stalls + 1:
            self.problems.append(f"{job_id}: stalls {stalls} > max_stalls + 1")
        if interrupts > limits.max_interrupts + 1:
            self.problems.append(f"{job_id}: interrupts {interrupts} > max_interrupts + 1")
        bound = 1 + retries + stalls + interrupts
        if len(runs) > bound:
            report.untracked_duplicates += len(runs) - bound
            self.problems.append(f"{job_id}: {len(runs)} executions > 1 + redeliveries ({bound})")
        if len(runs) > job["attempts"]:
            self.problems.append(f"{job_id}: {len(runs)} executions but only {job['attempts']} claims")

    def fencing(self, job_id: str, runs: list[Execution]) -> list[Execution]:
        """§14.3 after the run: one accepted terminal settle; overlapping runs not both accepted."""
        terminal_ok = [
            run for run in runs if any(s["status"] == "ok" and s["op"] in _TERMINAL_OPS for s in run.settles)
        ]
        if len(terminal_ok) > 1:
            self.problems.append(f"{job_id}: {len(terminal_ok)} executions had a terminal settle accepted")
        for index, first in enumerate(runs):
            for second in runs[index + 1 :]:
                if first.overlaps(second) and first.accepted and second.accepted:
                    self.problems.append(
                        f"{job_id}: overlapping executions (pids {first.pid}, {second.pid}) were both accepted"
                    )
        return terminal_ok

    def tokens_and_result(
        self, job_id: str, job: dict[str, Any], runs: list[Execution], accepted: list[Execution]
    ) -> None:
        """§14.4: a token runs once; the stored result is an execution's (the accepted one's)."""
        for run in runs:
            if not run.token:
                self.problems.append(f"{job_id}: an execution in pid {run.pid} has no claim token")
                continue
            owner = self.tokens_seen.setdefault(run.token, job_id)
            if owner != job_id or sum(1 for other in runs if other.token == run.token) > 1:
                self.problems.append(f"{job_id}: token {run.token} used by more than one execution")
        if job["state"] != "completed" or not runs or job["result"] is None:
            return
        try:
            result = json.loads(job["result"])
        except ValueError:
            return
        stored = result.get("t") if isinstance(result, dict) else None
        if stored is None:
            return
        if stored not in {run.token for run in runs}:
            self.problems.append(f"{job_id}: stored result of token {stored}, which never ran")
        if accepted and stored != accepted[0].token:
            self.problems.append(
                f"{job_id}: stored result of {stored}, accepted settle was {accepted[0].token}"
            )

    def counters(self, ledger: Ledger, stale_counter: float | None, stalled_events: str | None) -> None:
        """§14.5: rejected settles vs the stale-write counter; job:stalled events vs stalls."""
        report = self.report
        rejected = [s for s in ledger.settles() if s["status"] in {"stale", "gone"} and s["id"] in self.jobs]
        report.rejected_settles = len(rejected)
        if stale_counter is not None and stale_counter != len(rejected):
            self.problems.append(f"stale-write counter {stale_counter:g} != {len(rejected)} rejected settles")
        stalled = [e for e in ledger.events("job:stalled") if e["id"] in self.jobs]
        report.stalled_events = len(stalled)
        # a job dead-lettered as worker_lost had its last stall reported as job:failed, not job:stalled
        redelivered = sum(
            min(job["stalls"], self.limits.max_stalls)
            if job["dlq_reason"] == "worker_lost"
            else job["stalls"]
            for job in self.jobs.values()
        )
        if stalled_events == "exact" and len(stalled) != redelivered:
            self.problems.append(f"{len(stalled)} job:stalled events != {redelivered} stall redeliveries")
        if stalled_events == "at_most" and len(stalled) > redelivered:
            self.problems.append(f"{len(stalled)} job:stalled events > {redelivered} stall redeliveries")


def check_invariants(
    url: str,
    prefix: str,
    queue: str,
    enqueued: Enqueued,
    ledger: Ledger | None,
    *,
    max_stalls: int = 1,
    max_interrupts: int = 2,
    sampler: LeaseSampler | None = None,
    stale_counter: float | None = None,
    stalled_events: str | None = "exact",
    workers_stopped: bool = False,
) -> Report:
    """Run every check of §14 on ``queue``; return the :class:`Report` (call ``.check()`` on it).

    ``stalled_events``: ``"exact"`` (the events equal the stall redeliveries), ``"at_most"`` (a
    killed reaper may have lost its event) or ``None`` (not checked). ``workers_stopped``: the
    workers have exited, so nothing may be active or leased any more.
    """
    keys = queue_keys(prefix, queue)
    wanted = sorted(enqueued.acknowledged | enqueued.maybe)
    jobs = _read_jobs(url, keys, wanted)
    checker = _Checker(
        enqueued, jobs, ledger.executions() if ledger is not None else {}, _Limits(max_stalls, max_interrupts)
    )
    report = checker.report
    for job_id in wanted:
        checker.terminal_state(job_id, workers_stopped=workers_stopped)
        runs = checker.executions.get(job_id, [])
        report.executions += len(runs)
        job = jobs.get(job_id)
        if job is None:
            if runs:
                report.problems.append(f"{job_id}: ran {len(runs)} time(s) but does not exist")
            continue
        checker.bounded_runs(job_id, job, runs)
        accepted = checker.fencing(job_id, runs)
        checker.tokens_and_result(job_id, job, runs, accepted)
    if sampler is not None:
        report.lease_samples = sampler.samples
        report.problems.extend(f"lease sample: {v}" for v in sampler.violations[:20])
        if sampler.samples == 0:
            report.problems.append("the lease sampler took no sample")
    if ledger is not None:
        checker.counters(ledger, stale_counter, stalled_events)
    if workers_stopped:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            leased = client.zcard(keys.leases)
        finally:
            client.close()
        if leased:
            report.problems.append(f"{leased} leases left after the workers stopped")
    return report


_STUCK_LUA = """
local problems = {}
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  local id = string.sub(key, #ARGV[1] + 5)
  if kind ~= 'hash' then
    problems[#problems + 1] = id .. ': job key holds a ' .. kind
  else
    local state = redis.call('HGET', key, 'state')
    -- a hash without a known state is malformed; it must sit in ready, where a claim hands it over
    local index = ({waiting = 'ready', delayed = 'delayed', active = 'leases', completed = 'completed',
      cancelled = 'cancelled', failed = 'failed', expired = 'expired', blocked = 'blocked',
      staged = 'staged'})[state or ''] or 'ready'
    state = tostring(state)
    do
      for _, other in ipairs({'ready', 'delayed', 'leases', 'completed', 'cancelled', 'failed', 'expired',
          'blocked', 'staged'}) do
        local member = redis.call('ZSCORE', ARGV[1] .. other, id) ~= false
        if member ~= (other == index) then
          problems[#problems + 1] = id .. ': state ' .. state .. (member and ' but in ' or ' but not in ') .. other
        end
      end
      local dead = redis.call('ZSCORE', ARGV[1] .. 'dlq', id) ~= false
      if dead ~= (state == 'failed' or state == 'expired') then
        problems[#problems + 1] = id .. ': state ' .. state .. ' and in dlq: ' .. tostring(dead)
      end
    end
  end
end
return problems
"""


def stuck_jobs(url: str, prefix: str, queue: str) -> list[str]:
    """Every job hash of ``queue`` whose index memberships disagree with its state, or no hash at all.

    A test-only ``SCAN`` of the queue's keys (the product never scans); also finds jobs that no
    producer acknowledged. An empty list means every job is reachable by its next transition.
    """
    keys = queue_keys(prefix, queue)
    client = redis.Redis.from_url(url, socket_timeout=10)
    problems: list[str] = []
    try:
        found = list(client.scan_iter(match=f"{keys.base}job:*", count=1000))
        for start in range(0, len(found), 500):
            chunk = found[start : start + 500]
            reply = client.eval(_STUCK_LUA, len(chunk), *chunk, keys.base)
            problems.extend(item.decode("utf-8", "replace") for item in reply)
    finally:
        client.close()
    return problems


@dataclass
class ScheduleReport:
    """What :func:`check_schedules` found: fired due times per schedule key, and problems."""

    dues: dict[str, list[int]] = field(default_factory=dict)
    job_ids: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def check(self) -> ScheduleReport:
        """Raise AssertionError listing the problems, if any."""
        if self.problems:
            raise AssertionError("schedule invariants violated:\n" + "\n".join(self.problems[:40]))
        return self


def _scheduled_ids(client: redis.Redis, keys: QueueKeys, report: ScheduleReport) -> set[str]:
    """Every fired job's id, read from every index once; an id in two indexes is a problem.

    ``dlq`` is the exception: it indexes ``failed`` and ``expired`` jobs a second time.
    """
    seen: dict[str, str] = {}
    for index in _INDEXES:
        if index == "dlq":
            continue
        for raw in client.zrange(f"{keys.base}{index}", 0, -1):
            job_id = raw.decode()
            if job_id.startswith("sch.") and job_id in seen:
                report.problems.append(f"{job_id} is in {seen[job_id]} and {index}")
            seen.setdefault(job_id, index)
    return {job_id for job_id in seen if job_id.startswith("sch.")}


def _check_schedule(
    client: redis.Redis,
    keys: QueueKeys,
    key: str,
    ids: set[str],
    every_ms: int,
    policy: str,
    outages: list[tuple[int, int]],
    report: ScheduleReport,
) -> None:
    stem = f"sch.{key}."
    dues: list[int] = []
    for job_id in sorted(i for i in ids if i.startswith(stem)):
        due = int(job_id[len(stem) :])
        stored = client.hmget(keys.job(job_id), "schedule", "schedule_due")
        if _text(stored[0]) != key or _text(stored[1]) != str(due):
            report.problems.append(f"{job_id}: stored schedule/due {stored} do not match its id")
        dues.append(due)
        report.job_ids.add(job_id)
    dues.sort()
    report.dues[key] = dues
    if not dues:
        report.problems.append(f"{key}: nothing fired")
        return
    off_grid = [d for d in dues if (d - dues[0]) % every_ms]
    if off_grid:
        report.problems.append(f"{key}: dues off the {every_ms} ms grid: {off_grid[:5]}")
    fired = set(dues)
    missing = [t for t in range(dues[0], dues[-1], every_ms) if t not in fired]
    if policy == "all" and missing:
        report.problems.append(f"{key} (catch_up=all): ticks never fired: {missing[:10]}")
    unexplained = [t for t in missing if not any(a <= t <= b for a, b in outages)]
    if unexplained:
        report.problems.append(f"{key}: ticks missing outside any outage: {unexplained[:10]}")
    state = client.hmget(f"{keys.base}schedule:{key}", "next_due", "last_due", "last_job")
    next_due, last_due, last_job = _int(state[0]), _int(state[1]), _text(state[2])
    if next_due <= dues[-1]:
        report.problems.append(f"{key}: next due {next_due} is not after the last fired due {dues[-1]}")
    if last_due != dues[-1] or last_job != f"{stem}{dues[-1]}":
        report.problems.append(f"{key}: last run {last_due}/{last_job} is not the last fired {dues[-1]}")


def check_schedules(
    url: str,
    prefix: str,
    queue: str,
    schedules: dict[str, tuple[int, str]],
    *,
    outages: Iterable[tuple[int, int]] = (),
) -> ScheduleReport:
    """Check the jobs fired for ``schedules`` (key -> (interval ms, catch_up)) on ``queue``.

    ``outages`` are ``(start_ms, end_ms)`` windows of Redis time in which ticks may be missing for
    a schedule whose policy is not ``all``. Job ids are unique per (schedule, due) by construction,
    so "fired twice" shows as an id in two indexes or a stored due that does not match the id.
    """
    keys = queue_keys(prefix, queue)
    report = ScheduleReport()
    windows = list(outages)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        ids = _scheduled_ids(client, keys, report)
        for key, (every_ms, policy) in schedules.items():
            _check_schedule(client, keys, key, ids, every_ms, policy, windows, report)
    finally:
        client.close()
    return report


_DEAD_STATES = frozenset({"failed", "expired", "cancelled"})


def check_flows(url: str, prefix: str, jobs: Iterable[tuple[str, str]], *, max_outbox: int = 0) -> list[str]:
    """The flows invariant: every job of ``jobs`` (``(queue, id)``) is consistent with its parents.

    Once the run is quiescent and the reaper has had a pass, no job is ``blocked`` while all its
    parents have completed (the only allowance is an undelivered outbox entry naming it, at most
    ``max_outbox`` of them in all); a completed job's parents all completed (or, for a job enqueued
    with ``on_parent_failure="run"``, finished); a job dead-lettered with ``dependency_failed`` has
    a dead parent; no job is left ``staged`` (a flow across queues committed or rolled back by the
    reaper's pass: all or none of it). Returns the problems found (empty: the check passed).
    """
    client = redis.Redis.from_url(url, socket_timeout=30)
    problems: list[str] = []
    try:
        wanted = list(jobs)
        states: dict[tuple[str, str], tuple[str | None, list[tuple[str, str]], str | None, str | None]] = {}
        pipe = client.pipeline(transaction=False)
        for queue, job_id in wanted:
            pipe.hmget(
                queue_keys(prefix, queue).job(job_id), ["state", "parents", "dlq_reason", "on_parent_failure"]
            )
        for (queue, job_id), (state, parents, reason, on_failure) in zip(wanted, pipe.execute(), strict=True):
            refs = [ref.split("/", 1) for ref in (_text(parents) or "").split(",") if ref]
            states[queue, job_id] = (
                _text(state),
                [(q, i) for q, i in refs],
                _text(reason),
                _text(on_failure),
            )
        outbox: list[str] = []
        staged: list[str] = []
        for queue in sorted({queue for queue, _ in wanted}):
            outbox += [_text(entry) or "" for entry in client.zrange(queue_keys(prefix, queue).outbox, 0, -1)]
            staged += [
                f"{queue}/{_text(entry)}" for entry in client.zrange(queue_keys(prefix, queue).staged, 0, -1)
            ]
    finally:
        client.close()
    # a staged job is in its queue's `staged` set until its flow is committed or rolled back
    problems += (
        [f"{len(staged)} jobs of flows neither committed nor rolled back: {staged[:5]}"] if staged else []
    )
    if len(outbox) > max_outbox:
        problems.append(f"{len(outbox)} outbox entries undelivered (allowed {max_outbox}): {outbox[:5]}")
    for (queue, job_id), (state, parents, reason, on_failure) in states.items():
        parent_states = [states.get(parent, (None,))[0] for parent in parents]
        name = f"{queue}/{job_id}"
        if state is None:
            problems.append(f"{name}: missing")
        elif state == "blocked" and all(found == "completed" for found in parent_states):
            if not any(entry.endswith("|" + name) for entry in outbox):
                problems.append(f"{name}: blocked although every parent completed: {parents}")
        elif state == "completed" and on_failure != "run" and any(p != "completed" for p in parent_states):
            problems.append(
                f"{name}: completed before its parents: {list(zip(parents, parent_states, strict=True))}"
            )
        elif state == "completed" and any(p not in _DEAD_STATES | {"completed"} for p in parent_states):
            problems.append(f"{name}: ran while a parent was unfinished: {parent_states}")
        elif reason == "dependency_failed" and not any(p in _DEAD_STATES for p in parent_states):
            problems.append(f"{name}: dead-lettered for a parent, but none is dead: {parent_states}")
    return problems

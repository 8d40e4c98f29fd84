"""The execution ledger of worker subprocesses (reliability.md §13).

Each worker process appends JSON lines to its own file, ``<dir>/ledger-<pid>.jsonl``, opened with
``O_APPEND`` and written with one ``os.write`` per record, so a SIGKILL loses at most the record
being written and never interleaves two. Every record carries ``ev``, ``pid`` and ``mono``
(``CLOCK_MONOTONIC``, shared by every process on the host, so times of different workers and of the
test compare directly). Records:

* ``claim``: a claim call returned ``ids`` with their ``tokens`` and ``now``, the backend's clock at
  the claim (written by the test app's hook);
* ``start`` / ``end``: one execution of a handler, with ``id``, ``token`` and ``attempt``;
* ``settle``: a fenced write (``op``: complete, retry, fail, requeue, defer, settle_cancelled) with
  its reply ``status`` (``ok``, ``stale``, ``gone``, ``too_large``);
* ``event``: a lifecycle event the process emitted (``name``, ``id``), e.g. ``job:stalled``.

The writer side (:class:`LedgerWriter`) runs inside the worker subprocesses (``chaos_app``); the
reader side (:class:`Ledger`) in the test.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["LEDGER_ENV", "Execution", "Ledger", "LedgerWriter", "ledger", "monotonic"]

LEDGER_ENV = "CHAOS_LEDGER_DIR"


def monotonic() -> float:
    """``CLOCK_MONOTONIC`` in seconds: comparable across the processes of one host."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class LedgerWriter:
    """Appends records to ``<directory>/ledger-<pid>.jsonl`` (one ``os.write`` per line)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.pid = os.getpid()
        self.path = Path(directory) / f"ledger-{self.pid}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, ev: str, **fields: Any) -> None:
        record = {"ev": ev, "pid": self.pid, "mono": monotonic(), **fields}
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


@dataclass
class Execution:
    """One run of a handler: from its ``start`` record to its ``end`` record (``None`` when killed)."""

    job_id: str
    token: str
    pid: int
    start: float
    attempt: int | None = None
    end: float | None = None
    settles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        """Whether a settle written with this execution's token was accepted."""
        return any(settle["status"] == "ok" for settle in self.settles)

    @property
    def finish(self) -> float:
        """When it was over: its ``end``, else its last settle (a cancelled handler's requeue), else never."""
        if self.end is not None:
            return self.end
        if self.settles:
            return float(self.settles[-1]["mono"])
        return float("inf")

    def overlaps(self, other: Execution) -> bool:
        """Whether the two executions ran at the same time (an unfinished one runs on forever)."""
        return self.start < other.finish and other.start < self.finish


class Ledger:
    """Every record of every process that wrote to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[Path, tuple[int, list[dict[str, Any]]]] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment variable that points a worker subprocess at this ledger."""
        return {LEDGER_ENV: str(self.directory)}

    def records(self, ev: str | None = None) -> list[dict[str, Any]]:
        """All records (of kind ``ev``), in ``mono`` order; a torn last line (SIGKILL) is skipped.

        Files are read incrementally (complete lines only), so polling a large ledger stays cheap.
        """
        for path in sorted(self.directory.glob("ledger-*.jsonl")):
            offset, parsed = self._cache.get(path, (0, []))
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk.rfind(b"\n") + 1
            for line in chunk[:complete].splitlines():
                try:
                    parsed.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by SIGKILL mid-write
            self._cache[path] = (offset + complete, parsed)
        out = [
            record
            for _offset, parsed in self._cache.values()
            for record in parsed
            if ev is None or record.get("ev") == ev
        ]
        out.sort(key=lambda record: record["mono"])
        return out

    def starts(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """``start`` records (of one job)."""
        return [r for r in self.records("start") if job_id is None or r["id"] == job_id]

    def executions(self) -> dict[str, list[Execution]]:
        """Executions by job id, each with its end and the settles written with its token."""
        by_token: dict[tuple[str, str], Execution] = {}
        out: dict[str, list[Execution]] = defaultdict(list)
        records = self.records()
        for record in records:
            if record["ev"] == "start":
                execution = Execution(
                    record["id"], record["token"], record["pid"], record["mono"], record.get("attempt")
                )
                out[record["id"]].append(execution)
                by_token[record["id"], record["token"]] = execution
        for record in records:
            if record["ev"] == "end":
                found = by_token.get((record["id"], record["token"]))
                if found is not None:
                    found.end = record["mono"]
            elif record["ev"] == "settle":
                found = by_token.get((record["id"], record["token"]))
                if found is not None:
                    found.settles.append(record)
        return dict(out)

    def settles(self, status: str | None = None) -> list[dict[str, Any]]:
        """``settle`` records (with reply ``status``)."""
        return [r for r in self.records("settle") if status is None or r["status"] == status]

    def events(self, name: str) -> list[dict[str, Any]]:
        """``event`` records of one lifecycle event name."""
        return [r for r in self.records("event") if r["name"] == name]

    def first_start(
        self, job_id: str, *, after: float = 0.0, exclude_pids: Iterable[int] = ()
    ) -> float | None:
        """``mono`` of the first start of ``job_id`` after ``after`` in a process not in ``exclude_pids``."""
        excluded = set(exclude_pids)
        for record in self.starts(job_id):
            if record["mono"] > after and record["pid"] not in excluded:
                return float(record["mono"])
        return None

    def running(self, pid: int) -> list[dict[str, Any]]:
        """``start`` records of ``pid`` without a matching ``end`` (jobs in flight in that process)."""
        ended = {(r["id"], r["token"]) for r in self.records("end") if r["pid"] == pid}
        return [r for r in self.starts() if r["pid"] == pid and (r["id"], r["token"]) not in ended]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """An empty ledger directory for this test's worker subprocesses."""
    directory = tmp_path / "ledger"
    directory.mkdir()
    return Ledger(directory)

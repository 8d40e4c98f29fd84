"""Find and kill every process below a sandbox child, without cgroups (Linux ``/proc``).

``killpg`` reaches a process group, and a process that calls ``setsid()`` leaves it; but it keeps its
parent, so walking the parent links in ``/proc`` still finds it. A process whose parent dies is adopted by
the nearest *subreaper* ancestor, so the sandbox child makes itself one (:func:`become_subreaper`): while it
lives, what its handlers start, daemonised or not, stays below it. Processes are remembered by pid *and*
start time, so a pid the kernel has handed to an unrelated process is never signalled.

Elsewhere than Linux nothing is found and only the process group is stopped. Standard library only: the
sandbox child imports this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

__all__ = ["ProcessTree", "become_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_PROC = "/proc"
_STOP_WAIT = 0.5  # how long a SIGSTOP may take to land before the kill goes ahead regardless
_STEP = 0.005

_Stat = tuple[str, int, int, int]  # state, parent pid, process group, start time (clock ticks since boot)


def become_subreaper() -> bool:
    """Adopt the orphans of every descendant (``PR_SET_CHILD_SUBREAPER``); whether the kernel agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as file:  # noqa: PTH123 - one small read, many times per walk
            data = file.read()
    except OSError:
        return None  # gone, or not ours to read
    # The command name (field 2) may hold spaces and parentheses: the other fields follow its last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii"), int(fields[1]), int(fields[2]), int(fields[19])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def _table() -> dict[int, _Stat]:
    try:
        names = os.listdir(_PROC)  # noqa: PTH208 - names only, thousands of times cheaper than Paths
    except OSError:
        return {}
    table = {}
    for name in names:
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            table[int(name)] = stat
    return table


def _running(stat: _Stat | None) -> bool:
    # A zombie runs nothing and forks nothing; its own children were handed on when it exited.
    return stat is not None and stat[0] not in {"Z", "X", "x"}


def _halted(pid: int) -> bool:
    stat = _stat(pid)
    return stat is None or stat[0] in {"T", "t", "Z", "X", "x"}


def _all_halted(pids: list[int]) -> bool:
    return all(_halted(pid) for pid in pids)


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _STOP_WAIT
    while not done() and time.monotonic() < deadline:
        time.sleep(_STEP)


class ProcessTree:
    """The processes below ``root``, remembered as they are seen.

    So one that leaves the root's session, or whose parent dies, is still stopped: :meth:`refresh` while
    the root lives, then :meth:`signal` or :meth:`kill`. The root itself is left to its owner.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self._known: dict[int, int] = {}  # pid -> start time

    @property
    def pids(self) -> list[int]:
        """The live processes found so far (as of the last walk)."""
        return list(self._known)

    def refresh(self) -> list[int]:
        """Walk ``/proc`` once: forget what has died, add what runs below the root or below what is known."""
        table = _table()
        self._known = {
            pid: start
            for pid, start in self._known.items()
            if _running(stat := table.get(pid)) and stat is not None and stat[3] == start
        }
        children: dict[int, list[int]] = {}
        for pid, (_, parent, _, _) in table.items():
            children.setdefault(parent, []).append(pid)
        below = [self.root, *self._known]
        while below:
            for pid in children.get(below.pop(), ()):
                stat = table[pid]
                if pid != self.root and pid not in self._known and _running(stat):
                    self._known[pid] = stat[3]
                    below.append(pid)
        return self.pids

    def signal(self, signum: int, pids: Iterable[int] | None = None, *, outside_group: int = 0) -> None:
        """Send ``signum`` to the known processes (or the known ones of ``pids``) that are still the same.

        ``outside_group``: skip the members of that process group (a ``killpg`` already reached them).
        """
        for pid in list(self._known) if pids is None else pids:
            start = self._known.get(pid)
            stat = _stat(pid)
            if start is not None and stat is not None and stat[3] == start and stat[2] != outside_group:
                # Lookup error: it died after the check; permission error: it became another user's.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process below the root, including what they start meanwhile; whether none is left.

        Each is stopped first, and the walk repeated until it finds nothing new: a stopped process cannot
        fork, so when the set stops growing it is complete, and killing it leaves no orphan behind.
        """
        deadline = time.monotonic() + timeout
        stopped: set[int] = set()
        while self.refresh():
            if time.monotonic() >= deadline:
                self.signal(signal.SIGKILL)
                return not self.refresh()
            fresh = [pid for pid in self._known if pid not in stopped]
            if fresh:
                self.signal(signal.SIGSTOP, fresh)
                stopped.update(fresh)
                _wait(functools.partial(_all_halted, fresh))
                continue  # one may have forked before its stop landed: walk again
            self.signal(signal.SIGKILL)
            _wait(lambda: not any(_running(_stat(pid)) for pid in self._known))
        return True

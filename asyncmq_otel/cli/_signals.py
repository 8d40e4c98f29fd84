"""SIGTERM/SIGINT for long-running commands: the first drains, a second one at least 1 s later stops at once.

A repeat within 1 s of the last accepted signal is a duplicate (a terminal's Ctrl-C reaching the
process twice, or an orchestrator that signals the process and its group) and is ignored.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import anyio

from ._output import Reporter

__all__ = ["DUPLICATE_WINDOW", "StopSignals"]

DUPLICATE_WINDOW = 1.0
"""Seconds after an accepted signal during which another one is ignored."""


class StopSignals:
    """Decides what each stop signal means and calls back.

    Args:
        drain: called on the first signal (stop claiming, let in-flight work finish).
        now: called on the second signal (cancel in-flight work and requeue it).
        reporter: where the decision is reported.
        drain_note: what the first signal does, for the message (e.g. "in-flight jobs get 25s").
        single: the first signal stops everything (nothing to drain): no "send it again" hint.
        clock: monotonic clock (injectable for tests).

    """

    def __init__(
        self,
        drain: Callable[[], None],
        now: Callable[[], None],
        reporter: Reporter,
        *,
        drain_note: str = "",
        single: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._single = single
        self._drain = drain
        self._now = now
        self._reporter = reporter
        self._drain_note = drain_note
        self._clock = clock
        self._accepted_at: float | None = None
        self.count = 0

    def handle(self, signum: int) -> str:
        """Act on one signal; return ``"drain"``, ``"now"``, ``"duplicate"`` or ``"stopping"``."""
        name = signal.Signals(signum).name
        at = self._clock()
        if self._accepted_at is not None and at - self._accepted_at < DUPLICATE_WINDOW:
            self._reporter.say(
                "signal.duplicate",
                f"{name} ignored: it came within {DUPLICATE_WINDOW:g}s of the last one "
                f"(send it again after {DUPLICATE_WINDOW:g}s to stop at once)",
                signal=name,
            )
            return "duplicate"
        if self.count >= 2:  # noqa: PLR2004 - the second accepted signal already stopped everything
            self._reporter.say("signal.stopping", f"{name} ignored: already stopping", signal=name)
            return "stopping"
        self._accepted_at = at
        self.count += 1
        if self.count == 1 and self._single:
            self.count = 2
            self._reporter.say("shutdown.stopping", f"{name} received: stopping", signal=name)
            self._drain()
            return "drain"
        if self.count == 1:
            note = f" ({self._drain_note})" if self._drain_note else ""
            self._reporter.say(
                "shutdown.draining",
                f"{name} received: draining{note}; send it again to stop at once",
                signal=name,
            )
            self._drain()
            return "drain"
        self._reporter.say(
            "shutdown.now",
            f"{name} received again: stopping now, in-flight jobs go back to the queue",
            signal=name,
        )
        self._now()
        return "now"

    async def watch(self) -> None:
        """Receive SIGTERM and SIGINT until cancelled (main thread only).

        Once the handlers are in place the two signals are unblocked: a worker supervisor starts its
        children with them blocked, so one sent during start-up waits instead of killing a
        half-started process (unblocking signals that are not blocked changes nothing).
        """
        stop = {signal.SIGTERM, signal.SIGINT}
        with anyio.open_signal_receiver(*stop) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
            async for signum in signals:
                self.handle(signum)

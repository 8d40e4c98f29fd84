"""Lease renewal off the handler's code path, and the event-loop watchdog.

A dedicated thread renews every lease the process holds, one call per queue, through the
backend's synchronous channel. A handler that blocks the event loop therefore keeps its
lease, until the loop has not ticked for ``loop_block_limit`` seconds: then renewal stops
and the job is reclaimed and fenced like a zombie's.

Renewals keep time on the worker's clock (a FakeClock's advance brings the next round); the
watchdog reads real monotonic time, since only real time reveals a blocked loop.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable

from ..backends.base import Backend, RenewStatus
from ..clock import Clock, system_clock, wait_in_thread

__all__ = ["LeaseKeeper"]

_log = logging.getLogger("asyncmq_otel.leases")

Leases = dict[str, dict[str, str]]  # queue -> {job_id: token}
_RETRY_SOON = 0.1


class LeaseKeeper:
    """Owns the renewer thread of one worker.

    Args:
        backend: where the leases live.
        snapshot: returns the leases to renew now (called in the thread; must be thread-safe).
        on_status: called in the thread with ``(queue, job_id, status)`` for ``LOST``/``CANCEL`` answers.
        lease: the lease length to renew to.
        interval: seconds between renewals.
        loop_block_limit: stop renewing once the loop's last tick is older than this (real seconds).
        clock: the clock renewal intervals are counted on.

    """

    def __init__(
        self,
        backend: Backend,
        snapshot: Callable[[], Leases],
        on_status: Callable[[str, str, RenewStatus], None],
        *,
        lease: float,
        interval: float,
        loop_block_limit: float,
        clock: Clock = system_clock,
    ) -> None:
        self._backend = backend
        self._snapshot = snapshot
        self._on_status = on_status
        self._lease = lease
        self._interval = interval
        self._loop_block_limit = loop_block_limit
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loop_tick = time.monotonic()
        self._blocked_reported = False

    def tick(self) -> None:
        """Record that the event loop is alive (called from a loop task every second)."""
        self.loop_tick = time.monotonic()
        self._blocked_reported = False

    def start(self) -> None:
        """Start the renewer thread."""
        # The thread runs in a copy of the starting task's context, so telemetry's suppression of
        # the worker's own backend calls covers renewals too.
        context = contextvars.copy_context()
        # The worker's start-up (registration, first connection) ran since __init__ without the
        # tick task: that time must not count as a blocked loop.
        self.tick()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="asyncmq-lease-renewer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (it finishes its current renewal first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self._interval, 1.0) + 5.0)

    def _run(self) -> None:
        renewer = self._backend.lease_renewer()
        try:
            wait = self._interval
            while not wait_in_thread(self._clock, wait, self._stop):
                # After a failed round, try again soon: renewing at once after a reconnect is what
                # lets live workers keep their leases through an outage (outage grace).
                wait = self._interval if self.renew_now(renewer.renew) else min(self._interval, _RETRY_SOON)
        finally:
            renewer.close()

    def renew_now(self, renew: Callable[[str, dict[str, str], float], dict[str, RenewStatus]]) -> bool:
        """One renewal round (the thread's body; tests call it directly). False when a call failed."""
        blocked_for = time.monotonic() - self.loop_tick
        if blocked_for > self._loop_block_limit:
            if not self._blocked_reported:
                self._blocked_reported = True
                _log.error(
                    "worker.event_loop_blocked: the event loop has not run for %.1fs (limit %.1fs); "
                    "leases are no longer renewed, so these jobs will be redelivered",
                    blocked_for,
                    self._loop_block_limit,
                )
            return True
        ok = True
        for queue, leases in self._snapshot().items():
            if not leases:
                continue
            try:
                statuses = renew(queue, leases, self._lease)
            except Exception:  # noqa: BLE001 - a failed round is retried next interval; the outage grace covers it
                _log.warning(
                    "worker.renew_failed: could not renew %d leases on %s", len(leases), queue, exc_info=True
                )
                ok = False
                continue
            for job_id, status in statuses.items():
                if status is not RenewStatus.OK:
                    self._on_status(queue, job_id, status)
        return ok

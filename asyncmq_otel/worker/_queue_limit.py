"""The claim loop's side of the queue's shared rate limit: wait when a claim was throttled, report it once.

The backend enforces the limit inside ``claim`` (a token per claimed job, in the same atomic step);
a reply with ``throttled_for`` says the limit held the claim back. The loop then waits that long
(cancelled at once by a shutdown, like every wait of the loop), and the first job it claims
afterwards carries the whole wait as ``job:throttled`` with ``scope="queue"``.
"""

from __future__ import annotations

from ..clock import Clock

__all__ = ["THROTTLE_EVENT_THRESHOLD", "QueueThrottle", "Throttle"]

THROTTLE_EVENT_THRESHOLD = 0.001
"""A job held longer than this (seconds) by a rate limit was throttled; shorter holds report 0."""

Throttle = tuple[float, float, str]
"""``(started, waited, scope)``: when a rate-limit wait began (unix seconds), how long it lasted, and
which limit held it: ``"worker"`` (the worker's own ``rate_limit``) or ``"queue"`` (the shared one)."""


class QueueThrottle:
    """One claim loop's wait for the queue's shared rate limit, from its first throttled claim."""

    __slots__ = ("_clock", "_max_wait", "_since")

    def __init__(self, max_wait: float, clock: Clock) -> None:
        self._clock = clock
        # A wait is cut to max_wait (the block timeout) and the claim asked again, so a cleared or
        # raised limit applies within that time even when the interval is long.
        self._max_wait = max_wait
        self._since: tuple[float, float] | None = None  # (unix, monotonic) the throttling began

    async def wait(self, seconds: float) -> None:
        """Wait until the limit frees a token (a claim said so in ``throttled_for``)."""
        if self._since is None:
            self._since = (self._clock.time(), self._clock.monotonic())
        await self._clock.sleep(max(min(seconds, self._max_wait), 0.0))

    def reset(self) -> None:
        """A claim found nothing to claim, unthrottled: the wait ended without a job to report it on."""
        self._since = None

    def claimed(self, worker: Throttle | None) -> Throttle | None:
        """A claim returned jobs: the throttle its first job reports (the queue's covers the worker's)."""
        since, self._since = self._since, None
        if since is None:
            return worker
        waited = self._clock.monotonic() - since[1]
        if waited <= THROTTLE_EVENT_THRESHOLD:
            return worker
        return (since[0], waited, "queue")

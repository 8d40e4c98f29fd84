"""``Worker``: start-up, the background duties (renewal, heartbeat, reaper, event dispatch) and shutdown.

Shutdown follows the reliability contract: a stop request ends claiming at once; in-flight
jobs get ``shutdown_timeout`` seconds to finish; the rest are cancelled and requeued at their
original place; then a shielded tail deregisters, emits ``worker:stopped``, drains queued
events and runs the ``worker_on_shutdown`` hooks, even when the worker was cancelled from outside.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .._lifecycle import emit_job_event
from ..backends._default import default_backend
from ..backends.base import Backend, RenewStatus, StoredJob, WorkerInfo
from ..clock import Clock, SystemClock, system_clock
from ..errors import DataLossDetected
from ..events import LifecycleEvent, Service, bus
from ..hooks import Hook, run_hooks, run_hooks_safely
from ..jobs import check_queue_name
from ..limiters import RateLimiter
from ..settings import get_settings
from ..tasks import TASK_REGISTRY, autodiscover_tasks
from .attempt import CancelReason
from .claim_loop import WorkerContext, claim_jobs, server_fields
from .leases import LeaseKeeper
from .relay import EventRelay, relay_to
from .scheduler import run_scheduler

if TYPE_CHECKING:
    from ..queues import Queue

__all__ = ["Worker"]

_log = logging.getLogger("asyncmq_otel.worker")

_TAIL_BUDGET = 10.0
_TICK_INTERVAL = 1.0
_RECONNECT_BACKOFF_CAP = 2.0  # the Redis client's reconnect backoff cap: renewers may need that long
# a reap slower than this to reach the backend is treated as held up by an outage; above the delays
# a loaded machine adds to a healthy call
_LATE_REAP_FLOOR = 1.0


class Worker:
    """Runs jobs of one or more queues until stopped.

    Args:
        queue: a queue name or :class:`Queue`, or a list of them (one process can serve several).
        backend: where the jobs live; the queue's backend, else ``settings.backend``.
        concurrency: jobs run at once (default ``settings.worker_concurrency``).
        rate_limit: job starts allowed per ``rate_interval`` (default ``settings.rate_limit``).
        rate_interval: seconds of the rate window (default ``settings.rate_interval``).
        burst: return once the queues are empty and nothing is running or due.
        group: the consumer group reported in telemetry (default ``settings.worker_group``).
        shutdown_timeout: seconds in-flight jobs get after a stop (default ``settings.shutdown_timeout``).
        clock: what idle waits, lease renewal, reaping, heartbeats, schedules, delays, TTLs, rate
            limits and handler timeouts are timed on (default: the backend's clock if it was given one, e.g.
            ``InMemoryBackend(clock=FakeClock())``, else the real clock). Shutdown budgets and the
            event-loop watchdog always use real time.

    """

    def __init__(
        self,
        queue: str | Queue | Sequence[str | Queue],
        *,
        backend: Backend | None = None,
        concurrency: int | None = None,
        rate_limit: int | None = None,
        rate_interval: float | None = None,
        burst: bool = False,
        group: str | None = None,
        shutdown_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        items = [queue] if isinstance(queue, str) or not isinstance(queue, Sequence) else list(queue)
        if not items:
            raise ValueError("a worker needs at least one queue")
        self.queues: list[str] = []
        for item in items:
            if isinstance(item, str):
                self.queues.append(check_queue_name(item))
            else:
                self.queues.append(item.name)
                backend = backend or item._backend  # noqa: SLF001 - the queue's explicit backend, if any
        self._backend = backend
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.rate_interval = rate_interval
        self.burst = burst
        self.group = group
        self.shutdown_timeout = shutdown_timeout
        self._clock = clock
        self.worker_id = str(uuid.uuid4())
        self.state = "idle"
        self.exit_reason = "shutdown"
        self._stop_requested = False
        self._stop_now = False
        self._claim_scope: anyio.CancelScope | None = None
        self._drain_scope: anyio.CancelScope | None = None
        self._startup_scope: anyio.CancelScope | None = None  # the startup hooks, while they run
        self._hooks_scope: anyio.CancelScope | None = None  # the shutdown hooks, while they run
        self._drain_timeout = 0.0
        self._loop_thread: int | None = None
        self._loop_token: Any = None
        self._context: WorkerContext | None = None
        self._data_loss: DataLossDetected | None = None
        self._relay: EventRelay | None = None
        self._started = threading.Event()
        self._finished = threading.Event()

    def __repr__(self) -> str:
        return f"Worker({self.queues}, id={self.worker_id[:8]}, state={self.state})"

    @property
    def backend(self) -> Backend:
        """The backend this worker claims from."""
        if self._backend is None:
            self._backend = default_backend()
        return self._backend

    @property
    def clock(self) -> Clock:
        """The clock this worker is timed on (see the ``clock`` argument)."""
        if self._clock is None:
            timer = getattr(self.backend, "timer", None)  # InMemoryBackend's clock
            # A bare wall-time callable given to the backend (a SystemClock underneath) stays the
            # backend's own: skew tests offset the backend's time, not the worker's.
            self._clock = system_clock if isinstance(timer, SystemClock) or timer is None else timer
        return self._clock

    @property
    def requeue_failures(self) -> int:
        """Interrupted jobs this worker could not return to the queue within the requeue budget."""
        return 0 if self._context is None else self._context.requeue_failures

    @property
    def context(self) -> WorkerContext | None:
        """The running worker's context (jobs in flight); ``None`` before ``run``."""
        return self._context

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block (from another thread) until the worker has started claiming."""
        return self._started.wait(timeout)

    # -- entry points --------------------------------------------------------------------------------
    def start(self, *, anyio_backend: str = "asyncio", handle_signals: bool = True) -> None:
        """Run the worker in this thread until it is stopped (for scripts and containers).

        In the main thread, the first SIGTERM/SIGINT drains gracefully and a second stops at once.
        """
        install = handle_signals and threading.current_thread() is threading.main_thread()
        anyio.run(self._run_with_signals if install else self.run, backend=anyio_backend)

    async def _run_with_signals(self) -> None:
        async with anyio.create_task_group() as group:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _signum in signals:
                        self.stop()

            group.start_soon(watch_signals)
            try:
                await self.run()
            finally:
                group.cancel_scope.cancel()

    def stop(self, *, now: bool = False) -> None:
        """Ask for a graceful stop from any thread or task; a second call (or ``now``) skips the drain."""
        token = self._loop_token
        if token is None or threading.get_ident() == self._loop_thread:
            self._request_stop(now=now)
            return
        try:
            anyio.from_thread.run_sync(lambda: self._request_stop(now=now), token=token)
        except RuntimeError:  # the loop has already finished
            self._stop_requested = True

    def _request_stop(self, *, now: bool) -> None:
        second = self._stop_requested
        self._stop_requested = True
        if self._claim_scope is not None:
            self._claim_scope.cancel()
        startup = self._startup_scope
        if startup is not None and not (now or second):
            # A startup hook still running is in-flight work: it gets the drain timeout.
            startup.deadline = min(startup.deadline, anyio.current_time() + self._drain_timeout)
        if now or second:
            self._stop_now = True
            for scope in (self._drain_scope, startup, self._hooks_scope):
                if scope is not None:
                    scope.cancel()

    # -- the run -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until :meth:`stop` (or, in burst mode, until the queues are empty)."""
        config = get_settings()
        backend = self.backend
        self._loop_thread = threading.get_ident()
        self._loop_token = anyio.lowlevel.current_token()
        self._drain_timeout = (
            self.shutdown_timeout if self.shutdown_timeout is not None else config.shutdown_timeout
        )
        # Let the tasks started beside the worker (signal receivers) start before anything here
        # blocks: a SIGTERM during start-up is then a stop request, not death by the default action.
        await anyio.lowlevel.checkpoint()
        concurrency = self.concurrency or config.worker_concurrency
        rate_limit = self.rate_limit if self.rate_limit is not None else config.rate_limit
        rate_interval = self.rate_interval or config.rate_interval
        clock = self.clock
        ctx = WorkerContext(
            worker_id=self.worker_id,
            group=self.group or config.worker_group,
            config=config,
            burst=self.burst,
            clock=clock,
        )
        ctx.server = server_fields(backend)
        self._context = ctx
        queue_label = ",".join(self.queues)
        await self._start_up(config.worker_on_startup, backend, queue_label)

        info = WorkerInfo(
            worker_id=self.worker_id,
            queues=list(self.queues),
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=concurrency,
            group=ctx.group,
            started_at=clock.time(),
            tasks={task_id: task.queue for task_id, task in TASK_REGISTRY.items()},  # producers check names
        )
        keeper = LeaseKeeper(
            backend,
            ctx.leases,
            self._on_renew_status,
            lease=config.lease,
            interval=config.renew_interval,
            loop_block_limit=config.loop_block_limit,
            clock=clock,
        )
        limiter = anyio.CapacityLimiter(concurrency)
        rate_limiter = RateLimiter(rate_limit, rate_interval, clock=clock) if rate_limit else None
        try:
            await backend.register_worker(info, 3 * config.heartbeat_interval)
            backend.add_cancel_listener(self._on_cancel_hint)
            if backend.on_data_loss is None or config.on_data_loss == "halt":
                backend.on_data_loss = self._on_data_loss
            async with anyio.create_task_group() as services:
                # Started before worker:started, so user listeners run in the caller's context
                # (telemetry suppresses instrumentation of the worker's own bookkeeping from there on).
                services.start_soon(bus.run_dispatcher)
                publisher = relay_to(backend) if config.publish_events else None
                if publisher is not None:  # other processes follow this worker's events too
                    self._relay = EventRelay(bus, self.worker_id, publisher)
                    bus.on("*", self._relay.listen, inline=True)
                    services.start_soon(self._relay.run)
                for queue in self.queues:
                    bus.emit(self._worker_event("worker:started", queue, concurrency=concurrency, active=0))
                keeper.start()
                services.start_soon(self._tick, keeper)
                services.start_soon(self._heartbeat, backend, info, ctx, concurrency)
                services.start_soon(self._reaper, backend, ctx)
                services.start_soon(run_scheduler, backend, list(self.queues), self.worker_id, clock)
                for service in bus.services():
                    services.start_soon(_isolated_service, service, backend, list(self.queues))
                await self._serve(ctx, limiter, rate_limiter, backend)
                services.cancel_scope.cancel()
        except BaseException:
            self.exit_reason = "error"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown_tail(backend, keeper, info, config.worker_on_shutdown, queue_label)
        if self._data_loss is not None:
            raise self._data_loss

    async def _start_up(
        self, hooks: Hook | Sequence[Hook] | None, backend: Backend, queue_label: str
    ) -> None:
        """Import the task packages and run the ``worker_on_startup`` hooks.

        A stop request bounds the hooks like in-flight jobs: the drain timeout, or at once on a
        second request.
        """
        autodiscover_tasks()
        self.state = "starting"
        with anyio.CancelScope() as startup:
            self._startup_scope = startup
            await run_hooks(hooks, backend=backend, worker_id=self.worker_id, queue=queue_label)
        self._startup_scope = None
        if startup.cancelled_caught:
            _log.warning(
                "worker.startup_abandoned: worker %s stopped before its startup hooks returned",
                self.worker_id,
            )

    async def _serve(
        self,
        ctx: WorkerContext,
        limiter: anyio.CapacityLimiter,
        rate_limiter: RateLimiter | None,
        backend: Backend,
    ) -> None:
        """Claim until stopped (or the burst is done), then drain the jobs in flight."""
        async with anyio.create_task_group() as handlers:
            ctx.handlers = handlers
            with anyio.CancelScope() as claim_scope:
                self._claim_scope = claim_scope
                if self._stop_requested:
                    claim_scope.cancel()
                self.state = "running"
                self._started.set()
                async with anyio.create_task_group() as claimers:
                    for queue in self.queues:
                        claimers.start_soon(
                            functools.partial(claim_jobs, queue, limiter, rate_limiter, backend, context=ctx)
                        )
            self.state = "draining"
            await self._drain(ctx)

    async def _drain(self, ctx: WorkerContext) -> None:
        if ctx.held and not self.burst:
            # Real time, not the worker's clock: the stop grace is what a supervisor measures.
            with anyio.move_on_after(0 if self._stop_now else self._drain_timeout) as scope:
                self._drain_scope = scope
                while ctx.held:
                    await ctx.idle_event().wait()
            for attempt in list(ctx.held.values()):
                attempt.cancel(CancelReason.SHUTDOWN)

    async def _shutdown_tail(
        self,
        backend: Backend,
        keeper: LeaseKeeper,
        info: WorkerInfo,
        hooks: Hook | Sequence[Hook] | None,
        queue_label: str,
    ) -> None:
        self.state = "stopping"
        deadline = anyio.current_time() + _TAIL_BUDGET
        with anyio.CancelScope(deadline=deadline):
            await anyio.to_thread.run_sync(keeper.stop)
            backend.remove_cancel_listener(self._on_cancel_hint)
            try:
                await backend.deregister_worker(info.worker_id)
            except Exception:  # noqa: BLE001 - the registration expires by itself; shutdown goes on
                _log.warning("worker.deregister_failed: %s", info.worker_id, exc_info=True)
            for queue in self.queues:
                bus.emit(self._worker_event("worker:stopped", queue, reason=self.exit_reason))
            await bus.drain(1.0)
            relay, self._relay = self._relay, None
            if relay is not None:
                bus.off("*", relay.listen)
                with anyio.move_on_after(1.0):
                    await relay.flush()
        # What is left of the budget; a stop-now request (a second signal) abandons them at once (a
        # sync hook runs in a thread, so neither waits for a hook that blocks).
        with anyio.CancelScope(deadline=deadline) as hooks_scope:
            self._hooks_scope = hooks_scope
            await run_hooks_safely(hooks, backend=backend, worker_id=self.worker_id, queue=queue_label)
        self._hooks_scope = None
        if hooks_scope.cancelled_caught:
            _log.warning(
                "worker.shutdown_hooks_abandoned: worker %s stopped before its shutdown hooks returned",
                self.worker_id,
            )
        self.state = "stopped"
        self._finished.set()

    # -- background duties ---------------------------------------------------------------------------
    async def _tick(self, keeper: LeaseKeeper) -> None:
        # Real time: the watchdog detects a blocked event loop, which only real time reveals.
        while True:
            keeper.tick()
            await anyio.sleep(_TICK_INTERVAL)

    async def _heartbeat(
        self, backend: Backend, info: WorkerInfo, ctx: WorkerContext, concurrency: int
    ) -> None:
        interval = ctx.config.heartbeat_interval
        while True:
            await ctx.clock.sleep(interval)
            info.active = ctx.running()
            info.state = self.state
            try:
                await backend.heartbeat(info, 3 * interval)
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried next interval
                _log.warning("worker.heartbeat_failed: %s", self.worker_id, exc_info=True)
                continue
            for queue in self.queues:
                bus.emit(
                    self._worker_event("worker:heartbeat", queue, concurrency=concurrency, active=info.active)
                )

    async def _reaper(self, backend: Backend, ctx: WorkerContext) -> None:
        config = ctx.config
        outage = False
        while True:
            if outage:
                # Outage grace: once the backend answers again, give every worker's
                # renewer a renew interval (plus the reconnect backoff) before taking leases away.
                try:
                    await backend.now()
                except Exception:  # noqa: BLE001 - still down: try again next interval
                    await ctx.clock.sleep(config.reaper_interval)
                    continue
                await ctx.clock.sleep(config.renew_interval + _RECONNECT_BACKOFF_CAP)
                outage = False
            for queue in self.queues:
                try:
                    if not await self._reap_queue(backend, queue, ctx):
                        _log.warning("worker.reap_late: %s: held up in transit; revoked nothing", queue)
                        outage = True
                except Exception:  # noqa: BLE001 - reaping is retried next interval
                    _log.warning("worker.reap_failed: %s", queue, exc_info=True)
                    outage = True
            await ctx.clock.sleep(config.reaper_interval)

    async def _reap_queue(self, backend: Backend, queue: str, ctx: WorkerContext) -> bool:
        """Reap until no expired lease is left; False when a call arrived late (revoked nothing)."""
        config = ctx.config
        # a reap that took longer than this to reach Redis was held up by an outage (outage grace)
        max_delay = max(config.renew_interval, _LATE_REAP_FLOOR)
        more = True
        while more:
            reply = await backend.reap(
                queue, self.worker_id, config.max_stalls, 3 * config.reaper_interval, max_delay
            )
            if reply.late:
                return False
            more = reply.is_reaper and reply.more
            for stored in reply.stalled:
                self._emit_reaped("job:stalled", queue, stored, ctx, reason="lease_lost")
            for stored in reply.dead:  # worker_lost, or dependency_failed: a flow's child whose parent died
                reason = stored.dlq_reason or "worker_lost"
                self._emit_reaped("job:failed", queue, stored, ctx, reason=reason, error_type=reason)
        return True

    def _emit_reaped(
        self,
        name: str,
        queue: str,
        stored: StoredJob,
        ctx: WorkerContext,
        **fields: Any,  # noqa: ANN401 - event fields
    ) -> None:
        job = stored.job
        if job is None:
            _log.warning("worker.reaped_malformed: job %s", stored.id)
            return
        job.queue = queue  # the reaped queue, not the envelope's field: a job cannot mint label values
        extra: dict[str, Any] = {"worker_id": ctx.worker_id, "group": ctx.group, **ctx.server}
        if name == "job:failed":
            extra["finished_at"] = ctx.clock.time()
        emit_job_event(name, job, clock=ctx.clock, **extra, **fields)

    # -- signals from the backend --------------------------------------------------------------------
    def _on_cancel_hint(self, queue: str, job_id: str) -> None:
        ctx = self._context
        if ctx is None:
            return
        attempt = ctx.held.get((queue, job_id))
        if attempt is None:
            return
        if threading.get_ident() == self._loop_thread:
            attempt.cancel(CancelReason.CANCEL)
        else:
            _call_in_loop(self._loop_token, lambda: attempt.cancel(CancelReason.CANCEL))

    def _on_renew_status(self, queue: str, job_id: str, status: RenewStatus) -> None:
        """Called in the renewer thread: stop a handler whose lease was lost or that was cancelled."""
        ctx = self._context
        if ctx is None:
            return
        attempt = ctx.held.get((queue, job_id))
        if attempt is None:
            return
        reason = CancelReason.LOST if status is RenewStatus.LOST else CancelReason.CANCEL
        _call_in_loop(self._loop_token, lambda: attempt.cancel(reason))

    def _on_data_loss(self, queue: str, old_epoch: str | None, new_epoch: str) -> None:
        """The backend found a queue's data lost: report it, and stop the worker under ``"halt"``."""
        _emit_data_loss(queue, old_epoch, new_epoch, self.clock.time())
        if get_settings().on_data_loss == "halt" and self._data_loss is None:
            self._data_loss = DataLossDetected(queue, old_epoch, new_epoch)
            self.exit_reason = "error"
            self.stop(now=True)  # safe from any thread: the renewer may be the one that noticed

    def _worker_event(self, name: str, queue: str, **fields: Any) -> LifecycleEvent:  # noqa: ANN401
        ctx = self._context
        return LifecycleEvent(
            name,
            self.clock.time(),
            queue=queue,
            worker_id=self.worker_id,
            group=ctx.group if ctx else "default",
            **(ctx.server if ctx else {}),
            **fields,
        )


async def _isolated_service(service: Service, backend: Backend, queues: list[str]) -> None:
    """Run a bus service; its failure is logged and never stops the worker."""
    try:
        await service(backend, queues)
    except Exception:  # noqa: BLE001 - isolation boundary: a telemetry service never breaks the worker
        _log.exception("worker.service_failed: %r stopped", service)


def _call_in_loop(token: Any, func: Any) -> None:  # noqa: ANN401 - anyio's loop token and a callback
    """Run ``func`` in the worker's event loop without blocking the caller's thread.

    A helper thread waits for the loop, so the renewer thread keeps renewing other leases even
    while the loop is busy.
    """

    def deliver() -> None:
        try:
            anyio.from_thread.run_sync(func, token=token)
        except RuntimeError:
            _log.debug("worker.loop_gone: callback dropped after the worker stopped")

    threading.Thread(target=deliver, name="asyncmq-loop-call", daemon=True).start()


def _emit_data_loss(queue: str, old_epoch: str | None, new_epoch: str, now: float) -> None:
    _log.error(
        "backend.data_loss: the data of queue %s was lost (epoch %s -> %s): jobs stored before are gone",
        queue,
        old_epoch,
        new_epoch,
    )
    bus.emit(LifecycleEvent("backend:data_loss", now, queue=queue, old_epoch=old_epoch, new_epoch=new_epoch))

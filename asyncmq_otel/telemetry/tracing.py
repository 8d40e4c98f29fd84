"""The trace adapter: lifecycle events and backend writes → the spans of the telemetry contract.

* Producer writes (``send``/``schedule`` operations) open ``send {queue}`` (PRODUCER; or a bulk
  CLIENT span with one ``create {queue}`` PRODUCER child per job) before the store write, and the
  creation context is injected into each job's ``trace_context`` with the global propagator.
* ``job:started`` decides sampling first, from the sampler's ratio and the stored ``traceparent``'s
  sampled flag, without the SDK when the sampler is one it can reproduce (decide before the SDK
  does any work). A sampled attempt opens ``process {queue}`` (CONSUMER) with an explicit parent (the
  extracted creation context, or none), its attributes passed once at creation, links to the creation
  context and the previous attempt. An unsampled attempt creates no SDK span: a non-recording span
  carrying the stored context stands in, so the handler's own spans inherit the decision and the trace
  id, and its log line carries the stored ids. Either is made current in the emitting task (the handler's)
  and the attempt's outcome event closes it in the same task.
* A job settled without a run (expired, cancelled while queued, unknown task, malformed payload,
  worker lost) gets a short ``settle {queue}`` (CLIENT) span; with ``settle_spans=True`` every
  worker settle write (ack, retry, ...) gets one too, as a child of the attempt's span.
* Bookkeeping writes get no context of their own unless a Redis instrumentor is installed; then
  they run under OTel's suppress-instrumentation key, so it adds no worker-internal spans.
* ``pause``/``resume`` operations are INTERNAL spans covering the flag write.

The adapter registers two listeners: :meth:`TracingAdapter.before` runs ahead of the metrics and
log adapters (so they see the attempt's span as current, for exemplars and log correlation) and
:meth:`TracingAdapter.after` runs behind them and ends the span.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..jobs import error_type_name
from ._span_parts import _Attached, _attrs, _ns, _server, parent_links, traceparent
from ._trace_sampling import (
    LinkAwareSampler,
    flag_sampled,
    is_default_propagator,
    random_span_id,
    random_trace_id,
    redis_instrumented,
    sampling_policy,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from ..events import LifecycleEvent, Operation
    from ..jobs import Job

__all__ = [
    "AFTER_EVENTS",
    "BEFORE_EVENTS",
    "PROPAGATION_MODES",
    "SPAN_NAME_STYLES",
    "LinkAwareSampler",
    "TracingAdapter",
    "traceparent",
]

Propagation = Literal["child", "link", "none"]
PROPAGATION_MODES: Final = ("child", "link", "none")
SPAN_NAME_STYLES: Final = ("{op} {queue}", "{op} {queue} {task}")

BEFORE_EVENTS: Final = (
    "job:started", "job:progress", "job:throttled", "job:expired", "job:cancelled", "job:failed",
    "worker:started",
)  # fmt: skip
"""Events :meth:`TracingAdapter.before` handles (subscribed ahead of the metrics and log adapters)."""
AFTER_EVENTS: Final = (
    "job:completed", "job:retried", "job:failed", "job:cancelled", "job:interrupted", "job:expired",
    "worker:stopped",
)  # fmt: skip
"""Events :meth:`TracingAdapter.after` handles (subscribed behind them)."""

SYSTEM: Final = "asyncmq"
_SETTLE_OPS: Final = frozenset({"expire", "cancel", "dead_letter"})
_WORKER_OPS: Final = frozenset({"ack", "retry", "dead_letter", "expire", "cancel", "requeue"})
_PICKUP_FAILURES: Final = frozenset({"unknown_task", "malformed_payload", "worker_lost", "dependency_failed"})
_STALE: Final = frozenset({"STALE", "GONE"})
_DESCRIPTION_LIMIT: Final = 256
THROTTLE_THRESHOLD_S: Final = 0.001
"""A job held by the rate limiter for longer than this was throttled (``job:throttled``)."""
_OPEN_LIMIT: Final = 100_000  # attempts whose outcome never comes (lease lost) are forgotten past this
_STATIC_LIMIT: Final = 4096  # cached attribute sets (queue × task × worker × ...); cleared when full
_SUPPRESS: Final = otel_context._SUPPRESS_INSTRUMENTATION_KEY  # noqa: SLF001 - the API's documented key
_TRACEPARENT: Final = TraceContextTextMapPropagator()
# A version-00 traceparent and nothing around it: what the W3C propagator accepts, read without it.
_PLAIN_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_EMPTY: Final = otel_context.Context()


def _throttle_wait(event: LifecycleEvent) -> float | None:
    """The rate-limit wait when the job was throttled (held over 1 ms), else ``None``."""
    wait = event.ratelimit_wait_s
    return wait if wait is not None and wait > THROTTLE_THRESHOLD_S else None


@dataclass(slots=True)
class _Open:
    """The span of an attempt or settle (an SDK span, or a non-recording stand-in), until its outcome."""

    span: Span
    attached: _Attached | None
    recording: bool
    progress: int = 0


@dataclass(slots=True)
class _Producer:
    span: Span
    children: list[Span]
    attached: _Attached | None


@dataclass(slots=True)
class _WorkerWrite:
    """A worker settle write: its ``settle`` spans (``settle_spans=True``) and suppression context."""

    spans: list[Span]
    attached: _Attached | None


class TracingAdapter:
    """Bus listeners and a write observer that turn the lifecycle into spans.

    Args:
        tracer: where spans are created.
        propagation: ``child`` (default), ``link`` or ``none``.
        span_name_style: ``"{op} {queue}"`` or ``"{op} {queue} {task}"``.
        bulk_create_spans: one ``create`` span per job of a bulk enqueue.
        progress_events_per_span: progress reports bridged to span events per attempt.
        settle_spans: a ``settle`` span for every worker settle write, not only for jobs settled
            without a handler run (off by default: it doubles the spans per job).

    """

    signal = "span"

    def __init__(
        self,
        tracer: Tracer,
        *,
        propagation: Propagation = "child",
        span_name_style: str = "{op} {queue}",
        bulk_create_spans: bool = True,
        progress_events_per_span: int = 10,
        settle_spans: bool = False,
    ) -> None:
        if propagation not in PROPAGATION_MODES:
            raise ValueError(f"propagation must be one of {PROPAGATION_MODES}, not {propagation!r}")
        if span_name_style not in SPAN_NAME_STYLES:
            raise ValueError(f"span_name_style must be one of {SPAN_NAME_STYLES}, not {span_name_style!r}")
        self._tracer = tracer
        self.propagation: Propagation = propagation
        self._per_task = span_name_style == SPAN_NAME_STYLES[1]
        self._bulk_create = bulk_create_spans
        self._progress_cap = progress_events_per_span
        self._settle_spans = settle_spans
        self._policy = sampling_policy(tracer)
        self._is_enabled = getattr(tracer, "_is_enabled", None)
        id_generator = getattr(tracer, "id_generator", None)
        self._new_trace_id = getattr(id_generator, "generate_trace_id", None) or random_trace_id
        self._new_span_id = getattr(id_generator, "generate_span_id", None) or random_span_id
        self._propagator: object = None
        self._default_propagator = False
        self._open: dict[tuple[str | None, str | None, int | None], _Open] = {}
        self._throttle_starts: dict[tuple[str | None, str | None], float] = {}
        self._settle_starts: dict[tuple[str, str], int] = {}
        self._workers: dict[str, tuple[_Attached, int]] = {}
        self._static: dict[tuple[object, ...], dict[str, AttributeValue]] = {}

    # -- naming ----------------------------------------------------------------------------------------
    def _name(self, op: str, queue: str | None, task: str | None = None) -> str:
        if self._per_task and task:
            return f"{op} {queue} {task}"
        return f"{op} {queue}"

    # -- bus listeners ---------------------------------------------------------------------------------
    def before(self, event: LifecycleEvent) -> None:
        """Runs ahead of the other adapters: opens spans and makes them current."""
        name = event.name
        if name == "job:started":
            self._open_process(event)
        elif name == "job:progress":
            self._progress(event)
        elif name == "job:throttled":
            if len(self._throttle_starts) > _OPEN_LIMIT:
                self._throttle_starts.clear()
            start = (
                event.started_at
                if event.started_at is not None
                else event.ts - (event.ratelimit_wait_s or 0.0)
            )
            self._throttle_starts[event.queue, event.job_id] = start
        elif self._settle_op(event) is not None:
            self._open_settle(event)
        elif name == "worker:started":
            self._worker_started(event)

    def after(self, event: LifecycleEvent) -> None:
        """Runs behind the other adapters: closes the span the event ends and detaches it."""
        name = event.name
        if name in {
            "job:completed",
            "job:retried",
            "job:failed",
            "job:cancelled",
            "job:interrupted",
            "job:expired",
        }:
            self._close(event)
        elif name == "worker:stopped":
            self._worker_stopped(event)

    @staticmethod
    def _settle_op(event: LifecycleEvent) -> str | None:
        name = event.name
        if name == "job:expired":
            return "expire"
        if name == "job:cancelled" and event.reason != "running":
            return "cancel"
        if name == "job:failed" and event.reason in _PICKUP_FAILURES:
            return "dead_letter"
        return None

    # -- the worker loop never has an active span ----------------------------------------------------------
    def _worker_started(self, event: LifecycleEvent) -> None:
        """Detach the worker loop from any ambient span and suppress instrumentation of its bookkeeping.

        Handler tasks get their own context at ``job:started``, so user code is not suppressed.
        """
        worker = event.worker_id
        if worker is None:
            return
        held = self._workers.get(worker)
        if held is not None:
            self._workers[worker] = (held[0], held[1] + 1)
            return
        attached = _Attached.attach(
            otel_context.set_value(_SUPPRESS, value=True, context=otel_context.Context())
        )
        self._workers[worker] = (attached, 1)

    def _worker_stopped(self, event: LifecycleEvent) -> None:
        worker = event.worker_id
        held = self._workers.get(worker) if worker is not None else None
        if held is None or worker is None:
            return
        if held[1] > 1:
            self._workers[worker] = (held[0], held[1] - 1)
            return
        del self._workers[worker]
        held[0].detach()

    # -- propagation -----------------------------------------------------------------------------------
    def _default_propagation(self) -> bool:
        """Whether the global propagator is the SDK default (checked again when it is replaced)."""
        propagator = propagate.get_global_textmap()
        if propagator is not self._propagator:
            self._propagator = propagator
            self._default_propagator = is_default_propagator(propagator)
        return self._default_propagator

    def _extract(self, carrier: Mapping[str, str]) -> Context:
        """The stored creation context; W3C trace context read directly when no other propagator applies."""
        if "baggage" not in carrier and self._default_propagation():
            return _TRACEPARENT.extract(carrier, context=_EMPTY)
        return propagate.extract(carrier, context=_EMPTY)

    def _plain_creation(self, carrier: Mapping[str, str]) -> SpanContext | None:
        """A plain W3C ``traceparent``, read directly; ``None``: the propagator reads the carrier."""
        if "tracestate" in carrier or "baggage" in carrier or not self._default_propagation():
            return None
        match = _PLAIN_TRACEPARENT.fullmatch(carrier.get("traceparent") or "")
        trace_id, span_id = (int(match[1], 16), int(match[2], 16)) if match else (0, 0)
        if not trace_id or not span_id or match is None:  # all-zero ids: invalid, the propagator says so
            return None
        return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))

    def _inject(self, span: Span) -> dict[str, str] | None:
        if self.propagation == "none":
            return None
        span_context = span.get_span_context()
        if self._default_propagation() and not span_context.trace_state and not baggage.get_all():
            # What the W3C propagator writes, without its per-call context and lookups.
            if not span_context.is_valid:
                return None
            return {
                "traceparent": (
                    f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                    f"{span_context.trace_flags:02x}"
                )
            }
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return {key: value for key, value in carrier.items() if value} or None

    # -- sampling --------------------------------------------------------------------------------------
    def _decide(
        self, creation: SpanContext | None, carrier: Mapping[str, str] | None, parents: tuple[str, ...] = ()
    ) -> bool | None:
        """Sampled, unsampled, or ``None`` when only the SDK's sampler can tell (decide before the SDK).

        ``creation`` is the stored creation context when it is valid and propagation is not ``none``.
        """
        policy = self._policy
        if policy is None or (self._is_enabled is not None and not self._is_enabled()):
            return None
        if creation is not None and policy.parent_based and self.propagation == "child":
            return creation.trace_flags.sampled
        # A root span: LinkAwareSampler samples it when a link is sampled, else the ratio decides.
        linked = (
            policy.link_aware
            and carrier is not None
            and (
                (creation is not None and creation.trace_flags.sampled)
                or flag_sampled(carrier.get("prev_attempt"))
            )
        ) or (policy.link_aware and any(map(flag_sampled, parents)))
        if linked or policy.ratio >= 1.0:
            return True
        return False if policy.ratio <= 0.0 else None

    def _links(
        self, creation: SpanContext | None, carrier: Mapping[str, str] | None, parents: tuple[str, ...]
    ) -> list[Link]:
        links = parent_links(parents) if parents else []  # a job of a flow: its parents' last process spans
        if carrier is None:
            return links
        if creation is not None:
            links.append(Link(creation, {"asyncmq.link.type": "creation"}))
        previous = carrier.get("prev_attempt")
        if previous:
            prev_ctx = trace.get_current_span(
                _TRACEPARENT.extract({"traceparent": previous}, context=_EMPTY)
            ).get_span_context()
            if prev_ctx.is_valid:
                links.append(Link(prev_ctx, {"asyncmq.link.type": "previous_attempt"}))
        return links

    def _begin(
        self,
        event: LifecycleEvent,
        op_type: str,
        op_name: str,
        kind: SpanKind,
        start_time: int | None = None,
    ) -> _Open:
        """Open the span of an attempt or settle and make it current in the emitting task.

        Sampling is decided first; an unsampled one gets a non-recording span that carries the stored
        context (or fresh ids for a root), and no SDK call at all when the sampler is reproducible.
        """
        carrier = event.trace_context if self.propagation != "none" and event.trace_context else None
        stored: Context | None = _EMPTY  # None: the creation span alone, built only if a span needs it
        creation: SpanContext | None = None
        if carrier is not None:
            creation = self._plain_creation(carrier)
            if creation is not None:
                stored = None
            else:
                stored = self._extract(carrier)
                span_context = trace.get_current_span(stored).get_span_context()
                creation = span_context if span_context.is_valid else None
        parents = (event.parent_spans or ()) if self.propagation != "none" else ()
        if self._decide(creation, carrier, parents) is False:
            if creation is None or self.propagation != "child":
                creation = SpanContext(self._new_trace_id(), self._new_span_id(), is_remote=False)
            stand_in = NonRecordingSpan(creation)
            context = trace.set_span_in_context(stand_in, _EMPTY if stored is None else stored)
            return _Open(stand_in, _Attached.attach(context), recording=False)
        if stored is None:
            stored = trace.set_span_in_context(NonRecordingSpan(cast("SpanContext", creation)), _EMPTY)
        parent = stored
        if self.propagation == "link" and creation is not None:
            parent = trace.set_span_in_context(trace.INVALID_SPAN, stored)
        span = self._tracer.start_span(
            self._name(op_type, event.queue, event.task),
            context=parent,
            kind=kind,
            attributes=self._span_attributes(event, op_type, op_name),
            links=self._links(creation, carrier, parents),
            start_time=start_time,
        )
        recording = span.is_recording()
        throttle_start = self._throttle_starts.pop((event.queue, event.job_id), None)
        wait = _throttle_wait(event) if recording else None
        if wait:  # when the wait began is not among the attributes: the one queue-side event kept
            start = throttle_start if throttle_start is not None else event.ts - wait
            span.add_event("asyncmq.job.throttled", {"asyncmq.ratelimit.wait_s": wait}, timestamp=_ns(start))
        return _Open(span, _Attached.attach(trace.set_span_in_context(span, parent)), recording=recording)

    def _span_attributes(
        self, event: LifecycleEvent, op_type: str, op_name: str
    ) -> dict[str, AttributeValue]:
        """Every S attribute of a process or settle span, passed once at creation."""
        attributes = self._job_attributes(event, op_type, op_name)
        if op_type == "process":
            if event.wait_s is not None:
                attributes["asyncmq.job.wait_s"] = event.wait_s
        elif op_name == "dead_letter":
            attributes["error.type"] = event.error_type or event.reason or "failed"
        elif op_name == "expire":
            attributes["error.type"] = "expired"
        return attributes

    # -- consumer spans -----------------------------------------------------------------------------------
    def _static_attributes(
        self, event: LifecycleEvent, op_type: str, op_name: str
    ) -> dict[str, AttributeValue]:
        """The S attributes all attempts of one (queue, task, worker, ...) share: built once, then copied."""
        key = (
            op_type, op_name, event.queue, event.task, event.group, event.worker_id, event.max_attempts,
            event.priority, event.server_address, event.server_port,
        )  # fmt: skip
        cached = self._static.get(key)
        if cached is None:
            values: dict[str, AttributeValue | None] = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": op_type,
                "messaging.operation.name": op_name,
                "messaging.destination.name": event.queue,
                "messaging.consumer.group.name": event.group if event.worker_id else None,
                "messaging.client.id": event.worker_id,
                "asyncmq.task.name": event.task,
                "asyncmq.job.max_attempts": event.max_attempts,
                "asyncmq.job.priority": event.priority,
            }
            cached = {name: value for name, value in values.items() if value is not None}
            cached.update(_server(event))
            if len(self._static) >= _STATIC_LIMIT:
                self._static.clear()
            self._static[key] = cached
        return cached

    def _job_attributes(self, event: LifecycleEvent, op_type: str, op_name: str) -> dict[str, AttributeValue]:
        """The S attributes of a process or settle span, in one mapping (hot path: one copy, a few sets)."""
        out = self._static_attributes(event, op_type, op_name).copy()
        if event.job_id is not None:
            out["messaging.message.id"] = event.job_id
        attempt = event.attempt
        # A job cancelled while queued has no attempt; neither has one that never reached a claim.
        if attempt is not None and attempt > 0 and op_name != "cancel":
            out["asyncmq.job.attempt"] = attempt
        if event.enqueued_at is not None:
            out["asyncmq.job.enqueued_at"] = event.enqueued_at
        if event.eligible_at is not None:
            out["asyncmq.job.eligible_at"] = event.eligible_at
        wait = _throttle_wait(event)
        if wait is not None:
            out["asyncmq.ratelimit.wait_s"] = wait
        if event.schedule_key is not None:
            out["asyncmq.schedule.key"] = event.schedule_key
            if event.schedule_due is not None:
                out["asyncmq.schedule.due"] = event.schedule_due
        if event.flow_id is not None:
            out["asyncmq.flow.id"] = event.flow_id
        return out

    def _remember(self, key: tuple[str | None, str | None, int | None], opened: _Open) -> None:
        if len(self._open) >= _OPEN_LIMIT:
            del self._open[next(iter(self._open))]
        self._open[key] = opened

    def _open_process(self, event: LifecycleEvent) -> None:
        opened = self._begin(event, "process", "process", SpanKind.CONSUMER)
        self._remember((event.queue, event.job_id, event.attempt), opened)

    def _open_settle(self, event: LifecycleEvent) -> None:
        op_name = self._settle_op(event) or "dead_letter"
        start = self._settle_starts.pop((event.queue or "", event.job_id or ""), None)
        opened = self._begin(event, "settle", op_name, SpanKind.CLIENT, start)
        self._remember((event.queue, event.job_id, event.attempt), opened)

    def _progress(self, event: LifecycleEvent) -> None:
        opened = self._open.get((event.queue, event.job_id, event.attempt))
        if opened is None or not opened.recording or opened.progress >= self._progress_cap:
            return
        opened.progress += 1
        opened.span.add_event(
            "asyncmq.job.progress", _attrs(asyncmq__job__progress=event.progress), timestamp=_ns(event.ts)
        )

    def _close(self, event: LifecycleEvent) -> None:
        opened = self._open.pop((event.queue, event.job_id, event.attempt), None)
        if opened is None:
            return
        if not opened.recording:  # unsampled: nothing to record (an SDK stand-in still ends), only detach
            if not isinstance(opened.span, NonRecordingSpan):
                opened.span.end()
            self._detach(opened)
            return
        span = opened.span
        at = _ns(event.finished_at if event.finished_at is not None else event.ts)
        start = getattr(span, "start_time", None)
        if at is not None and start is not None and at < start:  # stamped inside its span, never before
            at = start
        name = event.name
        outcome = name.split(":", 1)[1]
        if name == "job:retried":
            error_type = self._exception(span, event, at)
            span.add_event(
                "asyncmq.job.retry_scheduled",
                _attrs(
                    asyncmq__job__backoff_s=event.backoff_s,
                    asyncmq__job__eligible_at=event.eligible_at,
                    error__type=error_type,
                ),
                timestamp=at,
            )
            self._error(span, error_type, event.error_message)
        elif name == "job:failed":
            reason = event.reason or "failed"
            error_type = event.error_type or reason
            if event.exception is not None or (reason == "failed" and event.error_message is not None):
                error_type = self._exception(span, event, at)
            span.add_event("asyncmq.job.dead_lettered", {"asyncmq.dlq.reason": reason}, timestamp=at)
            self._error(span, error_type, event.error_message or reason)
        elif name == "job:expired":
            span.add_event("asyncmq.job.dead_lettered", {"asyncmq.dlq.reason": "expired"}, timestamp=at)
            # error.type was set at creation; a Jaeger error=true search must find expiries.
            span.set_status(Status(StatusCode.ERROR, "expired"))
        elif name == "job:cancelled":
            stage = event.reason or "queued"
            span.add_event("asyncmq.job.cancelled", {"asyncmq.cancel.stage": stage}, timestamp=at)
        span.set_attribute("asyncmq.job.outcome", outcome)
        span.end()
        self._detach(opened)

    @staticmethod
    def _exception(span: Span, event: LifecycleEvent, at: int | None) -> str:
        """Add the one ``exception`` event of a raising attempt; return its error type."""
        exc = event.exception
        error_type = event.error_type or (type(exc).__qualname__ if exc is not None else "Exception")
        stack = getattr(exc, "traceback", None)
        if not isinstance(stack, str):
            stack = (
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                if exc is not None
                else None
            )
        message = (
            event.error_message if event.error_message is not None else (str(exc) if exc is not None else "")
        )
        span.add_event(
            "exception",
            _attrs(exception__type=error_type, exception__message=message, exception__stacktrace=stack),
            timestamp=at,
        )
        return error_type

    @staticmethod
    def _error(span: Span, error_type: str, message: str | None) -> None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, (message or error_type)[:_DESCRIPTION_LIMIT]))

    @staticmethod
    def _detach(opened: _Open) -> None:
        attached = opened.attached
        opened.attached = None
        if attached is not None:
            attached.detach()

    # -- write observer ---------------------------------------------------------------------------------
    def operation_started(self, operation: Operation) -> None:
        """Open producer and pause/resume spans, write ``prev_attempt``, suppress worker bookkeeping."""
        name = operation.name
        if name in {"send", "schedule"}:
            if operation.bulk:
                self._start_bulk(operation)
            elif operation.jobs:
                self._start_send(operation)
        elif name in {"pause", "resume"}:
            span = self._tracer.start_span(
                self._name(name, operation.queue),
                kind=SpanKind.INTERNAL,
                attributes=_attrs(
                    messaging__system=SYSTEM,
                    messaging__operation__name=name,
                    messaging__destination__name=operation.queue,
                )
                | _server(operation),
            )
            operation.scratch[id(self)] = _Producer(span, [], self._attach_for_write(span))
        elif name in _WORKER_OPS:
            self._start_worker_write(operation)

    @staticmethod
    def _attach_for_write(span: Span) -> _Attached | None:
        """Make a producer span current around its store write only when a Redis client span could nest."""
        return _Attached.attach(trace.set_span_in_context(span)) if redis_instrumented() else None

    def _start_worker_write(self, operation: Operation) -> None:
        name = operation.name
        settles: list[Span] = []
        for job in operation.jobs:
            opened = self._open.get((operation.queue, job.id, job.attempts))
            if opened is None:
                if name in _SETTLE_OPS:
                    if len(self._settle_starts) > _OPEN_LIMIT:
                        self._settle_starts.clear()
                    self._settle_starts[operation.queue, job.id] = int(operation.started_at * 1e9)
                continue
            if not opened.recording:
                continue
            if name == "retry" and self.propagation != "none":
                job.trace_context = {
                    **(job.trace_context or {}),
                    "prev_attempt": traceparent(opened.span.get_span_context()),
                }
            elif name == "ack" and job.flow_id is not None and self.propagation != "none":
                # stored by the complete write: the children's process spans link to it (flows)
                job.trace_context = {
                    **(job.trace_context or {}),
                    "last_span": traceparent(opened.span.get_span_context()),
                }
            if self._settle_spans:
                settles.append(self._start_settle_write(operation, job.id, job.attempts, opened.span))
        # Only an installed Redis instrumentor would make spans of these writes; nothing else reads it.
        suppress = (
            _Attached.attach(otel_context.set_value(_SUPPRESS, value=True)) if redis_instrumented() else None
        )
        if settles or suppress is not None:
            operation.scratch[id(self)] = _WorkerWrite(settles, suppress)

    def _start_settle_write(self, operation: Operation, job_id: str, attempt: int, parent: Span) -> Span:
        """The ``settle`` span of one job's settle write after a run (``settle_spans=True``)."""
        return self._tracer.start_span(
            self._name("settle", operation.queue),
            context=trace.set_span_in_context(parent, _EMPTY),
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "settle",
                "messaging.operation.name": operation.name,
                "messaging.destination.name": operation.queue,
                "messaging.message.id": job_id,
                "asyncmq.job.attempt": attempt,
                **_server(operation),
            },
            start_time=int(operation.started_at * 1e9),
        )

    def _send_attributes(self, operation: Operation, job: Job) -> dict[str, AttributeValue]:
        """The S attributes of a single ``send``: the shared part built once per (queue, task, ...)."""
        key = (
            "send", operation.name, operation.queue, job.task, job.max_attempts, job.priority,
            operation.server_address, operation.server_port,
        )  # fmt: skip
        cached = self._static.get(key)
        if cached is None:
            cached = _attrs(
                messaging__system=SYSTEM,
                messaging__operation__type="send",
                messaging__operation__name=operation.name,
                messaging__destination__name=operation.queue,
                asyncmq__task__name=job.task,
                asyncmq__job__max_attempts=job.max_attempts,
                asyncmq__job__priority=job.priority,
            ) | _server(operation)
            if len(self._static) >= _STATIC_LIMIT:
                self._static.clear()
            self._static[key] = cached
        attributes = cached.copy()
        attributes["messaging.message.id"] = job.id
        if operation.name == "schedule":
            eligible = job.delay_until if job.delay_until is not None else (job.eligible_at or None)
            if eligible is not None:
                attributes["asyncmq.job.eligible_at"] = eligible
        if job.schedule is not None:
            attributes["asyncmq.schedule.key"] = job.schedule
            if job.schedule_due is not None:
                attributes["asyncmq.schedule.due"] = job.schedule_due
        return attributes

    def _start_send(self, operation: Operation) -> None:
        job = operation.jobs[0]
        span = self._tracer.start_span(
            self._name("send", operation.queue, job.task),
            # a tick's job belongs to no caller: its send span is a root span, whatever context fired it
            context=otel_context.Context() if job.schedule is not None else None,
            kind=SpanKind.PRODUCER,
            attributes=self._send_attributes(operation, job),
        )
        job.trace_context = self._inject(span)
        operation.scratch[id(self)] = _Producer(span, [], self._attach_for_write(span))

    def _start_bulk(self, operation: Operation) -> None:
        jobs = operation.jobs
        tasks = {job.task for job in jobs}
        schedules = {job.schedule for job in jobs}
        span = self._tracer.start_span(
            self._name("send", operation.queue),
            # a schedule's catch-up ticks: a root span, like one tick's (see _start_send)
            context=otel_context.Context() if None not in schedules else None,
            kind=SpanKind.CLIENT if self._bulk_create else SpanKind.PRODUCER,
            attributes=_attrs(
                messaging__system=SYSTEM,
                messaging__operation__type="send",
                messaging__operation__name="send",
                messaging__destination__name=operation.queue,
                messaging__batch__message_count=len(jobs),
                asyncmq__task__name=next(iter(tasks)) if len(tasks) == 1 else None,
                asyncmq__schedule__key=next(iter(schedules)) if len(schedules) == 1 else None,
            )
            | _server(operation),
        )
        children: list[Span] = []
        if self._bulk_create:
            parent = trace.set_span_in_context(span)
            for job in jobs:
                child = self._tracer.start_span(
                    self._name("create", operation.queue, job.task),
                    context=parent,
                    kind=SpanKind.PRODUCER,
                    attributes=_attrs(
                        messaging__system=SYSTEM,
                        messaging__operation__type="create",
                        messaging__operation__name="create",
                        messaging__destination__name=operation.queue,
                        messaging__message__id=job.id,
                        asyncmq__task__name=job.task,
                        asyncmq__job__max_attempts=job.max_attempts,
                        asyncmq__job__priority=job.priority,
                        asyncmq__job__eligible_at=job.delay_until,
                    ),
                )
                job.trace_context = self._inject(child)
                children.append(child)
        else:
            shared = self._inject(span)
            for job in jobs:
                job.trace_context = None if shared is None else dict(shared)
        operation.scratch[id(self)] = _Producer(span, children, self._attach_for_write(span))

    def operation_finished(self, operation: Operation) -> None:
        """End the operation's span (ERROR with ``error.type`` when the write raised)."""
        state = operation.scratch.pop(id(self), None)
        if isinstance(state, _Producer):
            self._finish_producer(state, operation.error)
            return
        if isinstance(state, _WorkerWrite):
            if state.attached is not None:
                state.attached.detach()
            for span in state.spans:
                if operation.error is not None:
                    self._error(span, error_type_name(operation.error), str(operation.error))
                span.end()
        if operation.outcome in _STALE:
            for (
                job
            ) in operation.jobs:  # the write was fenced off, no outcome event follows: end the span here
                opened = self._open.pop((operation.queue, job.id, job.attempts), None)
                if opened is not None:
                    if opened.recording or not isinstance(opened.span, NonRecordingSpan):
                        opened.span.end()
                    self._detach(opened)

    def _finish_producer(self, state: _Producer, error: BaseException | None) -> None:
        if state.attached is not None:
            state.attached.detach()
        for span in (*state.children, state.span):
            if error is not None:
                self._error(span, error_type_name(error), str(error))
            span.end()

    def shutdown(self) -> None:
        """End every span still open (``uninstrument()``); their outcome is unknown."""
        for opened in reversed(list(self._open.values())):
            opened.span.end()
            self._detach(opened)  # effective only in the task that attached it (e.g. the caller's)
        self._open.clear()
        for attached, _count in self._workers.values():
            attached.detach()
        self._throttle_starts.clear()
        self._settle_starts.clear()
        self._workers.clear()

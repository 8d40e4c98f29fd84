"""Sampling decided before the SDK, and the propagation shortcuts of the trace adapter.

The adapter reproduces the decision of the samplers it knows (``ParentBased``, ``LinkAwareSampler``,
``TraceIdRatioBased`` at 0 or 1, ``ALWAYS_ON``/``ALWAYS_OFF``) so that an unsampled attempt costs no SDK
span; any other sampler is asked through the SDK as usual.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanKind, Tracer
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes, AttributeValue

__all__ = [
    "LinkAwareSampler",
    "PresetAttributes",
    "SamplingPolicy",
    "flag_sampled",
    "is_default_propagator",
    "random_span_id",
    "random_trace_id",
    "redis_instrumented",
    "sampling_policy",
]

SAMPLED_FLAG: Final = TraceFlags.SAMPLED
REDIS_INSTRUMENTATION: Final = "opentelemetry.instrumentation.redis"


class LinkAwareSampler(Sampler):
    """Samples a root span that carries a sampled link, and asks ``root`` otherwise.

    In ``link`` mode the job trace then follows the producer's decision instead of being sampled
    independently, so links rarely point at dropped traces.
    """

    def __init__(self, root: Sampler) -> None:
        self._root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """Sample when any link is sampled; otherwise delegate to the root sampler."""
        for link in links or ():
            if link.context.is_valid and link.context.trace_flags.sampled:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return self._root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        """``LinkAware{<root>}``."""
        return f"LinkAware{{{self._root.get_description()}}}"


class SamplingPolicy(NamedTuple):
    """A sampler whose decision the adapter reproduces without the SDK (decided before the SDK)."""

    parent_based: bool  # a valid parent decides: its sampled flag (ParentBased's defaults)
    link_aware: bool  # a root with a sampled link is sampled (LinkAwareSampler)
    ratio: float  # a root's ratio: 1 samples, 0 drops; anything between is left to the SDK


def sampling_policy(tracer: Tracer) -> SamplingPolicy | None:
    """The policy of an SDK tracer's sampler when it is one we can reproduce exactly, else ``None``."""
    sampler = getattr(tracer, "sampler", None)
    parent_based = isinstance(sampler, ParentBased)
    if parent_based:
        delegates = vars(sampler)
        if not (
            delegates.get("_remote_parent_sampled") is ALWAYS_ON
            and delegates.get("_remote_parent_not_sampled") is ALWAYS_OFF
        ):
            return None
        sampler = delegates.get("_root")
    link_aware = isinstance(sampler, LinkAwareSampler)
    if isinstance(sampler, LinkAwareSampler):
        sampler = sampler._root  # noqa: SLF001 - our own class
    if sampler is ALWAYS_ON:
        return SamplingPolicy(parent_based, link_aware, 1.0)
    if sampler is ALWAYS_OFF:
        return SamplingPolicy(parent_based, link_aware, 0.0)
    if type(sampler) is TraceIdRatioBased:
        return SamplingPolicy(parent_based, link_aware, sampler.rate)
    return None


def is_default_propagator(propagator: object) -> bool:
    """W3C trace context + baggage, the SDK's default: the adapter may then read and write it directly."""
    parts = getattr(propagator, "_propagators", None) if type(propagator) is CompositePropagator else None
    return parts is not None and [type(part) for part in parts] == [
        TraceContextTextMapPropagator,
        W3CBaggagePropagator,
    ]


def redis_instrumented() -> bool:
    """Whether OTel's Redis instrumentor is active (only then do bookkeeping writes need suppressing)."""
    module = sys.modules.get(REDIS_INSTRUMENTATION)
    if module is None:
        return False
    instance = getattr(getattr(module, "RedisInstrumentor", None), "_instance", None)
    return bool(getattr(instance, "_is_instrumented_by_opentelemetry", False))


def random_trace_id() -> int:
    """A trace id for a root without an SDK id generator (the SDK's own way: 128 random bits)."""
    return random.getrandbits(128)


def random_span_id() -> int:
    """A span id, as :func:`random_trace_id`."""
    return random.getrandbits(64)


def flag_sampled(header: str | None) -> bool:
    """The sampled flag of a ``traceparent`` (its last two hex digits), False when absent or invalid."""
    if not header:
        return False
    try:
        return bool(int(header[-2:], 16) & SAMPLED_FLAG)
    except ValueError:
        return False


# Span processors whose on_start reads nothing of the span: they cannot tell attributes set just after it.
_START_BLIND: Final = (BatchSpanProcessor, SimpleSpanProcessor)


class PresetAttributes:
    """Attributes of our own spans written straight into the SDK span, without its per-value checks.

    ``start_span(attributes=...)`` validates every value again (isinstance chains, a lock per key):
    about half the cost of a sampled span with 15 attributes. Ours are plain ``str``/``int``/``float``
    values built by the adapter, so when nothing can observe the difference (a reproducible sampler,
    which ignores attributes; only the SDK's batch and simple processors, whose ``on_start`` reads
    nothing; no value length limit) the span starts without them and they are put in its attribute
    store before any other code sees the span. Otherwise :meth:`applies` is False and the caller
    passes them to ``start_span`` as usual.
    """

    __slots__ = ("_checked", "_limit", "_multi", "_ok")

    def __init__(self, tracer: Tracer) -> None:
        limits = getattr(tracer, "_span_limits", None)
        multi = getattr(tracer, "span_processor", None)
        usable = (
            isinstance(tracer, SdkTracer)
            and type(multi) is SynchronousMultiSpanProcessor
            and limits is not None
            and limits.max_span_attribute_length is None
            and sampling_policy(tracer) is not None
        )
        self._multi = multi if usable else None
        self._limit: int | None = getattr(limits, "max_span_attributes", None)
        self._checked: object = None
        self._ok = False

    def applies(self) -> bool:
        """Whether a span may start without its attributes, given them by :meth:`fill` right after."""
        multi = self._multi
        if multi is None:
            return False
        processors = multi._span_processors  # noqa: SLF001 - replaced as a whole when one is added
        if processors is not self._checked:
            self._checked = processors
            self._ok = all(type(processor) in _START_BLIND for processor in processors)
        return self._ok

    def fill(self, span: Span, attributes: dict[str, AttributeValue]) -> None:
        """Add ``attributes`` (new keys) to ``span``: just started, or not yet ended."""
        store = getattr(span, "_attributes", None)
        if type(store) is BoundedAttributes and (
            self._limit is None or len(store._dict) + len(attributes) <= self._limit  # noqa: SLF001 - as below
        ):
            store._dict.update(attributes)  # noqa: SLF001 - values are already valid (see the class)
        elif span.is_recording():
            span.set_attributes(attributes)

    def set(self, span: Span, key: str, value: AttributeValue) -> None:
        """``span.set_attribute(key, value)`` for a new key, through :meth:`fill` when it applies."""
        if self.applies():
            self.fill(span, {key: value})
        else:
            span.set_attribute(key, value)

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

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
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
    from opentelemetry.trace import Link, SpanKind, Tracer
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

__all__ = [
    "LinkAwareSampler",
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

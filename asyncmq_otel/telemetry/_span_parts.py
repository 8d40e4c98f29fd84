"""Small, stateless parts of the tracing adapter: attribute dicts, nanoseconds, ``traceparent``, attaching.

Kept apart so that ``tracing.py`` holds the adapter's state machine and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanContext, TraceFlags

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.context import Context
    from opentelemetry.util.types import AttributeValue

__all__ = ["_Attached", "_attrs", "_ns", "_server", "parent_links", "traceparent"]

# A version-00 traceparent and nothing around it, as ``traceparent`` writes it.
_PLAIN: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` of a span context (version 00: only the sampled flag is kept)."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{'01' if ctx.trace_flags.sampled else '00'}"


def parent_links(spans: Iterable[str]) -> list[Link]:
    """Links to a flow job's parents' last ``process`` spans, from their stored ``traceparent``.

    A parent whose context is not a valid one (all-zero ids, or not a traceparent) gets no link.
    """
    links = []
    for span in spans:
        match = _PLAIN.fullmatch(span)
        if match is not None and int(match[1], 16) and int(match[2], 16):
            context = SpanContext(
                int(match[1], 16),
                int(match[2], 16),
                is_remote=True,
                trace_flags=TraceFlags(int(match[3], 16)),
            )
            links.append(Link(context, {"asyncmq.link.type": "parent"}))
    return links


def _server(source: object) -> dict[str, AttributeValue]:
    """``server.address`` / ``server.port`` of the backend, when the event or write carries them."""
    address = getattr(source, "server_address", None)
    if not address:
        return {}
    port = getattr(source, "server_port", None)
    return (
        {"server.address": str(address)}
        if port is None
        else {"server.address": str(address), "server.port": int(port)}
    )


def _attrs(**values: AttributeValue | None) -> dict[str, AttributeValue]:
    return {key.replace("__", "."): value for key, value in values.items() if value is not None}


@dataclass(slots=True)
class _Attached:
    """A context this adapter attached in the current task, detached only from that same context."""

    token: object
    ctx: Context

    @classmethod
    def attach(cls, ctx: Context) -> _Attached:
        return cls(otel_context.attach(ctx), ctx)

    def detach(self) -> None:
        if otel_context.get_current() is self.ctx:
            otel_context.detach(self.token)  # type: ignore[arg-type]

"""OTLP/HTTP span export with a protobuf wire encoder that caches what repeats between spans.

The SDK's encoder builds a protobuf object per span, attribute and event, which costs about 85 µs
per ``process`` span on the exporter thread: in a worker that thread shares the GIL with the event
loop, so it was the largest part of the tracing overhead (the telemetry contract's overhead budget). This
encoder writes the same ``ExportTraceServiceRequest`` bytes directly and keeps the encoded form of
attributes whose value repeats (queue, task, worker id, server, ...), so a span costs a fraction of
that. A span it cannot encode (an attribute type outside the OTel attribute types) is encoded by the
SDK's own encoder and spliced in, so nothing is ever dropped by this module.

Only the encoding differs from ``OTLPSpanExporter``: endpoint, headers, compression, timeouts,
retries, the size limit and the exporter's own metrics are the SDK's.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import Attributes

__all__ = ["FastOTLPSpanExporter", "encode_request"]

_log = logging.getLogger(OTLPSpanExporter.__module__)  # the SDK exporter's logger, for its own warning
_DOUBLE: Final = struct.Struct("<d").pack
_FIXED64: Final = struct.Struct("<Q").pack
_FIXED32: Final = struct.Struct("<I").pack
_KIND: Final = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_FLAGS_HAS_IS_REMOTE: Final = 0x100
_FLAGS_IS_REMOTE: Final = 0x200
_CACHE_LIMIT: Final = 8192  # encoded key/value pairs kept; cleared when full (values are bounded anyway)
# Pairs that do not repeat between spans are encoded on each use rather than cached: a per-job id
# would evict the useful entries, and exception texts would hold thousands of stack traces.
_UNCACHED_KEYS: Final = frozenset({"messaging.message.id", "exception.message", "exception.stacktrace"})
_CACHE_MAX_STR: Final = 128  # longer str values are encoded on each use
_INT64_MASK: Final = (1 << 64) - 1
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1


class _Unencodable(Exception):
    """An attribute value outside the OTel attribute types: the SDK encodes this span instead."""


def _varint(value: int) -> bytes:
    if value < 0x80:  # noqa: PLR2004 - one varint byte
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:  # noqa: PLR2004 - continuation bit
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode("utf-8"))


def _any_value(value: object) -> bytes:
    """An ``AnyValue`` message (oneof: set even at its default, as the SDK's encoder does)."""
    kind = type(value)
    if kind is str:
        return _string(b"\x0a", value)  # type: ignore[arg-type]
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            raise _Unencodable("int out of int64 range")
        return b"\x18" + _varint(value & _INT64_MASK)  # type: ignore[operator]
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if kind is bytes:
        return _field(b"\x3a", value)  # type: ignore[arg-type]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    raise _Unencodable(kind.__name__)


class _Encoder:
    """Encodes span batches; remembers encoded key/value pairs, resources and scopes between batches."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[bytes, str, type, object], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}

    def _key_value(self, tag: bytes, key: str, value: object) -> bytes:
        """A tagged ``KeyValue`` field; a short str, int or bool value that repeats is encoded once."""
        kind = type(value)
        cache_key = (tag, key, kind, value)
        try:
            pair = self._pairs.get(cache_key)  # most pairs repeat: look them up before classifying
        except TypeError:  # an unhashable value (a list from a non-SDK span): never cached
            pair = None
        if pair is not None:
            return pair
        if (
            kind is float
            or kind not in (str, int, bool)
            or key in _UNCACHED_KEYS
            or (kind is str and len(value) > _CACHE_MAX_STR)  # type: ignore[arg-type]
        ):
            encoded_key = self._keys.get(key)
            if encoded_key is None:
                encoded_key = self._keys[key] = _string(b"\x0a", key)
            return _field(tag, encoded_key + _field(b"\x12", _any_value(value)))
        if len(self._pairs) >= _CACHE_LIMIT:
            self._pairs.clear()
        pair = self._pairs[cache_key] = _field(
            tag, _string(b"\x0a", key) + _field(b"\x12", _any_value(value))
        )
        return pair

    def _attributes(self, tag: bytes, attributes: Attributes) -> bytes:
        if not attributes:
            return b""
        pair = self._key_value
        return b"".join([pair(tag, key, value) for key, value in _items(attributes)])

    def span(self, span: ReadableSpan) -> bytes:
        """One ``Span`` message (without its tag in ``ScopeSpans``)."""
        try:
            return self._span(span)
        except _Unencodable:
            return bytes(_encode_span(span).SerializePartialToString())

    def _span(self, span: ReadableSpan) -> bytes:  # noqa: C901, PLR0912 - one branch per optional field
        ctx = span.context
        if ctx is None:
            raise _Unencodable("span without a context")
        parent = span.parent
        parts = [
            b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
        ]
        if ctx.trace_state:
            parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_string(b"\x2a", span.name))
        parts.append(b"\x30" + _varint(_KIND[span.kind]))
        if span.start_time:
            parts.append(b"\x39" + _FIXED64(span.start_time))
        if span.end_time:
            parts.append(b"\x41" + _FIXED64(span.end_time))
        parts.append(self._attributes(b"\x4a", getattr(span, "_attributes", None) or span.attributes))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            body = [b"\x09" + _FIXED64(event.timestamp), _string(b"\x12", event.name)]
            body.append(self._attributes(b"\x1a", event.attributes))
            if event.dropped_attributes:
                body.append(b"\x20" + _varint(event.dropped_attributes))
            parts.append(_field(b"\x5a", b"".join(body)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            link_ctx = link.context
            body = [
                b"\x0a\x10" + link_ctx.trace_id.to_bytes(16, "big"),
                b"\x12\x08" + link_ctx.span_id.to_bytes(8, "big"),
                self._attributes(b"\x22", link.attributes),
            ]
            if link.dropped_attributes:
                body.append(b"\x28" + _varint(link.dropped_attributes))
            body.append(b"\x35" + _FIXED32(_flags(link_ctx.is_remote)))
            parts.append(_field(b"\x6a", b"".join(body)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        status_body = b""
        if status.description:
            status_body += _string(b"\x12", status.description)
        if status.status_code.value:
            status_body += b"\x18" + _varint(status.status_code.value)
        parts.append(_field(b"\x7a", status_body))
        parts.append(b"\x85\x01" + _FIXED32(_flags(parent is not None and parent.is_remote)))
        return b"".join(parts)

    @staticmethod
    def _cached(table: dict[int, tuple[Any, bytes]], item: Any, encode: Callable[[Any], Any]) -> bytes:  # noqa: ANN401 - a resource or a scope
        entry = table.get(id(item))
        if entry is None or entry[0] is not item:
            if len(table) >= 64:  # noqa: PLR2004 - a process has a handful of resources and scopes
                table.clear()
            entry = (item, bytes(encode(item).SerializePartialToString()))
            table[id(item)] = entry
        return entry[1]

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ``ExportTraceServiceRequest``: spans grouped by resource, then by instrumentation scope."""
        groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
        for span in spans:
            resource = span.resource
            group = groups.get(id(resource))
            if group is None:
                group = groups[id(resource)] = (resource, {})
            scope = span.instrumentation_scope
            entry = group[1].get(id(scope))
            if entry is None:
                entry = group[1][id(scope)] = (scope, [])
            entry[1].append(_field(b"\x12", self.span(span)))
        out = []
        for resource, by_scope in groups.values():
            body = [_field(b"\x0a", self._cached(self._resources, resource, _encode_resource))]
            for scope, encoded in by_scope.values():
                scope_body = [
                    _field(b"\x0a", self._cached(self._scopes, scope, _encode_instrumentation_scope))
                ]
                scope_body.extend(encoded)
                if scope is not None and scope.schema_url:
                    scope_body.append(_string(b"\x1a", scope.schema_url))
                body.append(_field(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                body.append(_string(b"\x1a", resource.schema_url))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)


def _items(attributes: Attributes) -> Any:  # noqa: ANN401 - an items view
    """The attribute pairs, from the SDK's plain dict when there is one.

    A Python-level ``ItemsView`` over ``BoundedAttributes`` costs about a microsecond per pair.
    """
    mapping = getattr(attributes, "_dict", None)  # BoundedAttributes keeps its pairs in a dict
    return (mapping if isinstance(mapping, dict) else attributes).items()  # type: ignore[union-attr]


def _flags(is_remote: bool) -> int:
    return _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if is_remote else 0)


def encode_request(spans: Sequence[ReadableSpan], encoder: _Encoder | None = None) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans`` (what ``OTLPSpanExporter`` posts)."""
    return (encoder or _Encoder()).request(spans)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` with the caching wire encoder; transport, retries and limits are the SDK's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - the SDK exporter's arguments
        super().__init__(*args, **kwargs)
        self._encoder = _Encoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode with the caching encoder, then post as ``OTLPSpanExporter.export`` does."""
        client = getattr(self, "_client", None)
        metrics = getattr(self, "_metrics", None)
        if self._shutdown or client is None or metrics is None:
            return super().export(spans)  # the SDK's own path (and its warning when shut down)
        try:
            data = self._encoder.request(spans)
        except Exception:  # noqa: BLE001 - a bug here must not lose spans: the SDK encodes them instead
            return super().export(spans)
        with metrics.export_operation(len(spans)) as result:
            limit = self._max_request_size
            if _is_request_too_large(data, limit):
                _log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(data),
                    limit,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds max_request_size {limit} bytes."
                )
                return SpanExportResult.FAILURE
            export_result = client.export(data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

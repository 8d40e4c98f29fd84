"""An in-process OTLP/HTTP receiver: decodes the protobuf requests the SDK exporters send."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

_ROUTES: dict[str, tuple[type[Any], type[Any], str]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, "traces"),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse, "metrics"),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, "logs"),
}


@dataclass
class Received:
    """Decoded requests by signal."""

    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[ExportLogsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every received span."""
        with self.lock:
            return [
                (attributes(rs.resource.attributes), span)
                for request in self.traces
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def metric_points(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, metric) for every received metric."""
        with self.lock:
            return [
                (attributes(rm.resource.attributes), metric)
                for request in self.metrics
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
            ]

    def log_records(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, log record) for every received record."""
        with self.lock:
            return [
                (attributes(rl.resource.attributes), record)
                for request in self.logs
                for rl in request.resource_logs
                for sl in rl.scope_logs
                for record in sl.log_records
            ]


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in items if isinstance(kv, KeyValue)}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        route = _ROUTES.get(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request_cls, response_cls, signal = route
        request = request_cls()
        request.ParseFromString(body)
        with self.server.received.lock:
            getattr(self.server.received, signal).append(request)
        payload = response_cls().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class signature
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: Received


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    """Serve on 127.0.0.1:0; yields the base URL (``http://127.0.0.1:PORT``) and what arrives."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.received = Received()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

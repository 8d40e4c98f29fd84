"""The log writer: one thread that formats and writes the log adapter's lines, fed by a bounded queue.

A stderr nobody reads must never stall the job loop (rev. 1 stopped at 48 jobs): the event loop only
puts a record (or the parts of one, :class:`PendingLine`) on the queue, and a full queue drops the line
and counts it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, cast

from opentelemetry import trace

__all__ = ["DEFAULT_LOG_QUEUE_SIZE", "LineSink", "LogQueueHandler", "LogWriter", "PendingLine", "json_dumps"]

DEFAULT_LOG_QUEUE_SIZE: Final = 10_000
_QUEUE_FULL_EVERY_S: Final = 60.0
_PACKAGE_LOGGER: Final = "asyncmq_otel"
_BATCH_LINES: Final = 256
_LINGER_S: Final = 0.01  # how late a line may be written, at most, for the sake of batching


class _Marker:
    """A flush request travelling through the writer's queue: set once every line before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP: Final = object()


class PendingLine:
    """A line of the adapter's own logger whose ``LogRecord`` the writer thread makes (off the loop)."""

    __slots__ = ("created", "exc_info", "extra", "finish", "level", "logger", "msg")

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        msg: object,
        exc_info: Any,  # noqa: ANN401 - whatever the stdlib logger accepts as exc_info
        extra: Mapping[str, Any] | None,
        finish: Callable[[Any, float], None] | None = None,
    ) -> None:
        self.logger = logger
        self.level = level
        self.msg = msg
        self.exc_info = exc_info
        self.extra = extra
        self.finish = finish
        self.created = time.time()

    def record(self) -> logging.LogRecord:
        """The record the logger would have made when the line was logged."""
        if self.finish is not None:
            self.finish(self.msg, self.created)
        record = self.logger.makeRecord(
            self.logger.name, self.level, _PACKAGE_LOGGER, 0, self.msg, (), self.exc_info, extra=self.extra
        )
        created = self.created  # the time it was logged, not the time it was written
        record.relativeCreated -= (record.created - created) * 1000
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        return record


_ENCODERS: dict[Callable[[Any], Any] | None, json.JSONEncoder] = {}


def json_dumps(obj: object, *, default: Callable[[Any], Any] | None = None) -> str:
    """``json.dumps(obj, default=default)``, the same text, with the encoder made once per ``default``.

    ``json.dumps`` builds a new ``JSONEncoder`` on every call that passes ``default`` (structlog's
    ``JSONRenderer`` always does), about a fifth of the writer thread's time per line.
    """
    encoder = _ENCODERS.get(default)
    if encoder is None:
        encoder = _ENCODERS[default] = json.JSONEncoder(default=default)
    return encoder.encode(obj)


class LogWriter:
    """One thread that formats and writes log records, fed by a bounded queue (never the event loop).

    :meth:`put` never blocks: with ``max_lines`` records waiting, the record is dropped, ``on_drop()``
    is called (it counts ``asyncmq_telemetry_dropped_total{signal="log", reason="queue_full"}``) and a
    ``telemetry.queue_full`` line is queued at most once a minute, past the bound.

    Args:
        deliver: called in the writer thread with each record (formatting and I/O happen there).
        max_lines: records allowed to wait.
        on_drop: called for each dropped record.
        clock: monotonic seconds (the once-a-minute rule reads it).
        lines: renders a pending line straight to text (``None`` when it needs a record) and writes
            a batch of rendered lines; the writer writes a batch whenever it has caught up with the
            queue (or has ``_BATCH_LINES``), one write for many lines instead of one per line.

    """

    def __init__(
        self,
        deliver: Callable[[logging.LogRecord], None],
        *,
        max_lines: int = DEFAULT_LOG_QUEUE_SIZE,
        on_drop: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        lines: LineSink | None = None,
    ) -> None:
        self._deliver = deliver
        self._lines = lines
        self.max_lines = max_lines
        self._on_drop = on_drop
        self._clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._last_full: float | None = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="asyncmq-otel-log-writer", daemon=True)
        self._thread.start()

    def put(self, record: logging.LogRecord | PendingLine) -> bool:
        """Queue ``record`` for the writer; False (and counted) when the queue is full."""
        if self._queue.qsize() < self.max_lines:
            self._queue.put(record)
            return True
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        now = self._clock()
        if self._last_full is None or now - self._last_full >= _QUEUE_FULL_EVERY_S:
            self._last_full = now
            self._queue.put(_queue_full_record(self.max_lines))  # past the bound: one line a minute at most
        return False

    def _run(self) -> None:
        get, empty, deliver, lines = self._queue.get, self._queue.empty, self._deliver, self._lines
        batch: list[str] = []
        while True:
            item = get()
            try:
                if lines is not None and isinstance(item, PendingLine):
                    text = lines.render(item)
                    if text is not None:
                        batch.append(text)
                        if len(batch) >= _BATCH_LINES:
                            self._write(lines, batch)
                        elif empty():
                            self._write(lines, batch)
                            # Caught up: let lines gather before waiting on the queue again. A put that
                            # finds the writer waiting wakes its thread (a futex call and a GIL hand-off
                            # per line, on the event loop's CPU); one that does not is a plain append.
                            time.sleep(_LINGER_S)
                        continue
                if batch:  # what came before this item is written before it
                    self._write(lines, batch)
                if item is _STOP:
                    return
                if isinstance(item, _Marker):
                    item.done.set()
                    continue
                deliver(item.record() if isinstance(item, PendingLine) else cast("logging.LogRecord", item))
            except Exception:  # noqa: BLE001 - the writer outlives any one broken record or handler
                _report_failure()

    @staticmethod
    def _write(lines: LineSink | None, batch: list[str]) -> None:
        try:
            if lines is not None:
                lines.write(batch)
        except Exception:  # noqa: BLE001 - as in _run: the lines are lost, the writer goes on
            _report_failure()
        finally:
            batch.clear()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every record queued before this call is written; False after ``timeout_s``."""
        if not self._thread.is_alive():
            return True
        marker = _Marker()
        self._queue.put(marker)
        return marker.done.wait(max(timeout_s, 0.0))

    def close(self, timeout_s: float) -> bool:
        """Write what is queued (within ``timeout_s``), then stop the thread. False when it did not finish."""
        flushed = self.flush(timeout_s)
        self._queue.put(_STOP)
        if flushed:
            self._thread.join(timeout=max(timeout_s, 0.0) or None)
        return flushed


def _report_failure() -> None:
    """Report the exception being handled as logging's own ``handleError`` does."""
    if logging.raiseExceptions:
        with contextlib.suppress(Exception):
            sys.stderr.write("--- asyncmq_otel log writer: a line could not be written ---\n")
            traceback.print_exc(file=sys.stderr)


class LineSink(Protocol):
    """The writer's short path for lines that only one text stream will see (see :class:`LogWriter`)."""

    def render(self, line: PendingLine) -> str | None:
        """The line's text without its newline, or ``None`` when it must become a record."""
        ...

    def write(self, texts: list[str]) -> None:
        """Write rendered lines, in order, one per line."""
        ...


def _queue_full_record(size: int) -> logging.LogRecord:
    return logging.getLogger(f"{_PACKAGE_LOGGER}.telemetry").makeRecord(
        f"{_PACKAGE_LOGGER}.telemetry", logging.WARNING, __name__, 0,
        "telemetry.queue_full: the log queue is full (%d lines); lines are dropped and counted in "
        'asyncmq_telemetry_dropped_total{signal="log",reason="queue_full"} (logged at most once a minute)',
        (size,), None,
    )  # fmt: skip


class LogQueueHandler(logging.Handler):
    """The only handler on the event loop's path: stamps the record's trace context and queues it.

    Records of this package's structlog logger already carry their fields (the chain ran in the
    emitting task); plain stdlib records of ``asyncmq_otel.*`` get the current span's ids here, since
    the writer thread that formats them has no current span.
    """

    def __init__(self, writer: LogWriter) -> None:
        super().__init__(logging.NOTSET)
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:  # no lock: the queue's put is thread-safe
        """Queue the record (never blocks)."""
        if "_logger" not in record.__dict__:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                record.trace_id = format(ctx.trace_id, "032x")
                record.span_id = format(ctx.span_id, "016x")
                record.trace_flags = "01" if ctx.trace_flags.sampled else "00"
        return self.writer.put(record)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record."""
        self.handle(record)

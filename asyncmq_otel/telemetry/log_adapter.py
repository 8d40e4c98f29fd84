"""The log adapter: one structured line per lifecycle event, with the attempt's trace context.

Lines go through this package's own structlog logger, a ``structlog.stdlib.BoundLogger`` over the
stdlib logger ``asyncmq_otel`` with the contract's processor chain. ``instrument()`` only adds handlers
to that stdlib logger; it never calls ``structlog.configure`` and never touches the root logger.

Applications get the same fields and ids in their handlers' logs by adding
``structlog.contextvars.merge_contextvars`` and :class:`AddTraceContext` to their own chain: the
adapter binds the job's fields with structlog's contextvars at ``job:started`` in the attempt's task
and resets them at the attempt's outcome.

No log I/O happens on the event loop: the handler on ``asyncmq_otel`` only puts each record on a
bounded queue, and one writer thread (:mod:`._log_writer`) formats and writes it (a stderr nobody
reads must never stall the job loop). A full queue drops the line and counts it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal, cast

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer

from .._version import __version__
from ._log_writer import DEFAULT_LOG_QUEUE_SIZE, LogQueueHandler, LogWriter, PendingLine, json_dumps

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.trace import Span
    from structlog.typing import EventDict, Processor, WrappedLogger

    from ..events import LifecycleEvent

__all__ = [
    "EVENT_LOG_LEVELS",
    "LOGGER_NAME",
    "LOG_OUTPUTS",
    "AddTraceContext",
    "DirectLines",
    "LogFormat",
    "LogOutput",
    "LogWriter",
    "LoggingAdapter",
    "OTelLogHandler",
    "processor_chain",
]

LOGGER_NAME: Final = "asyncmq_otel"
LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: Final = ("auto", "json", "console")
LOG_OUTPUTS: Final = ("stderr", "stdlib")

EVENT_LOG_LEVELS: Final[Mapping[str, tuple[str, int]]] = {
    "job:enqueued": ("job.enqueued", logging.DEBUG),
    "job:delayed": ("job.delayed", logging.DEBUG),
    "job:duplicated": ("job.duplicated", logging.INFO),
    "job:started": ("job.started", logging.DEBUG),
    "job:progress": ("job.progress", logging.DEBUG),
    "job:completed": ("job.completed", logging.INFO),
    "job:retried": ("job.retried", logging.WARNING),
    "job:failed": ("job.failed", logging.ERROR),
    "job:expired": ("job.expired", logging.WARNING),
    "job:cancelled": ("job.cancelled", logging.INFO),
    "job:interrupted": ("job.interrupted", logging.WARNING),
    "job:throttled": ("job.throttled", logging.DEBUG),
    "job:stalled": ("job.stalled", logging.WARNING),
    "queue:paused": ("queue.paused", logging.INFO),
    "queue:resumed": ("queue.resumed", logging.INFO),
    "worker:started": ("worker.started", logging.INFO),
    "worker:heartbeat": ("worker.heartbeat", logging.DEBUG),
    "worker:stopped": ("worker.stopped", logging.INFO),
    "backend:data_loss": ("backend.data_loss", logging.ERROR),
}
"""Bus event → (log ``event``, level): one INFO-or-above line per attempt, at its outcome."""

_OUTCOMES: Final = frozenset(
    {"job:completed", "job:retried", "job:failed", "job:expired", "job:cancelled", "job:interrupted"}
)
_ATTEMPT_LIMIT: Final = 100_000
_THROTTLED_S: Final = 0.001


class AddTraceContext:
    """structlog processor: the current span's ``trace_id``, ``span_id`` and ``trace_flags``.

    It reads the span at log time and gates on validity, not on sampling, so lines of unsampled
    traces keep their ids. Outside a span the keys are absent.
    """

    __slots__ = ("_get_span",)

    def __init__(self, get_span: Callable[[], Span] = trace.get_current_span) -> None:
        self._get_span = get_span

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        """Add the ids of the span current at log time."""
        ctx = self._get_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
            event["span_id"] = format(ctx.span_id, "016x")
            event["trace_flags"] = "01" if ctx.trace_flags.sampled else "00"
        return event


def resolve_format(log_format: str, stream: IO[str] | None = None) -> Literal["json", "console"]:
    """``auto`` is ``console`` on a TTY and ``json`` otherwise."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {log_format!r}")
    if log_format == "auto":
        target = stream if stream is not None else sys.stderr
        isatty = getattr(target, "isatty", None)
        return "console" if callable(isatty) and isatty() else "json"
    return "json" if log_format == "json" else "console"


_DICT_TRACEBACKS: Final = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
"""``structlog.processors.dict_tracebacks`` without frame locals (they may hold job arguments)."""


def processor_chain(log_format: Literal["json", "console"]) -> list[Processor]:
    """The processor chain up to the renderer (the renderer is the handler's formatter)."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        AddTraceContext(),
        structlog.processors.StackInfoRenderer(),
    ]
    if log_format == "json":
        chain.append(_DICT_TRACEBACKS)
    return chain


def _foreign_chain(log_format: Literal["json", "console"]) -> list[Processor]:
    """How stdlib records of ``asyncmq_otel.*`` loggers (not written through structlog) are prepared."""
    chain: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        AddTraceContext(),
        structlog.stdlib.ExtraAdder(),
    ]
    if log_format == "json":
        chain.append(_DICT_TRACEBACKS)
    return chain


_SEVERITY: Final = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}
_DROPPED_KEYS: Final = frozenset({"event", "_record", "_from_structlog", "exc_info", "stack_info", "level"})


def _otel_value(value: object) -> Any:  # noqa: ANN401 - an OTel AnyValue
    if isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


class OTelLogHandler(logging.Handler):
    """Feeds the same event dicts to an OTel ``LoggerProvider`` (``logs_exporter="otlp"``).

    Body = ``event``; attributes = the other fields under the same keys; severity from the level;
    trace context from the span that was current when the line was logged (the ids the line carries:
    this handler runs in the writer thread, where no span is current).
    """

    def __init__(self, logger_provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._otel_logger = logger_provider.get_logger(LOGGER_NAME, __version__)

    def emit(self, record: logging.LogRecord) -> None:
        """Translate one record and hand it to the OTel logger."""
        try:
            from opentelemetry._logs import SeverityNumber  # noqa: PLC0415 - only when OTLP logs are on

            msg = record.msg
            fields: dict[str, Any] = dict(msg) if isinstance(msg, dict) else {"event": record.getMessage()}
            body = str(fields.get("event", ""))
            attributes = {
                key: _otel_value(value) for key, value in fields.items() if key not in _DROPPED_KEYS
            }
            ids = [attributes.pop(key, None) or getattr(record, key, None) for key in _TRACE_KEYS]
            self._otel_logger.emit(
                timestamp=int(record.created * 1e9),
                context=_logged_context(*ids),
                severity_number=SeverityNumber(_SEVERITY.get(record.levelname, 9)),
                severity_text="WARN" if record.levelname == "WARNING" else record.levelname,
                body=body,
                attributes=attributes,
            )
        except Exception:  # noqa: BLE001 - logging's own isolation contract
            self.handleError(record)


_TRACE_KEYS: Final = ("trace_id", "span_id", "trace_flags")


def _logged_context(trace_id: object, span_id: object, flags: object) -> otel_context.Context:
    """A context whose current span has the ids a line was logged with (the root context without them)."""
    if not isinstance(trace_id, str) or not isinstance(span_id, str):
        return otel_context.Context()
    span_context = trace.SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if flags == "01" else trace.TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), otel_context.Context())


class LogOutput:
    """The handlers ``instrument()`` puts on the ``asyncmq_otel`` logger, the writer thread, their removal.

    Args:
        log_format: ``auto``, ``json`` or ``console``.
        level: level of the ``asyncmq_otel`` logger while instrumented (``None``: ``INFO`` with
            ``output="stderr"``, the application's level with ``"stdlib"``).
        stream: where the renderer writes (stderr by default).
        logger_provider: an OTel provider for a second, OTLP handler.
        extra_handlers: handlers called synchronously with the same event dicts (``capture_telemetry()``).
        render: write rendered lines to ``stream`` (``output="stderr"`` only).
        output: ``"stderr"`` (own handler, no propagation) or ``"stdlib"`` (records reach the handlers of
            the ancestors of ``asyncmq_otel``, the application's logging configuration).
        max_lines: bound of the writer's queue.
        on_drop: called for each line dropped on a full queue.

    """

    def __init__(
        self,
        *,
        log_format: str = "auto",
        level: str | int | None = "INFO",
        stream: IO[str] | None = None,
        logger_provider: LoggerProvider | None = None,
        extra_handlers: list[logging.Handler] | None = None,
        render: bool = True,
        output: str = "stderr",
        max_lines: int = DEFAULT_LOG_QUEUE_SIZE,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if output not in LOG_OUTPUTS:
            raise ValueError(f"logs_output must be one of {LOG_OUTPUTS}, not {output!r}")
        self.output = output
        self.format = resolve_format(log_format, stream)
        if level is None and output == "stderr":
            level = "INFO"
        self.level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        if self.level is not None and not isinstance(self.level, int):
            raise ValueError(f"log_level {level!r} is not a logging level name")
        self.handlers: list[logging.Handler] = []  # called by the writer thread
        if render and output == "stderr":
            renderer: Processor = (
                structlog.processors.JSONRenderer(serializer=json_dumps)
                if self.format == "json"
                else structlog.dev.ConsoleRenderer(colors=_colors(stream))
            )
            handler = _RenderHandler(stream, renderer) if stream is not None else _StderrHandler(renderer)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                    foreign_pre_chain=_foreign_chain(self.format),
                )
            )
            self.handlers.append(handler)
        if logger_provider is not None:
            self.handlers.append(OTelLogHandler(logger_provider))
        self.sync_handlers = list(extra_handlers or [])  # in-memory, called in the emitting thread
        self._max_lines = max_lines
        self._on_drop = on_drop
        self.writer: LogWriter | None = None
        self._queue_handler: LogQueueHandler | None = None
        self._saved: tuple[int, bool] | None = None

    def _deliver(self, record: logging.LogRecord) -> None:
        """In the writer thread: our handlers, then (``stdlib``) the application's, as propagation would."""
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        if self.output == "stdlib":
            parent = logging.getLogger(LOGGER_NAME).parent
            if parent is not None:
                parent.callHandlers(record)

    def _line_sink(self) -> _RenderedLines | None:
        """The writer's short path, when our renderer's stream is the only place a line goes."""
        handlers = self.handlers
        if self.output != "stderr" or len(handlers) != 1 or not isinstance(handlers[0], _RenderHandler):
            return None
        return _RenderedLines(handlers[0])

    def install(self) -> None:
        """Start the writer, add the handlers to ``asyncmq_otel`` and set its level (old state kept)."""
        target = logging.getLogger(LOGGER_NAME)
        self._saved = (target.level, target.propagate)
        if self.handlers or self.output == "stdlib":
            self.writer = LogWriter(
                self._deliver, max_lines=self._max_lines, on_drop=self._on_drop, lines=self._line_sink()
            )
            self._queue_handler = LogQueueHandler(self.writer)
            target.addHandler(self._queue_handler)
        for handler in self.sync_handlers:
            target.addHandler(handler)
        if self.level is not None:
            target.setLevel(self.level)
        if self._queue_handler is not None or self.sync_handlers:
            # The writer hands records on (to the application's handlers with "stdlib"); propagating as
            # well would reach them a second time, on the event loop.
            target.propagate = False

    def flush(self, timeout_s: float) -> bool:
        """Write every queued line within ``timeout_s``; False when the writer did not get there in time."""
        return True if self.writer is None else self.writer.flush(timeout_s)

    def uninstall(self, timeout_s: float = 2.0) -> bool:
        """Drain the queue (within ``timeout_s``), stop the writer, remove what :meth:`install` added."""
        target = logging.getLogger(LOGGER_NAME)
        drained = True
        if self._queue_handler is not None:
            target.removeHandler(self._queue_handler)
            self._queue_handler = None
        if self.writer is not None:
            drained = self.writer.close(timeout_s)
            self.writer = None
        for handler in self.sync_handlers:
            target.removeHandler(handler)
        if drained:
            for handler in self.handlers:
                with contextlib.suppress(ValueError, OSError):  # the stream may be closed already
                    handler.flush()
        self._restore(target)
        return drained

    def abandon(self) -> None:
        """In a forked child: remove the handlers without waiting for the parent's writer thread."""
        target = logging.getLogger(LOGGER_NAME)
        if self._queue_handler is not None:
            target.removeHandler(self._queue_handler)
            self._queue_handler = None
        self.writer = None
        for handler in self.sync_handlers:
            target.removeHandler(handler)
        self._restore(target)

    def _restore(self, target: logging.Logger) -> None:
        if self._saved is not None:
            target.setLevel(self._saved[0])
            target.propagate = self._saved[1]
            self._saved = None

    def logger(self) -> structlog.stdlib.BoundLogger:
        """The adapter's structlog logger: the processor chain over the stdlib ``asyncmq_otel`` logger."""
        processors = [*processor_chain(self.format), structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
        return structlog.stdlib.BoundLogger(self._sink, processors, {})

    @functools.cached_property
    def _sink(self) -> _StdlibSink:
        return _StdlibSink(logging.getLogger(LOGGER_NAME), self)

    def direct_lines(self) -> DirectLines:
        """The adapter's precompiled path to the writer (see :class:`DirectLines`)."""
        return DirectLines(self._sink, self.format)


_METHOD_NAMES: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def _iso_utc(created: float) -> str:
    """``TimeStamper(fmt="iso", utc=True)``'s text, for a time taken earlier.

    The text of the whole second is kept from the previous line (the writer formats thousands of lines
    a second); the microseconds are rounded as ``datetime.fromtimestamp`` rounds them (half to even).
    """
    global _LAST_SECOND  # noqa: PLW0603 - a one-entry cache, replaced as a whole (a tuple)
    fraction, whole = math.modf(created)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:  # noqa: PLR2004 - rounded up into the next second
        micros -= 1_000_000
        whole += 1.0
    second, prefix = _LAST_SECOND
    if whole != second or fraction < 0.0:
        if fraction < 0.0:  # before 1970: not worth a fast path
            return dt.datetime.fromtimestamp(created, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")
        prefix = dt.datetime.fromtimestamp(whole, tz=dt.timezone.utc).isoformat().replace("+00:00", "")
        _LAST_SECOND = (whole, prefix)
    return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


_LAST_SECOND: tuple[float, str] = (-1.0, "")


class DirectLines:
    """The adapter's lines without structlog's per-call machinery: the processor chain, precompiled.

    On the event loop it does what must see the emitting task (``merge_contextvars``, the level and
    logger names, the current span's ids); the writer thread adds the timestamp (of the time the line
    was logged) and the structured traceback. The event dict equals the reference chain's key for key,
    in the same order (a test compares both for every event type). It only runs when the writer's queue
    is the ``asyncmq_otel`` logger's only handler; otherwise :meth:`__call__` returns False and the
    caller takes the structlog path.

    Args:
        sink: the adapter's wrapped logger.
        log_format: ``json`` (structured tracebacks) or ``console``.

    """

    __slots__ = ("_finish", "_sink", "_trace")

    def __init__(self, sink: _StdlibSink, log_format: Literal["json", "console"]) -> None:
        self._sink = sink
        self._trace = AddTraceContext()
        self._finish = _finish_json if log_format == "json" else _finish_console

    def __call__(self, level: int, event: str, fields: dict[str, Any]) -> bool:
        """Queue one line (``fields`` becomes its event dict); False when the structlog path must run."""
        writer = self._sink.direct_writer()
        if writer is None:
            return False
        fields["event"] = event
        # structlog.contextvars.merge_contextvars, in the same order, with each variable's key looked up
        # once per process instead of its name tested and sliced on every line
        keys = _MERGE_KEYS
        if len(keys) > _MERGE_KEYS_LIMIT:  # variables made on the fly by some library: start over
            keys.clear()
        for var, value in contextvars.copy_context().items():
            key = keys.get(var)
            if key is None:
                name = var.name
                key = keys[var] = (
                    name[_CONTEXTVARS_PREFIX_LEN:] if name.startswith(_CONTEXTVARS_PREFIX) else ""
                )
            if key and key not in fields and value is not Ellipsis:
                fields[key] = value
        method = _METHOD_NAMES[level]
        fields["level"] = method
        fields["logger"] = LOGGER_NAME
        fields["timestamp"] = None  # keeps the chain's key order; the writer writes the time
        self._trace(None, method, fields)
        sink = self._sink
        writer.put(
            PendingLine(
                sink._logger,  # noqa: SLF001 - the sink's own logger
                level,
                fields,
                None,
                {"_logger": sink, "_name": method},
                self._finish,
            )
        )
        return True


_CONTEXTVARS_PREFIX: Final = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXTVARS_PREFIX_LEN: Final = len(_CONTEXTVARS_PREFIX)
# Each context variable's key in a line: its name without structlog's prefix, "" for a variable not
# structlog's. Read and filled on the event loop; a race only recomputes one entry.
_MERGE_KEYS: dict[contextvars.ContextVar[Any], str] = {}
_MERGE_KEYS_LIMIT: Final = 4096


def _finish_console(event: dict[str, Any], created: float) -> None:
    event["timestamp"] = _iso_utc(created)


def _finish_json(event: dict[str, Any], created: float) -> None:
    event["timestamp"] = _iso_utc(created)
    if "exc_info" in event:
        _DICT_TRACEBACKS(None, "", event)


class _StdlibSink:
    """The stdlib logger ``asyncmq_otel`` as structlog's wrapped logger, without the caller lookup.

    Each call becomes one ``LogRecord`` handed to that logger's handlers (the ``ProcessorFormatter`` of
    the stderr handler, the OTLP handler, any handler the application adds). The source location,
    which would always point into this adapter, is not searched for: that saves a stack walk per line.
    When the writer's queue is the logger's only handler, the writer thread makes the record.
    """

    __slots__ = ("_logger", "_output", "name")

    def __init__(self, logger: logging.Logger, output: LogOutput | None = None) -> None:
        self._logger = logger
        self._output = output
        self.name = logger.name

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the stdlib Logger's method name
        """Whether a record of ``level`` would be handled."""
        return self._logger.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:  # noqa: N802 - the stdlib Logger's method name
        """The stdlib logger's effective level."""
        return self._logger.getEffectiveLevel()

    def direct_writer(self) -> LogWriter | None:
        """The writer, when its queue is the only thing a record of this logger would reach."""
        output = self._output
        queue_handler = output._queue_handler if output is not None else None  # noqa: SLF001 - its own output
        logger = self._logger
        handlers = logger.handlers
        if (
            queue_handler is not None
            and len(handlers) == 1
            and handlers[0] is queue_handler
            and not logger.filters
            and not logger.disabled
        ):
            return queue_handler.writer
        return None

    def _emit(self, level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        writer = self.direct_writer()
        if writer is not None:  # only the writer's queue would see the record: the writer thread makes it
            message = args[0] if args else ""
            writer.put(PendingLine(logger, level, message, kwargs.get("exc_info"), kwargs.get("extra")))
            return
        record = logger.makeRecord(
            self.name, level, "asyncmq_otel", 0, args[0] if args else "", (), kwargs.get("exc_info"),
            extra=kwargs.get("extra"),
        )  # fmt: skip
        logger.handle(record)

    def debug(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - structlog passes the event dict through
        """Emit at DEBUG."""
        self._emit(logging.DEBUG, args, kwargs)

    def info(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - as above
        """Emit at INFO."""
        self._emit(logging.INFO, args, kwargs)

    def warning(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - as above
        """Emit at WARNING."""
        self._emit(logging.WARNING, args, kwargs)

    def error(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - as above
        """Emit at ERROR."""
        self._emit(logging.ERROR, args, kwargs)

    def critical(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - as above
        """Emit at CRITICAL."""
        self._emit(logging.CRITICAL, args, kwargs)


class _RenderHandler(logging.StreamHandler):  # type: ignore[type-arg] # any text stream
    """The renderer's handler: this package's structlog records are rendered straight from their event dict.

    The ``ProcessorFormatter`` it carries would copy each record and strip its own meta keys before
    running the same renderer; for records made by the adapter's logger the result is the same string,
    so the copy is skipped on the job path. Foreign records (plain stdlib calls on ``asyncmq_otel.*``)
    still go through the formatter and its foreign pre-chain.
    """

    def __init__(self, stream: IO[str] | None, renderer: Processor) -> None:
        super().__init__(stream)
        self.renderer = renderer

    def format(self, record: logging.LogRecord) -> str:
        """Render a structlog record's event dict directly; hand any other record to the formatter."""
        msg = record.msg
        name = record.__dict__.get("_name")
        if name is not None and type(msg) is dict and "_logger" in record.__dict__:
            return cast("str", self.renderer(None, name, msg.copy()))
        return super().format(record)


class _RenderedLines:
    """The writer's short path (:class:`LineSink`) to the render handler's stream.

    The adapter's lines are rendered from their event dict and written in batches, without a
    ``LogRecord`` per line or a flush per line.

    It applies while the render handler is as :class:`LogOutput` built it (no filters, its level met);
    anything else goes through the handler as a record.
    """

    __slots__ = ("_handler",)

    def __init__(self, handler: _RenderHandler) -> None:
        self._handler = handler

    def render(self, line: PendingLine) -> str | None:
        """The line's text, or ``None`` when it must go through the handler as a record."""
        handler = self._handler
        msg = line.msg
        extra = line.extra
        if (
            type(msg) is not dict
            or extra is None
            or "_logger" not in extra
            or line.exc_info is not None
            or line.level < handler.level
            or handler.filters
        ):
            return None
        if line.finish is not None:
            line.finish(msg, line.created)
        # The dict is this line's own and nothing else reads it: rendered without the handler's copy.
        return cast("str", handler.renderer(None, extra["_name"], msg))

    def write(self, texts: list[str]) -> None:
        """Write the lines in one call and flush once."""
        handler = self._handler
        with handler.lock or contextlib.nullcontext():
            stream = handler.stream
            stream.write("\n".join(texts) + "\n")
            stream.flush()


class _StderrHandler(_RenderHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (it may be replaced after setup)."""

    def __init__(self, renderer: Processor) -> None:
        super().__init__(None, renderer)

    @property
    def stream(self) -> IO[str]:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


def _colors(stream: IO[str] | None) -> bool:
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return bool(callable(isatty) and isatty())


class LoggingAdapter:
    """Writes one line per lifecycle event (the contract's event names, levels and fields).

    Args:
        logger: the structlog logger of :meth:`LogOutput.logger`.
        direct: the precompiled path of :meth:`LogOutput.direct_lines` (used whenever it applies).

    """

    signal = "log"

    def __init__(self, logger: structlog.stdlib.BoundLogger, direct: DirectLines | None = None) -> None:
        self._logger = logger
        self._direct = direct
        self._stdlib = logging.getLogger(LOGGER_NAME)
        # Per running attempt: the tokens of its bound fields, and the fields (its outcome line reuses them).
        self._bound: dict[
            tuple[str | None, str | None, int | None], tuple[list[contextvars.Token[Any]], dict[str, Any]]
        ] = {}
        # structlog's context variable of each key bound per attempt, found by its first bind: later
        # binds set it directly (structlog's bind builds the name and looks the variable up per key).
        self._vars: dict[str, contextvars.ContextVar[Any]] = {}

    def __call__(self, event: LifecycleEvent) -> None:
        """Log ``event`` (and bind or reset the attempt's fields)."""
        name = event.name
        if name == "job:started":
            self._bind(event)
        spec = EVENT_LOG_LEVELS.get(name)
        if spec is not None and self._stdlib.isEnabledFor(spec[1]):
            bound = self._bound.get((event.queue, event.job_id, event.attempt)) if name in _OUTCOMES else None
            fields = _fields(event, None if bound is None else bound[1])
            if name == "job:failed" and event.exception is not None:
                fields["exc_info"] = event.exception
            direct = self._direct
            if direct is None or not direct(spec[1], spec[0], fields):
                self._logger.log(spec[1], spec[0], **fields)
        if name in _OUTCOMES:
            self._reset(event)

    def _bind(self, event: LifecycleEvent) -> None:
        if len(self._bound) >= _ATTEMPT_LIMIT:
            del self._bound[next(iter(self._bound))]
        known = self._vars
        tokens: list[contextvars.Token[Any]] = []
        fields = _attempt_fields(event)
        for key, value in fields.items():
            var = known.get(key)
            if var is None:
                token = structlog.contextvars.bind_contextvars(**{key: value})[key]
                known[key] = token.var
            else:
                token = var.set(value)
            tokens.append(token)
        self._bound[event.queue, event.job_id, event.attempt] = (tokens, fields)

    def _reset(self, event: LifecycleEvent) -> None:
        bound = self._bound.pop((event.queue, event.job_id, event.attempt), None)
        if bound is None:
            return
        try:
            for token in bound[0]:
                token.var.reset(token)
        except ValueError:  # another task: its context dies with it
            return

    def telemetry(self, event: str, fields: Mapping[str, object], level: int = logging.WARNING) -> None:
        """Log one of telemetry's own lines (``telemetry.cardinality_overflow``, ...)."""
        self._logger.log(level, event, **fields)

    def close(self) -> None:
        """Forget attempts still bound (``uninstrument()``)."""
        self._bound.clear()


def _attempt_fields(event: LifecycleEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "messaging.system": "asyncmq",
        "messaging.destination.name": event.queue,
        "messaging.message.id": event.job_id,
        "asyncmq.task.name": event.task,
        "asyncmq.job.attempt": event.attempt,
        "asyncmq.job.max_attempts": event.max_attempts,
        "asyncmq.job.priority": event.priority,
    }
    if event.worker_id is not None:
        fields["messaging.consumer.group.name"] = event.group
        fields["messaging.client.id"] = event.worker_id
    if event.flow_id is not None:  # a job of a flow (flows.py); bound with the attempt's fields
        fields["asyncmq.flow.id"] = event.flow_id
    return fields


_OPTIONAL: Final = (
    ("wait_s", "asyncmq.job.wait_s"),
    ("duration_s", "asyncmq.job.duration_s"),
    ("backoff_s", "asyncmq.job.backoff_s"),
    ("progress", "asyncmq.job.progress"),
    ("delay_s", "asyncmq.job.delay_s"),
    ("concurrency", "asyncmq.worker.concurrency"),
    ("active", "asyncmq.worker.active"),
    ("old_epoch", "asyncmq.backend.old_epoch"),
    ("new_epoch", "asyncmq.backend.new_epoch"),
    ("schedule_key", "asyncmq.schedule.key"),
    ("schedule_due", "asyncmq.schedule.due"),
    ("scope", "asyncmq.ratelimit.scope"),
)


_REASON_KEYS: Final = {
    "job:failed": "asyncmq.dlq.reason",
    "job:expired": "asyncmq.dlq.reason",
    "job:cancelled": "asyncmq.cancel.stage",
}


def _base_fields(event: LifecycleEvent) -> dict[str, Any]:
    if event.job_id is not None:
        return _attempt_fields(event)
    fields: dict[str, Any] = {"messaging.system": "asyncmq"}
    if event.queue is not None:
        fields["messaging.destination.name"] = event.queue
    if event.worker_id is not None:
        fields["messaging.consumer.group.name"] = event.group
        fields["messaging.client.id"] = event.worker_id
    return fields


def _fields(event: LifecycleEvent, attempt_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The line's fields; ``attempt_fields`` are those its attempt bound at ``job:started`` (reused)."""
    name = event.name
    fields = _base_fields(event) if attempt_fields is None else attempt_fields.copy()
    for attr, key in _OPTIONAL:
        value = getattr(event, attr)
        if value is not None:
            fields[key] = value
    if event.ratelimit_wait_s is not None and event.ratelimit_wait_s > _THROTTLED_S:
        fields["asyncmq.ratelimit.wait_s"] = event.ratelimit_wait_s
    if name in _OUTCOMES:
        fields["asyncmq.job.outcome"] = name.split(":", 1)[1]
    if name in {"job:retried", "job:failed"}:
        fields["error.type"] = event.error_type or event.reason or "failed"
        if event.error_message is not None:
            fields["error.message"] = event.error_message
    if event.reason is not None:
        fields[_REASON_KEYS.get(name, "reason")] = event.reason
    return fields

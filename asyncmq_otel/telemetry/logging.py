"""The log adapter: one structured line per lifecycle event, with the attempt's trace context (§4).

Lines go through this package's own structlog logger, a ``structlog.stdlib.BoundLogger`` over the
stdlib logger ``asyncmq_otel`` with the processor chain of §4.1. ``instrument()`` only adds handlers
to that stdlib logger; it never calls ``structlog.configure`` and never touches the root logger.

Applications get the same fields and ids in their handlers' logs by adding
``structlog.contextvars.merge_contextvars`` and :class:`AddTraceContext` to their own chain: the
adapter binds the job's fields with structlog's contextvars at ``job:started`` in the attempt's task
and resets them at the attempt's outcome.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal, cast

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer

from .._version import __version__

if TYPE_CHECKING:
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.trace import Span
    from structlog.typing import EventDict, Processor, WrappedLogger

    from ..events import LifecycleEvent

__all__ = [
    "EVENT_LOG_LEVELS",
    "LOGGER_NAME",
    "AddTraceContext",
    "LogFormat",
    "LogOutput",
    "LoggingAdapter",
    "OTelLogHandler",
    "processor_chain",
]

LOGGER_NAME: Final = "asyncmq_otel"
LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: Final = ("auto", "json", "console")

EVENT_LOG_LEVELS: Final[Mapping[str, tuple[str, int]]] = {
    "job:enqueued": ("job.enqueued", logging.DEBUG),
    "job:delayed": ("job.delayed", logging.DEBUG),
    "job:duplicated": ("job.duplicated", logging.INFO),
    "job:started": ("job.started", logging.INFO),
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
"""Bus event → (log ``event``, level), as in §1.4."""

_OUTCOMES: Final = frozenset(
    {"job:completed", "job:retried", "job:failed", "job:expired", "job:cancelled", "job:interrupted"}
)
_ATTEMPT_LIMIT: Final = 100_000
_THROTTLED_S: Final = 0.001


class AddTraceContext:
    """structlog processor: the current span's ``trace_id``, ``span_id`` and ``trace_flags`` (§4.1 step 3).

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
    """Steps 1–4 of §4.1 (the renderer is the handler's formatter)."""
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
    """Feeds the same event dicts to an OTel ``LoggerProvider`` (``logs_exporter="otlp"``, §4.2).

    Body = ``event``; attributes = the other fields under the same keys; severity from the level;
    trace context taken natively from the active span.
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
            for key in ("trace_id", "span_id", "trace_flags"):
                attributes.pop(key, None)
            self._otel_logger.emit(
                timestamp=int(record.created * 1e9),
                context=otel_context.get_current(),
                severity_number=SeverityNumber(_SEVERITY.get(record.levelname, 9)),
                severity_text="WARN" if record.levelname == "WARNING" else record.levelname,
                body=body,
                attributes=attributes,
            )
        except Exception:  # noqa: BLE001 - logging's own isolation contract
            self.handleError(record)


class LogOutput:
    """The handlers ``instrument()`` puts on the ``asyncmq_otel`` logger, and their removal.

    Args:
        log_format: ``auto``, ``json`` or ``console``.
        level: level of the ``asyncmq_otel`` logger while instrumented.
        stream: where the renderer writes (stderr by default).
        logger_provider: an OTel provider for a second, OTLP handler.
        extra_handlers: more handlers fed the same event dicts (``capture_telemetry()`` uses one).

    """

    def __init__(
        self,
        *,
        log_format: str = "auto",
        level: str | int = "INFO",
        stream: IO[str] | None = None,
        logger_provider: LoggerProvider | None = None,
        extra_handlers: list[logging.Handler] | None = None,
        render: bool = True,
    ) -> None:
        self.format = resolve_format(log_format, stream)
        self.level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
        if not isinstance(self.level, int):
            raise ValueError(f"log_level {level!r} is not a logging level name")  # noqa: TRY004 - a bad value
        self.handlers: list[logging.Handler] = []
        if render:
            renderer: Processor = (
                structlog.processors.JSONRenderer()
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
        self.handlers.extend(extra_handlers or [])
        self._saved: tuple[int, bool] | None = None

    def install(self) -> None:
        """Add the handlers to ``asyncmq_otel`` and set its level (the previous state is kept)."""
        target = logging.getLogger(LOGGER_NAME)
        self._saved = (target.level, target.propagate)
        for handler in self.handlers:
            target.addHandler(handler)
        target.setLevel(self.level)
        if self.handlers:
            target.propagate = False  # handled here; the root logger's handlers would print the raw dict

    def uninstall(self) -> None:
        """Remove exactly the handlers :meth:`install` added and restore level and propagation."""
        target = logging.getLogger(LOGGER_NAME)
        for handler in self.handlers:
            target.removeHandler(handler)
            with contextlib.suppress(ValueError, OSError):  # the stream may be closed already
                handler.flush()
        if self._saved is not None:
            target.setLevel(self._saved[0])
            target.propagate = self._saved[1]
            self._saved = None

    def logger(self) -> structlog.stdlib.BoundLogger:
        """The adapter's structlog logger: the §4.1 chain over the stdlib ``asyncmq_otel`` logger."""
        processors = [*processor_chain(self.format), structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
        return structlog.stdlib.BoundLogger(_StdlibSink(logging.getLogger(LOGGER_NAME)), processors, {})


class _StdlibSink:
    """The stdlib logger ``asyncmq_otel`` as structlog's wrapped logger, without the caller lookup.

    Each call becomes one ``LogRecord`` handed to that logger's handlers (the ``ProcessorFormatter`` of
    the stderr handler, the OTLP handler, any handler the application adds). The source location,
    which would always point into this adapter, is not searched for: that saves a stack walk per line.
    """

    __slots__ = ("_logger", "name")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.name = logger.name

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the stdlib Logger's method name
        """Whether a record of ``level`` would be handled."""
        return self._logger.isEnabledFor(level)

    def getEffectiveLevel(self) -> int:  # noqa: N802 - the stdlib Logger's method name
        """The stdlib logger's effective level."""
        return self._logger.getEffectiveLevel()

    def _emit(self, level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
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
        self._renderer = renderer

    def format(self, record: logging.LogRecord) -> str:
        """Render a structlog record's event dict directly; hand any other record to the formatter."""
        msg = record.msg
        name = record.__dict__.get("_name")
        if name is not None and type(msg) is dict and "_logger" in record.__dict__:
            return cast("str", self._renderer(None, name, msg.copy()))
        return super().format(record)


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
    """Writes one line per lifecycle event (§1.4 names and levels, §4.2 fields).

    Args:
        logger: the structlog logger of :meth:`LogOutput.logger`.

    """

    signal = "log"

    def __init__(self, logger: structlog.stdlib.BoundLogger) -> None:
        self._logger = logger
        self._stdlib = logging.getLogger(LOGGER_NAME)
        self._bound: dict[
            tuple[str | None, str | None, int | None], Mapping[str, contextvars.Token[Any]]
        ] = {}

    def __call__(self, event: LifecycleEvent) -> None:
        """Log ``event`` (and bind or reset the attempt's fields)."""
        name = event.name
        if name == "job:started":
            self._bind(event)
        spec = EVENT_LOG_LEVELS.get(name)
        if spec is not None and self._stdlib.isEnabledFor(spec[1]):
            fields = _fields(event)
            if name == "job:failed" and event.exception is not None:
                fields["exc_info"] = event.exception
            self._logger.log(spec[1], spec[0], **fields)
        if name in _OUTCOMES:
            self._reset(event)

    def _bind(self, event: LifecycleEvent) -> None:
        if len(self._bound) >= _ATTEMPT_LIMIT:
            del self._bound[next(iter(self._bound))]
        self._bound[event.queue, event.job_id, event.attempt] = structlog.contextvars.bind_contextvars(
            **_attempt_fields(event)
        )

    def _reset(self, event: LifecycleEvent) -> None:
        tokens = self._bound.pop((event.queue, event.job_id, event.attempt), None)
        if tokens is None:
            return
        try:
            structlog.contextvars.reset_contextvars(**tokens)
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


def _fields(event: LifecycleEvent) -> MutableMapping[str, Any]:
    name = event.name
    fields = _base_fields(event)
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

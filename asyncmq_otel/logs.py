"""structlog processors for your own logging chain (the ones the log adapter uses).

Add ``structlog.contextvars.merge_contextvars`` and :class:`AddTraceContext` to your chain and the
lines your handlers log carry the same job fields and trace ids as the worker's own.
"""

from .telemetry.log_adapter import AddTraceContext as AddTraceContext

__all__ = ["AddTraceContext"]

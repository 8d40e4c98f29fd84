"""The worker API as AsyncMQ users know it: ``Worker``, ``process_job``, ``handle_job`` and friends."""

from ._processing import WorkerContext as WorkerContext
from ._processing import _run_with_limits as _run_with_limits
from ._processing import handle_job as handle_job
from ._processing import process_job as process_job
from ._worker import Worker as Worker

__all__ = ["Worker", "WorkerContext", "_run_with_limits", "handle_job", "process_job"]

"""The worker API as AsyncMQ users know it: ``Worker``, ``process_job``, ``handle_job`` and friends."""

from .worker.claim_loop import WorkerContext as WorkerContext
from .worker.claim_loop import _run_with_limits as _run_with_limits
from .worker.claim_loop import handle_job as handle_job
from .worker.claim_loop import process_job as process_job
from .worker.worker import Worker as Worker

__all__ = ["Worker", "WorkerContext", "_run_with_limits", "handle_job", "process_job"]

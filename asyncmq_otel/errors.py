"""One hierarchy of typed errors: every failure a user can meet has its own class."""

from __future__ import annotations

__all__ = [
    "AsyncMQError",
    "BackendAuthError",
    "BackendError",
    "BackendOutOfMemory",
    "BackendTLSError",
    "BackendUnavailable",
    "ConfigError",
    "DataLossDetected",
    "DuplicateJob",
    "InvalidName",
    "InvalidSchedule",
    "JobArgumentError",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobTimeout",
    "MalformedJob",
    "PayloadTooLarge",
    "ResultSerializationError",
    "ResultTooLarge",
    "SandboxCrashed",
    "SandboxError",
    "SandboxTimeout",
    "ScheduleNotFound",
    "TaskNameWarning",
    "TelemetryConfigError",
    "UnknownTask",
    "UnsupportedOption",
]


class AsyncMQError(Exception):
    """Base class of every error raised by asyncmq_otel."""


class ConfigError(AsyncMQError, ValueError):
    """A setting has an invalid value or an invalid combination with another setting."""


class TelemetryConfigError(ConfigError):
    """Telemetry cannot start as configured (an invalid option, or the metrics address is in use)."""


class InvalidName(AsyncMQError, ValueError):
    """A queue name or job id does not match its allowed character set."""


class JobArgumentError(AsyncMQError, TypeError, ValueError):
    """A job argument or enqueue option cannot be stored faithfully; nothing was sent.

    The message names its path (``args[1]``, ``kwargs["when"]``) or the option (``ttl``). It is a
    ``TypeError`` for a value of the wrong kind and a ``ValueError`` for one out of bounds: both
    catch it.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class UnsupportedOption(JobArgumentError):
    """An enqueue option AsyncMQ takes (``depends_on``, ``repeat_every``) that is not supported yet.

    Refused rather than stored as a handler argument; ``.path`` is the option's name.
    """


class TaskNameWarning(UserWarning):
    """The job was stored, but no worker may run its task id (a typo, a short or ``__main__.`` id)."""


class PayloadTooLarge(AsyncMQError, ValueError):
    """The encoded job is larger than ``settings.max_payload_bytes``; nothing was stored."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"job payload is {size} bytes, over the {limit}-byte limit (settings.max_payload_bytes); "
            "store large data elsewhere and pass a reference"
        )
        self.size = size
        self.limit = limit


class DuplicateJob(AsyncMQError):
    """A job with this id already exists (raised only with ``on_duplicate="raise"``)."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id!r} already exists in state {state!r}")
        self.job_id = job_id
        self.state = state


class UnknownTask(AsyncMQError, LookupError):
    """No task is registered under this id in this process."""


class MalformedJob(AsyncMQError, ValueError):
    """A stored job cannot be decoded: it is not a JSON object of the expected shape."""


class JobTimeout(AsyncMQError, TimeoutError):
    """The attempt ran longer than its task's ``timeout``."""


class JobCancelled(AsyncMQError):
    """The awaited job was cancelled (queued or running) instead of finishing: ``Queue.wait_for_result``."""


class ResultSerializationError(AsyncMQError, TypeError):
    """The handler ran (its side effects may have happened) but its result is not JSON-serialisable."""


class ResultTooLarge(AsyncMQError, ValueError):
    """The handler ran (its side effects may have happened) but its result exceeds ``max_result_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the handler ran, but its result is over the {limit}-byte limit "
            f"(settings.max_result_bytes; got at least {size} bytes): return a reference instead"
        )
        self.size = size
        self.limit = limit


class SandboxError(AsyncMQError):
    """Base class of sandbox failures."""


class SandboxTimeout(SandboxError, JobTimeout):
    """The sandboxed handler ran past its timeout and its process was terminated."""


class SandboxCrashed(SandboxError):
    """The sandbox child died before it answered (exit code or signal in the message)."""


class BackendError(AsyncMQError):
    """A backend operation failed."""


class BackendUnavailable(BackendError, ConnectionError):
    """The backend cannot be reached; enqueue is idempotent by job id, so retrying is safe."""


class BackendAuthError(BackendUnavailable):
    """The backend rejected the credentials; check the user and password in the URL."""


class BackendTLSError(BackendUnavailable):
    """The TLS handshake with the backend failed; check the CA and certificates."""


class DataLossDetected(BackendError):
    """The backend lost a queue's data (its epoch changed) and ``settings.on_data_loss`` is ``"halt"``."""

    def __init__(self, queue: str, old_epoch: str | None, new_epoch: str) -> None:
        super().__init__(
            f"the data of queue {queue!r} was lost (epoch {old_epoch} -> {new_epoch}): jobs stored before "
            "are gone; check Redis persistence (appendonly yes) and restart the workers"
        )
        self.queue = queue
        self.old_epoch = old_epoch
        self.new_epoch = new_epoch


class BackendOutOfMemory(BackendError):
    """The backend refused the write because it is out of memory; nothing was stored."""


class InvalidSchedule(AsyncMQError, ValueError):
    """A schedule definition is invalid (key, interval, cron expression, timezone, catch-up, options)."""


class ScheduleNotFound(AsyncMQError, LookupError):
    """No schedule is stored under this key on this queue."""


class JobFailed(AsyncMQError):
    """The awaited job failed for good (retries exhausted, non-retryable, or dead-lettered).

    ``error_type`` and ``error_message`` are the handler's error as the job stores it, ``reason``
    the dead-letter reason.
    """

    def __init__(self, job_id: str, error_type: str, error_message: str, reason: str | None = None) -> None:
        self.job_id = job_id
        self.error_type = error_type
        self.error_message = error_message
        self.reason = reason
        super().__init__(f"job {job_id} failed ({reason or 'failed'}): {error_type}: {error_message}")


class JobExpired(AsyncMQError):
    """The awaited job expired (its TTL passed before it started) and never ran."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} expired before it ran")

"""``@task``: register a function under a task id and enqueue it; ``autodiscover_tasks()``."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .errors import UnknownTask
from .jobs import Backoff, BackoffSpec, check_queue_name
from .settings import settings

if TYPE_CHECKING:
    from .backends.base import Backend
    from .schedules import ScheduleSpec

__all__ = [
    "TASK_REGISTRY",
    "TaskInfo",
    "TaskWrapper",
    "autodiscover_tasks",
    "get_task",
    "list_tasks",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What the worker needs to run a task: the function and its job defaults."""

    task_id: str
    func: Callable[..., Any]
    queue: str
    retries: int = 0
    ttl: float | None = None
    backoff: dict[str, Any] | None = None
    timeout: float | None = None
    progress: bool = False
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    catch_up: str = "latest"
    # read for every job: computed once (inspect.iscoroutinefunction is slow)
    _is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_is_async", inspect.iscoroutinefunction(self.func))

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (run directly, not in a thread)."""
        return self._is_async

    def schedule_spec(self) -> ScheduleSpec | None:
        """The schedule declared with ``cron=`` or ``every=`` (key = task id), or None."""
        if self.cron is None and self.every is None:
            return None
        from .schedules import ScheduleSpec  # noqa: PLC0415 - schedules imports jobs, like this module

        options = {"retries": self.retries, "ttl": self.ttl, "backoff": self.backoff, "timeout": self.timeout}
        return ScheduleSpec.build(
            self.queue,
            self.task_id,
            every=self.every,
            cron=self.cron,
            timezone=self.timezone,
            key=self.task_id,
            catch_up=self.catch_up,
            options={k: v for k, v in options.items() if v},
        )

    @property
    def module(self) -> str:
        """The module the handler is defined in (the sandbox child imports it)."""
        return str(getattr(self.func, "__module__", ""))


TASK_REGISTRY: dict[str, TaskInfo] = {}


def get_task(task_id: str) -> TaskInfo:
    """The registered task, or :class:`UnknownTask`."""
    try:
        return TASK_REGISTRY[task_id]
    except KeyError:
        raise UnknownTask(
            f"no task {task_id!r} is registered in this process; import its module "
            "(settings.tasks or --app) before starting the worker"
        ) from None


def list_tasks(queue: str | None = None) -> list[str]:
    """Registered task ids, optionally only those declared for ``queue``."""
    return sorted(tid for tid, info in TASK_REGISTRY.items() if queue is None or info.queue == queue)


def _no_progress(_pct: float, _data: object = None) -> None:
    """Stand-in ``report_progress`` when a progress task is called directly."""


class TaskWrapper(Generic[P, R]):
    """The registered task: call it to run the function, ``await .enqueue(...)`` to queue a job."""

    def __init__(self, info: TaskInfo) -> None:
        self.info = info
        self.task_id = info.task_id
        self.queue = info.queue
        functools.update_wrapper(self, info.func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function directly (a progress task gets a no-op ``report_progress``)."""
        if self.info.progress and "report_progress" not in kwargs:
            kwargs["report_progress"] = _no_progress
        result: R = self.info.func(*args, **kwargs)
        return result

    async def enqueue(
        self,
        *args: Any,  # noqa: ANN401 - the handler's arguments; use .using(...) for typed calls
        backend: Backend | None = None,
        delay: float | None = None,
        priority: int = 5,
        job_id: str | None = None,
        **kwargs: Any,  # noqa: ANN401 - as above
    ) -> str:
        """Queue a job for this task and return its id (delayed jobs included)."""
        return await self.using(backend=backend, delay=delay, priority=priority, job_id=job_id).enqueue(
            *args, **kwargs
        )

    def using(
        self,
        *,
        backend: Backend | None = None,
        delay: float | None = None,
        priority: int = 5,
        job_id: str | None = None,
        queue: str | None = None,
    ) -> BoundEnqueue[P]:
        """Fix the job options, then ``await .enqueue(*args, **kwargs)`` with the handler's own signature."""
        return BoundEnqueue(self.info, backend, delay, priority, job_id, queue)

    def __repr__(self) -> str:
        return f"<task {self.task_id} queue={self.queue}>"


class BoundEnqueue(Generic[P]):
    """A task with its job options fixed; ``enqueue`` takes exactly the handler's arguments."""

    __slots__ = ("_backend", "_delay", "_info", "_job_id", "_priority", "_queue")

    def __init__(
        self,
        info: TaskInfo,
        backend: Backend | None,
        delay: float | None,
        priority: int,
        job_id: str | None,
        queue: str | None,
    ) -> None:
        self._info = info
        self._backend = backend
        self._delay = delay
        self._priority = priority
        self._job_id = job_id
        self._queue = queue

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Queue the job and return its id."""
        from .queues import Queue  # noqa: PLC0415 - queues imports the worker-facing modules

        info = self._info
        return await Queue(self._queue or info.queue, backend=self._backend).add(
            info.task_id,
            args=list(args),
            kwargs=dict(kwargs),
            retries=info.retries,
            ttl=info.ttl,
            backoff=info.backoff,
            timeout=info.timeout,
            priority=self._priority,
            delay=self._delay,
            job_id=self._job_id,
        )


def task(
    queue: str,
    *,
    retries: int = 0,
    ttl: float | None = None,
    backoff: BackoffSpec = None,
    timeout: float | None = None,
    name: str | None = None,
    progress: bool = False,
    cron: str | None = None,
    every: float | None = None,
    timezone: str = "UTC",
    catch_up: str = "latest",
) -> Callable[[Callable[P, R]], TaskWrapper[P, R]]:
    """Register a sync or async function as a task of ``queue``.

    Args:
        queue: the queue its jobs go to by default.
        retries: retries after the first attempt fails (``max_attempts = retries + 1``).
        ttl: seconds after enqueue past which a job that has not started expires to the DLQ.
        backoff: delay between retries: seconds (fixed), ``"exponential"``, a mapping
            ``{"type", "delay", "max", "jitter"}`` or a :class:`~asyncmq_otel.jobs.Backoff`.
        timeout: seconds an attempt may run before it fails with ``JobTimeout``.
        name: the task id; ``"{module}.{function}"`` when omitted.
        progress: pass ``report_progress(pct, data=None)`` to the handler.
        cron: run the task periodically on this cron expression (in ``timezone``); a worker of
            ``queue`` upserts the schedule at start-up, with the task id as its key.
        every: run the task every this many seconds (instead of ``cron``).
        timezone: the IANA timezone ``cron`` is evaluated in (DST as the cron library rules).
        catch_up: ticks missed while no worker ran: ``"latest"``, ``"all"`` or ``"none"``.

    """
    check_queue_name(queue)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    parsed_backoff = Backoff.parse(backoff)

    def decorator(func: Callable[P, R]) -> TaskWrapper[P, R]:
        task_id = name or f"{func.__module__}.{func.__qualname__}"
        info = TaskInfo(
            task_id=task_id,
            func=func,
            queue=queue,
            retries=retries,
            ttl=ttl,
            backoff=None if parsed_backoff is None else parsed_backoff.to_dict(),
            timeout=timeout,
            progress=progress,
            cron=cron,
            every=every,
            timezone=timezone,
            catch_up=catch_up,
        )
        info.schedule_spec()  # a bad cron, interval or timezone fails at import, not at start-up
        TASK_REGISTRY[task_id] = info
        return TaskWrapper(info)

    return decorator


def autodiscover_tasks(packages: list[str] | None = None) -> list[str]:
    """Import every module of the packages in ``settings.tasks`` (recursively) so their tasks register.

    Returns the names of the modules imported. A package that cannot be imported raises
    ``ImportError`` naming it, so a typo in the settings stops the worker at startup.
    """
    imported: list[str] = []
    for package_name in packages if packages is not None else list(settings.tasks):
        package = importlib.import_module(package_name)
        imported.append(package.__name__)
        search_path = getattr(package, "__path__", None)
        if search_path is None:
            continue
        for module in pkgutil.walk_packages(search_path, prefix=package.__name__ + "."):
            importlib.import_module(module.name)
            imported.append(module.name)
    return imported

"""``@task``: register a function under a task id and enqueue it; ``autodiscover_tasks()``."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._dependencies import OnParentFailure
from .errors import JobArgumentError, UnknownTask, UnsupportedOption
from .jobs import MAX_RETRIES, Backoff, BackoffSpec, Job, check_int_option, check_queue_name, check_seconds
from .settings import settings

if TYPE_CHECKING:
    from .backends.base import Backend
    from .schedules import ScheduleSpec

__all__ = [
    "TASK_REGISTRY",
    "UNSUPPORTED_OPTIONS",
    "TaskInfo",
    "TaskWrapper",
    "autodiscover_tasks",
    "get_task",
    "list_tasks",
    "task",
]

P = ParamSpec("P")
R = TypeVar("R")

# Enqueue options of AsyncMQ that are refused, not stored as handler arguments, until supported.
UNSUPPORTED_OPTIONS: dict[str, str] = {
    "repeat_every": "repeating jobs (repeat_every: declare a schedule with Queue.upsert_repeatable(task, "
    "every=...) or @task(every=...) instead)",
}
# Per-job options of Queue.add and .using(...): as keywords of .enqueue they are handler arguments
# only when the handler declares them.
_PER_JOB_OPTIONS = frozenset({"retries", "ttl", "backoff", "timeout", "queue"})
_OPTION_LIKE = _PER_JOB_OPTIONS | UNSUPPORTED_OPTIONS.keys()


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

    def fill_unset(self, job: Job, *, retries_set: bool) -> None:
        """Give ``job`` the retries, backoff, ttl and timeout this task declares where the job set none.

        A value the producer stored wins. ``retries_set`` is whether the stored job has
        ``max_retries`` (0 is a value; see :attr:`ClaimedJob.retries_set`); a ttl set here counts
        from the job's enqueue time.
        """
        if not retries_set:
            job.max_retries = self.retries
        if job.backoff is None:
            job.backoff = self.backoff
        if job.timeout is None:
            job.timeout = self.timeout
        if job.ttl is None and self.ttl is not None:
            job.ttl = self.ttl
            if job.expires_at is None and job.enqueued_at:
                job.expires_at = job.enqueued_at + self.ttl


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
        depends_on: Sequence[str | tuple[str, str]] | None = None,
        on_parent_failure: OnParentFailure = "fail",
        **kwargs: Any,  # noqa: ANN401 - as above
    ) -> str:
        """Queue a job for this task and return its id (delayed jobs included).

        Keywords other than the six options are the handler's. ``depends_on`` lists the parent
        jobs (ids of this task's queue or ``(queue, job_id)`` pairs) that must complete first, and
        ``on_parent_failure="run"`` runs the job even when a parent dead-letters, as in
        :meth:`Queue.add <asyncmq_otel.queues.Queue.add>`. AsyncMQ's ``repeat_every`` raises
        :class:`~asyncmq_otel.errors.UnsupportedOption`, and ``retries``,
        ``ttl``, ``backoff``, ``timeout``, ``queue`` raise :class:`JobArgumentError` unless the
        handler declares them: set them with ``.using(...)``. A handler argument of any name passes
        through ``.using().enqueue(...)``, which takes the handler's arguments only. AsyncMQ's
        ``enqueue(backend, *args)`` (the backend first) is accepted too.
        """
        if kwargs and not _OPTION_LIKE.isdisjoint(kwargs):
            _refuse_options(self.info, kwargs)
        if args and backend is None and type(args[0]) not in _JSON_TYPES and _is_backend(args[0]):
            # AsyncMQ's spelling enqueue(backend, *args): a backend is never a JSON argument
            backend, args = args[0], args[1:]
        return await self.using(
            backend=backend,
            delay=delay,
            priority=priority,
            job_id=job_id,
            depends_on=depends_on,
            on_parent_failure=on_parent_failure,
        ).enqueue(*args, **kwargs)

    # AsyncMQ's spellings of enqueue
    delay = enqueue
    send = enqueue

    def using(
        self,
        *,
        backend: Backend | None = None,
        delay: float | None = None,
        priority: int = 5,
        job_id: str | None = None,
        queue: str | None = None,
        retries: int | None = None,
        ttl: float | None = None,
        backoff: BackoffSpec = None,
        timeout: float | None = None,
        depends_on: Sequence[str | tuple[str, str]] | None = None,
        on_parent_failure: OnParentFailure = "fail",
    ) -> BoundEnqueue[P]:
        """Fix the job options, then ``await .enqueue(*args, **kwargs)`` with the handler's own signature.

        ``retries``, ``ttl``, ``backoff`` and ``timeout`` override the task's declared values for
        this job; left as None, the worker applies the task's. ``depends_on`` and
        ``on_parent_failure`` are those of :meth:`Queue.add <asyncmq_otel.queues.Queue.add>`.
        """
        options = _JobOptions(
            delay, priority, job_id, retries, ttl, backoff, timeout, depends_on, on_parent_failure
        )
        return BoundEnqueue(self.info, backend, queue, options)

    def __repr__(self) -> str:
        return f"<task {self.task_id} queue={self.queue}>"


_JSON_TYPES = frozenset({str, int, float, bool, list, dict, tuple, type(None)})


def _is_backend(value: object) -> bool:
    """Whether ``value`` is a backend (it has the port's claim and bulk enqueue)."""
    return callable(getattr(value, "claim", None)) and callable(getattr(value, "enqueue_bulk", None))


def _refuse_options(info: TaskInfo, kwargs: Mapping[str, Any]) -> None:
    """Raise for an enqueue keyword that is an option elsewhere, unless the handler declares it."""
    try:
        declared = inspect.signature(info.func).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): options stay options
        declared = {}  # type: ignore[assignment]
    for name in sorted(_OPTION_LIKE.intersection(kwargs)):
        escape = f"a handler argument named {name!r} passes through .using().enqueue({name}=...)"
        if name in UNSUPPORTED_OPTIONS:
            raise UnsupportedOption(name, f"{UNSUPPORTED_OPTIONS[name]} are not supported yet; {escape}")
        parameter = declared.get(name)
        if parameter is None or parameter.kind in {parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD}:
            raise JobArgumentError(
                name,
                f"is not an argument of task {info.task_id}'s handler; set it for one job with "
                f".using({name}=...).enqueue(...), or for every job in @task(...)",
            )


@dataclass(frozen=True, slots=True)
class _JobOptions:
    """The per-job options fixed by :meth:`TaskWrapper.using` (None: the task's declared value)."""

    delay: float | None
    priority: int
    job_id: str | None
    retries: int | None
    ttl: float | None
    backoff: BackoffSpec
    timeout: float | None
    depends_on: Sequence[str | tuple[str, str]] | None = None
    on_parent_failure: OnParentFailure = "fail"


class BoundEnqueue(Generic[P]):
    """A task with its job options fixed; ``enqueue`` takes exactly the handler's arguments."""

    __slots__ = ("_backend", "_info", "_options", "_queue")

    def __init__(
        self, info: TaskInfo, backend: Backend | None, queue: str | None, options: _JobOptions
    ) -> None:
        self._info = info
        self._backend = backend
        self._queue = queue
        self._options = options

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Queue the job and return its id; every keyword is the handler's."""
        from .queues import Queue  # noqa: PLC0415 - queues imports the worker-facing modules

        info = self._info
        options = self._options
        # retries, backoff, ttl and timeout left unset are the task's: the worker applies them
        return await Queue(self._queue or info.queue, backend=self._backend).add(
            info.task_id,
            args=args,
            kwargs=kwargs,
            retries=options.retries,
            ttl=options.ttl,
            backoff=options.backoff,
            timeout=options.timeout,
            priority=options.priority,
            delay=options.delay,
            job_id=options.job_id,
            depends_on=options.depends_on,
            on_parent_failure=options.on_parent_failure,
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
    check_int_option("retries", retries, 0, MAX_RETRIES)
    if ttl is not None:
        ttl = check_seconds("ttl", ttl)
    if timeout is not None:
        timeout = check_seconds("timeout", timeout)
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

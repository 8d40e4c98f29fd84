"""The producer's checks of ``depends_on`` and ``on_parent_failure``, shared by ``Queue`` and flows."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .errors import JobArgumentError
from .jobs import check_job_id, check_queue_name

if TYPE_CHECKING:
    from .backends.base import Backend, ClaimedJob

__all__ = [
    "MAX_PARENTS",
    "ON_PARENT_FAILURE",
    "OnParentFailure",
    "ParentRef",
    "check_parents",
    "current_job",
]

ParentRef = tuple[str, str]
"""A parent as ``(queue, job_id)``."""
OnParentFailure = Literal["fail", "run"]
ON_PARENT_FAILURE = frozenset({"fail", "run"})
MAX_PARENTS = 1000  # one job's fan-in; a bigger join is a sign of a missing intermediate step

current_job: contextvars.ContextVar[tuple[Backend, ClaimedJob] | None] = contextvars.ContextVar(
    "asyncmq_otel_current_job", default=None
)
"""The job whose handler runs in this task, for ``flows.parent_results()`` (set by the worker)."""


def check_parents(
    depends_on: Sequence[Any] | None, queue: str, job_id: str, on_parent_failure: object
) -> tuple[ParentRef, ...]:
    """``depends_on`` as ``(queue, job_id)`` pairs: a plain id is a job of ``queue``.

    Raises:
        JobArgumentError: not a list of ids or ``(queue, id)`` pairs, a bad name, the job itself,
            too many parents, or ``on_parent_failure`` not ``"fail"`` or ``"run"``.

    """
    if on_parent_failure not in ON_PARENT_FAILURE:
        raise JobArgumentError("on_parent_failure", f"must be 'fail' or 'run', not {on_parent_failure!r:.60}")
    if depends_on is None:
        return ()
    if isinstance(depends_on, (str, bytes)) or not isinstance(depends_on, Sequence):
        raise JobArgumentError(
            "depends_on",
            f"must be a list of job ids or (queue, job_id) pairs, not {type(depends_on).__name__}",
        )
    if len(depends_on) > MAX_PARENTS:
        raise JobArgumentError("depends_on", f"has {len(depends_on)} parents; at most {MAX_PARENTS}")
    out: dict[ParentRef, None] = {}  # ordered and without repeats
    for index, parent in enumerate(depends_on):
        ref = _parent_ref(parent, queue, f"depends_on[{index}]")
        if ref == (queue, job_id):
            raise JobArgumentError(f"depends_on[{index}]", "a job cannot depend on itself")
        out[ref] = None
    return tuple(out)


def _parent_ref(parent: object, queue: str, path: str) -> ParentRef:
    """One parent as ``(queue, job_id)``: a plain id names a job of ``queue``."""
    try:
        if isinstance(parent, str):
            return (queue, check_job_id(parent))
        if isinstance(parent, (tuple, list)) and len(parent) == 2:  # noqa: PLR2004 - a pair
            return (check_queue_name(parent[0]), check_job_id(parent[1]))
    except ValueError as exc:  # InvalidName: the message says which pattern the name must match
        raise JobArgumentError(path, str(exc)) from None
    raise JobArgumentError(path, f"must be a job id or a (queue, job_id) pair, not {parent!r:.60}")

"""The scrape sink in multi-process mode: mmap files, no callbacks.

``asyncmq-otel worker --processes N`` starts each worker process with ``PROMETHEUS_MULTIPROC_DIR`` set,
so prometheus_client writes every value to a per-process file that the parent merges on ``/metrics``.
The parent cannot call a child's callbacks, so every gauge is a plain ``Gauge`` set by its owner: the
observable rows (running max age, queue depth, oldest age, paused, consumers) are copied from their
callbacks into such gauges every second by :class:`ObservableRefresher`. Gauges merge with ``livesum``
across the live processes for worker up, jobs active and concurrency (``asyncmq_worker_up`` sums to the
number of worker processes), and with ``max`` for the others.

prometheus_client cannot remove a series in this mode, so a series an owner no longer observes (the
sampler lost its lock, or its samples went stale) is set to 0, the neutral value of ``max`` for these
non-negative gauges. Exemplars are not available in this mode.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import values

from .._version import __version__
from .providers import MetricsServer

__all__ = [
    "LIVESUM_ROWS",
    "REFRESH_INTERVAL_S",
    "MergedMetrics",
    "ObservableRefresher",
    "enabled",
    "gauge_mode",
]

_log = logging.getLogger("asyncmq_otel.telemetry")

LIVESUM_ROWS: Final = frozenset(
    {"asyncmq.worker.up", "asyncmq.worker.jobs.active", "asyncmq.worker.concurrency"}
)
"""Gauges summed over the live processes, by OTel name: worker up, jobs active, concurrency."""
REFRESH_INTERVAL_S: Final = 1.0
"""How often observable values are copied into their multi-process gauges."""


def enabled() -> bool:
    """Whether prometheus_client is in multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set at its import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def gauge_mode(name: str) -> Literal["livesum", "max"]:
    """The ``multiprocess_mode`` of the gauge with OTel name ``name``."""
    return "livesum" if name in LIVESUM_ROWS else "max"


Observe = Callable[[], Iterable[tuple[Mapping[str, str], float]]]
"""An observable row's callback: ``(labels by key, value)`` pairs."""


class ObservableRefresher:
    """Copies observable rows into plain gauges every ``interval`` seconds, on a daemon thread.

    Args:
        rows: ``(gauge, label keys, observe)`` per observable row; ``gauge`` is a labelled
            prometheus_client ``Gauge``.
        interval: seconds between refreshes.

    """

    def __init__(
        self,
        rows: Sequence[tuple[Any, tuple[str, ...], Observe]],
        interval: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._rows = list(rows)
        self._interval = interval
        self._previous: list[set[tuple[str, ...]]] = [set() for _ in self._rows]
        self._stop = threading.Event()
        self._failed_once = False
        self._thread = threading.Thread(target=self._run, name="asyncmq-otel-gauges", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Set every observed value now; series observed before but not now go to 0."""
        for index, (gauge, keys, observe) in enumerate(self._rows):
            seen: set[tuple[str, ...]] = set()
            for labels, value in observe():
                label_values = tuple(labels[key] for key in keys)
                gauge.labels(*label_values).set(value)
                seen.add(label_values)
            for gone in self._previous[index] - seen:
                gauge.labels(*gone).set(0.0)
            self._previous[index] = seen

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - telemetry never stops the worker
                if not self._failed_once:
                    self._failed_once = True
                    _log.warning("telemetry.gauge_refresh_error: %s", exc)

    def stop(self) -> None:
        """Stop refreshing (the last values stay in the file until the process exits)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


class _ChildMetrics:
    """The parent's view of the children's files: a ``MultiProcessCollector`` that can forget a process.

    Collection and forgetting hold one lock, so a file is never removed while a scrape reads it.
    """

    def __init__(self, path: str) -> None:
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - telemetry loads lazily
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        self.path = path
        self._lock = threading.Lock()
        self._merged = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> list[Any]:
        """The merged families of every process, live or dead."""
        with self._lock:
            return list(self._merged.collect())  # type: ignore[no-untyped-call]

    def forget(self, pid: int) -> None:
        """A child exited: drop its gauge files (live and last-value gauges alike: it reports no more)."""
        with self._lock:
            for leftover in Path(self.path).glob(f"gauge_*_{pid}.db"):
                leftover.unlink(missing_ok=True)


class MergedMetrics:
    """The supervisor's ``/metrics`` and ``/healthz``: its children's files merged, with its own target_info.

    Args:
        directory: the children's ``PROMETHEUS_MULTIPROC_DIR``.
        health: what ``/healthz`` answers: ``(healthy, reason)``.
        metrics_addr: ``host:port`` to serve on; ``""`` serves nothing (dead children are still forgotten).
        service_name: ``service.name`` of the parent's ``target_info``; ``OTEL_SERVICE_NAME`` or
            ``asyncmq-worker`` by default.

    Raises:
        TelemetryConfigError: ``metrics_addr`` cannot be served; the message says how to choose another.

    """

    def __init__(
        self,
        directory: str,
        health: Callable[[], tuple[bool, str]],
        *,
        metrics_addr: str,
        service_name: str | None = None,
    ) -> None:
        self._files = _ChildMetrics(directory)
        self._files.registry.set_target_info(
            {
                "service_name": service_name or os.environ.get("OTEL_SERVICE_NAME") or "asyncmq-worker",
                "service_instance_id": str(uuid.uuid4()),
                "service_version": __version__,
                "host_name": socket.gethostname(),
                "process_pid": str(os.getpid()),
            }
        )
        self._server: MetricsServer | None = None
        self.url: str | None = None
        """Where the merged ``/metrics`` is served, or ``None``."""
        if metrics_addr:
            self._server = MetricsServer(self._files.registry, metrics_addr)
            self._server.set_health(health)
            self.url = self._server.url

    def forget(self, pid: int) -> None:
        """A child exited: its gauges go (a dead sampler's depth is not kept as a maximum forever)."""
        self._files.forget(pid)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server = None

"""Plain accumulators behind the scrape sink's bound series, read by a collector at scrape time.

A ``prometheus_client`` child costs 0.8 µs per ``inc`` and 1.5 µs per ``observe`` (validation, a
linear bucket scan, one lock per value); a job records four of each, which alone broke the
metrics-only budget of 5 µs per job (the telemetry contract's overhead rule: "pre-bound children, or plain
accumulators read by a collector at scrape time"). These hold one float or one bucket list behind
one lock, and :func:`families` turns them into the same metric families prometheus_client would
expose. Multi-process mode keeps prometheus_client's children: only they write the shared files.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

__all__ = ["CounterValue", "GaugeValue", "HistogramValue", "families"]

_INF: Final = float("inf")


class CounterValue:
    """A monotonic total (``inc``); also the up-down counter and gauge below."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        # Series are written from the event loop and, rarely, from other threads (a producer in a
        # thread pool): one uncontended lock keeps every increment, at ~0.1 µs.
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        with self._lock:
            self.value += amount

    add = inc  # the up-down counter's name for it


class GaugeValue(CounterValue):
    """A value that is set (``set``) or moved (``inc`` with a negative amount on an up-down counter)."""

    __slots__ = ()

    def set(self, value: float) -> None:
        """Replace the value."""
        self.value = float(value)


class HistogramValue:
    """Bucket counts, their sum, and the last exemplar of each bucket."""

    __slots__ = ("_bounds", "_counts", "_exemplars", "_les", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._les = _le_labels(self._bounds)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._exemplars: dict[int, Exemplar] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value`` (``le`` semantics).

        ``trace_id`` becomes that bucket's exemplar (OpenMetrics output only).
        """
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
        if trace_id is not None:
            self._exemplars[index] = Exemplar({"trace_id": trace_id}, value, time.time())

    def snapshot(self) -> tuple[list[tuple[str, float, Exemplar | None]], float]:
        """Cumulative buckets (``le`` as prometheus_client writes it, +Inf last) and the sum."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        buckets: list[tuple[str, float, Exemplar | None]] = []
        running = 0
        exemplars = self._exemplars
        for index, le in enumerate(self._les):
            running += counts[index]
            buckets.append((le, float(running), exemplars.get(index)))
        return buckets, total


@functools.cache
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The ``le`` values of a bucket set, +Inf last, as prometheus_client writes them (once per set)."""
    return tuple(floatToGoString(bound) for bound in (*bounds, _INF))  # type: ignore[no-untyped-call]


def families(
    kind: str,
    name: str,
    documentation: str,
    label_keys: Sequence[str],
    unit: str,
    series: Iterable[tuple[Sequence[str], CounterValue | HistogramValue]],
) -> Metric:
    """The metric family of one row: ``kind`` is ``counter``, ``gauge`` or ``histogram``."""
    labels = list(label_keys)
    if kind == "counter":
        counter = CounterMetricFamily(name, documentation, labels=labels)
        for values, value in series:
            assert isinstance(value, CounterValue)  # noqa: S101 - the row kind decides the value class
            counter.add_metric(list(values), value.value)
        return counter
    if kind == "gauge":
        gauge = GaugeMetricFamily(name, documentation, labels=labels, unit=unit)
        for values, value in series:
            assert isinstance(value, CounterValue)  # noqa: S101 - as above
            gauge.add_metric(list(values), value.value)
        return gauge
    histogram = HistogramMetricFamily(name, documentation, labels=labels, unit=unit)
    for values, value in series:
        assert isinstance(value, HistogramValue)  # noqa: S101 - as above
        buckets, total = value.snapshot()
        histogram.add_metric(
            list(values),
            [(le, n, exemplar) if exemplar is not None else (le, n) for le, n, exemplar in buckets],
            total,
        )
    return histogram

"""Plain accumulators behind the scrape sink's bound series, read by a collector at scrape time.

A ``prometheus_client`` child costs 0.8 µs per ``inc`` and 1.5 µs per ``observe`` (validation, a
linear bucket scan, one lock per value); a job records four of each, which alone broke the
metrics-only budget of 5 µs per job (the telemetry contract's overhead rule: "pre-bound children, or plain
accumulators read by a collector at scrape time"). These hold one float or one bucket list, and
:func:`families` turns them into the same metric families prometheus_client would expose.
Multi-process mode keeps prometheus_client's children: only they write the shared files.

Writes take no lock on the hot path. Each value is *owned* by the thread that created it (a worker binds
its series on its event loop, where every job event is emitted: a sync handler's progress hops back to
the loop): only the owner writes the owner's part, so no two threads ever update it at once and no
increment can be lost (CPython may switch threads between the read and the store of ``+=``; with one
writer that is harmless). Any other thread (a producer in a thread pool, a second worker's loop in
another thread) writes a separate part under the value's lock. The collector reads both parts at
scrape time and adds them; it may see an observation's bucket before its sum, never a count twice.
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


_ident = threading.get_ident


class CounterValue:
    """A monotonic total (``inc``); also the up-down counter and gauge below."""

    __slots__ = ("_foreign", "_lock", "_owner", "_value")

    def __init__(self) -> None:
        self._value = 0.0  # written by the owner thread only
        self._foreign = 0.0  # written by other threads, under the lock
        self._owner = _ident()
        self._lock = threading.Lock()

    @property
    def value(self) -> float:
        """The total as the collector reads it (both parts)."""
        return self._value + self._foreign

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        if _ident() == self._owner:
            self._value += amount
        else:
            with self._lock:
                self._foreign += amount

    add = inc  # the up-down counter's name for it


class GaugeValue(CounterValue):
    """A value that is set (``set``) or moved (``inc`` with a negative amount on an up-down counter)."""

    __slots__ = ()

    def set(self, value: float) -> None:
        """Replace the value (rows are either set or moved, never both, so this does not race an ``add``)."""
        with self._lock:
            self._foreign = 0.0
            self._value = float(value)


class HistogramValue:
    """Bucket counts, their sum, and the last exemplar of each bucket."""

    __slots__ = ("_bounds", "_counts", "_exemplars", "_foreign", "_les", "_lock", "_owner", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._les = _le_labels(self._bounds)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf; the owner thread's part
        self._sum = 0.0
        self._foreign: tuple[list[int], list[float]] | None = None  # other threads' part, made on first use
        self._exemplars: dict[int, Exemplar] = {}
        self._owner = _ident()
        self._lock = threading.Lock()

    def observe(self, value: float, trace_id: str | None = None) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value`` (``le`` semantics).

        ``trace_id`` becomes that bucket's exemplar (OpenMetrics output only).
        """
        index = bisect.bisect_left(self._bounds, value)
        if _ident() == self._owner:
            self._counts[index] += 1
            self._sum += value
        else:
            with self._lock:
                if self._foreign is None:
                    self._foreign = ([0] * len(self._counts), [0.0])
                counts, total = self._foreign
                counts[index] += 1
                total[0] += value
        if trace_id is not None:
            self._exemplars[index] = Exemplar({"trace_id": trace_id}, value, time.time())

    def snapshot(self) -> tuple[list[tuple[str, float, Exemplar | None]], float]:
        """Cumulative buckets (``le`` as prometheus_client writes it, +Inf last) and the sum."""
        counts = list(self._counts)  # one C-level copy: no write of the owner interleaves with it
        total = self._sum
        with self._lock:
            if self._foreign is not None:
                foreign, foreign_total = self._foreign
                counts = [a + b for a, b in zip(counts, foreign, strict=True)]
                total += foreign_total[0]
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

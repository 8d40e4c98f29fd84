"""The metric definition table and its two sinks (§3): parity, cardinality, top-N, pre-initialisation."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry

from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.tasks import task
from asyncmq_otel.telemetry.metrics import (
    B_ATT,
    B_E2E,
    B_OP,
    B_PROC,
    B_WAIT,
    METRICS,
    METRICS_BY_NUMBER,
    InstrumentKind,
    MetricDef,
    MetricSinks,
    label_key,
    translate_name,
)
from asyncmq_otel.testing import Captured, capture_telemetry

Q, T, G = "messaging_destination_name", "asyncmq_task_name", "messaging_consumer_group_name"
OP = "messaging_operation_name"

# §3.4, transcribed independently of the implementation: number → (Prometheus name, type, labels, buckets).
CONTRACT: dict[int, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    1: ("messaging_client_sent_messages_total", "counter", (Q, T, OP, "error_type"), None),
    2: ("messaging_client_consumed_messages_total", "counter", (Q, T, G), None),
    3: ("messaging_process_duration_seconds", "histogram", (Q, T, G, "error_type"), B_PROC),
    4: ("messaging_client_operation_duration_seconds", "histogram", (Q, OP, "error_type"), B_OP),
    5: ("asyncmq_job_wait_duration_seconds", "histogram", (Q, T, G, "priority_class"), B_WAIT),
    6: ("asyncmq_job_e2e_duration_seconds", "histogram", (Q, T, "outcome"), B_E2E),
    7: ("asyncmq_job_outcomes_total", "counter", (Q, T, G, "outcome", "error_type", "reason"), None),
    8: ("asyncmq_job_attempts", "histogram", (Q, T, "outcome"), B_ATT),
    9: ("asyncmq_job_stalled_total", "counter", (Q, T), None),
    10: ("asyncmq_job_running_max_age_seconds", "gauge", (Q, G), None),
    11: ("asyncmq_ratelimit_throttled_total", "counter", (Q, G), None),
    12: ("asyncmq_ratelimit_wait_seconds", "histogram", (Q, G), B_WAIT),
    13: ("asyncmq_worker_up", "gauge", (Q, G), None),
    14: ("asyncmq_worker_heartbeat_timestamp_seconds", "gauge", (Q, G), None),
    15: ("asyncmq_worker_jobs_active", "gauge", (Q, G), None),
    16: ("asyncmq_worker_concurrency", "gauge", (Q, G), None),
    17: ("asyncmq_queue_depth", "gauge", (Q, "state"), None),
    18: ("asyncmq_queue_oldest_age_seconds", "gauge", (Q,), None),
    19: ("asyncmq_queue_paused", "gauge", (Q,), None),
    20: ("asyncmq_telemetry_dropped_total", "counter", ("signal", "reason"), None),
    21: ("asyncmq_backend_up", "gauge", (), None),
    22: ("asyncmq_backend_data_loss_total", "counter", (Q,), None),
    23: ("asyncmq_backend_data_loss_detected", "gauge", (Q,), None),
    24: ("asyncmq_stale_writes_rejected_total", "counter", (Q, OP), None),
    # An extension the operations issue asks for (worker liveness from the registry, per queue).
    25: ("asyncmq_queue_consumers", "gauge", (Q,), None),
    27: ("asyncmq_queue_blocked_oldest_age_seconds", "gauge", (Q,), None),  # flows (issue 15)
}

B_PROC_DOC = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
)
B_PROC_DOC += (1800, 3600)


@task("metrics-q", name="metrics.known")
async def known() -> None:
    """A registered task: metric labels keep its name."""


def _sample_values(row: MetricDef) -> tuple[str, ...]:
    """A valid, non-empty value per label of ``row``."""
    return tuple(row.values[key][0] if key in row.values else f"v_{label_key(key)}" for key in row.labels)


def test_table_matches_the_contract_row_by_row() -> None:
    assert sorted(row.number for row in METRICS) == sorted(CONTRACT)
    assert B_PROC == B_PROC_DOC
    for row in METRICS:
        name, kind, labels, buckets = CONTRACT[row.number]
        assert row.prometheus_name == name
        assert row.prometheus_type == kind
        assert row.label_keys == (labels if row.number == 20 else ("messaging_system", *labels))
        assert row.buckets == buckets
        assert translate_name(row.name, row.kind, row.unit) == row.prometheus_name


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (("messaging.message.id",), "not allowed"),
        (("messaging.client.id",), "not allowed"),
        (("host.name",), "not allowed"),
        (("messaging.destination.name", "messaging.destination.name"), "duplicate"),
    ],
)
def test_forbidden_or_duplicate_label_keys_raise_at_definition(labels: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricDef(99, "asyncmq.x", InstrumentKind.COUNTER, "{job}", "asyncmq_x_total", labels, "x")


def test_names_units_and_buckets_are_checked_at_definition() -> None:
    with pytest.raises(ValueError, match="differs from its translation"):
        MetricDef(99, "asyncmq.x", InstrumentKind.COUNTER, "{job}", "asyncmq_x", (), "x")
    with pytest.raises(ValueError, match="unit '1'"):
        MetricDef(99, "asyncmq.x", InstrumentKind.GAUGE, "1", "asyncmq_x", (), "x")
    with pytest.raises(ValueError, match="buckets"):
        MetricDef(99, "asyncmq.x", InstrumentKind.HISTOGRAM, "s", "asyncmq_x_seconds", (), "x")


def test_both_sinks_expose_every_row_with_equal_names_labels_and_buckets() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sinks = MetricSinks(registry=registry, meter_provider=provider)
    observable = [row.number for row in METRICS if row.kind is InstrumentKind.OBSERVABLE_GAUGE]
    observed = {number: [(_sample_values(METRICS_BY_NUMBER[number]), 1.0)] for number in observable}
    for number, values in observed.items():
        sinks.set_observer(number, lambda values=values: values)
    for row in METRICS:
        values = _sample_values(row)
        if row.kind is InstrumentKind.COUNTER:
            sinks.counter(row.number, *values).inc()
        elif row.kind is InstrumentKind.HISTOGRAM:
            sinks.histogram(row.number, *values).observe(0.3)
        elif row.kind is InstrumentKind.GAUGE:
            sinks.gauge(row.number, *values).set(1)
        elif row.kind is InstrumentKind.UP_DOWN_COUNTER:
            sinks.gauge(row.number, *values).add(1)

    families = {family.name: family for family in registry.collect()}
    data = reader.get_metrics_data()
    assert data is not None
    otel = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    for row in METRICS:
        base = row.prometheus_name.removesuffix("_total")
        family = families[base]
        sample = next(s for s in family.samples if not s.name.endswith("_created"))
        assert tuple(k for k in sample.labels if k != "le") == row.label_keys
        metric = otel[row.name]
        assert metric.unit == row.unit
        point = metric.data.data_points[0]
        assert tuple(label_key(k) for k in point.attributes) == row.label_keys
        if row.kind is InstrumentKind.HISTOGRAM:
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")][:-1]
            assert tuple(bounds) == row.buckets
            assert isinstance(point, HistogramDataPoint)
            assert tuple(point.explicit_bounds) == row.buckets
    provider.shutdown()
    sinks.close()
    assert list(registry.collect()) == []


def test_bucket_overrides_apply_to_both_sinks_and_unknown_names_raise() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sinks = MetricSinks(
        registry=registry, meter_provider=provider, histogram_buckets={"asyncmq.job.attempts": [1, 10]}
    )
    sinks.histogram(8, "q", "t", "completed").observe(2)
    family = next(f for f in registry.collect() if f.name == "asyncmq_job_attempts")
    assert [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")] == ["1.0", "10.0", "+Inf"]
    data = reader.get_metrics_data()
    assert data is not None
    point = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.explicit_bounds) == (1.0, 10.0)
    provider.shutdown()
    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSinks(registry=None, histogram_buckets={"asyncmq.nope": [1]})


def test_success_has_no_error_type_attribute_in_otlp_and_an_empty_label_in_prometheus(
    captured: Captured,
) -> None:
    bus.emit(_event("job:stalled", task="metrics.known"))
    bus.emit(_event("job:completed", task="metrics.known", duration_s=0.1, finished_at=time.time()))
    prom = [s for s in captured.metrics if s.name == "asyncmq_job_outcomes_total" and s.value]
    assert [s.labels["error_type"] for s in prom if s.sink == "prometheus"] == [""]
    assert ["error_type" in s.labels for s in prom if s.sink == "otlp"] == [False]


def test_no_created_series_in_either_format(captured: Captured) -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    bus.emit(_event("job:completed", task="metrics.known", duration_s=0.1, finished_at=time.time()))
    for text in (generate_latest(captured.registry), generate_openmetrics(captured.registry)):
        assert b"_created" not in text
        assert b"asyncmq_job_outcomes_total" in text


def test_unregistered_task_names_become_other_while_spans_keep_them(captured: Captured) -> None:
    bus.emit(_event("job:stalled", task="not.registered.anywhere"))
    assert captured.metric_value("asyncmq_job_stalled_total", asyncmq_task_name="_OTHER") == 1
    assert not [s for s in captured.metrics if s.labels.get(T) == "not.registered.anywhere"]


def test_cardinality_cap_overflows_to_other_counts_drops_and_warns_once() -> None:
    with capture_telemetry(metric_cardinality_limit=2) as cap:
        for queue in ("a", "b", "c", "d", "e"):
            bus.emit(_event("job:stalled", queue=queue, task="metrics.known"))
        kept = [s for s in cap.metrics if s.name == "asyncmq_job_stalled_total" and s.sink == "prometheus"]
        assert sorted((s.labels[Q], s.value) for s in kept) == [("_OTHER", 3.0), ("a", 1.0), ("b", 1.0)]
        overflow = next(s for s in kept if s.labels[Q] == "_OTHER")
        assert overflow.labels == {"messaging_system": "asyncmq", Q: "_OTHER", T: "_OTHER"}
        assert cap.metric_value("asyncmq_telemetry_dropped_total", signal="metric", reason="cardinality") == 3
        otlp = {
            s.labels[Q]: s.value
            for s in cap.metrics
            if s.name == "asyncmq_job_stalled_total" and s.sink == "otlp"
        }
        assert otlp == {"a": 1.0, "b": 1.0, "_OTHER": 3.0}
        warnings = cap.logs_named("telemetry.cardinality_overflow")
        assert len(warnings) == 1
        assert warnings[0]["metric"] == "asyncmq_job_stalled_total"
        assert warnings[0]["level"] == "warning"


def test_error_type_keeps_the_first_n_values_per_metric_and_task() -> None:
    with capture_telemetry(error_type_limit=2) as cap:
        for error_type in ("A", "B", "C", "D", "A"):
            bus.emit(_event("job:retried", task="metrics.known", error_type=error_type, duration_s=0.01))
        outcomes = {
            s.labels["error_type"]: s.value
            for s in cap.metrics
            if s.name == "asyncmq_job_outcomes_total"
            and s.sink == "prometheus"
            and s.labels["outcome"] == "retried"
        }
        assert outcomes == {"": 0.0, "A": 2.0, "B": 1.0, "_OTHER": 2.0}


def test_worker_started_pre_initialises_series_at_zero(captured: Captured) -> None:
    bus.emit(
        LifecycleEvent(
            "worker:started", time.time(), queue="pre", worker_id="w1", group="g1", concurrency=7, active=0
        )
    )
    labels = {Q: "pre", T: "metrics.known"}
    samples = [s for s in captured.metrics if s.sink == "prometheus"]

    def present(name: str, **wanted: str) -> list[float]:
        return [
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
        ]

    assert present("messaging_client_consumed_messages_total", **labels, **{G: "g1"}) == [0.0]
    assert present("messaging_process_duration_seconds_count", **labels, error_type="") == [0.0]
    for outcome in ("completed", "retried", "interrupted", "failed", "expired", "cancelled"):
        assert present("asyncmq_job_outcomes_total", **labels, outcome=outcome, error_type="", reason="") == [
            0.0
        ]
    for cls in ("high", "normal", "low"):
        assert present("asyncmq_job_wait_duration_seconds_count", **labels, priority_class=cls) == [0.0]
    assert present("asyncmq_job_stalled_total", **labels) == [0.0]
    assert present("asyncmq_ratelimit_throttled_total", **{Q: "pre", G: "g1"}) == [0.0]
    assert present("asyncmq_ratelimit_wait_seconds_count", **{Q: "pre", G: "g1"}) == [0.0]
    assert present("asyncmq_worker_up", **{Q: "pre", G: "g1"}) == [1.0]
    assert present("asyncmq_worker_concurrency", **{Q: "pre", G: "g1"}) == [7.0]
    assert present("asyncmq_job_running_max_age_seconds", **{Q: "pre", G: "g1"}) == [0.0]
    assert present("asyncmq_backend_data_loss_total", **{Q: "pre"}) == [0.0]
    assert present("asyncmq_backend_data_loss_detected", **{Q: "pre"}) == [0.0]
    dropped = present("asyncmq_telemetry_dropped_total")
    assert len(dropped) == 12
    assert set(dropped) == {0.0}

    bus.emit(LifecycleEvent("backend:data_loss", time.time(), queue="pre", old_epoch="1", new_epoch="2"))
    bus.emit(
        LifecycleEvent(
            "worker:stopped", time.time(), queue="pre", worker_id="w1", group="g1", reason="shutdown"
        )
    )
    assert captured.metric_value("asyncmq_backend_data_loss_total", messaging_destination_name="pre") == 1
    assert captured.metric_value("asyncmq_backend_data_loss_detected", messaging_destination_name="pre") == 1
    assert captured.metric_value("asyncmq_worker_up", messaging_destination_name="pre") == 0


def test_heartbeat_sets_the_timestamp_and_backend_up(captured: Captured) -> None:
    ts = time.time()
    bus.emit(
        LifecycleEvent("worker:heartbeat", ts, queue="hb", worker_id="w", group="g", concurrency=3, active=1)
    )
    assert (
        captured.metric_value("asyncmq_worker_heartbeat_timestamp_seconds", messaging_destination_name="hb")
        == ts
    )
    assert captured.metric_value("asyncmq_backend_up") == 1
    assert captured.metric_value("asyncmq_backend_up", sink="otlp") == 1


def test_running_max_age_reports_the_oldest_in_flight_attempt(captured: Captured) -> None:
    started = time.perf_counter() - 5.0
    bus.emit(
        LifecycleEvent(
            "worker:started", time.time(), queue="age", worker_id="w", group="g", concurrency=2, active=0
        )
    )
    bus.emit(
        _event("job:started", queue="age", job_id="j1", attempt=1, started_monotonic=started, wait_s=0.0)
    )
    age = captured.metric_value("asyncmq_job_running_max_age_seconds", messaging_destination_name="age")
    assert 5.0 <= age < 60.0
    assert captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name="age") == 1
    bus.emit(
        _event("job:completed", queue="age", job_id="j1", attempt=1, duration_s=5.0, finished_at=time.time())
    )
    assert captured.metric_value("asyncmq_job_running_max_age_seconds", messaging_destination_name="age") == 0
    assert captured.metric_value("asyncmq_worker_jobs_active", messaging_destination_name="age") == 0


def _event(name: str, **fields: object) -> LifecycleEvent:
    base: dict[str, object] = {
        "queue": "metrics-q",
        "job_id": "job-1",
        "task": "metrics.known",
        "attempt": 1,
        "max_attempts": 3,
        "priority": 5,
        "enqueued_at": time.time() - 1.0,
        "eligible_at": time.time() - 1.0,
        "worker_id": "w-1",
        "group": "default",
    }
    base.update(fields)
    return LifecycleEvent(name, time.time(), **base)  # type: ignore[arg-type]

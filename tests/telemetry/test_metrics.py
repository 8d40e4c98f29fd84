"""The metric definition table and its two sinks: parity, cardinality, top-N, pre-initialisation."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry

from asyncmq_otel.events import LifecycleEvent, bus
from asyncmq_otel.tasks import TASK_REGISTRY, task
from asyncmq_otel.telemetry.metrics import (
    B_ATT,
    B_E2E,
    B_OP,
    B_PROC,
    B_WAIT,
    METRICS,
    METRICS_BY_NAME,
    OTHER,
    InstrumentKind,
    MetricDef,
    MetricSinks,
    label_key,
    translate_name,
)
from asyncmq_otel.testing import Captured, capture_telemetry

Q, T, G = "messaging_destination_name", "asyncmq_task_name", "messaging_consumer_group_name"
OP = "messaging_operation_name"

# The contract's definition table, transcribed independently of the implementation:
# number → (Prometheus name, type, labels, buckets).
CONTRACT: dict[int, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    1: ("messaging_client_sent_messages_total", "counter", (Q, T, OP, "error_type"), None),
    2: ("messaging_client_consumed_messages_total", "counter", (Q, T, G, OP), None),
    3: ("messaging_process_duration_seconds", "histogram", (Q, T, G, OP, "outcome"), B_PROC),
    4: ("messaging_client_operation_duration_seconds", "histogram", (Q, OP, "error_type"), B_OP),
    5: ("asyncmq_job_wait_duration_seconds", "histogram", (Q, T, G, "priority_class"), B_WAIT),
    6: ("asyncmq_job_e2e_duration_seconds", "histogram", (Q, T, "outcome"), B_E2E),
    7: ("asyncmq_job_outcomes_total", "counter", (Q, T, G, "outcome", "reason"), None),
    8: ("asyncmq_job_attempts", "histogram", (Q, T, "outcome"), B_ATT),
    9: ("asyncmq_job_stalled_total", "counter", (Q, T), None),
    10: ("asyncmq_job_running_max_age_seconds", "gauge", (Q, G), None),
    11: ("asyncmq_ratelimit_throttled_total", "counter", (Q, G, "scope"), None),
    12: ("asyncmq_ratelimit_wait_seconds", "histogram", (Q, G, "scope"), B_WAIT),
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
    25: ("asyncmq_queue_consumers", "gauge", (Q,), None),
    26: ("asyncmq_job_errors_total", "counter", (Q, T, "error_type", "outcome"), None),
    27: ("asyncmq_schedule_fired_total", "counter", (Q, "schedule"), None),
    28: ("asyncmq_schedule_lag_seconds", "histogram", (Q, "schedule"), B_WAIT),
    29: ("asyncmq_schedule_next_run_timestamp_seconds", "gauge", (Q, "schedule"), None),
    30: ("asyncmq_schedule_interval_seconds", "gauge", (Q, "schedule"), None),
    31: ("asyncmq_queue_blocked_oldest_age_seconds", "gauge", (Q,), None),
}

# The contract's buckets, transcribed: the sets start at 0.1 ms so sub-5 ms latencies are readable.
B_OP_DOC = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
B_PROC_DOC = (*B_OP_DOC, 30, 60, 120, 300, 600, 1800, 3600)
B_WAIT_DOC = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    *(30, 60, 120, 300, 600, 1800, 3600),
)
B_E2E_DOC = (*B_WAIT_DOC, 7200, 21600, 86400)


@task("metrics-q", name="metrics.known")
async def known() -> None:
    """A registered task: metric labels keep its name."""


@task("metrics-q", name="metrics.other")
async def other() -> None:
    """A second task of the same queue."""


@task("pre", name="metrics.pre")
async def pre() -> None:
    """The task declared for the queue the pre-initialisation test serves."""


def _sample_values(row: MetricDef) -> tuple[str, ...]:
    """A valid, non-empty value per label of ``row``."""
    return tuple(row.values[key][0] if key in row.values else f"v_{label_key(key)}" for key in row.labels)


def test_table_matches_the_contract_row_by_row() -> None:
    assert sorted(row.number for row in METRICS) == sorted(CONTRACT)
    assert (B_OP, B_PROC, B_WAIT, B_E2E) == (B_OP_DOC, B_PROC_DOC, B_WAIT_DOC, B_E2E_DOC)
    for row in METRICS:
        name, kind, labels, buckets = CONTRACT[row.number]
        assert row.prometheus_name == name
        assert row.prometheus_type == kind
        assert row.label_keys == (
            labels if row.name == "asyncmq.telemetry.dropped" else ("messaging_system", *labels)
        )
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
    observable = [row.name for row in METRICS if row.kind is InstrumentKind.OBSERVABLE_GAUGE]
    observed = {name: [(_sample_values(METRICS_BY_NAME[name]), 1.0)] for name in observable}
    for name, values in observed.items():
        sinks.set_observer(name, lambda values=values: values)
    for row in METRICS:
        values = _sample_values(row)
        if row.kind is InstrumentKind.COUNTER:
            sinks.counter(row.name, *values).inc()
        elif row.kind is InstrumentKind.HISTOGRAM:
            sinks.histogram(row.name, *values).observe(0.3)
        elif row.kind is InstrumentKind.GAUGE:
            sinks.gauge(row.name, *values).set(1)
        elif row.kind is InstrumentKind.UP_DOWN_COUNTER:
            sinks.gauge(row.name, *values).add(1)

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
    sinks.histogram("asyncmq.job.attempts", "q", "t", "completed").observe(2)
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


def test_metrics_are_looked_up_by_otel_name_and_a_wrong_name_raises() -> None:
    sinks = MetricSinks(registry=CollectorRegistry())
    sinks.counter("asyncmq.job.stalled", "q", "t").inc()
    assert sinks.bound("asyncmq.job.stalled") == 1
    with pytest.raises(ValueError, match=r"no metric is named 'asyncmq\.job\.stall'"):
        sinks.counter("asyncmq.job.stall", "q", "t")
    with pytest.raises(ValueError, match="no metric is named '9'"):
        sinks.counter("9", "q", "t")  # the contract's row id is not a name
    with pytest.raises(ValueError, match=r"'asyncmq\.job\.outcomes' is not an observable metric"):
        sinks.set_observer("asyncmq.job.outcomes", list)
    with pytest.raises(ValueError, match=r"'asyncmq\.nope' is not an observable metric"):
        sinks.set_observer("asyncmq.nope", None)
    sinks.close()


def test_success_has_no_error_type_attribute_in_otlp_and_an_empty_label_in_prometheus() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sinks = MetricSinks(registry=registry, meter_provider=provider)
    sinks.counter("messaging.client.sent.messages", "q", "metrics.known", "send", "").inc()
    family = next(f for f in registry.collect() if f.name == "messaging_client_sent_messages")
    assert [s.labels["error_type"] for s in family.samples if s.name.endswith("_total")] == [""]
    data = reader.get_metrics_data()
    assert data is not None
    point = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
    assert "error.type" not in point.attributes
    provider.shutdown()
    sinks.close()


def _bucket_counts(registry: CollectorRegistry, name: str) -> dict[float, float]:
    family = next(f for f in registry.collect() if f.name == name)
    return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}


@pytest.mark.parametrize(
    "name", ["messaging.process.duration", "messaging.client.operation.duration", "asyncmq.job.wait.duration"]
)
def test_a_sub_millisecond_and_a_two_millisecond_observation_land_in_distinct_buckets(name: str) -> None:
    """Buckets start at 0.1 ms: with a 5 ms first bucket both read as "under 5 ms" and every p95 said 4.75 ms."""
    registry = CollectorRegistry()
    sinks = MetricSinks(registry=registry)
    row = METRICS_BY_NAME[name]
    series = sinks.histogram(name, *_sample_values(row))
    series.observe(0.0003)
    before = _bucket_counts(registry, row.prometheus_name)
    series.observe(0.002)
    after = _bucket_counts(registry, row.prometheus_name)
    first = min(le for le, count in before.items() if count == 1)
    second = min(le for le, count in after.items() if count - before[le] == 1)
    assert first < second <= 0.0025
    sinks.close()


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


def _errors(cap: Captured, **labels: str) -> dict[str, float]:
    return {
        s.labels["error_type"]: s.value
        for s in cap.metrics
        if s.name == "asyncmq_job_errors_total"
        and s.sink == "prometheus"
        and all(s.labels[k] == v for k, v in labels.items())
    }


def test_error_type_keeps_the_most_recently_seen_values_per_metric_and_task() -> None:
    """Recent error types: a new incident after 20 other error types shows under its own name (LRU, not first-N)."""
    with capture_telemetry() as cap:  # the default error_type_limit, 20
        for n in range(20):
            bus.emit(_event("job:retried", task="metrics.known", error_type=f"old.E{n}", duration_s=0.01))
        bus.emit(_event("job:retried", task="metrics.known", error_type="old.E0", duration_s=0.01))
        bus.emit(_event("job:retried", task="metrics.known", error_type="shop.NewIncident", duration_s=0.01))
        errors = _errors(cap, outcome="retried")
        assert errors["shop.NewIncident"] == 1
        assert OTHER not in errors
        # E0 was seen again, so E1 was the least recently seen: its series left the scrape sink.
        assert errors["old.E0"] == 2
        assert "old.E1" not in errors
        assert len(errors) == 20
        # The evicted type comes back under its own name, from 0 (its old count left with its series).
        bus.emit(_event("job:failed", task="metrics.known", error_type="old.E1", reason="failed"))
        assert _errors(cap, outcome="failed") == {"old.E1": 1.0}
        assert "old.E2" not in _errors(cap)


def test_error_types_are_kept_per_task() -> None:
    with capture_telemetry(error_type_limit=1) as cap:
        bus.emit(_event("job:retried", task="metrics.known", error_type="A", duration_s=0.01))
        bus.emit(_event("job:retried", task="metrics.other", error_type="B", duration_s=0.01))
        assert _errors(cap, asyncmq_task_name="metrics.known") == {"A": 1.0}
        assert _errors(cap, asyncmq_task_name="metrics.other") == {"B": 1.0}
        bus.emit(_event("job:retried", task="metrics.known", error_type="C", duration_s=0.01))
        assert _errors(cap, asyncmq_task_name="metrics.known") == {"C": 1.0}
        assert _errors(cap, asyncmq_task_name="metrics.other") == {"B": 1.0}


def test_outcomes_carry_no_error_type_and_failures_count_by_reason(captured: Captured) -> None:
    bus.emit(_event("job:failed", task="metrics.known", error_type="ValueError", reason="failed"))
    bus.emit(_event("job:failed", task="metrics.known", reason="worker_lost"))
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="failed") == 1
    assert captured.metric_value("asyncmq_job_outcomes_total", outcome="failed", reason="worker_lost") == 1
    assert _errors(captured, outcome="failed") == {"ValueError": 1.0, "worker_lost": 1.0}
    outcomes = [s for s in captured.metrics if s.name == "asyncmq_job_outcomes_total"]
    assert outcomes
    assert all("error_type" not in s.labels for s in outcomes)


def test_worker_started_pre_initialises_series_at_zero(captured: Captured) -> None:
    bus.emit(
        LifecycleEvent(
            "worker:started", time.time(), queue="pre", worker_id="w1", group="g1", concurrency=7, active=0
        )
    )
    labels = {Q: "pre", T: "metrics.pre"}
    samples = [s for s in captured.metrics if s.sink == "prometheus"]

    def present(name: str, **wanted: str) -> list[float]:
        return [
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
        ]

    assert present("messaging_client_consumed_messages_total", **labels, **{G: "g1", OP: "process"}) == [0.0]
    for outcome in ("completed", "retried", "interrupted", "failed", "cancelled"):
        count = "messaging_process_duration_seconds_count"
        assert present(count, **labels, **{OP: "process"}, outcome=outcome) == [0.0]
    # Every (outcome, reason) pair asyncmq.job.outcomes can record, so the first failure counts from 0.
    outcomes = {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for s in samples
        if s.name == "asyncmq_job_outcomes_total" and s.labels[Q] == "pre" and s.labels[T] == "metrics.pre"
    }
    assert outcomes == {
        ("completed", ""): 0.0,
        ("retried", ""): 0.0,
        ("interrupted", ""): 0.0,
        ("cancelled", ""): 0.0,
        ("expired", "expired"): 0.0,
        ("failed", "failed"): 0.0,
        ("failed", "worker_lost"): 0.0,
        ("failed", "interrupted"): 0.0,
        ("failed", "unknown_task"): 0.0,
        ("failed", "malformed_payload"): 0.0,
        ("failed", "dependency_failed"): 0.0,
    }
    for cls in ("high", "normal", "low"):
        assert present("asyncmq_job_wait_duration_seconds_count", **labels, priority_class=cls) == [0.0]
    assert present("asyncmq_job_stalled_total", **labels) == [0.0]
    for scope in ("worker", "queue"):
        assert present("asyncmq_ratelimit_throttled_total", **{Q: "pre", G: "g1", "scope": scope}) == [0.0]
        assert present("asyncmq_ratelimit_wait_seconds_count", **{Q: "pre", G: "g1", "scope": scope}) == [0.0]
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


@pytest.fixture
def twenty_queues() -> Iterator[list[str]]:
    """10 tasks declared on each of 20 queues (the shape of the phantom-series report), unregistered after."""
    queues = [f"fleet-q{n}" for n in range(20)]
    names = [f"fleet.q{q}.t{t}" for q in range(20) for t in range(10)]
    for name in names:
        task(f"fleet-q{name.split('.')[1][1:]}", name=name)(known.info.func)
    yield queues
    for name in names:
        TASK_REGISTRY.pop(name, None)


def _worker_started(queue: str) -> LifecycleEvent:
    return LifecycleEvent(
        "worker:started", time.time(), queue=queue, worker_id="w", group="default", concurrency=5, active=0
    )


def _pairs(cap: Captured) -> set[tuple[str, str]]:
    return {
        (s.labels[Q], s.labels[T])
        for s in cap.metrics
        if s.sink == "prometheus" and s.labels.get(T, "").startswith("fleet.")
    }


def test_a_worker_pre_binds_only_the_pairs_of_the_queues_it_serves(twenty_queues: list[str]) -> None:
    """Pre-binding: serving one of 20 queues binds that queue's 10 tasks, not 20 × 200 phantom pairs."""
    with capture_telemetry() as cap:
        bus.emit(_worker_started(twenty_queues[0]))
        assert _pairs(cap) == {("fleet-q0", f"fleet.q0.t{t}") for t in range(10)}
        per_pair = sum(1 for s in cap.metrics if s.sink == "prometheus" and s.labels.get(T) == "fleet.q0.t0")
        fleet = sum(
            1 for s in cap.metrics if s.sink == "prometheus" and s.labels.get(T, "").startswith("fleet.")
        )
        assert fleet == 10 * per_pair
        # A job of a task declared elsewhere binds its own pair the moment it is seen.
        bus.emit(_event("job:started", queue="fleet-q0", task="fleet.q7.t3", wait_s=0.001))
        assert ("fleet-q0", "fleet.q7.t3") in _pairs(cap)
        assert len(_pairs(cap)) == 11


def test_serving_five_queues_keeps_real_completions_out_of_other(twenty_queues: list[str]) -> None:
    """Rev. 1 spent the cardinality cap on phantom pairs: completions of q2–q4 went to ``_OTHER``."""
    with capture_telemetry() as cap:
        for queue in twenty_queues[:5]:
            bus.emit(_worker_started(queue))
        for q in (2, 3, 4):
            job = {"queue": f"fleet-q{q}", "task": f"fleet.q{q}.t9", "job_id": f"j{q}", "group": "default"}
            bus.emit(_event("job:started", **job, wait_s=0.002, started_monotonic=time.perf_counter()))
            bus.emit(_event("job:completed", **job, duration_s=0.001, finished_at=time.time()))
        for q in (2, 3, 4):
            labels = {Q: f"fleet-q{q}", T: f"fleet.q{q}.t9"}
            assert cap.metric_value("asyncmq_job_outcomes_total", outcome="completed", **labels) == 1
            assert cap.metric_value("asyncmq_job_wait_duration_seconds_count", **labels) == 1
            assert cap.metric_value("messaging_process_duration_seconds_count", **labels) == 1
        assert not [s for s in cap.metrics if s.labels.get(Q) == OTHER]
        assert cap.metric_value("asyncmq_telemetry_dropped_total", signal="metric", reason="cardinality") == 0


def test_the_accumulators_expose_what_prometheus_client_children_would() -> None:
    """The scrape sink records into plain accumulators (the job path's cost); its output must not change."""
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    ours = CollectorRegistry()
    sinks = MetricSinks(registry=ours)
    reference = CollectorRegistry()
    process, outcomes, up = (
        METRICS_BY_NAME[name]
        for name in ("messaging.process.duration", "asyncmq.job.outcomes", "asyncmq.worker.up")
    )
    ref_process = Histogram(
        process.prometheus_name, process.description, process.label_keys, registry=reference,
        unit="seconds", buckets=B_PROC,
    )  # fmt: skip
    ref_outcomes = Counter(
        outcomes.prometheus_name, outcomes.description, outcomes.label_keys, registry=reference
    )
    ref_up = Gauge(up.prometheus_name, up.description, up.label_keys, registry=reference)
    values = ("q", "metrics.known", "g", "process", "completed")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    for value in (0.0003, 0.002, 0.002, 7.0, 5000.0):
        sinks.histogram(process.name, *values).observe(value, trace_id)
        ref_process.labels("asyncmq", *values).observe(value, {"trace_id": trace_id})
    sinks.counter(outcomes.name, "q", "metrics.known", "g", "failed", "failed").inc(3)
    ref_outcomes.labels("asyncmq", "q", "metrics.known", "g", "failed", "failed").inc(3)
    sinks.gauge(up.name, "q", "g").set(1)
    ref_up.labels("asyncmq", "q", "g").set(1)

    def lines(text: bytes, names: tuple[str, ...]) -> list[str]:
        return [
            line
            for line in text.decode().splitlines()
            if line.split("{")[0].split(" ")[0] in names and "_created" not in line
        ]

    names = (
        *(f"{process.prometheus_name}{suffix}" for suffix in ("", "_bucket", "_count", "_sum")),
        "asyncmq_job_outcomes", outcomes.prometheus_name, up.prometheus_name,
    )  # fmt: skip
    text = lines(generate_latest(ours), names)
    assert len(text) == (len(B_PROC) + 1) + 2 + 2  # buckets with +Inf, count, sum, the counter, the gauge
    assert text == lines(generate_latest(reference), names)
    ours_om = [
        line.split(" # ")[0] + (" #" if " # " in line else "")
        for line in lines(generate_openmetrics(ours), names)
    ]
    ref_om = [
        line.split(" # ")[0] + (" #" if " # " in line else "")
        for line in lines(generate_openmetrics(reference), names)
    ]
    assert ours_om == ref_om  # exemplar timestamps differ; their presence and buckets must not
    assert sum(line.endswith(" #") for line in ours_om) == 4  # 0.3 ms, 2 ms, 7 s and +Inf buckets
    sinks.close()

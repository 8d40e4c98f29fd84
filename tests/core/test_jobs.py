import datetime
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncmq_otel.errors import InvalidName, JobArgumentError, MalformedJob
from asyncmq_otel.jobs import (
    MAX_NESTING,
    MAX_SECONDS,
    Backoff,
    Job,
    check_int_option,
    check_job_id,
    check_json,
    check_queue_name,
    check_seconds,
    dumps,
    encode_payload,
    error_type_name,
)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([1, datetime.datetime.now(datetime.UTC)], "args[1]"),
        ({"when": {1, 2}}, 'kwargs["when"]'),
        ([object()], "args[0]"),
        ([math.nan], "args[0]"),
        ([2**70], "args[0]"),
        ({"a": {1: "x"}}, 'kwargs["a"][1]'),
    ],
)
def test_non_json_values_name_their_path(value, path):
    root = "args" if isinstance(value, list) else "kwargs"
    with pytest.raises(JobArgumentError) as info:
        check_json(value, root)
    assert info.value.path == path
    assert isinstance(info.value, TypeError)


def test_datetime_error_says_what_to_do():
    with pytest.raises(JobArgumentError, match="pass an ISO string"):
        check_json({"when": datetime.datetime.now(datetime.UTC)}, "kwargs")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_accepted_values_round_trip(value):
    import json

    assert json.loads(dumps(check_json(value))) == value


def test_tuples_become_lists():
    assert check_json((1, (2, 3))) == [1, [2, 3]]


def test_names_are_checked():
    assert check_queue_name("orders.v2-eu_1") == "orders.v2-eu_1"
    for bad in ["", "a b", "q{x}", "x" * 65]:
        with pytest.raises(InvalidName):
            check_queue_name(bad)
    with pytest.raises(InvalidName):
        check_job_id("id:with:colons")


def test_fixed_and_exponential_backoff_with_cap():
    assert Backoff.parse(2).delay_for(3) == 2.0
    exp = Backoff.parse({"type": "exponential", "delay": 0.5, "max": 3})
    assert [exp.delay_for(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = Backoff("exponential", 4.0, jitter=True)
    for n in range(1, 4):
        assert 4.0 * 2 ** (n - 1) / 2 <= jittered.delay_for(n) <= 4.0 * 2 ** (n - 1)
    with pytest.raises(ValueError, match="unknown backoff keys"):
        Backoff.parse({"delay": 1, "factor": 3})


def test_next_retry_delay_uses_retries_already_spent():
    job = Job(id="a", task="t", queue="q", max_retries=5, backoff=Backoff("exponential", 1.0).to_dict())
    assert job.next_retry_delay() == 1.0
    job.retries = 3
    assert job.next_retry_delay() == 8.0
    assert Job(id="b", task="t", queue="q").next_retry_delay() == 0.0


def test_job_round_trip_and_malformed_payloads():
    job = Job(id="a", task="t", queue="q", args=[1], kwargs={"x": 2}, max_retries=2, priority=3)
    assert Job.from_dict(job.to_dict()) == job
    assert Job.from_dict(dumps(job.to_dict())).kwargs == {"x": 2}
    for bad in [
        b"\x80\x04garbage",
        "[1, 2]",
        '{"id": "a"}',
        '{"id": "a", "task": 3, "queue": "q"}',
        '{"v": 9, "id": "a", "task": "t", "queue": "q"}',
    ]:
        with pytest.raises(MalformedJob):
            Job.from_dict(bad)


def test_error_type_names():
    class Custom(Exception):
        pass

    assert error_type_name(ValueError("x")) == "ValueError"
    assert error_type_name(Custom()).endswith("test_jobs.test_error_type_names.<locals>.Custom")


_FIELD_VALUES = {
    "v": st.sampled_from([1, 2, "1"]),
    "id": st.sampled_from(["j1", None, 5, True]),
    "task": st.sampled_from(["t.x", None, 3]),
    "queue": st.sampled_from(["q", None]),
    "args": st.sampled_from([[1, "a"], None, "x", {}]),
    "kwargs": st.sampled_from([{"a": 1}, None, {1: 2}, [], {"a": {"b": 1}}]),
    "max_retries": st.sampled_from([3, None, True, 1.5, "3"]),
    "ttl": st.sampled_from([1.5, 2, None, True, "1", math.inf]),
    "backoff": st.sampled_from([{"kind": "fixed", "base": 1}, None, [], 1]),
    "priority": st.sampled_from([0, 9, None, False, 2.0]),
    "trace_context": st.sampled_from([{"traceparent": "00-x"}, None, {"a": 1}, {1: "a"}, "x"]),
    "enqueued_at": st.sampled_from([1.0, 0, None, "now", False]),
    "state": st.sampled_from(["waiting", "active", "completed", "nope", None, 1]),
    "attempts": st.sampled_from([0, 2, None, True, 1.0]),
    "token": st.sampled_from(["tok", None, 7]),
    "cancel_requested": st.sampled_from([True, False, None, 0, "yes"]),
    "result": st.sampled_from([None, 1, "r", [1]]),
    "error": st.sampled_from([None, {"type": "X"}, "boom"]),
    "progress": st.sampled_from([None, 0.5, 1, True]),
}


@given(st.fixed_dictionaries({}, optional=_FIELD_VALUES))
def test_the_fast_decode_of_a_stored_job_agrees_with_the_validating_one(raw):
    """``from_dict`` on a dict takes a fast path for well-formed jobs; it must decide exactly as the
    validating decode (reached here through the JSON text, which skips the fast path) does."""
    text = json.dumps(raw)
    try:
        expected: Job | MalformedJob = Job.from_dict(text)
    except MalformedJob as exc:
        expected = exc
    try:
        got: Job | MalformedJob = Job.from_dict(json.loads(text))
    except MalformedJob as exc:
        got = exc
    if isinstance(expected, MalformedJob):
        assert isinstance(got, MalformedJob), raw
        assert str(got) == str(expected)
    else:
        assert got == expected, raw


# -- producer bounds (reliability: bad input) --------------------------------------------------------
def test_a_cycle_is_refused_naming_where_it_closes():
    loop: list[object] = [1, {"a": 2}]
    loop[1]["back"] = loop  # type: ignore[index]
    with pytest.raises(JobArgumentError, match="contains itself") as info:
        check_json([loop], "args")
    assert info.value.path == 'args[0][1]["back"]'


def test_nesting_is_bounded_without_recursion_errors():
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(JobArgumentError, match=f"more than {MAX_NESTING} levels"):
        check_json(deep, "args")
    within: list[object] = []
    for _ in range(MAX_NESTING - 1):
        within = [within]
    assert check_json(within, "args") == within


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, 1e300, MAX_SECONDS + 0.5, 0, -1, "5", True, None, 2**2000]
)
def test_durations_are_finite_positive_numbers_within_ten_years(value):
    with pytest.raises(JobArgumentError) as info:
        check_seconds("ttl", value)
    assert info.value.path == "ttl"


def test_a_delay_may_be_zero_and_ints_are_bounded():
    assert check_seconds("delay", 0, zero_ok=True) == 0.0
    assert check_seconds("delay", MAX_SECONDS, zero_ok=True) == float(MAX_SECONDS)
    assert check_int_option("priority", -500, -500, 500) == -500
    for bad in (2**70, 501, True, 5.0, "5"):
        with pytest.raises(JobArgumentError, match="priority"):
            check_int_option("priority", bad, -500, 500)


def test_backoff_is_bounded_and_never_overflows():
    with pytest.raises(ValueError, match="backoff delay"):
        Backoff("fixed", 1e300)
    with pytest.raises(ValueError, match="max_delay"):
        Backoff("fixed", 1, max_delay=math.nan)
    # 2.0 ** 4999 raised OverflowError; every delay now stays a storable time
    assert Backoff("exponential", 1.0).delay_for(5000) == MAX_SECONDS


def test_a_lone_surrogate_is_refused_naming_its_path():
    envelope = Job(id="j", task="t", queue="q", args=["fine", {"x": "bad \ud800"}]).envelope()
    with pytest.raises(JobArgumentError, match="lone surrogate") as info:
        encode_payload(envelope, 1 << 20)
    assert info.value.path == 'args[1]["x"]'

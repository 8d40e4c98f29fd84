"""The typed records of the backend port decode a stored form totally: a bad job never raises."""

from __future__ import annotations

import dataclasses

import pytest

from asyncmq_otel.backends.base import ClaimedJob, ErrorInfo, StoredJob
from asyncmq_otel.jobs import Job


def _stored_form(**extra: object) -> dict[str, object]:
    job = Job(id="j1", task="tests.noop", queue="q", args=[1], max_retries=2, priority=3)
    return {**job.envelope(), "state": "active", "attempts": 1, "token": "n.0", **extra}


def test_a_claimed_job_is_decoded_with_what_the_worker_needs():
    claimed = ClaimedJob.from_fields(_stored_form(depends_on=[["up", "p1"], ["q", "p2"]]), 12.5)
    assert (claimed.id, claimed.token, claimed.attempts, claimed.claimed_at) == ("j1", "n.0", 1, 12.5)
    assert claimed.job is not None and claimed.decode_error is None
    assert (claimed.job.task, claimed.job.args, claimed.job.priority) == ("tests.noop", [1], 3)
    assert (claimed.task, claimed.retries_set) == ("tests.noop", True)
    assert claimed.parents == (("up", "p1"), ("q", "p2"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        claimed.attempts = 2  # type: ignore[misc]


def test_max_retries_left_unset_is_told_apart_from_zero():
    fields = _stored_form()
    del fields["max_retries"]
    assert ClaimedJob.from_fields(fields, 0.0).retries_set is False
    assert ClaimedJob.from_fields(_stored_form(max_retries=0), 0.0).retries_set is True


def test_an_envelope_that_does_not_decode_keeps_its_task_for_telemetry():
    claimed = ClaimedJob.from_fields(_stored_form(args="not a list", depends_on="x"), 1.0)
    assert claimed.job is None
    assert claimed.decode_error is not None and "args" in claimed.decode_error
    assert (claimed.task, claimed.attempts, claimed.parents) == ("tests.noop", 1, ())


def test_a_malformed_stored_form_decodes_to_a_record_with_its_reason():
    malformed = {
        "id": "bad",
        "queue": "q",
        "token": None,
        "attempts": True,  # a bool is not a count
        "state": "failed",
        "dlq_reason": "malformed_payload",
        "error": "not a dict",
        "finished_at": "soon",
        "payload_error": "stored payload is not a JSON object",
        "payload_preview": "{not json",
    }
    stored = StoredJob.from_fields("q", malformed)
    assert (stored.id, stored.state, stored.job, stored.attempts) == ("bad", "failed", None, 0)
    assert stored.decode_error == "stored payload is not a JSON object"
    assert (stored.finished_at, stored.error, stored.payload_preview) == (None, "not a dict", "{not json")
    # job show prints the stored form, each value as the typed field reads it (no count, no time)
    assert stored.to_dict() == {**malformed, "attempts": 0, "finished_at": None}
    assert stored.to_dict() is not stored.to_dict()  # a new dict: a caller cannot edit the record


def test_a_stored_job_gives_back_its_stored_form_from_the_typed_fields():
    job = Job(id="j1", task="tests.noop", queue="q", args=[1], priority=3, ttl=30.0, timeout=2.5)
    envelope = {**job.envelope(), "trace_context": {"traceparent": "00-ab-cd-01", "prev_attempt": "span-1"}}
    del envelope["max_retries"]  # left unset by the producer: the task's declared value applies
    envelope |= {"depends_on": [["up", "p1"], ["q", "p2"]], "on_parent_failure": "run"}
    bookkeeping = {
        "state": "failed",
        "attempts": 2,
        "retries": 1,
        "stalls": 1,
        "interrupts": 0,
        "token": "n.1",
        "owner": None,
        "cancel_requested": False,
        "result": None,
        "dlq_reason": "failed",
        "error": {"type": "ValueError", "message": "boom", "traceback": ""},
        "enqueued_at": 1.5,
        "eligible_at": 2.0,
        "delay_until": None,
        "expires_at": 31.5,
        "finished_at": 4.25,
        "progress": 50.0,
        "id": "j1",
        "flow_id": "f1",
    }
    stored = StoredJob.from_fields("q", {**envelope, **bookkeeping})
    assert stored.job is not None and (stored.retries_set, stored.on_parent_failure) == (False, "run")
    assert stored.to_dict() == {**envelope, **bookkeeping}
    with_retries = StoredJob.from_fields("q", {**envelope, **bookkeeping, "max_retries": 0})
    assert with_retries.to_dict()["max_retries"] == 0  # 0 is a value the producer stored


def test_an_envelope_that_does_not_decode_is_shown_as_malformed_with_a_preview():
    stored = StoredJob.from_fields("q", _stored_form(args="not a list"))
    assert stored.job is None and stored.decode_error is not None and "args" in stored.decode_error
    shown = stored.to_dict()
    assert (shown["id"], shown["state"], shown["attempts"], shown["payload_error"]) == (
        "j1",
        "active",
        1,
        stored.decode_error,
    )
    assert shown["payload_preview"].startswith('{"v":') and '"args":"not a list"' in shown["payload_preview"]


def test_an_error_info_is_stored_as_the_json_the_worker_always_wrote():
    info = ErrorInfo("ValueError", "boom", "Traceback ...")
    assert info.to_dict() == {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
    assert ErrorInfo("malformed_payload", "not JSON").to_dict()["traceback"] == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.message = "other"  # type: ignore[misc]


def test_a_stored_job_reads_its_bookkeeping_typed():
    fields = _stored_form(state="completed", result={"ok": True}, finished_at=5, progress=50, owner="w1")
    stored = StoredJob.from_fields("q", fields)
    assert stored.job is not None and stored.job.result == {"ok": True}
    assert (stored.state, stored.result, stored.finished_at, stored.progress) == (
        "completed",
        {"ok": True},
        5.0,
        50.0,
    )
    assert (stored.owner, stored.token, stored.delay_until) == ("w1", "n.0", None)

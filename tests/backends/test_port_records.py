"""The typed records of the backend port decode a stored form totally: a bad job never raises."""

from __future__ import annotations

import dataclasses

import pytest

from asyncmq_otel.backends.base import ClaimedJob, StoredJob
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
    assert stored.to_dict() == malformed  # job show prints the stored form as it always did
    assert stored.to_dict() is not stored.to_dict()  # a copy: a caller cannot edit the record


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

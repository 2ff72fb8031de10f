"""The record models: plain objects, checked without pydantic when the data is plainly
right, and exactly as pydantic (2 or 1.10) would check it when it is not."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

import pytest
from support import run_python

from analytiq_migrations import CorruptRecordError, InvalidData
from analytiq_migrations import modelbase as mb
from analytiq_migrations.records import (
    ErrorInfo,
    HistoryEntry,
    LockInfo,
    MigrationRecord,
    Plan,
    PlanStep,
    RunReport,
    StepResult,
    field_names,
)

NAIVE = datetime(2026, 5, 1, 12, 0, 3, 123000)  # as BSON returns a time: naive, UTC
AWARE = NAIVE.replace(tzinfo=timezone.utc)

#: A record as this library stores it (and as pymongo reads it back).
STORED: Dict[str, Any] = {
    "_id": 7, "version": 7, "description": "Backfill plans", "checksum": "ab" * 32,
    "raw_checksum": "cd" * 32, "status": "applied", "direction": "up", "applied_at": NAIVE,
    "started_at": NAIVE, "finished_at": NAIVE, "duration_ms": 12, "run_id": "r1",
    "host": "web-1", "pid": 42, "user": "deploy", "tool_version": "0.1.0",
    "transactional": True, "attempts": 1, "error": None, "last_error": None,
    "progress": {"batch_update": [{"last_id": 5, "eta": None}]}, "pause": None,
    "outside_writes": [{"collection": "audit", "commands": 1}],  # an extra field, kept
}


def test_plainly_right_data_gives_what_pydantic_gives() -> None:
    samples = [
        (MigrationRecord, {k: v for k, v in STORED.items() if k != "_id"}),
        (MigrationRecord, {"version": 1, "status": "failed", "error": {
            "type": "KeyError", "message": "'plan'", "at": "batch_update"}}),
        (HistoryEntry, {"version": 2, "status": "interrupted", "started_at": NAIVE}),
        (LockInfo, {"holder": "h", "expires_at": NAIVE, "step": {"version": 3}}),
        (Plan, {"direction": "up", "current_version": 0, "target_version": 1, "steps": [
            {"version": 1, "direction": "up", "description": "d", "transactional": True}]}),
        (RunReport, {"run_id": "r", "direction": "down", "start_version": 2, "end_version": 1,
                     "started_at": AWARE, "finished_at": AWARE, "steps": [{
                         "version": 2, "direction": "down", "description": "d",
                         "status": "rolled_back", "transactional": False,
                         "duration_ms": 3}]}),
    ]
    for model, data in samples:
        plainly = mb._plainly(model, data)
        assert plainly == mb._by_pydantic(model, data), model.__name__
    record = MigrationRecord.model_validate(STORED)
    assert record.applied_at == AWARE and record.applied_at.tzinfo is not None
    assert record.model_dump()["outside_writes"] == STORED["outside_writes"]


def test_what_is_not_plainly_right_is_coerced_or_refused_as_pydantic_does() -> None:
    coerced = MigrationRecord.model_validate({"version": 3, "status": "applied",
                                              "attempts": "2", "duration_ms": 4.0,
                                              "applied_at": "2026-05-01T12:00:03.123Z"})
    assert (coerced.attempts, coerced.duration_ms, coerced.applied_at) == (2, 4, AWARE)
    report = RunReport(run_id="r", direction="up", start_version=0, end_version=0,
                       started_at=AWARE, finished_at=AWARE, lock_wait_s=1)
    assert type(report.lock_wait_s) is float
    for bad, where in (({"version": 0, "status": "applied"}, "version"),
                       ({"version": 1, "status": "done"}, "status"),
                       ({"version": 1, "status": "applied", "attempts": "two"}, "attempts")):
        with pytest.raises(InvalidData) as refused:
            MigrationRecord.model_validate(bad)
        assert refused.value.errors()[0]["loc"][0] == where
        assert f": {where}: " in str(refused.value)


def test_a_malformed_stored_record_is_named_with_its_field_and_way_out() -> None:
    with pytest.raises(CorruptRecordError) as refused:
        MigrationRecord.from_document({**STORED, "attempts": "many"}, "migrations")
    assert "Record 7 in collection 'migrations' is malformed: attempts:" in str(refused.value)
    assert "Fix the document {_id: 7}" in str(refused.value)


def test_dumps_copies_and_equality_behave_as_before() -> None:
    report = RunReport(run_id="r", direction="up", start_version=0, end_version=1,
                       started_at=AWARE, finished_at=AWARE, steps=[StepResult(
                           version=1, direction="up", description="d", status="failed",
                           transactional=True, duration_ms=3,
                           error=ErrorInfo(type="E", message="m"))])
    dumped = report.model_dump(mode="json")
    assert dumped["started_at"] == "2026-05-01T12:00:03.123000Z"
    assert dumped["steps"][0]["error"] == {"type": "E", "message": "m"}
    assert report.model_dump()["started_at"] == AWARE
    assert set(report.model_dump()) == field_names(RunReport)
    assert report.failed is report.steps[0] and report.versions == []
    assert report.model_copy(update={"end_version": 0}).end_version == 0
    assert report.end_version == 1
    assert RunReport.model_validate(report.model_dump()) == report
    assert PlanStep(version=1, direction="up", description="d", transactional=True) != \
        PlanStep(version=1, direction="up", description="d", transactional=False)
    assert report.model_dump(include={"run_id"}) == {"run_id": "r"}


def test_plainly_right_data_never_imports_pydantic() -> None:
    done = run_python("""
        import sys
        from datetime import datetime
        from analytiq_migrations.records import MigrationRecord, RunReport
        now = datetime(2026, 5, 1)
        record = MigrationRecord.from_document({"_id": 1, "version": 1, "status": "applied",
                                                "applied_at": now, "progress": None},
                                               "migrations")
        report = RunReport(run_id="r", direction="up", start_version=0, end_version=1,
                           started_at=record.applied_at, finished_at=record.applied_at)
        report.model_dump(mode="json")
        print("loaded", sorted(n for n in sys.modules if n.startswith("pydantic")))
        MigrationRecord.model_validate({"version": "1", "status": "applied"})
        print("then", "pydantic" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert "loaded []" in done.stdout and "then True" in done.stdout

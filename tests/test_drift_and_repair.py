"""Checksum drift, validate(), repair(): the database and the code disagreeing, and the way out."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from analytiq_migrations import (
    ChecksumDriftError,
    FailedMigrationError,
    Migration,
    MigrationFailedError,
    Migrator,
    OutOfOrderError,
)

FIRST = '''
"""Add users.plan."""

def up(db):
    db.users.update_many({}, {"$set": {"plan": "free"}})

def down(db):
    db.users.update_many({}, {"$unset": {"plan": ""}})
'''

SECOND = '''
"""Add users.seats."""

def up(db):
    db.users.update_many({}, {"$set": {"seats": 1}})
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A migrations directory with two applied-to-be migrations."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_add_plan.py").write_text(textwrap.dedent(FIRST))
    (directory / "0002_add_seats.py").write_text(textwrap.dedent(SECOND))
    return directory


def edit(project: Path, name: str, old: str, new: str) -> None:
    path = project / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_cosmetic_edits_after_applying_are_not_drift(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade()
    edit(project, "0001_add_plan.py", '"""Add users.plan."""',
         '"""Add users.plan (every user starts on the free plan)."""\n# reviewed')
    edit(project, "0001_add_plan.py", '{"$set": {"plan": "free"}}', "{'$set': {'plan': 'free'}}")
    migrator = Migrator(db, project)
    assert migrator.validate() == []
    assert all(row.checksum_ok for row in migrator.status())
    migrator.upgrade()  # no error


def test_drift_blocks_upgrade_until_repaired(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade(1)
    edit(project, "0001_add_plan.py", '"plan": "free"', '"plan": "trial"')
    migrator = Migrator(db, project)
    [problem] = migrator.validate()
    assert problem.kind == "checksum_drift" and problem.version == 1
    assert "--accept-checksums" in problem.hint
    assert [r.checksum_ok for r in migrator.status()] == [False, None]
    with pytest.raises(ChecksumDriftError) as info:
        migrator.upgrade()
    assert info.value.exit_code == 4 and info.value.version == 1
    assert "repair" in str(info.value)
    assert db.migrations.find_one({"_id": 2}) is None  # nothing ran

    [action] = migrator.repair(accept_checksums=True)
    assert action.version == 1 and action.action == "accept_checksum"
    assert migrator.validate() == []
    note = db.migrations.find_one({"_id": 1})["repairs"][0]
    assert note["action"] == "accept_checksum" and note["new"] == migrator.migrations[0].checksum
    assert migrator.upgrade().versions == [2]


def test_on_drift_warn_and_ignore(db: Any, project: Path, caplog: pytest.LogCaptureFixture) -> None:
    Migrator(db, project).upgrade(1)
    edit(project, "0001_add_plan.py", '"plan": "free"', '"plan": "trial"')
    assert Migrator(db, project, on_drift="warn").upgrade().versions == [2]
    assert "changed after it was applied" in caplog.text
    assert Migrator(db, project, on_drift="ignore").upgrade().steps == []
    with pytest.raises(ChecksumDriftError):
        Migrator(db, project).upgrade()


def test_applied_version_whose_code_is_gone(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade()
    (project / "0002_add_seats.py").unlink()
    migrator = Migrator(db, project)
    [problem] = migrator.validate()
    # above the code's newest version: older code deployed (test_code_behind_database.py)
    assert (problem.kind, problem.version, problem.severity) == ("ahead_of_code", 2, "warning")
    assert [r.status for r in migrator.status()] == ["applied", "ahead_of_code"]
    assert migrator.current_version() == 2
    assert migrator.upgrade().steps == []  # nothing to do; not an error to deploy older code


def test_out_of_order_version_is_refused_and_reported(db: Any, project: Path) -> None:
    Migrator(db, project).upgrade()
    (project / "0001_add_plan.py").rename(project / "0003_add_plan.py")
    (project / "0001_early.py").write_text("def up(db):\n    db.early.insert_one({})\n")
    # 0001 is now a new, pending migration below the current version 2
    (project / "0003_add_plan.py").unlink()
    migrator = Migrator(db, project)
    problems = migrator.validate()
    assert [(p.kind, p.version) for p in problems] == [("checksum_drift", 1)]
    db.migrations.delete_one({"_id": 1})  # as if 0001 had never been applied here
    problems = migrator.validate()
    assert [(p.kind, p.version) for p in problems] == [("out_of_order", 1)]
    with pytest.raises(OutOfOrderError, match=r"Migration 1 .* is pending but version 2"):
        migrator.upgrade()
    allowed = Migrator(db, project, allow_out_of_order=True)
    assert allowed.upgrade().versions == [1]


def test_failed_non_transactional_migration_needs_a_decision(db: Any) -> None:
    calls: list[str] = []

    class HalfDone(Migration):
        version = 1
        transactional = False
        description = "Copy then fail"

        def up(self, db: Any) -> None:
            calls.append("up")
            db.copy.insert_one({"_id": len(calls)})
            if len(calls) == 1:
                raise ValueError("bad document 42")

    with pytest.raises(MigrationFailedError, match="may be half applied"):
        Migrator(db, [HalfDone]).upgrade()
    assert db.copy.count_documents({}) == 1  # the partial write stays: no transaction
    migrator = Migrator(db, [HalfDone])
    [problem] = migrator.validate()
    assert problem.kind == "failed" and "bad document 42" in problem.message
    assert "--clear-failed" in problem.hint
    with pytest.raises(FailedMigrationError) as info:
        migrator.upgrade()
    assert info.value.exit_code == 4 and "repair --clear-failed" in str(info.value)
    assert calls == ["up"]  # not re-run behind the operator's back

    [action] = migrator.repair(clear_failed=True)
    assert action.action == "clear_failed" and "pending" in action.detail
    assert migrator.validate() == []
    assert migrator.upgrade().versions == [1]
    assert calls == ["up", "up"]
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "applied" and record["repairs"][0]["was"] == "failed"
    assert [h["status"] for h in db.migrations_history.find().sort("finished_at", 1)] == [
        "failed", "applied"]


def test_failed_idempotent_migration_is_simply_retried(db: Any) -> None:
    attempts: list[int] = []

    class Flaky(Migration):
        version = 1
        transactional = False
        idempotent = True

        def up(self, db: Any) -> None:
            attempts.append(1)
            db.users.update_many({}, {"$set": {"x": 1}})
            if len(attempts) == 1:
                raise RuntimeError("first try fails")

    with pytest.raises(MigrationFailedError):
        Migrator(db, [Flaky]).upgrade()
    report = Migrator(db, [Flaky]).upgrade()
    assert report.versions == [1] and report.steps[0].attempts == 2


def test_only_false_means_failure_a_returned_result_is_ignored(db: Any) -> None:
    # Alembic, Django and migrate-mongo ignore return values; the seed gives only False a
    # meaning. An executed migration returning a pymongo result is not failed after the fact.
    class ReturnsResult(Migration):
        version = 1

        def up(self, db: Any) -> Any:
            return db.users.update_many({}, {"$set": {"x": 1}})

    class ReturnsFalse(Migration):
        version = 2

        def up(self, db: Any) -> Any:
            return False

    assert Migrator(db, [ReturnsResult]).upgrade().versions == [1]
    with pytest.raises(MigrationFailedError, match="returned False"):
        Migrator(db, [ReturnsResult, ReturnsFalse]).upgrade()

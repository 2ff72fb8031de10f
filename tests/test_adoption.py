"""Adopting databases: the seed's schema_version document, and baseline()."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from analytiq_migrations import ConfigurationError, CorruptRecordError, Migration, Migrator


def numbered(version: int, *, reversible: bool = True) -> type[Migration]:
    """A migration that logs its runs in ``runs``."""

    class Numbered(Migration):
        def up(self, db: Any) -> None:
            db.runs.insert_one({"v": self.version, "dir": "up"})

        if reversible:
            def down(self, db: Any) -> None:
                db.runs.insert_one({"v": self.version, "dir": "down"})

    Numbered.version = version
    Numbered.description = f"step {version}"
    Numbered.__qualname__ = f"Numbered{version}"
    return Numbered


FIVE = [numbered(v) for v in range(1, 6)]


def seed_database(db: Any, version: int) -> None:
    """What the original module left behind."""
    db.migrations.insert_one(
        {"_id": "schema_version", "version": version, "updated_at": datetime.now(timezone.utc)}
    )


def test_seed_database_is_adopted_without_rerunning_old_migrations(db: Any) -> None:
    seed_database(db, 3)
    migrator = Migrator(db, FIVE)
    assert migrator.current_version() == 3
    assert [r.status for r in migrator.status()] == [
        "baselined", "baselined", "baselined", "pending", "pending"]
    assert migrator.plan().versions == [4, 5]
    assert db.migrations.count_documents({}) == 1  # reading wrote nothing

    report = migrator.upgrade()
    assert report.versions == [4, 5]
    assert [d["v"] for d in db.runs.find()] == [4, 5]  # 1..3 were not run again
    records = {d["_id"]: d for d in db.migrations.find()}
    assert [records[v]["status"] for v in (1, 2, 3)] == ["baselined"] * 3
    assert records[1]["checksum"] == migrator.migrations[0].checksum
    assert [records[v]["status"] for v in (4, 5)] == ["applied"] * 2
    # the legacy document is kept current for code that still reads it
    assert records["schema_version"]["version"] == 5
    statuses = sorted((h["version"], h["status"]) for h in db.migrations_history.find())
    assert statuses == [(1, "baselined"), (2, "baselined"), (3, "baselined"),
                        (4, "applied"), (5, "applied")]


def test_legacy_document_follows_downgrades(db: Any) -> None:
    seed_database(db, 2)
    migrator = Migrator(db, FIVE)
    migrator.upgrade()
    migrator.downgrade(3)
    assert db.migrations.find_one({"_id": "schema_version"})["version"] == 3
    migrator.downgrade(1)  # baselined migrations are reverted with their down()
    assert db.migrations.find_one({"_id": "schema_version"})["version"] == 1
    assert [(d["v"], d["dir"]) for d in db.runs.find()][-2:] == [(3, "down"), (2, "down")]


def test_legacy_version_beyond_the_code(db: Any) -> None:
    seed_database(db, 7)
    migrator = Migrator(db, FIVE)
    assert migrator.current_version() == 7
    assert migrator.upgrade().steps == []
    assert [r.status for r in migrator.status()][-1] == "baselined"


def test_corrupt_legacy_document_is_named(db: Any) -> None:
    db.migrations.insert_one({"_id": "schema_version", "version": "three"})
    with pytest.raises(CorruptRecordError, match=r"schema_version.*'three'") as info:
        Migrator(db, FIVE).upgrade()
    assert "baseline" in str(info.value)


def test_baseline_marks_versions_without_running_them(db: Any) -> None:
    migrator = Migrator(db, FIVE)
    report = migrator.baseline(3)
    assert [s.version for s in report.steps] == [1, 2, 3]
    assert {s.status for s in report.steps} == {"baselined"}
    assert "runs" not in db.list_collection_names()
    assert migrator.current_version() == 3
    assert migrator.upgrade().versions == [4, 5]
    assert [d["v"] for d in db.runs.find()] == [4, 5]
    assert db.migration_lock.count_documents({}) == 0


def test_baseline_of_a_version_the_code_does_not_have(db: Any) -> None:
    migrator = Migrator(db, [numbered(10), numbered(11)])
    migrator.baseline(9)
    assert migrator.current_version() == 9
    assert [(r.version, r.status) for r in migrator.status()] == [
        (9, "baselined"), (10, "pending"), (11, "pending")]


def test_baseline_skips_applied_versions(db: Any) -> None:
    migrator = Migrator(db, FIVE)
    migrator.upgrade(2)
    assert [s.version for s in migrator.baseline(4).steps] == [3, 4]
    assert [r.status for r in migrator.status()][:4] == [
        "applied", "applied", "baselined", "baselined"]
    with pytest.raises(ConfigurationError, match="0 or more"):
        migrator.baseline(-1)

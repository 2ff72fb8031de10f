"""Recording without running (``upgrade/downgrade(fake=True)``, ``baseline`` both ways) and
``show(version)``: what an operator does after changing the data by other means, and how
they look one version up."""

from __future__ import annotations

from typing import Any

import pytest

from analytiq_migrations import ConfigurationError, Migration, MigrationFailedError, Migrator


def numbered(version: int, *, reversible: bool = True, fails: bool = False) -> type[Migration]:
    """A migration that logs its runs in ``runs`` (and can be made to fail)."""

    class Numbered(Migration):
        def up(self, db: Any) -> None:
            db.runs.insert_one({"v": self.version, "dir": "up"})
            if fails:
                raise RuntimeError("orders without a customer")

        if reversible:
            def down(self, db: Any) -> None:
                db.runs.insert_one({"v": self.version, "dir": "down"})

    Numbered.version = version
    Numbered.description = f"step {version}"
    Numbered.__qualname__ = f"Numbered{version}"
    return Numbered


THREE = [numbered(1), numbered(2), numbered(3, reversible=False)]


def runs(db: Any) -> list[tuple[int, str]]:
    return [(d["v"], d["dir"]) for d in db.runs.find({}, sort=[("_id", 1)])]


def test_fake_upgrade_records_baselined_without_running(db: Any) -> None:
    migrator = Migrator(db, THREE)
    report = migrator.upgrade(2, fake=True)
    assert [(s.version, s.status) for s in report.steps] == [(1, "baselined"), (2, "baselined")]
    assert runs(db) == []
    for version in (1, 2):
        record = db.migrations.find_one({"_id": version})
        assert (record["status"], record["faked"], record["direction"]) == \
            ("baselined", True, "up")
        assert record["applied_at"] is not None and record["checksum"]
    entries = list(db.migrations_history.find({}, {"_id": 0, "status": 1, "faked": 1}))
    assert entries == [{"status": "baselined", "faked": True}] * 2
    assert migrator.current_version() == 2
    assert migrator.upgrade().versions == [3]  # the rest runs for real
    assert runs(db) == [(3, "up")]
    assert "faked" not in db.migrations.find_one({"_id": 3})


def test_fake_downgrade_records_rolled_back_without_running(db: Any) -> None:
    migrator = Migrator(db, THREE)
    migrator.upgrade()
    # 3 has no down(): a fake revert does not need one, nothing of it runs.
    report = migrator.downgrade(1, fake=True)
    assert [(s.version, s.status) for s in report.steps] == [(3, "rolled_back"),
                                                             (2, "rolled_back")]
    assert (report.start_version, report.end_version) == (3, 1)
    assert runs(db) == [(1, "up"), (2, "up"), (3, "up")]
    for version in (2, 3):
        record = db.migrations.find_one({"_id": version})
        assert (record["status"], record["direction"], record["faked"]) == \
            ("rolled_back", "down", True)
        assert "applied_at" not in record
        entry = db.migrations_history.find_one({"version": version, "direction": "down"})
        assert (entry["status"], entry["faked"]) == ("rolled_back", True)
    assert [r.status for r in migrator.status()] == ["applied", "pending", "pending"]
    migrator.upgrade()  # applied for real again: the records are no longer faked
    assert runs(db)[-2:] == [(2, "up"), (3, "up")]
    assert db.migrations.count_documents({"faked": True}) == 0


def test_fake_targets_must_lie_in_their_direction(db: Any) -> None:
    migrator = Migrator(db, THREE)
    migrator.upgrade(2)
    with pytest.raises(ConfigurationError, match="below the current version 2") as below:
        migrator.upgrade(1, fake=True)
    assert "fake=True" in (below.value.hint or "")
    with pytest.raises(ConfigurationError, match="above the current version 2"):
        migrator.downgrade(3, fake=True)
    assert migrator.upgrade("+1", fake=True).versions == [3]
    assert migrator.downgrade("-1", fake=True).versions == [3]


def test_baseline_moves_down_too(db: Any) -> None:
    migrator = Migrator(db, THREE)
    migrator.upgrade()
    report = migrator.baseline(1)
    assert (report.direction, report.versions) == ("down", [3, 2])
    assert migrator.current_version() == 1
    assert runs(db) == [(1, "up"), (2, "up"), (3, "up")]  # no down() ran
    assert migrator.baseline(0).versions == [1]
    assert migrator.current_version() == 0
    assert migrator.baseline(0).steps == []
    up = migrator.baseline(3)
    assert (up.direction, up.versions) == ("up", [1, 2, 3])
    assert db.migrations.count_documents({"status": "baselined", "faked": True}) == 3


def test_the_legacy_version_document_follows_fake_moves(db: Any) -> None:
    db.migrations.insert_one({"_id": "schema_version", "version": 3})
    migrator = Migrator(db, THREE)
    migrator.downgrade(1, fake=True)
    assert db.migrations.find_one({"_id": "schema_version"})["version"] == 1
    migrator.upgrade(fake=True)
    assert db.migrations.find_one({"_id": "schema_version"})["version"] == 3


def test_show_tells_everything_about_one_version(db: Any) -> None:
    migrations = [numbered(1), numbered(2, fails=True)]
    migrator = Migrator(db, migrations)
    with pytest.raises(MigrationFailedError):
        migrator.upgrade()
    failed = migrator.show(2)
    assert (failed.version, failed.description, failed.status) == (2, "step 2", "failed")
    assert failed.file is not None and failed.file.endswith("Numbered2")
    assert failed.checksum == failed.recorded_checksum
    assert failed.last_failure is not None and failed.last_failure.error is not None
    assert failed.last_failure.error.message == "orders without a customer"
    assert failed.record is not None and failed.record.attempts == 1
    assert [e.status for e in failed.history] == ["failed"]
    assert failed.faked is False
    applied = migrator.show(1)
    assert (applied.status, applied.last_failure, applied.reversible) == ("applied", None, True)
    assert applied.checksum_ok is True
    data = applied.model_dump()
    assert data["record"]["status"] == "applied" and data["history"][0]["status"] == "applied"
    migrator.downgrade(0, fake=True)
    assert migrator.show(1).faked is True
    with pytest.raises(ConfigurationError, match=r"Version 7 is neither.*versions: 1, 2"):
        migrator.show(7)


def test_show_tells_reversibility_of_applied_files_truthfully(db: Any, tmp_path: Any) -> None:
    """An applied, unchanged file is not imported by ``status``; ``show`` still says whether
    its code has a ``down`` (it said "no" for every such file)."""
    (tmp_path / "0001_with_down.py").write_text(
        '"""Reversible"""\n\ndef up(db):\n    db.a.insert_one({})\n\n\n'
        'def down(db):\n    db.a.delete_many({})\n')
    (tmp_path / "0002_no_down.py").write_text(
        '"""Irreversible"""\n\ndef up(db):\n    db.b.insert_one({})\n')
    Migrator(db, tmp_path).upgrade()
    fresh = Migrator(db, tmp_path)  # a new process: nothing imported yet
    assert (fresh.show(1).reversible, fresh.show(2).reversible) == (True, False)
    (tmp_path / "0002_no_down.py").unlink()
    assert Migrator(db, tmp_path).show(2).reversible is None

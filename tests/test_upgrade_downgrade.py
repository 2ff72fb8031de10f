"""The everyday path: plan, upgrade, status, downgrade, on a replica set and a standalone."""

from __future__ import annotations

from typing import Any

import pytest

from analytiq_migrations import (
    ConfigurationError,
    IrreversibleMigrationError,
    Migration,
    Migrator,
    run_migrations,
)


class CreateUsers(Migration):
    version = 1
    description = "Create the first users"

    def up(self, db: Any) -> None:
        db.users.insert_many([{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Alan"}])

    def down(self, db: Any) -> None:
        db.users.delete_many({"_id": {"$in": [1, 2]}})


class RenameName(Migration):
    version = 2
    description = "Rename user.name to user.full_name"

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$rename": {"name": "full_name"}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$rename": {"full_name": "name"}})


class AddActive(Migration):
    """Add users.active (seed style)."""

    def __init__(self) -> None:
        super().__init__(version=3)

    def up(self, db: Any) -> bool:
        db.users.update_many({}, {"$set": {"active": True}})
        return True

    def down(self, db: Any) -> bool:
        db.users.update_many({}, {"$unset": {"active": ""}})
        return True


class AuditLog(Migration):
    version = 5
    description = "Record each run in a log"

    def up(self, db: Any) -> None:
        db.log.insert_one({"v": 5})

    def down(self, db: Any) -> None:
        db.log.delete_many({"v": 5})


ALL = [CreateUsers, RenameName, AddActive, AuditLog]


@pytest.fixture(params=["replica_set", "standalone"])
def any_db(request: pytest.FixtureRequest) -> Any:
    """Each test runs against a replica set (transactions) and a standalone (none)."""
    return request.getfixturevalue("db" if request.param == "replica_set" else "standalone_db")


def users(db: Any) -> list[dict[str, Any]]:
    return list(db.users.find({}, sort=[("_id", 1)]))


def test_fresh_database_plans_everything_in_order(any_db: Any) -> None:
    migrator = Migrator(any_db, [AuditLog, AddActive(), RenameName, CreateUsers()])
    plan = migrator.plan()
    assert plan.versions == [1, 2, 3, 5]
    assert [s.direction for s in plan] == ["up"] * 4
    assert plan.current_version == 0 and plan.target_version == 5
    assert plan.steps[2].description == "Add users.active (seed style)."
    assert any_db.list_collection_names() == []  # planning writes nothing


def test_upgrade_applies_in_order_and_records_everything(any_db: Any) -> None:
    migrator = Migrator(any_db, ALL)
    report = migrator.upgrade()
    assert report.versions == [1, 2, 3, 5]
    assert (report.start_version, report.end_version) == (0, 5)
    assert users(any_db) == [
        {"_id": 1, "full_name": "Ada", "active": True},
        {"_id": 2, "full_name": "Alan", "active": True},
    ]
    assert migrator.current_version() == 5
    record = any_db.migrations.find_one({"_id": 2})
    assert record["status"] == "applied"
    assert record["description"] == "Rename user.name to user.full_name"
    assert record["checksum"] == migrator.migrations[1].checksum
    assert record["attempts"] == 1 and record["error"] is None
    assert record["finished_at"] >= record["started_at"]
    history = migrator.history()
    assert [(h.version, h.status) for h in history] == [
        (5, "applied"), (3, "applied"), (2, "applied"), (1, "applied")]
    assert any_db.migration_lock.count_documents({}) == 0  # released
    assert migrator.lock_info() is None


def test_rerun_is_a_no_op(any_db: Any) -> None:
    migrator = Migrator(any_db, ALL)
    migrator.upgrade()
    again = Migrator(any_db, ALL).upgrade()
    assert again.steps == [] and not again.changed
    assert (again.start_version, again.end_version) == (5, 5)
    assert any_db.log.count_documents({}) == 1
    assert len(migrator.history()) == 4


def test_status_lists_pending_rows(any_db: Any) -> None:
    Migrator(any_db, ALL).upgrade(2)
    rows = Migrator(any_db, ALL).status()
    assert [(r.version, r.status) for r in rows] == [
        (1, "applied"), (2, "applied"), (3, "pending"), (5, "pending")]
    assert rows[0].checksum_ok is True and rows[2].checksum_ok is None
    assert rows[0].applied_at is not None and rows[0].applied_at.tzinfo is not None
    assert rows[2].reversible is True


def test_upgrade_to_a_target_then_on(any_db: Any) -> None:
    migrator = Migrator(any_db, ALL)
    assert migrator.upgrade(2).versions == [1, 2]
    assert migrator.current_version() == 2
    assert migrator.upgrade("+1").versions == [3]
    assert migrator.upgrade("head").versions == [5]


def test_downgrade_to_any_target(any_db: Any) -> None:
    migrator = Migrator(any_db, ALL)
    migrator.upgrade()
    report = migrator.downgrade(2)
    assert report.versions == [5, 3]
    assert [s.status for s in report.steps] == ["rolled_back", "rolled_back"]
    assert users(any_db)[0] == {"_id": 1, "full_name": "Ada"}
    assert migrator.current_version() == 2
    assert any_db.migrations.find_one({"_id": 3})["status"] == "rolled_back"
    assert "applied_at" not in any_db.migrations.find_one({"_id": 3})
    assert [r.status for r in migrator.status()] == ["applied", "applied", "pending", "pending"]
    assert migrator.downgrade("-1").versions == [2]
    assert migrator.downgrade("base").versions == [1]
    assert users(any_db) == [] and migrator.current_version() == 0
    # and back up again
    assert migrator.upgrade().versions == [1, 2, 3, 5]
    assert [h.status for h in migrator.history(version=2)] == [
        "applied", "rolled_back", "applied"]


def test_directions_are_not_mixed_up(any_db: Any) -> None:
    migrator = Migrator(any_db, ALL)
    migrator.upgrade(3)
    with pytest.raises(ConfigurationError, match="Use downgrade"):
        migrator.upgrade(1)
    with pytest.raises(ConfigurationError, match="above the current version"):
        migrator.downgrade(5)
    with pytest.raises(ConfigurationError, match="Unknown target version 4"):
        migrator.upgrade(4)
    assert migrator.downgrade(3).steps == []  # already there: nothing to do


def test_irreversible_migration_blocks_the_downgrade_before_anything_runs(any_db: Any) -> None:
    class Irreversible(Migration):
        version = 4
        description = "Drop the legacy collection"

        def up(self, db: Any) -> None:
            db.legacy.insert_one({"gone": True})

    migrations = [*ALL, Irreversible]
    migrator = Migrator(any_db, migrations)
    migrator.upgrade()
    with pytest.raises(IrreversibleMigrationError) as info:
        migrator.downgrade(1)
    assert "4 (Drop the legacy collection: it has no down())" in str(info.value)
    assert info.value.exit_code == 1
    # nothing was reverted, not even version 5 which sits above it
    assert migrator.current_version() == 5
    assert any_db.log.count_documents({}) == 1
    assert migrator.downgrade(4).versions == [5]  # above it is fine


def test_run_migrations_goes_up_or_down_like_the_seed(any_db: Any) -> None:
    seed_migrations = [CreateUsers(), RenameName(), AddActive()]
    client, name = any_db.client, any_db.name
    assert run_migrations(client, migrations=seed_migrations, database=name).end_version == 3
    report = run_migrations(any_db, target_version=1, migrations=seed_migrations)
    assert (report.direction, report.versions) == ("down", [3, 2])
    assert run_migrations(any_db, target_version=3, migrations=seed_migrations).versions == [2, 3]


def test_migrator_from_a_uri_owns_its_client(mongo_uri: str, db: Any) -> None:
    with Migrator(mongo_uri, ALL, database=db.name) as migrator:
        assert migrator.upgrade(1).versions == [1]
    assert db.users.count_documents({}) == 2


def test_database_from_the_uri_path(mongo_uri: str, db: Any) -> None:
    base, _, query = mongo_uri.partition("?")
    uri = f"{base.rstrip('/')}/{db.name}" + (f"?{query}" if query else "")
    with Migrator(uri, ALL) as migrator:
        assert migrator.db.name == db.name


def test_no_database_anywhere_is_a_configuration_error(client: Any) -> None:
    with pytest.raises(ConfigurationError, match="No database name") as info:
        Migrator(client, ALL)
    assert "ANALYTIQ_MIGRATIONS_DATABASE" in str(info.value)


def test_custom_collection_names(db: Any) -> None:
    migrator = Migrator(db, ALL, collection="schema_changes")
    migrator.upgrade(1)
    assert set(db.list_collection_names()) >= {"schema_changes", "schema_changes_history"}
    assert "migrations" not in db.list_collection_names()


def test_works_on_mongomock_without_transactions(mock_db: Any) -> None:
    migrator = Migrator(mock_db, ALL)
    assert all(not s.transactional for s in migrator.plan())
    assert migrator.upgrade().versions == [1, 2, 3, 5]
    assert migrator.downgrade(0).versions == [5, 3, 2, 1]
    assert mock_db.users.count_documents({}) == 0

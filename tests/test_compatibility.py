"""Old drivers and old servers: the paths a legacy service takes, each forced here so every
lane (and the newest pymongo against the newest server) exercises them.

Server age is simulated where SecantusDB cannot be old: the description the runner reads
is replaced, and ``hello`` is answered with "no such command" as MongoDB before 4.4.2 does.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Dict

import pytest
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import OperationFailure
from support import CommandRecorder

from analytiq_migrations import ConfigurationError, Migration, Migrator
from analytiq_migrations.capabilities import Capabilities
from analytiq_migrations.lock import ServerClock, local_now
from analytiq_migrations.records import MigrationRecord, PlanStep, field_names
from analytiq_migrations.server import hello, mongodb_release


class AddFlag(Migration):
    """Set a flag on every user."""

    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"flag": True}})


class OldServerAdmin:
    """An ``admin`` database that answers like MongoDB 4.0: no ``hello``, only ``isMaster``."""

    def __init__(self, local_time: Any) -> None:
        self.local_time = local_time
        self.asked: list[str] = []

    def command(self, name: str) -> Dict[str, Any]:
        self.asked.append(name)
        if name == "hello":
            raise OperationFailure("no such command: 'hello'", code=59)
        return {"ismaster": True, "maxWireVersion": 7, "localTime": self.local_time}


def test_hello_falls_back_to_is_master_on_servers_that_predate_it() -> None:
    admin = OldServerAdmin(local_now())
    reply = hello(SimpleNamespace(admin=admin))
    assert reply["maxWireVersion"] == 7
    assert admin.asked == ["hello", "isMaster"]


def test_the_server_clock_is_read_from_is_master_on_old_servers() -> None:
    ahead = local_now() + timedelta(minutes=10)
    clock = ServerClock(SimpleNamespace(client=SimpleNamespace(admin=OldServerAdmin(ahead))))
    assert timedelta(minutes=9) < clock.offset < timedelta(minutes=11)


def test_other_hello_errors_are_not_hidden() -> None:
    class Refusing:
        def command(self, name: str) -> Dict[str, Any]:
            raise OperationFailure("not authorized", code=13)

    with pytest.raises(OperationFailure):
        hello(SimpleNamespace(admin=Refusing()))


def test_on_mongodb_4_0_the_lease_uses_plain_updates_in_the_server_clock(
    recorded_db: Any, recorder: CommandRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MongoDB 4.0 (wire 7) has no pipeline updates, so no $$NOW: the lease must be written
    # with plain $set values from the server clock estimate, and still work.
    monkeypatch.setattr(Capabilities, "wire_version", lambda self: 7)
    recorded_db.users.insert_many([{"_id": n} for n in range(3)])
    migrator = Migrator(recorded_db, [AddFlag], lock_ttl=30)
    recorder.clear()

    assert migrator.upgrade().versions == [1]

    lock_writes = [c.command for c in recorder.filter("findAndModify")
                   if c.command["findAndModify"] == "migration_lock"]
    assert lock_writes, "the lock was never taken"
    for command in lock_writes:
        assert isinstance(command["update"], dict), "a pipeline update on MongoDB 4.0"
        assert "$$NOW" not in repr(command["update"])
    updates = [c.command["updates"] for c in recorder.filter("update")
               if c.command["update"] == "migration_lock"]
    assert all(isinstance(u["u"], dict) for batch in updates for u in batch)
    assert recorded_db.users.count_documents({"flag": True}) == 3


def test_on_mongodb_4_2_and_newer_the_lease_is_written_in_server_time(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    Migrator(recorded_db, [AddFlag]).upgrade()
    [acquire] = [c.command for c in recorder.filter("findAndModify")
                 if c.command["findAndModify"] == "migration_lock"][:1]
    assert isinstance(acquire["update"], list) and "$$NOW" in repr(acquire["update"])


def test_a_server_older_than_4_0_is_refused_before_anything_is_written(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    described = SimpleNamespace(server_type_name="RSPrimary", max_wire_version=6,
                                logical_session_timeout_minutes=30, is_writable=True)
    monkeypatch.setattr(Capabilities, "server_description", lambda self: described)

    with pytest.raises(ConfigurationError) as refused:
        Migrator(db, [AddFlag]).upgrade()

    assert "MongoDB 3.6 (wire version 6)" in str(refused.value)
    assert "needs MongoDB 4.0 or newer" in str(refused.value)
    assert db.list_collection_names() == []  # no lock, no record, no history


def test_a_driver_too_new_for_the_server_is_explained_not_blamed_on_a_migration(db: Any) -> None:
    migrator = Migrator(db, [AddFlag])
    error = migrator.translate_error(PyMongoConfigurationError(
        "Server at db1:27017 reports wire version 7, but this version of PyMongo requires at "
        "least 8 (MongoDB 4.2)."))
    assert isinstance(error, ConfigurationError)
    assert "cannot talk to the server" in str(error)
    assert "Install a pymongo release that supports this server" in error.hint


def test_release_names_for_messages() -> None:
    assert [mongodb_release(w) for w in (5, 6, 7, 8, 9, 13, 17, 21, 25, 27)] == \
        ["before 3.6", "3.6", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0", "8.0"]


def test_records_round_trip_on_this_pydantic(db: Any) -> None:
    # Written for pydantic 1.10 and 2 alike: the same stored shape, UTC datetimes, BSON kept
    # in Python mode and turned into Extended JSON in JSON mode.
    Migrator(db, [AddFlag]).upgrade()
    record = MigrationRecord.from_document(db.migrations.find_one({"_id": 1}), "migrations")
    assert record.status == "applied" and record.applied_at is not None
    assert record.applied_at.tzinfo is not None
    marker = uuid.uuid4()
    copy = record.model_copy(update={"progress": {"last_id": marker}})
    assert copy.model_dump()["progress"] == {"last_id": marker}
    dumped = copy.model_dump(mode="json")["progress"]["last_id"]
    assert dumped["$binary"]["subType"] == "04"  # a standard UUID, in Extended JSON
    assert "checksum" in field_names(MigrationRecord)
    assert PlanStep.model_validate({"version": 1, "direction": "up", "description": "",
                                    "transactional": True}).transactional is True


def test_a_dry_run_without_bind_is_refused_before_anything_runs(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With only the proxy, a migration writing through db.client[...] would write for real.
    from analytiq_migrations import rehearsal

    monkeypatch.setattr(rehearsal, "HAS_BIND", False)
    with pytest.raises(ConfigurationError) as refused:
        Migrator(db, [AddFlag]).upgrade(dry_run=True)
    assert "needs pymongo 4.17 or newer" in str(refused.value)
    assert "restored copy" in refused.value.hint
    assert db.list_collection_names() == []  # no lock taken, nothing written

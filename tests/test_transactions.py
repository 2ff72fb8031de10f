"""Transactions: decided from hello, joined by every call on db, all-or-nothing with the record.

The point here is what is *sent*, so these tests read pymongo's command monitoring.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import InsertOne, UpdateOne
from pymongo.database import Database
from pymongo.write_concern import WriteConcern
from support import one_bulk_write, writes_of

from analytiq_migrations import (
    Migration,
    MigrationFailedError,
    Migrator,
    TransactionsUnsupportedError,
)
from analytiq_migrations.capabilities import Capabilities

# Commands a migration may legitimately send outside its transaction: the driver's own.
DRIVER = {"hello", "isMaster", "ismaster", "endSessions", "killCursors", "ping"}


class TouchesEverything(Migration):
    """Uses every kind of collection and database call a migration commonly makes."""

    version = 1

    def up(self, db: Any) -> None:
        db.items.insert_one({"_id": 1, "n": 1, "tag": "a"})
        db.items.insert_many([{"_id": 2, "n": 2, "tag": "b"}, {"_id": 3, "n": 3, "tag": "b"}])
        db.items.update_one({"_id": 1}, {"$set": {"seen": True}})
        db.items.update_many({"tag": "b"}, {"$inc": {"n": 10}})
        db.items.replace_one({"_id": 3}, {"n": 30, "tag": "b"})
        db.items.find_one_and_update({"_id": 2}, {"$set": {"x": 1}})
        db.items.find_one_and_replace({"_id": 2}, {"n": 2, "tag": "b", "x": 2})
        db.items.bulk_write([InsertOne({"_id": 4, "tag": "c"}), UpdateOne({"_id": 4},
                                                                            {"$set": {"n": 4}})])
        assert db.items.count_documents({"tag": "b"}) == 2
        assert sorted(db.items.distinct("tag")) == ["a", "b", "c"]
        assert [d["_id"] for d in db.items.find({}, sort=[("_id", 1)])] == [1, 2, 3, 4]
        assert list(db.items.aggregate([{"$match": {"tag": "b"}}, {"$count": "n"}])) == [{"n": 2}]
        db.items.find_one_and_delete({"_id": 4})
        db.items.delete_one({"_id": 3})
        db.items.delete_many({"tag": "zzz"})
        db.fresh.create_index("k")  # allowed in a transaction on a new collection
        db.command("find", "items", filter={})
        # Every way of getting a handle from db hands out one that joins (on every pymongo:
        # bind() where it exists, the session-injecting proxy everywhere).
        assert isinstance(db, Database)
        assert db["items"].find_one({"_id": 1})["seen"] is True
        assert db.get_collection("items").count_documents({}) == 2
        majority = WriteConcern(w="majority")
        db.with_options(write_concern=majority).items.update_one({"_id": 1}, {"$set": {"w": 1}})
        db.items.with_options(write_concern=majority).update_one({"_id": 2}, {"$set": {"w": 2}})
        db.items.archive.insert_one({"_id": "sub-collection"})
        db.items.database.items.update_one({"_id": 1}, {"$set": {"via": "database"}})
        assert len(list(db.items.find({}, batch_size=1))) == 2  # getMore joins too

    def down(self, db: Any) -> None:
        db.items.delete_many({})


def transaction_of(recorder: Any, version: int, db_name: str) -> list[Any]:
    """The commands sent for ``version``'s transaction (from startTransaction to commit)."""
    events = [e for e in recorder.commands if e.name not in DRIVER]
    start = next(i for i, e in enumerate(events)
                 if e.command.get("startTransaction") and _touches(e, db_name))
    end = next(i for i, e in enumerate(events[start:], start)
               if e.name in ("commitTransaction", "abortTransaction"))
    # The transaction rules' one catalog read (listCollections) runs beside it, on purpose.
    return [e for e in events[start:end + 1] if e.name != "listCollections"]


def _touches(event: Any, db_name: str) -> bool:
    return bool(event.database == db_name)


def test_every_call_on_db_joins_the_transaction(recorded_db: Any, recorder: Any) -> None:
    migrator = Migrator(recorded_db, [TouchesEverything])
    assert migrator.plan().steps[0].transactional
    recorder.clear()
    migrator.upgrade()
    txn = transaction_of(recorder, 1, recorded_db.name)
    lsid, txn_number = txn[0].command["lsid"], txn[0].command["txnNumber"]
    names = [e.name for e in txn]
    for name in ("insert", "update", "findAndModify", "delete", "aggregate", "distinct",
                 "find", "getMore", "createIndexes", "commitTransaction"):
        assert name in names, name
    for event in txn:
        assert event.command["lsid"] == lsid, event.name
        assert event.command["txnNumber"] == txn_number, event.name
        assert event.command.get("autocommit") is False, event.name
    # the bookkeeping is inside the very same transaction
    written = writes_of(txn)
    assert ("insert", "migrations") in written  # the new record
    assert ("insert", "migrations_history") in written
    assert ("insert", "items.archive") in written  # the sub-collection's write joined too
    assert ("update", "migration_lock") in written  # the lease is re-checked by writing it
    assert names[-1] == "commitTransaction"


def test_the_record_commits_with_the_migration(recorded_db: Any, recorder: Any) -> None:
    class One(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.things.insert_one({"_id": "thing"})

    Migrator(recorded_db, [One]).upgrade()
    txn = transaction_of(recorder, 1, recorded_db.name)
    assert writes_of(txn) == [
        ("update", "migration_lock"),      # the lease
        ("insert", "things"),              # the migration's own write
        ("insert", "migrations"),          # the record, applied
        ("insert", "migrations_history"),  # its history entry
        ("commitTransaction", None),
    ]
    # On MongoDB 8.0+ (pymongo 4.9+) the record and its entry are one bulkWrite command.
    assert len(txn) == (4 if one_bulk_write(recorded_db) else 5)
    assert recorded_db.migrations.find_one({"_id": 1})["status"] == "applied"


def test_failed_transactional_migration_leaves_no_partial_writes(db: Any) -> None:
    class HalfThenBoom(Migration):
        version = 1
        description = "Writes, then fails"

        def up(self, db: Any) -> None:
            db.users.insert_one({"_id": "written-before-the-failure"})
            db.users.update_many({}, {"$set": {"touched": True}})
            raise RuntimeError("disk full of bad ideas")

    class Later(Migration):
        version = 2

        def up(self, db: Any) -> None:
            db.later.insert_one({})

    db.users.insert_one({"_id": "existing"})
    with pytest.raises(MigrationFailedError) as info:
        Migrator(db, [HalfThenBoom, Later]).upgrade()
    assert "Migration 1 (Writes, then fails) failed during 'up'" in str(info.value)
    assert "RuntimeError: disk full of bad ideas" in str(info.value)
    assert "rolled back" in str(info.value)
    assert info.value.version == 1
    assert list(db.users.find()) == [{"_id": "existing"}]  # nothing of it is visible
    assert "later" not in db.list_collection_names()  # later migrations did not run
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "failed" and record["transactional"] is True
    assert {k: record["error"][k] for k in ("type", "message")} == {
        "type": "RuntimeError", "message": "disk full of bad ideas"}
    assert record["error"]["location"].startswith("test_transactions.py:")
    assert [h["status"] for h in db.migrations_history.find()] == ["failed"]
    # a failed transactional migration is simply retried by the next run
    plan = Migrator(db, [HalfThenBoom, Later]).plan()
    assert plan.versions == [1, 2] and plan.steps[0].note == "retry after failure"


def test_returning_false_fails_and_rolls_back(db: Any) -> None:
    class SeedStyleFailure(Migration):
        def __init__(self) -> None:
            super().__init__(version=1, description="seed style")

        def up(self, db: Any) -> bool:
            db.users.insert_one({"_id": 1})
            return False

    with pytest.raises(MigrationFailedError, match="returned False"):
        Migrator(db, [SeedStyleFailure()]).upgrade()
    assert db.users.count_documents({}) == 0
    assert db.migrations.find_one({"_id": 1})["status"] == "failed"


def test_standalone_sends_no_start_transaction(
    recorded_standalone_db: Any, standalone_recorder: Any
) -> None:
    migrator = Migrator(recorded_standalone_db, [TouchesEverything])
    assert not migrator.plan().steps[0].transactional
    migrator.upgrade()
    migrator.downgrade(0)
    assert standalone_recorder.commands, "the recorder saw nothing"
    assert not [e for e in standalone_recorder.commands if "startTransaction" in e.command]
    assert not [e for e in standalone_recorder.commands if e.name == "commitTransaction"]
    record = recorded_standalone_db.migrations.find_one({"_id": 1})
    assert record["status"] == "rolled_back" and record["transactional"] is False


def test_always_on_standalone_fails_before_anything_runs(
    recorded_standalone_db: Any, standalone_recorder: Any
) -> None:
    migrator = Migrator(recorded_standalone_db, [TouchesEverything], transactions="always")
    standalone_recorder.clear()
    with pytest.raises(TransactionsUnsupportedError, match="Standalone") as info:
        migrator.upgrade()
    assert info.value.exit_code == 2
    writes = [e for e in standalone_recorder.commands
              if e.name in ("insert", "update", "delete", "findAndModify")]
    assert writes == []
    assert recorded_standalone_db.list_collection_names() == []


def test_a_migration_that_requires_a_transaction_is_refused_on_standalone(
    standalone_db: Any,
) -> None:
    class NeedsTxn(Migration):
        version = 1
        transactional = True

        def up(self, db: Any) -> None:
            db.x.insert_one({})

    with pytest.raises(TransactionsUnsupportedError, match="Migration 1 requires a transaction"):
        Migrator(standalone_db, [NeedsTxn]).upgrade()
    assert standalone_db.list_collection_names() == []


def test_per_migration_opt_out(recorded_db: Any, recorder: Any) -> None:
    class BuildIndex(Migration):
        version = 1
        transactional = False

        def up(self, db: Any) -> None:
            db.users.create_index("email")

    class Backfill(Migration):
        version = 2

        def up(self, db: Any) -> None:
            db.users.update_many({}, {"$set": {"ok": True}})

    recorded_db.users.insert_one({"email": "a@example.com"})  # index on a non-empty collection
    migrator = Migrator(recorded_db, [BuildIndex, Backfill])
    assert [s.transactional for s in migrator.plan()] == [False, True]
    recorder.clear()
    migrator.upgrade()
    create = [e for e in recorder.commands if e.name == "createIndexes"]
    assert create and "txnNumber" not in create[0].command
    backfill = [e for e in recorder.commands
                if e.name == "update" and e.command.get("update") == "users"]
    assert backfill and backfill[0].command.get("autocommit") is False
    assert "email_1" in recorded_db.users.index_information()


def test_never_mode_sends_no_transactions(recorded_db: Any, recorder: Any) -> None:
    migrator = Migrator(recorded_db, [TouchesEverything], transactions="never")
    migrator.upgrade()
    assert not [e for e in recorder.commands if "startTransaction" in e.command]


def test_self_session_is_the_runs_session(db: Any) -> None:
    seen: dict[str, Any] = {}

    class UsesSession(Migration):
        version = 1

        def up(self, db: Any) -> None:
            seen["session"] = self.session
            seen["in_txn"] = self.session.in_transaction
            db.things.insert_one({"_id": 1}, session=self.session)

    Migrator(db, [UsesSession]).upgrade()
    assert seen["in_txn"] is True
    assert UsesSession().session is None


def test_bad_transactions_option() -> None:
    import mongomock

    from analytiq_migrations import ConfigurationError

    with pytest.raises(ConfigurationError, match="transactions='sometimes'"):
        Migrator(mongomock.MongoClient()["x"], [], transactions="sometimes")


def test_a_non_transactional_migration_may_use_another_client(
    db: Any, mongo_uri: str
) -> None:
    from pymongo import MongoClient

    class CopyFromElsewhere(Migration):
        version = 1
        transactional = False

        def up(self, db: Any) -> None:
            with MongoClient(mongo_uri) as other:  # e.g. another cluster
                other[db.name].source.insert_one({"_id": "from-elsewhere"})
                db.copy.insert_many(other[db.name].source.find())

    Migrator(db, [CopyFromElsewhere]).upgrade()
    assert db.copy.find_one() == {"_id": "from-elsewhere"}


def test_transactions_are_judged_by_the_primary_not_a_secondary(db: Any) -> None:
    """A replica-set URI lists secondaries too; the writable member decides."""
    from types import SimpleNamespace

    migrator = Migrator(db, [TouchesEverything])
    migrator.current_version()  # connected: the primary is known
    primary = migrator.capabilities.server_description()
    secondary = SimpleNamespace(is_server_type_known=True, is_writable=False,
                                server_type_name="RSSecondary")
    topology = SimpleNamespace(server_descriptions=lambda: {
        ("secondary", 1): secondary, ("primary", 2): primary})

    class Client:
        topology_description = topology

    listed_secondary_first = Capabilities(Client(), db.name, "auto")
    assert listed_secondary_first.server_description() is primary

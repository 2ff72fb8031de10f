"""What MongoDB refuses in a transaction is refused by us first, whatever the server accepts;
errors a migration swallowed inside its transaction are surfaced; a failed transactional
``down`` leaves the version where it was. (The manual's rules: docs/transactions.md.)
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Dict

import pytest
from children import write_migrations
from pymongo.errors import BulkWriteError, OperationFailure
from support import CommandRecorder

from analytiq_migrations import (
    Migration,
    MigrationDefinitionError,
    MigrationFailedError,
    Migrator,
)
from analytiq_migrations.capabilities import Capabilities
from analytiq_migrations.cli import main
from analytiq_migrations.dbproxy import StepWatch
from analytiq_migrations.txnrules import (
    CREATE_IN_TRANSACTION_WIRE,
    NOT_IN_TRANSACTION_CODE,
    WRITE_METHODS,
    Catalog,
    refusal,
)


def catalog(existing: Dict[str, Any], wire: int = 21) -> Catalog:
    return Catalog(loader=lambda: dict(existing), wire_version=wire)


def refused(collection: Any, method: str, *args: Any, cat: Any = None, db: str = "shop",
            **kwargs: Any) -> Any:
    return refusal(db, collection, method, args, kwargs,
                   cat if cat is not None else catalog({"users": {}, "log": {"capped": True}}))


# -- the rules, one by one (pure: no server) --------------------------------------------------

@pytest.mark.parametrize("method", ["drop", "drop_index", "drop_indexes", "rename",
                                    "list_indexes", "index_information", "options", "watch",
                                    "map_reduce", "count", "estimated_document_count"])
def test_collection_calls_no_transaction_may_make(method: str) -> None:
    reason = refused("users", method)
    assert reason is not None and "cannot run in a transaction" in reason


@pytest.mark.parametrize("method", ["drop_collection", "list_collections",
                                    "list_collection_names", "validate_collection", "watch"])
def test_database_calls_no_transaction_may_make(method: str) -> None:
    assert "cannot run in a transaction" in refused(None, method, "users")


def test_index_builds_only_on_collections_the_transaction_creates() -> None:
    assert "already exists" in refused("users", "create_index", "email")
    assert refused("fresh", "create_index", "email") is None
    cat = catalog({}, wire=8)  # MongoDB 4.2
    assert "before 4.4" in refused("fresh", "create_index", "email", cat=cat)


def test_writes_to_system_and_reserved_places() -> None:
    assert "system collections" in refused("system.views", "insert_one", {})
    assert "'admin' database" in refused("users", "update_one", {}, {}, db="admin")
    assert refused("users", "update_many", {}, {"$set": {"a": 1}}) is None


def test_before_4_4_writes_to_capped_collections_are_refused_before_sending() -> None:
    cat = catalog({"users": {}, "log": {"capped": True}}, wire=8)  # MongoDB 4.2
    assert "capped" in refused("log", "insert_one", {}, cat=cat)
    assert refused("users", "insert_one", {}, cat=cat) is None
    # 4.4+: the server refuses it itself (see the capped test on a real server below).
    assert refused("log", "insert_one", {}) is None


def test_before_4_4_no_collection_is_created_in_a_transaction() -> None:
    cat = catalog({"users": {}}, wire=7)  # MongoDB 4.0
    assert "does not exist" in refused("brand_new", "insert_one", {}, cat=cat)
    assert refused("users", "insert_one", {}, cat=cat) is None
    assert "before 4.4" in refused(None, "create_collection", "x", cat=cat)
    assert refused(None, "create_collection", "x") is None
    assert "capped" in refused(None, "create_collection", "x", capped=True, size=1024)


def test_out_merge_and_diagnostic_stages_are_refused() -> None:
    assert "$out" in refused("users", "aggregate", [{"$match": {}}, {"$out": "copy"}])
    assert "$merge" in refused("users", "aggregate", [{"$merge": {"into": "copy"}}])
    assert "$currentOp" in refused(None, "aggregate", [{"$currentOp": {}}])
    assert refused("users", "aggregate", [{"$match": {"a": 1}}, {"$count": "n"}]) is None


def test_only_crud_commands_through_db_command() -> None:
    assert refused(None, "command", "find", "users") is None
    assert refused(None, "command", {"aggregate": "users", "pipeline": []}) is None
    for command in ("collMod", "renameCollection", "dropDatabase", "count", "listIndexes",
                    "createUser", "dbStats"):
        assert "cannot run in a transaction" in refused(None, "command", command), command


@pytest.mark.parametrize("wire, first", [(8, "insert_one"), (21, "create_index")])
def test_the_catalog_is_read_only_when_a_rule_needs_it(wire: int, first: str) -> None:
    reads = []
    cat = Catalog(loader=lambda: reads.append(1) or {}, wire_version=wire)
    refusal("shop", "users", "find", (), {}, cat)
    refusal("shop", "users", "aggregate", ([{"$match": {}}],), {}, cat)
    assert reads == []
    refusal("shop", "users", first, ({},), {}, cat)
    refusal("shop", "other", first, ({},), {}, cat)
    assert reads == [1]


def test_on_4_4_writes_never_read_the_catalog() -> None:
    def unreadable() -> Dict[str, Any]:
        raise AssertionError("a write read the catalog")

    cat = Catalog(loader=unreadable, wire_version=CREATE_IN_TRANSACTION_WIRE)
    for method in sorted(WRITE_METHODS):
        assert refusal("shop", "log", method, ({},), {}, cat) is None, method
    # The pure rules still hold.
    assert "system collections" in refusal("shop", "system.js", "insert_one", ({},), {}, cat)
    assert "'config' database" in refusal("config", "x", "delete_many", ({},), {}, cat)
    with pytest.raises(AssertionError, match="read the catalog"):
        refusal("shop", "log", "create_index", ("a",), {}, cat)  # index builds do read it


@pytest.mark.parametrize("read_before", [False, True])
def test_on_4_4_what_a_step_wrote_to_exists_for_the_steps_after_it(read_before: bool) -> None:
    # A write may create its collection: once the step commits, the collection exists, even
    # for a catalog read later (in a dry run the steps never commit, so such a read would
    # not see it).
    cat = catalog({"users": {}})
    if read_before:
        assert "fresh" not in cat.existing
    assert refused("fresh", "insert_one", {}, cat=cat) is None
    cat.next_step()
    assert "already exists" in refused("fresh", "create_index", "a", cat=cat)


def test_on_4_4_a_write_does_not_make_an_existing_collection_indexable() -> None:
    cat = catalog({"users": {}})
    assert refused("users", "update_many", {}, {"$set": {"a": 1}}, cat=cat) is None
    assert "already exists" in refused("users", "create_index", "a", cat=cat)
    assert refused("fresh", "insert_one", {}, cat=cat) is None
    assert refused("fresh", "create_index", "a", cat=cat) is None  # created by the insert


def test_a_retried_step_forgets_what_its_last_try_wrote_to() -> None:
    cat = catalog({})
    refused("fresh", "insert_one", {}, cat=cat)
    cat.new_attempt()  # the last try rolled back: it created nothing
    cat.next_step()
    assert refused("fresh", "create_index", "a", cat=cat) is None


def test_a_bulk_write_refused_in_the_transaction_is_reported_like_a_refusal() -> None:
    # mongod may report the refusal as the batch's write error rather than the command's.
    watch = StepWatch(3, "down", catalog({}))
    server_says = "Collection 'shop.log' is a capped collection. Writing in a transaction..."
    bulk = BulkWriteError({"writeErrors": [
        {"index": 0, "code": NOT_IN_TRANSACTION_CODE, "errmsg": server_says}]})
    refused_error = watch.failed("shop", "log", "insert_many", bulk)
    assert refused_error is not None and refused_error is watch.refused
    assert str(refused_error).startswith(
        "Migration 3 down() runs in a transaction, and insert_many() on 'log' was refused by "
        f"MongoDB: {server_says}")
    assert watch.first_error is None
    duplicate = BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000"}]})
    assert StepWatch(3, "down", catalog({})).failed("shop", "log", "insert_many",
                                                     duplicate) is None


# -- on a real server: refused before anything is sent ------------------------------------------

class DropsInUp(Migration):
    """Drop the legacy collection (ported from the seed, where it ran outside a transaction)"""

    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"moved": True}})
        db.legacy.drop()


class IndexesExisting(Migration):
    """Index users by email"""

    version = 1

    def up(self, db: Any) -> None:
        db.users.create_index("email", unique=True)


@pytest.mark.parametrize("migration, call", [(DropsInUp, "drop() on 'legacy'"),
                                             (IndexesExisting, "create_index() on 'users'")])
def test_ddl_in_a_transaction_is_refused_naming_the_call_and_the_way_out(
    recorded_db: Any, recorder: CommandRecorder, migration: Any, call: str
) -> None:
    recorded_db.users.insert_one({"_id": 1, "email": "ada@example.com"})
    recorded_db.legacy.insert_one({"_id": 1})
    recorder.clear()

    with pytest.raises(MigrationDefinitionError) as error:
        Migrator(recorded_db, [migration]).upgrade()

    assert f"Migration 1 up() runs in a transaction, and {call}" in str(error.value)
    assert "transactional = False" in str(error.value.hint)
    assert "transactions-operations" in str(error.value.hint)  # the manual's page
    assert not recorder.filter("drop") and not recorder.filter("createIndexes")
    assert recorded_db.legacy.count_documents({}) == 1
    assert recorded_db.users.count_documents({"moved": True}) == 0  # rolled back
    assert recorded_db.migrations.find_one({"_id": 1})["status"] == "failed"
    # status must not promise that running it again helps: unchanged, it is refused again
    problem, refusal = Migrator(recorded_db, [migration]).validate()
    assert (problem.kind, refusal.kind) == ("failed", "refused_in_transaction")
    assert call in refusal.message  # found in the code, before running it again
    assert "Change the migration as the error says" in problem.hint
    assert "runs it again safely" not in problem.hint
    with pytest.raises(MigrationDefinitionError):
        Migrator(recorded_db, [migration]).upgrade()


class LogsToCapped(Migration):
    """Flag the users and log it in the capped audit log"""

    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"flagged": True}})
        db.audit.insert_one({"event": "flagged"})


@pytest.mark.parametrize("refused_by", ["server", "us"])
def test_a_write_to_a_capped_collection_is_refused_naming_the_way_out(
    recorded_db: Any, recorder: CommandRecorder, monkeypatch: pytest.MonkeyPatch,
    refused_by: str
) -> None:
    wire = recorded_db.client.admin.command("hello")["maxWireVersion"]
    if refused_by == "server" and wire < CREATE_IN_TRANSACTION_WIRE:
        pytest.skip("a server before MongoDB 4.4: the capped rule is enforced before sending")
    if refused_by == "us":  # MongoDB 4.2: the catalog is read, the write is never sent
        monkeypatch.setattr(Capabilities, "wire_version", lambda self: 8)
    recorded_db.create_collection("audit", capped=True, size=4096)
    recorded_db.users.insert_one({"_id": 1})
    recorder.clear()

    with pytest.raises(MigrationDefinitionError) as error:
        Migrator(recorded_db, [LogsToCapped]).upgrade()

    message = str(error.value)
    assert error.value.version == 1
    assert "Migration 1 up() runs in a transaction, and insert_one()" in message
    assert "'audit'" in message and "capped collection" in message
    assert "transactional = False" in str(error.value.hint)
    sent = [c for c in recorder if c.collection == "audit"]
    if refused_by == "server":
        assert "was refused by MongoDB: Collection" in message
        assert isinstance(error.value.__cause__, OperationFailure)
        assert error.value.__cause__.code == NOT_IN_TRANSACTION_CODE
        assert not recorder.filter("listCollections") and len(sent) == 1
    else:
        assert "nothing was sent" in message
        assert len(recorder.filter("listCollections")) == 1 and sent == []
    assert recorded_db.audit.count_documents({}) == 0
    assert recorded_db.users.count_documents({"flagged": True}) == 0  # rolled back
    assert recorded_db.migrations.find_one({"_id": 1})["status"] == "failed"
    assert Migrator(recorded_db, [LogsToCapped]).current_version() == 0


def test_a_caught_refusal_by_the_server_is_still_reported(db: Any) -> None:
    if db.client.admin.command("hello")["maxWireVersion"] < CREATE_IN_TRANSACTION_WIRE:
        pytest.skip("a server before MongoDB 4.4: the capped rule is enforced before sending")

    class SeedStyleLog(Migration):
        def __init__(self) -> None:
            super().__init__(version=1, description="seed style: log, ignore failures")

        def up(self, db: Any) -> bool:
            db.users.insert_many([{"_id": "a"}, {"_id": "b"}])
            with contextlib.suppress(Exception):  # "the audit log is best effort"
                db.audit.insert_many([{"event": "seeded"}])
            return True

    db.create_collection("audit", capped=True, size=4096)
    with pytest.raises(MigrationDefinitionError,
                       match=r"insert_many\(\) on 'audit' was refused by MongoDB"):
        Migrator(db, [SeedStyleLog()]).upgrade()
    assert db.users.count_documents({}) == 0 and db.audit.count_documents({}) == 0


def test_the_same_migration_runs_when_it_says_transactional_false(db: Any) -> None:
    class DropsOutsideATransaction(DropsInUp):
        transactional = False

    db.legacy.insert_one({"_id": 1})
    assert Migrator(db, [DropsOutsideATransaction]).upgrade().versions == [1]
    assert "legacy" not in db.list_collection_names()


def test_a_caught_refusal_is_still_reported(db: Any) -> None:
    class SeedStyle(Migration):
        def __init__(self) -> None:
            super().__init__(version=1, description="seed style: catch, log, return False")

        def up(self, db: Any) -> bool:
            try:
                db.legacy.drop()
                return True
            except Exception:
                return False

    with pytest.raises(MigrationDefinitionError, match=r"drop\(\) on 'legacy'"):
        Migrator(db, [SeedStyle()]).upgrade()


# -- swallowed errors ------------------------------------------------------------------------

class InsertIgnoreDuplicates(Migration):
    """Seed the plans (the seed's 'insert, ignore duplicates')"""

    version = 1

    def up(self, db: Any) -> bool:
        # "Already there" is fine outside a transaction, fatal inside one.
        with contextlib.suppress(BulkWriteError):
            db.plans.insert_many([{"_id": "free"}, {"_id": "pro"}], ordered=False)
        db.plans.update_many({}, {"$set": {"active": True}})
        return True


def test_an_error_caught_inside_the_transaction_is_named(db: Any) -> None:
    db.plans.insert_one({"_id": "free"})

    with pytest.raises(MigrationFailedError) as error:
        Migrator(db, [InsertIgnoreDuplicates]).upgrade()

    message = str(error.value)
    assert "Migration 1 up() caught" in message
    assert "BulkWriteError (code 65) from plans.insert_many()" in message
    assert "aborted the transaction on the server" in message
    assert "transactional = False" in error.value.hint
    assert db.plans.count_documents({"active": True}) == 0


# -- a failed transactional down -------------------------------------------------------------

class Reversible(Migration):
    """Add the active flag"""

    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"active": True}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$unset": {"active": ""}})
        if db.switches.find_one({"_id": "down_fails"}):
            raise RuntimeError("cannot revert yet")


class Second(Migration):
    """Second step"""

    version = 2

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"second": True}})

    def down(self, db: Any) -> None:
        db.users.update_many({}, {"$unset": {"second": ""}})


def test_a_failed_transactional_down_leaves_the_version_applied(db: Any) -> None:
    db.users.insert_many([{"_id": 1}, {"_id": 2}])
    migrator = Migrator(db, [Reversible])
    migrator.upgrade()
    db.switches.insert_one({"_id": "down_fails"})

    with pytest.raises(MigrationFailedError) as error:
        migrator.downgrade(0)

    assert "version 1 is still applied" in error.value.hint
    assert db.users.count_documents({"active": True}) == 2  # rolled back
    assert migrator.current_version() == 1
    [row] = migrator.status()
    assert row.status == "applied"
    assert row.last_error is not None and row.last_error.direction == "down"
    assert "cannot revert yet" in row.last_error.message
    assert migrator.validate() == []
    assert migrator.plan().steps == []  # up has nothing to do
    assert [s.version for s in migrator.plan(0).steps] == [1]  # down would retry it
    with_second = Migrator(db, [Reversible, Second])
    assert with_second.upgrade().versions == [2]  # 1 -> 2, v1 not re-run
    assert [h.status for h in migrator.history(1)][:2] == ["failed", "applied"]

    db.switches.delete_many({})
    assert with_second.downgrade(0).versions == [2, 1]  # the next down retries it
    assert db.users.count_documents({"active": True}) == 0
    assert with_second.status()[0].last_error is None


def test_a_rolled_back_failure_whose_file_is_gone_is_not_called_half_applied(db: Any) -> None:
    class Fails(Migration):
        """Fails in its transaction"""

        version = 1

        def up(self, db: Any) -> None:
            db.users.insert_one({"_id": 1})
            raise RuntimeError("no")

    with pytest.raises(MigrationFailedError):
        Migrator(db, [Fails]).upgrade()
    [problem] = Migrator(db, []).validate()
    assert "nothing of it was written" in problem.hint
    assert "half applied" not in problem.hint


def test_a_failed_version_whose_file_is_gone_is_not_pending(
    db: Any, mongo_uri: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_migrations(tmp_path / "migrations", {
        "0001_users.py": '"""Users"""\n\ndef up(db):\n    db.users.insert_one({"_id": 1})\n',
        "0002_fails.py": '"""Fails"""\n\ndef up(db):\n    raise RuntimeError("no")\n',
    })
    argv = ["--uri", mongo_uri, "--database", db.name, "--migrations", str(directory)]
    assert main(["up", *argv]) == 1
    (directory / "0002_fails.py").unlink()
    capsys.readouterr()

    assert main(["status", "--json", *argv]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending"] == []  # `up` has nothing it could run
    assert [p["version"] for p in status["problems"]] == [2]  # but the attempt is reported
    assert main(["up", *argv]) == 0
    assert "Nothing to do" in capsys.readouterr().out

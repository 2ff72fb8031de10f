"""Writes through the app's own data layer inside a transactional migration: on pymongo 4.17+
they join the transaction (``ClientSession.bind``); before, they commit on their own, and
the failure, the record and ``status`` say which collections got them, and the transaction
is never run again automatically (docs/compatibility.md has the table)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator

import pytest
from pymongo import MongoClient
from support import client_options, failpoint

from analytiq_migrations import Migration, MigrationError, MigrationFailedError, Migrator
from analytiq_migrations.dbproxy import HAS_BIND
from analytiq_migrations.outside import LISTENER, OutsideWritesError

needs_bind = pytest.mark.skipif(not HAS_BIND, reason="pymongo 4.17+ joins the app's writes")
before_bind = pytest.mark.skipif(HAS_BIND, reason="pymongo 4.17+ joins the app's writes")


def writes_then_raises(outside: Callable[[Any], Any]) -> type:
    """Migration 1: one write through ``db``, one through ``outside(db)``'s collection, then
    an error."""

    class WritesThenRaises(Migration):
        version = 1
        description = "Audit the users"

        def up(self, db: Any) -> None:
            db.users.insert_one({"_id": "through-db"})
            outside(db).insert_one({"_id": "through-the-app"})
            raise RuntimeError("boom")

    return WritesThenRaises


def expect_joined_or_reported(db: Any, migrator: Migrator, commands: str = "1 write command"
                              ) -> None:
    """The migration of ``writes_then_raises`` on this pymongo: with bind() nothing persists;
    without, the app's write persists and the failure, record, history and status say so."""
    with pytest.raises(MigrationFailedError) as caught:
        migrator.upgrade()
    message = str(caught.value)
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "failed"
    assert db.users.count_documents({}) == 0  # through db: rolled back on every pymongo
    assert "RuntimeError: boom" in message
    if HAS_BIND:
        assert db.audit.count_documents({}) == 0
        assert "nothing of it was written" in message
        assert "outside_writes" not in record
        return
    assert isinstance(caught.value, OutsideWritesError)
    assert db.audit.count_documents({}) == 1  # the app's write committed on its own
    kept = f"{db.name}.audit ({commands})"
    assert kept in message
    assert "nothing of it was written" not in message
    assert f"Check {db.name}.audit before running it again" in message
    assert "transactional = False" in message
    assert record["outside_writes"] == [{"database": db.name, "collection": "audit",
                                         "commands": int(commands.split()[0])}]
    assert kept in record["error"]["message"]
    [row] = migrator.status()
    assert row.error is not None and kept in row.error.message
    [entry] = migrator.history(1)
    assert entry.model_dump()["outside_writes"] == record["outside_writes"]
    [problem] = migrator.validate()
    assert "writes it sent outside the transaction were kept" in problem.hint
    assert "safely" not in problem.hint
    # Never applied twice: the next run refuses it (the kept writes would be sent again)
    # and gives both ways out, instead of running the whole migration again.
    with pytest.raises(MigrationError) as again:
        migrator.upgrade()
    assert not isinstance(again.value, OutsideWritesError)
    assert "writes it sent outside the transaction were kept" in str(again.value)
    assert "fake=True" in str(again.value.hint) and "clear_failed" in str(again.value.hint)
    assert db.audit.count_documents({}) == 1


def test_db_client_on_the_same_client(db: Any) -> None:
    migration = writes_then_raises(lambda d: d.client[d.name].audit)
    expect_joined_or_reported(db, Migrator(db, [migration]))


def test_a_module_level_get_db_as_django_projects_have(db: Any, mongo_uri: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The test project's own data layer (what ANALYTIQ_MIGRATIONS["CLIENT"] names); plain
    # pymongo, so it runs without Django.
    path = Path(__file__).parent / "django_project" / "testsite" / "mongo.py"
    spec = importlib.util.spec_from_file_location("testsite_mongo_scope", path)
    assert spec is not None and spec.loader is not None
    mongo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mongo)
    monkeypatch.setenv("TESTSITE_APP_URI", mongo_uri)
    monkeypatch.setenv("TESTSITE_APP_DATABASE", db.name)
    try:
        project_db = mongo.get_db()
        migration = writes_then_raises(lambda d: mongo.get_db().audit)
        expect_joined_or_reported(db, Migrator(project_db, [migration]))
    finally:
        mongo._client.close()


@pytest.fixture
def flask_pymongo(mongo_uri: str, db: Any) -> Iterator[Any]:
    """A Flask-PyMongo extension on a Flask app, on the test database."""
    flask = pytest.importorskip("flask")
    pytest.importorskip("flask_pymongo")
    from flask_pymongo import PyMongo

    base, _, query = mongo_uri.partition("?")
    app = flask.Flask("shop")
    mongo = PyMongo(app, uri=f"{base.rstrip('/')}/{db.name}" + (f"?{query}" if query else ""))
    with app.app_context():
        yield mongo
    mongo.cx.close()


def test_flask_pymongo(flask_pymongo: Any, db: Any) -> None:
    migration = writes_then_raises(lambda d: flask_pymongo.db.audit)
    expect_joined_or_reported(db, Migrator(flask_pymongo.cx, [migration], database=db.name))


@pytest.fixture
def mongoengine_audit(mongo_uri: str, db: Any) -> Iterator[Any]:
    """A MongoEngine document on collection ``audit``, connected to the test database."""
    mongoengine = pytest.importorskip("mongoengine")
    mongoengine.connect(db=db.name, host=mongo_uri, uuidRepresentation="standard")

    class Audit(mongoengine.Document):
        id = mongoengine.StringField(primary_key=True)
        meta: ClassVar[Dict[str, Any]] = {"collection": "audit"}

    try:
        yield Audit
    finally:
        mongoengine.disconnect_all()


class _Saves:
    """``insert_one`` as a MongoEngine ``save()`` of a new document."""

    def __init__(self, document: Any) -> None:
        self.document = document

    def insert_one(self, doc: Any) -> None:
        self.document(id=doc["_id"]).save()


def test_mongoengine_documents(mongoengine_audit: Any, db: Any) -> None:
    import mongoengine

    migration = writes_then_raises(lambda d: _Saves(mongoengine_audit))
    # save() of a new document with its id: find_one_and_replace, then insert_one
    expect_joined_or_reported(db, Migrator(mongoengine.get_db(), [migration]),
                              commands="2 write commands")


@before_bind
def test_a_raw_second_client_before_pymongo_4_17(db: Any, mongo_uri: str) -> None:
    second: Any = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        migration = writes_then_raises(lambda d: second[d.name].audit)
        expect_joined_or_reported(db, Migrator(db, [migration]))
    finally:
        second.close()


@needs_bind
def test_a_raw_second_client_is_refused_by_pymongo_4_17(db: Any, mongo_uri: str) -> None:
    second: Any = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        migration = writes_then_raises(lambda d: second[d.name].audit)
        with pytest.raises(MigrationFailedError, match="used another MongoClient"):
            Migrator(db, [migration]).upgrade()
        assert db.audit.count_documents({}) == 0
    finally:
        second.close()


def test_a_client_created_before_the_library_is_watched_too(db: Any, mongo_uri: str) -> None:
    client: Any = MongoClient(mongo_uri, **client_options(mongo_uri))
    try:
        # As if created before analytiq_migrations was imported: without its listener.
        commands = client._event_listeners._EventListeners__command_listeners
        commands.remove(LISTENER)
        client._event_listeners._EventListeners__enabled_for_commands = bool(commands)
        migration = writes_then_raises(lambda d: d.client[d.name].audit)
        expect_joined_or_reported(db, Migrator(client[db.name], [migration]))
    finally:
        client.close()


# -- no automatic retry after a write outside the transaction ---------------------------------

class BumpsTheCounterOutsideThenInside(Migration):
    """The issue's case: an app write to a document, then a ``db`` write to the same one."""

    version = 1
    description = "Count the plans"

    def up(self, db: Any) -> None:
        db.client[db.name].counters.update_one({"_id": "plans"}, {"$inc": {"n": 1}})
        db.counters.update_one({"_id": "plans"}, {"$set": {"checked": True}})
        raise RuntimeError("boom")


def test_a_write_conflict_with_its_own_outside_write_is_named_not_retried(db: Any) -> None:
    db.counters.insert_one({"_id": "plans", "n": 0})
    with pytest.raises(MigrationFailedError) as caught:
        Migrator(db, [BumpsTheCounterOutsideThenInside]).upgrade()
    counter = db.counters.find_one({"_id": "plans"})
    if HAS_BIND:  # both writes joined: no conflict, and the error rolled both back
        assert counter == {"_id": "plans", "n": 0}
        assert "RuntimeError: boom" in str(caught.value)
        return
    assert counter == {"_id": "plans", "n": 1}  # moved once: the body ran once
    message = str(caught.value)
    assert "hit a write conflict (WriteConflict, code 112), most likely with its own write " \
        f"outside the transaction ({db.name}.counters (1 write command))" in message
    assert "not run again" in message
    assert "transactional = False" in message
    record = db.migrations.find_one({"_id": 1})
    assert record["attempts"] == 1
    assert record["outside_writes"] == [{"database": db.name, "collection": "counters",
                                         "commands": 1}]


def test_a_successful_step_with_outside_writes_is_logged(db: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    class Commits(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.client[db.name].audit.insert_one({"_id": 1})

    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    Migrator(db, [Commits]).upgrade()
    warned = [r.getMessage() for r in caplog.records if "outside its transaction" in
              r.getMessage()]
    joins = [r.getMessage() for r in caplog.records if "has no ClientSession.bind" in
             r.getMessage()]
    if HAS_BIND:
        assert warned == [] and joins == []
    else:
        assert warned == [f"Migration 1 (Commits) up() committed, but these writes were sent "
                          f"outside its transaction (not atomic with it): {db.name}.audit "
                          "(1 write command)"]
        assert len(joins) == 1 and "only `db` and the handles it hands out" in joins[0]
    assert "outside_writes" not in db.migrations.find_one({"_id": 1})


def test_writes_in_other_threads_and_reads_are_not_counted(db: Any) -> None:
    import threading

    class ReadsOutside(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.client[db.name].users.find_one({})  # a read: nothing to report
            other = threading.Thread(target=lambda: db.client[db.name].side.insert_one({}))
            other.start()  # another thread: not the step's (a heartbeat, the app's requests)
            other.join()
            raise RuntimeError("boom")

    with pytest.raises(MigrationFailedError) as caught:
        Migrator(db, [ReadsOutside]).upgrade()
    assert not isinstance(caught.value, OutsideWritesError)
    assert "outside_writes" not in db.migrations.find_one({"_id": 1})


class BumpsOutsideThenDeletes(Migration):
    """An app write, then a ``db`` write that meets a transient error."""

    version = 1
    description = "Count, then clean"

    def up(self, db: Any) -> None:
        db.client[db.name].counters.update_one({"_id": "plans"}, {"$inc": {"n": 1}})
        db.users.delete_one({"_id": "gone"})


def test_a_transient_error_after_an_outside_write_is_not_retried(db: Any) -> None:
    db.counters.insert_one({"_id": "plans", "n": 0})
    transient = {"failCommands": ["delete"], "errorCode": 112,
                 "errorLabels": ["TransientTransactionError"]}
    with failpoint(db.client, {"times": 1}, transient):
        if HAS_BIND:  # everything joined: retried, and the counter moved in the one commit
            Migrator(db, [BumpsOutsideThenDeletes]).upgrade()
        else:
            with pytest.raises(OutsideWritesError, match="not run again"):
                Migrator(db, [BumpsOutsideThenDeletes]).upgrade()
    assert db.counters.find_one({"_id": "plans"})["n"] == 1


def test_a_transient_commit_failure_after_an_outside_write_is_not_retried(db: Any) -> None:
    db.counters.insert_one({"_id": "plans", "n": 0})
    transient = {"failCommands": ["commitTransaction"], "errorCode": 251,
                 "errorLabels": ["TransientTransactionError"]}
    with failpoint(db.client, {"times": 1}, transient):
        if HAS_BIND:
            Migrator(db, [BumpsOutsideThenDeletes]).upgrade()
        else:
            with pytest.raises(OutsideWritesError) as caught:
                Migrator(db, [BumpsOutsideThenDeletes]).upgrade()
            assert "its transaction failed with a transient error and would run again, but " \
                "writes it sent outside the transaction were kept: " \
                f"{db.name}.counters (1 write command). Not run again" in str(caught.value)
    assert db.counters.find_one({"_id": "plans"})["n"] == 1


def test_a_refusal_after_an_outside_write_keeps_its_way_out_and_exit_code(db: Any) -> None:
    class WritesThenDrops(Migration):
        version = 1
        description = "Audit, then drop"

        def up(self, db: Any) -> None:
            db.client[db.name].audit.insert_one({"_id": 1})
            db.users.drop()  # refused before sending: a transaction cannot drop

    with pytest.raises(MigrationError) as caught:
        Migrator(db, [WritesThenDrops]).upgrade()
    message = str(caught.value)
    assert "drop() on 'users' sends drop, which cannot run in a transaction" in message
    assert "Declare the migration `transactional = False`" in message
    assert caught.value.exit_code == 2  # still a definition problem
    if HAS_BIND:
        assert db.audit.count_documents({}) == 0
    else:
        assert f"were kept: {db.name}.audit (1 write command)" in message
        assert db.audit.count_documents({}) == 1

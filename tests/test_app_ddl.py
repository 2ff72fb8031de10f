"""Index builds and DDL the app's data layer sends inside a transactional migration: MongoEngine's
automatic index creation is held back for the step (built on the model's next use, outside
a transaction); any other is refused before sending when it cannot be part of the
transaction. SecantusDB accepts index builds in a transaction (mongod refuses them on
existing collections, code 263), so these tests read the commands sent."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Dict, Iterator, List

import pytest
from support import CommandRecorder

from analytiq_migrations import Migration, MigrationDefinitionError, Migrator
from analytiq_migrations.dbproxy import HAS_BIND

mongoengine = pytest.importorskip("mongoengine")


class Customer(mongoengine.Document):
    """A model with indexes, as real ones have."""

    id = mongoengine.StringField(primary_key=True)
    name = mongoengine.StringField()
    email = mongoengine.StringField()
    meta: ClassVar[Dict[str, Any]] = {"collection": "customers",
                                      "indexes": ["name", {"fields": ["email"]}]}


@pytest.fixture
def connected(mongo_uri: str, db: Any, recorder: CommandRecorder) -> Iterator[Any]:
    """MongoEngine connected to the test database (its client recorded); the database handle
    the migrations run on is that client's."""
    mongoengine.connect(db=db.name, host=mongo_uri, uuidRepresentation="standard",
                        event_listeners=[recorder])
    Customer._collection = None  # a fresh process: the model's first use is yet to come
    try:
        yield mongoengine.get_db()
    finally:
        mongoengine.disconnect_all()
        Customer._collection = None


def index_builds(recorder: CommandRecorder) -> List[Any]:
    return [e for e in recorder.commands if e.name == "createIndexes"]


class SavesACustomer(Migration):
    version = 1
    description = "Add the first customer"

    def up(self, db: Any) -> None:
        Customer(id="ada", name="Ada").save()  # the model's first use in the process
        db.users.insert_one({"_id": "through-db"})


def test_automatic_index_creation_is_held_back_and_runs_on_next_use(
        connected: Any, db: Any, recorder: CommandRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    db.customers.insert_one({"_id": "existing", "name": "Grace"})  # existing, not empty
    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    recorder.clear()
    Migrator(connected, [SavesACustomer]).upgrade()
    assert index_builds(recorder) == []  # nothing sent during the step
    held = [r.getMessage() for r in caplog.records if "held back" in r.getMessage()]
    assert held == ["Migration 1: MongoEngine's automatic index creation for Customer "
                    "(collection 'customers') is held back during its transaction (MongoDB "
                    "builds no index on an existing collection in one); MongoEngine builds "
                    "them on the model's next use, outside a transaction"]
    # The model's next use, outside the transaction, builds them.
    assert Customer.objects(name="Ada").count() == 1
    builds = index_builds(recorder)
    assert len(builds) == 2 and not any(b.in_transaction for b in builds)  # one per index
    assert {"name_1", "email_1"} <= set(db.customers.index_information())


def test_held_back_when_the_migration_fails_too(connected: Any, db: Any,
                                                recorder: CommandRecorder) -> None:
    class SavesThenFails(Migration):
        version = 1

        def up(self, db: Any) -> None:
            Customer(id="ada", name="Ada").save()
            raise RuntimeError("boom")

    db.customers.insert_one({"_id": "existing"})
    recorder.clear()
    with pytest.raises(Exception, match="boom"):
        Migrator(connected, [SavesThenFails]).upgrade()
    assert index_builds(recorder) == []
    Customer.objects.first()
    assert len(index_builds(recorder)) == 2


def test_an_explicit_ensure_indexes_is_refused_naming_the_model(
        connected: Any, db: Any, recorder: CommandRecorder) -> None:
    class BuildsIndexes(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.users.insert_one({"_id": 1})
            Customer.ensure_indexes()

    db.customers.insert_one({"_id": "existing"})
    recorder.clear()
    with pytest.raises(MigrationDefinitionError) as caught:
        Migrator(connected, [BuildsIndexes]).upgrade()
    message = str(caught.value)
    assert "Migration 1 up() runs in a transaction, and the app's data layer (MongoEngine " \
        "model Customer) sent an index build or DDL: create_index" in message
    assert "nothing was sent" in message
    assert "Run `Customer.ensure_indexes()` outside the transaction" in message
    assert "transactional = False" in message
    assert index_builds(recorder) == []
    assert db.users.count_documents({}) == 0


def test_app_ddl_through_db_client_is_refused_or_joins(connected: Any, db: Any,
                                                       recorder: CommandRecorder) -> None:
    class Reindexes(Migration):
        version = 1

        def up(self, db: Any) -> None:
            db.client[db.name].fresh.create_index("k")  # a new collection
            db.client[db.name].customers.create_index("k")  # an existing one

    db.customers.insert_one({"_id": "existing"})
    recorder.clear()
    with pytest.raises(MigrationDefinitionError) as caught:
        Migrator(connected, [Reindexes]).upgrade()
    builds = index_builds(recorder)
    if HAS_BIND:  # the first joins (allowed on a collection the transaction creates)
        assert [b.command["createIndexes"] for b in builds] == ["fresh"]
        assert builds[0].in_transaction
        assert "the collection already exists" in str(caught.value)
    else:  # neither can take the session
        assert builds == []
        assert "create_index() on 'fresh' cannot take the transaction's session" \
            in str(caught.value)
    assert "fresh" not in db.list_collection_names()


def test_outside_a_step_the_apps_ddl_is_untouched(connected: Any, db: Any,
                                                  recorder: CommandRecorder) -> None:
    Migrator(connected, [SavesACustomer]).upgrade()  # installs the wrappers
    connected.plain.create_index("k")
    connected.plain.drop()
    assert [e.name for e in recorder.commands if e.collection == "plain"] == \
        ["createIndexes", "drop"]

"""Every call on ``db`` and on the handles it hands out joins the step's session, or is
refused before anything is sent: pymongo 3's legacy CRUD, ``create_collection``'s result,
``session=None`` passed explicitly, on every pymongo line (docs/compatibility.md)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pymongo
import pytest
from pymongo.collection import Collection
from pymongo.database import Database

from analytiq_migrations import Migration, MigrationDefinitionError, Migrator
from analytiq_migrations.dbproxy import (
    LEGACY_REPLACEMENTS,
    SessionCollection,
    SessionDatabase,
    session_database,
)

PYMONGO_3 = pymongo.version_tuple[0] == 3
needs_pymongo_3 = pytest.mark.skipif(not PYMONGO_3, reason="pymongo 4 removed the legacy API")


def migration(body: Callable[[Any], Any]) -> type:
    """A transactional migration, version 1, whose ``up`` runs ``body(db)``."""

    class Body(Migration):
        version = 1
        description = "Writes, then more"

        def up(self, db: Any) -> None:
            body(db)

    return Body


# -- 1. pymongo 3's legacy CRUD: refused before sending ----------------------------------------

LEGACY_CALLS = {
    "insert": lambda c: c.insert({"_id": "legacy"}),
    "update": lambda c: c.update({"_id": 1}, {"$set": {"x": 1}}),
    "save": lambda c: c.save({"_id": "legacy"}),
    "remove": lambda c: c.remove({"_id": 1}),
    "find_and_modify": lambda c: c.find_and_modify({"_id": 1}, {"$set": {"x": 1}}),
    "initialize_ordered_bulk_op": lambda c: c.initialize_ordered_bulk_op(),
    "initialize_unordered_bulk_op": lambda c: c.initialize_unordered_bulk_op(),
}


@needs_pymongo_3
@pytest.mark.parametrize("method", sorted(LEGACY_CALLS))
def test_legacy_crud_is_refused_before_anything_is_sent(recorded_db: Any, recorder: Any,
                                                        method: str) -> None:
    recorded_db.users.insert_one({"_id": 1})

    def body(db: Any) -> None:
        db.users.insert_one({"_id": "in-the-transaction"})
        LEGACY_CALLS[method](db.users)

    recorder.clear()
    with pytest.raises(MigrationDefinitionError) as caught:
        Migrator(recorded_db, [migration(body)]).upgrade()
    message = str(caught.value)
    assert f"Migration 1 up() runs in a transaction, and users.{method}() (pymongo 3's " \
        "legacy API) cannot take the transaction's session" in message
    assert "nothing was sent" in message
    assert f"Use {LEGACY_REPLACEMENTS[method]}" in message
    assert "transactional = False" in message
    # Nothing of the legacy call reached the server; the transaction rolled back.
    sent = [e for e in recorder.commands if e.collection == "users"]
    assert [e.name for e in sent] == ["insert"] and sent[0].in_transaction
    assert sorted(d["_id"] for d in recorded_db.users.find()) == [1]
    assert recorded_db.migrations.find_one({"_id": 1})["status"] == "failed"


@needs_pymongo_3
def test_legacy_calls_through_every_handle_are_refused(db: Any) -> None:
    def body(db: Any) -> None:
        db.create_collection("fresh").insert({"_id": 1})

    with pytest.raises(MigrationDefinitionError, match=r"fresh\.insert\(\)"):
        Migrator(db, [migration(body)]).upgrade()
    assert "fresh" not in db.list_collection_names()


def test_every_method_of_the_installed_pymongo_joins_or_is_refused(db: Any) -> None:
    # Whatever this pymongo's Collection and Database offer: a proxied method that adds the
    # session, one that refuses, or one that sends nothing (handles, TypeError).
    local = {"with_options", "get_collection", "next", "add_son_manipulator"}
    for proxy, base in ((SessionCollection, Collection), (SessionDatabase, Database)):
        for name in dir(base):
            if name.startswith("_") or not callable(inspect.getattr_static(base, name)):
                continue
            if name in local:
                continue
            assert getattr(proxy, name) is not getattr(base, name), f"{base.__name__}.{name}"


@pytest.mark.skipif(PYMONGO_3, reason="pymongo 3 has the legacy methods")
def test_the_legacy_names_send_nothing_on_pymongo_4(recorded_db: Any, recorder: Any) -> None:
    def body(db: Any) -> None:
        db.users.insert({"_id": 1})  # a sub-collection named users.insert: not callable

    recorder.clear()
    with pytest.raises(Exception, match="not callable"):
        Migrator(recorded_db, [migration(body)]).upgrade()
    assert not [e for e in recorder.commands if e.name == "insert" and
                e.collection in ("users", "users.insert")]


# -- 2. create_collection's result joins -------------------------------------------------------

def test_create_collections_result_joins_the_transaction(recorded_db: Any,
                                                         recorder: Any) -> None:
    handles = []

    def body(db: Any) -> None:
        fresh = db.create_collection("fresh")
        handles.append(fresh)
        fresh.insert_one({"_id": "in-the-transaction"})
        raise RuntimeError("boom")

    recorder.clear()
    with pytest.raises(Exception, match="boom"):
        Migrator(recorded_db, [migration(body)]).upgrade()
    assert isinstance(handles[0], SessionCollection)
    [insert] = [e for e in recorder.commands if e.name == "insert" and e.collection == "fresh"]
    assert insert.in_transaction
    assert recorded_db.fresh.count_documents({}) == 0


# -- 3. session=None passed explicitly joins -----------------------------------------------------

def test_session_none_passed_explicitly_joins(recorded_db: Any, recorder: Any) -> None:
    # The proxy alone (no ClientSession.bind, as before pymongo 4.17): session=None must be
    # read as "not given".
    with recorded_db.client.start_session() as session:
        session.start_transaction()
        proxy = session_database(recorded_db, session)
        proxy.users.insert_one({"_id": 1}, session=None)
        proxy.users.update_one({"_id": 1}, {"$set": {"x": 1}}, session=None)
        assert proxy.users.find_one({"_id": 1}, session=None) == {"_id": 1, "x": 1}
        session.abort_transaction()
    sent = [e for e in recorder.commands if e.collection == "users"]
    assert [e.name for e in sent] == ["insert", "update", "find"]
    assert all(e.in_transaction for e in sent)
    assert recorded_db.users.count_documents({}) == 0


def test_session_none_in_a_migration_rolls_back(db: Any) -> None:
    def body(db: Any) -> None:
        db.users.insert_one({"_id": 1}, session=None)  # what ODMs and helper libraries do
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        Migrator(db, [migration(body)]).upgrade()
    assert db.users.count_documents({}) == 0

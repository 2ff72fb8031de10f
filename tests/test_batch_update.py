"""``Migration.batch_update``: large data changes in checkpointed batches.

What a team backfilling millions of documents relies on: every matching document is
changed once (even when the filter is on the field being changed), a killed run picks
up after its last checkpoint by itself, ``status`` shows how far it got, and mistakes
are refused before anything is written. Timings live in ``benchmarks/``, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

import pymongo
import pytest
from bson import ObjectId
from children import Children, children_for, write_migrations
from support import CommandRecorder, deadline, failpoint, wait_for

from analytiq_migrations import (
    Migration,
    MigrationDefinitionError,
    MigrationFailedError,
    Migrator,
    ProgressEvent,
    batch,
)
from analytiq_migrations.cli import main

#: The killed run's lease: short, so the next run does not wait long for it to expire.
DEAD_TTL = 2.0

#: How long the next run may wait for that lease; generous for a loaded CI machine.
NEXT_WAIT = 60.0

#: Upper bound on a run after a crash: blocking on the dead run's open transaction
#: fails the test instead of hanging it.
NEXT_RUN_TIMEOUT = 90


def seed(db: Any, n: int, **fields: Any) -> None:
    """``n`` documents ``{_id: i, n: 0, ...}`` in ``items``."""
    db.items.insert_many([{"_id": i, "n": 0, "kind": "even" if i % 2 == 0 else "odd",
                           **fields} for i in range(n)])


def counts(db: Any, collection: str = "items") -> dict[Any, int]:
    """``_id -> n`` for every document."""
    return {d["_id"]: d["n"] for d in db[collection].find({}, {"n": 1})}


def migration(body: Callable[[Migration, Any], Any], *, transactional: Any = False,
              version: int = 1) -> type[Migration]:
    """A migration class whose ``up`` is ``body(self, db)``."""

    class Backfill(Migration):
        description = "backfill items"

        def up(self, db: Any) -> None:
            body(self, db)

    Backfill.version = version
    Backfill.transactional = transactional
    return Backfill


def history(db: Any, version: int = 1) -> list[str]:
    """Outcomes of ``version``'s attempts, oldest first."""
    return [h["status"] for h in db.migrations_history.find({"version": version})
            .sort([("started_at", 1), ("finished_at", 1)])]


# -- the three kinds of update ---------------------------------------------------------------


def test_a_static_update_changes_the_matching_documents_and_returns_how_many(db: Any) -> None:
    seed(db, 250)
    changed: list[int] = []
    m = migration(lambda self, db: changed.append(
        self.batch_update("items", {"kind": "even"}, {"$inc": {"n": 1}}, batch_size=40)))

    Migrator(db, [m]).upgrade()

    assert changed == [125]
    assert counts(db) == {i: 1 if i % 2 == 0 else 0 for i in range(250)}
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "applied" and record["progress"] is None


def test_an_update_pipeline_can_compute_from_the_document(db: Any) -> None:
    db.items.insert_many([{"_id": i, "first": f"Ada{i}", "last": "Lovelace"} for i in range(90)])
    m = migration(lambda self, db: self.batch_update(
        db.items, {}, [{"$set": {"full": {"$concat": ["$first", " ", "$last"]}}}],
        batch_size=25))

    Migrator(db, [m]).upgrade()

    assert {d["_id"]: d["full"] for d in db.items.find()} == {
        i: f"Ada{i} Lovelace" for i in range(90)}


def test_a_function_update_decides_per_document_and_none_leaves_it_alone(db: Any) -> None:
    seed(db, 100)
    changed: list[int] = []

    def score(doc: dict[str, Any]) -> Any:
        return None if doc["_id"] % 10 == 0 else {"$set": {"score": doc["_id"] * 2}}

    m = migration(lambda self, db: changed.append(
        self.batch_update("items", {}, score, batch_size=30)))
    Migrator(db, [m]).upgrade()

    assert changed == [90]
    docs = {d["_id"]: d for d in db.items.find()}
    assert all("score" not in docs[i] for i in range(0, 100, 10))
    assert all(docs[i]["score"] == i * 2 for i in range(100) if i % 10)


def test_documents_a_function_gives_the_same_change_share_statements(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    db = recorded_db
    seed(db, 100)

    def plan(doc: dict[str, Any]) -> Any:
        if doc["_id"] % 10 == 0:
            return None  # left alone
        if doc["_id"] % 10 == 5:
            return {"$set": {"plan": f"custom-{doc['_id']}"}}  # a change of its own
        return {"$set": {"plan": doc["kind"]}}  # one of two changes shared by many

    m = migration(lambda self, db: self.batch_update("items", {}, plan, batch_size=50))
    recorder.clear()
    Migrator(db, [m]).upgrade()

    plans = {d["_id"]: d.get("plan") for d in db.items.find()}
    assert plans == {i: None if i % 10 == 0 else f"custom-{i}" if i % 10 == 5 else
                     ("even" if i % 2 == 0 else "odd") for i in range(100)}
    statements = [u for c in recorder.filter("update") if c.command.get("update") == "items"
                  for u in c.command["updates"]]
    # Per batch of 50: 5 left alone, 5 changes of their own, 20 "even" and 20 "odd"
    # (IDS_PER_STATEMENT a statement): 5 + 2 + 2 statements, instead of 45.
    per_batch = 5 + 2 * -(-20 // batch.IDS_PER_STATEMENT)
    assert len(statements) == 2 * per_batch
    assert sorted(len(u["q"]["_id"]["$in"]) for u in statements if u["multi"]) == \
        [batch.IDS_PER_STATEMENT] * (2 * per_batch - 10)


@pytest.mark.parametrize("update, per", [
    ({"$inc": {"n": 1}}, batch.IDS_PER_STATEMENT),
    ([{"$set": {"n": {"$add": ["$n", 1]}}}], batch.IDS_PER_PIPELINE_STATEMENT)])
def test_static_updates_and_pipelines_name_a_few_ids_per_statement(
    recorded_db: Any, recorder: CommandRecorder, update: Any, per: int
) -> None:
    db = recorded_db
    seed(db, 120)
    m = migration(lambda self, db: self.batch_update("items", {}, update, batch_size=60))
    recorder.clear()
    Migrator(db, [m]).upgrade()

    assert set(counts(db).values()) == {1}
    statements = [u for c in recorder.filter("update") if c.command.get("update") == "items"
                  for u in c.command["updates"]]
    assert [len(u["q"]["_id"]["$in"]) for u in statements] == [per] * (120 // per)


@pytest.mark.parametrize("kind", ["static", "function"])
def test_a_filter_on_the_field_being_changed_visits_each_document_once(
    db: Any, kind: str
) -> None:
    # Re-running the filter from the start after each batch would find every document
    # again (level 0 -> 5 -> 10); the walk by _id never looks back.
    db.items.insert_many([{"_id": i, "level": 0, "n": 0} for i in range(120)])
    update: Any = {"$inc": {"level": 5, "n": 1}}
    if kind == "function":
        update = lambda doc: {"$inc": {"level": 5, "n": 1}}  # noqa: E731
    m = migration(lambda self, db: self.batch_update(
        "items", {"level": {"$lt": 10}}, update, batch_size=16))

    Migrator(db, [m]).upgrade()

    assert {(d["level"], d["n"]) for d in db.items.find()} == {(5, 1)}


@pytest.mark.parametrize("update", [{"$inc": {"level": 5, "n": 1}},
                                    [{"$set": {"level": {"$add": ["$level", 5]},
                                               "n": {"$add": ["$n", 1]}}}]])
def test_where_the_server_serves_id_ranges_from_the_index_each_batch_is_one_range(
    recorded_db: Any, recorder: CommandRecorder, monkeypatch: pytest.MonkeyPatch, update: Any
) -> None:
    # MongoDB answers {_id: {$gte, $lte}} from the _id index; SecantusDB scans (it gets
    # $in lists, see batch._serves_id_ranges), so the range path is forced here.
    db = recorded_db
    ids: list[Any] = [*range(100), "a", "b", "c", ObjectId(), ObjectId()]
    db.items.insert_many([{"_id": i, "level": 0, "n": 0} for i in ids])
    monkeypatch.setattr(batch, "_serves_id_ranges", lambda coll, query: True)
    m = migration(lambda self, db: self.batch_update(
        "items", {"level": {"$lt": 10}}, update, batch_size=16))
    recorder.clear()

    Migrator(db, [m]).upgrade()

    assert [(d["level"], d["n"]) for d in db.items.find()] == [(5, 1)] * len(ids)
    statements = [u for c in recorder.filter("update") if c.command.get("update") == "items"
                  for u in c.command["updates"]]
    # 7 batches of 16: six of ints, one range each; the last mixes ints, strings and
    # ObjectIds (a range matches one BSON type only), so it names its _ids instead.
    ranged = [u for u in statements if "$gte" in str(u["q"])]
    assert len(ranged) == 6 and len(statements) == 6 + 1 and all(u["multi"] for u in statements)


def test_several_calls_in_one_migration_each_keep_their_own_checkpoint(db: Any) -> None:
    seed(db, 30)
    db.orders.insert_many([{"_id": i, "n": 0} for i in range(20)])
    m = migration(lambda self, db: (
        self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=7),
        self.batch_update("orders", {}, {"$inc": {"n": 1}}, batch_size=7)))

    Migrator(db, [m]).upgrade()

    assert set(counts(db).values()) == {1} and set(counts(db, "orders").values()) == {1}


# -- transactions and checkpoints ---------------------------------------------------------------


def test_each_batch_commits_together_with_its_checkpoint(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    seed(recorded_db, 100)
    m = migration(lambda self, db: self.batch_update(
        "items", {}, {"$inc": {"n": 1}}, batch_size=25))
    recorder.clear()

    Migrator(recorded_db, [m]).upgrade()

    transactions: dict[Any, list[str]] = {}
    for c in recorder.in_transaction():
        key = (c.session_id, c.txn_number)
        transactions.setdefault(key, []).append(
            f"{c.name} {c.collection or ''}".strip())
    with_items = [names for names in transactions.values() if "update items" in names]
    assert len(with_items) == 4  # one transaction per batch of 25
    for names in with_items:
        # the lease re-check, the batch, its checkpoint, committed as one
        assert names == ["update migration_lock", "update items", "update migrations",
                         "commitTransaction"]
    # The walk is one cursor read outside the transactions: no batch re-queries.
    finds = [c for c in recorder.filter("find") if c.collection == "items"]
    assert len(finds) == 1 and not finds[0].in_transaction
    assert set(counts(recorded_db).values()) == {1}


def test_progress_hook_hears_of_every_batch(db: Any) -> None:
    seed(db, 100)
    events: list[ProgressEvent] = []
    m = migration(lambda self, db: self.batch_update(
        "items", {"kind": "odd"}, {"$inc": {"n": 1}}, batch_size=20))

    Migrator(db, [m], progress=events.append).upgrade()

    assert [(e.scanned, e.modified, e.batches, e.done) for e in events] == [
        (20, 20, 1, False), (40, 40, 2, False), (50, 50, 3, False), (50, 50, 3, True)]
    assert {(e.version, e.collection, e.total) for e in events} == {(1, "items", 50)}


def test_a_broken_progress_hook_does_not_stop_the_migration(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db, 10)

    def broken(event: ProgressEvent) -> None:
        raise BrokenPipeError("stderr went away")

    m = migration(lambda self, db: self.batch_update("items", {}, {"$inc": {"n": 1}}))
    assert Migrator(db, [m], progress=broken).upgrade().versions == [1]
    assert set(counts(db).values()) == {1}
    assert "progress hook failed" in caplog.text


class Flaky(Migration):
    """Count every item; fails at the first _id in ``FAIL_AT`` until the test clears it."""

    version = 1
    transactional = False
    FAIL_AT: ClassVar[set[Any]] = set()

    def up(self, db: Any) -> None:
        self.batch_update("orders", {}, {"$inc": {"n": 1}}, batch_size=3)
        self.batch_update("items", {}, self.bump, batch_size=4)

    def bump(self, doc: dict[str, Any]) -> dict[str, Any]:
        if doc["_id"] in self.FAIL_AT:
            raise RuntimeError(f"cannot bump {doc['_id']!r}")
        return {"$inc": {"n": 1}}


def test_a_failed_run_resumes_after_its_checkpoint_across_id_types(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _ids of several BSON types: resuming with {_id: {$gt: last}} alone would skip
    # every document whose _id is of another type than the last one done.
    ids: list[Any] = [*range(6), "a", "b", "c", ObjectId(), ObjectId(),
                      datetime(2024, 1, 1, tzinfo=timezone.utc), True, 2.5]
    db.items.insert_many([{"_id": i, "n": 0} for i in ids])
    db.orders.insert_many([{"_id": i, "n": 0} for i in range(10)])
    monkeypatch.setattr(Flaky, "FAIL_AT", {"b"})
    migrator = Migrator(db, [Flaky])

    with pytest.raises(MigrationFailedError, match="cannot bump 'b'"):
        migrator.upgrade()

    def bumps() -> list[int]:  # a list, not counts(): True and 1 are one key in a dict
        return [d["n"] for d in db.items.find()]

    assert sum(bumps()) == 8  # 0..5, 2.5 and "a": two batches of four, committed
    [row] = migrator.status()
    assert row.status == "failed"
    assert row.progress is not None
    orders, items = row.progress["batch_update"]
    assert (orders["done"], orders["modified"]) == (True, 10)
    assert (items["done"], items["last_id"], items["batches"]) == (False, "a", 2)
    assert row.checkpoint is not None
    assert row.checkpoint.startswith("orders: done, 10 changed; items: 8 of 14 documents, "
                                     "8 changed, last _id 'a' (2 batches, ")

    monkeypatch.setattr(Flaky, "FAIL_AT", set())
    assert migrator.upgrade().versions == [1]

    assert bumps() == [1] * len(ids)  # every item exactly once
    assert set(counts(db, "orders").values()) == {1}  # the finished call was not redone
    assert history(db) == ["failed", "applied"]


def test_a_lost_cursor_is_reopened_after_the_last_batch(
    db: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db, 60)

    def arm_then_update(self: Migration, db: Any) -> None:
        # failCommand is server-wide: armed here, it lands on this walk's next getMore.
        with failpoint(client, {"times": 1}, {"failCommands": ["getMore"], "errorCode": 43}):
            self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=10)

    Migrator(db, [migration(arm_then_update)]).upgrade()

    assert set(counts(db).values()) == {1}
    assert "lost its cursor" in caplog.text


POISONED = '''\
"""Stamp every item"""

from analytiq_migrations import Migration


def stamp(doc):
    if doc.get("poison"):
        raise ValueError(f"item {doc['_id']} is poisoned")
    return {"$inc": {"n": 1}}


class StampItems(Migration):
    transactional = False

    def up(self, db):
        self.batch_update("items", {}, stamp, batch_size=5)
'''


def test_the_status_command_shows_the_checkpoint_and_up_resumes_from_it(
    db: Any, mongo_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(db, 20)
    db.items.update_one({"_id": 12}, {"$set": {"poison": True}})
    source = write_migrations(tmp_path / "migrations", {"0001_stamp_items.py": POISONED})
    monkeypatch.chdir(tmp_path)
    where = ["--uri", mongo_uri, "--database", db.name, "--migrations", str(source)]
    assert main(["up", "-q", *where]) == 1

    capsys.readouterr()
    assert main(["status", *where]) == 0
    out = capsys.readouterr().out
    assert "Checkpoints (where unfinished batch_update calls resume):\n" \
        "  1: items: 10 of 20 documents, 10 changed, last _id 9 (2 batches, " in out

    db.items.update_one({"_id": 12}, {"$unset": {"poison": ""}})
    assert main(["up", "-q", *where]) == 0
    assert set(counts(db).values()) == {1}
    capsys.readouterr()
    main(["status", *where])
    assert "Checkpoints" not in capsys.readouterr().out


# -- killed with SIGKILL -------------------------------------------------------------------------

KILLABLE = {
    "between batches": '''\
        """Count every item, pausing between batches"""

        from analytiq_migrations import Migration


        class CountItems(Migration):
            transactional = False

            def up(self, db):
                self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=20, pause=0.05)
        ''',
    "inside a batch's transaction": '''\
        """Count every item, slowly inside each batch"""

        import time

        from analytiq_migrations import Migration


        def bump(doc):
            time.sleep(0.005)
            return {"$inc": {"n": 1}}


        class CountItems(Migration):
            transactional = False

            def up(self, db):
                self.batch_update("items", {}, bump, batch_size=20)
        ''',
}


@pytest.fixture
def children(mongo_uri: str, db: Any) -> Iterator[Children]:
    yield from children_for(mongo_uri, db.name)


def checkpoint(db: Any) -> dict[str, Any]:
    """The first batch_update checkpoint on version 1's record (empty if none yet)."""
    record = db.migrations.find_one({"_id": 1}) or {}
    return dict(((record.get("progress") or {}).get("batch_update") or [{}])[0])


@pytest.mark.slow
@pytest.mark.parametrize("moment", sorted(KILLABLE))
def test_killed_mid_way_the_next_run_resumes_and_changes_each_document_once(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture, moment: str
) -> None:
    seed(db, 600)
    source = write_migrations(tmp_path / "migrations", {"0001_count_items.py": KILLABLE[moment]})
    child = children.upgrade(source, lock_ttl=DEAD_TTL)
    wait_for(lambda: checkpoint(db).get("batches", 0) >= 3, timeout=120,
             message="the child did not get three batches done")
    watcher = Migrator(db, source)
    [row] = watcher.status()
    assert row.status == "running" and row.progress is not None
    child.kill()

    seen = checkpoint(db)
    assert 3 <= seen["batches"] < 30, "killed too late to test a resume"
    assert sum(counts(db).values()) == seen["modified"]  # committed == checkpointed
    # Once the dead run's lease expires, status calls it interrupted, checkpoint and all.
    [row] = wait_for(lambda: [r for r in watcher.status() if r.status == "interrupted"],
                     timeout=30, message="status never showed the run as interrupted")
    assert row.progress is not None
    assert row.progress["batch_update"][0]["last_id"] == seen["last_id"]

    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    with deadline(NEXT_RUN_TIMEOUT):
        report = Migrator(db, source, lock_wait=NEXT_WAIT).upgrade()

    assert report.versions == [1]
    assert set(counts(db).values()) == {1}  # no document missed, none counted twice
    assert history(db) == ["interrupted", "applied"]
    assert db.migrations.find_one({"_id": 1})["progress"] is None


# -- refused before anything is written ----------------------------------------------------------


def test_inside_the_migrations_transaction_it_refuses_before_writing(db: Any) -> None:
    seed(db, 10)
    m = migration(lambda self, db: self.batch_update("items", {}, {"$inc": {"n": 1}}),
                  transactional=None)  # on a replica set: runs in a transaction

    with pytest.raises(MigrationDefinitionError) as refused:
        Migrator(db, [m]).upgrade()

    assert "inside the migration's transaction" in str(refused.value)
    assert "transactional = False" in str(refused.value)
    assert set(counts(db).values()) == {0}


@pytest.mark.parametrize(("args", "message"), [
    (({}, {"n": 1}), "update operators"),
    (({}, []), "pipeline"),
    (({}, [{"n": 1}]), "pipeline"),
    (({}, 42), "not int"),
    (([], {"$inc": {"n": 1}}), "filter must be a query document"),
    (({}, {"$inc": {"n": 1}}, 0), "batch_size must be a positive integer"),
    (({}, {"$inc": {"n": 1}}, True), "batch_size must be a positive integer"),
])
def test_bad_arguments_are_refused_before_writing(
    db: Any, args: tuple[Any, ...], message: str
) -> None:
    seed(db, 5)
    m = migration(lambda self, db: self.batch_update("items", *args))

    with pytest.raises(MigrationDefinitionError, match=message) as refused:
        Migrator(db, [m]).upgrade()

    assert "Migration 1: batch_update('items')" in str(refused.value)
    assert set(counts(db).values()) == {0}
    assert db.migrations.find_one({"_id": 1})["progress"] is None


def test_a_negative_pause_is_refused(db: Any) -> None:
    m = migration(lambda self, db: self.batch_update("items", {}, {"$set": {"a": 1}}, pause=-1))
    with pytest.raises(MigrationDefinitionError, match="pause must be 0 or more"):
        Migrator(db, [m]).upgrade()


def test_a_function_returning_a_replacement_document_is_refused(db: Any) -> None:
    seed(db, 5)
    m = migration(lambda self, db: self.batch_update("items", {}, lambda doc: {"n": 7}))

    with pytest.raises(MigrationDefinitionError, match="bad update for _id 0"):
        Migrator(db, [m]).upgrade()

    assert set(counts(db).values()) == {0}  # the batch's transaction was rolled back


def test_a_collection_of_another_client_is_refused(db: Any, mongo_uri: str) -> None:
    seed(db, 5)
    other = pymongo.MongoClient(mongo_uri)
    m = migration(lambda self, db: self.batch_update(
        other[db.name].items, {}, {"$inc": {"n": 1}}))
    try:
        with pytest.raises(MigrationDefinitionError, match="belongs to another client"):
            Migrator(db, [m]).upgrade()
    finally:
        other.close()
    assert set(counts(db).values()) == {0}


def test_outside_a_run_it_says_where_to_call_it() -> None:
    with pytest.raises(MigrationDefinitionError, match=r"inside up\(\)/down\(\)"):
        migration(lambda self, db: None)().batch_update("items", {}, {"$set": {"a": 1}})


# -- without transactions -------------------------------------------------------------------------


def test_on_a_standalone_server_batches_run_without_transactions(
    recorded_standalone_db: Any, standalone_recorder: CommandRecorder
) -> None:
    seed(recorded_standalone_db, 75)
    m = migration(lambda self, db: self.batch_update(
        "items", {"kind": "odd"}, {"$inc": {"n": 1}}, batch_size=10))

    Migrator(recorded_standalone_db, [m]).upgrade()

    assert standalone_recorder.in_transaction() == []
    assert counts(recorded_standalone_db) == {i: i % 2 for i in range(75)}
    progress_saves = [c for c in standalone_recorder.filter("update")
                      if c.collection == "migrations" and "progress" in str(c.command)]
    assert len(progress_saves) >= 4  # started, each of the 4 batches, done


def test_without_sessions_it_works_on_mongomock(mock_db: Any) -> None:
    seed(mock_db, 33)
    m = migration(lambda self, db: self.batch_update(
        "items", {"kind": "even"}, lambda doc: {"$inc": {"n": 1}}, batch_size=5))

    Migrator(mock_db, [m]).upgrade()

    assert counts(mock_db) == {i: 1 if i % 2 == 0 else 0 for i in range(33)}

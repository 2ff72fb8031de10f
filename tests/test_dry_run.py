"""The dry run: rehearse pending steps on real data, see what each would write, keep nothing.

Every test compares a snapshot of the whole database (data, records, history, lock) taken
before the rehearsal with one taken after it.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest
from pymongo import DeleteOne, InsertOne, MongoClient, UpdateOne
from pymongo.errors import OperationFailure
from support import client_options, set_failpoint

from analytiq_migrations import (
    LockBusyError,
    Migration,
    MigrationDefinitionError,
    Migrator,
    TransactionsUnsupportedError,
)
from analytiq_migrations.cli import main
from analytiq_migrations.dbproxy import HAS_BIND
from analytiq_migrations.rehearsal import LIMITS
from analytiq_migrations.retry import RetryPolicy
from analytiq_migrations.snapshot import Snapshot, take_snapshot

EXAMPLES = "analytiq_migrations.examples"
ZERO = {"matched": 0, "modified": 0, "inserted": 0, "deleted": 0, "upserted": 0}


# Dry runs are refused without ClientSession.bind() (tests/test_compatibility.py shows it).
pytestmark = pytest.mark.skipif(not HAS_BIND, reason="dry runs need pymongo 4.17+ (bind)")


def counts(**given: int) -> Dict[str, int]:
    return {**ZERO, **given}


def seed_users(db: Any) -> None:
    db.users.insert_many([
        {"name": "Ada", "email": "ada@example.com"},
        {"name": "Bob", "email": "bob@example.com"},
        {"email": "eve@example.com", "new_field": "set by hand"},  # no name; new_field already
    ])


def assert_untouched(db: Any, before: Snapshot) -> None:
    after = take_snapshot(db)
    assert before == after, before.diff(after)
    assert db.migration_lock.count_documents({}) == 0  # taken, and released


# -- what the rehearsal reports ---------------------------------------------------------------


def test_up_dry_run_reports_the_examples_exact_counts_and_stores_nothing(db: Any) -> None:
    seed_users(db)
    before = take_snapshot(db)
    migrator = Migrator(db, EXAMPLES)
    report = migrator.upgrade(dry_run=True)

    assert report.dry_run and report.start_version == report.end_version == 0
    assert report.target_version == 3 and report.versions == [] and not report.changed
    first, second, third = report.steps
    assert first.status == second.status == "rehearsed"
    # $rename matches every document, changes the two that have a name.
    assert {k: v.model_dump() for k, v in first.changes.items()} == {
        "users": counts(matched=3, modified=2)}
    assert {k: v.model_dump() for k, v in second.changes.items()} == {
        "users": counts(matched=2, modified=2)}
    assert third.status == "not_rehearsed" and third.changes == {}
    assert third.note is not None and "transactional = False" in third.note
    assert LIMITS in report.notes

    assert_untouched(db, before)
    assert [row.status for row in migrator.status()] == ["pending"] * 3
    assert migrator.history() == [] and migrator.lock_info() is None
    # The real run afterwards does what was rehearsed.
    assert migrator.upgrade().versions == [1, 2, 3]


def test_down_dry_run_counts_each_revert_on_the_data_as_it_is(db: Any) -> None:
    seed_users(db)
    migrator = Migrator(db, EXAMPLES)
    migrator.upgrade(2)
    before = take_snapshot(db)
    report = migrator.downgrade(0, dry_run=True)

    assert [(s.version, s.direction, s.status) for s in report.steps] == [
        (2, "down", "rehearsed"), (1, "down", "rehearsed")]
    assert report.steps[0].changes["users"].model_dump() == counts(matched=3, modified=3)
    assert report.steps[1].changes["users"].model_dump() == counts(matched=3, modified=2)
    assert report.start_version == report.end_version == 2 and report.target_version == 0
    assert_untouched(db, before)
    assert migrator.current_version() == 2
    assert len(migrator.history()) == 2  # the two real applies, nothing from the rehearsal


class OpenOrders(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.orders.insert_many([{"_id": i, "status": "new"} for i in range(3)])


class MarkOpen(Migration):
    version = 2

    def up(self, db: Any) -> None:
        db.orders.update_many({"status": "new"}, {"$set": {"status": "open"}})
        db.totals.update_one({"_id": "orders"}, {"$inc": {"open": 3}}, upsert=True)


class Settle(Migration):
    version = 3

    def up(self, db: Any) -> None:
        db.orders.bulk_write([InsertOne({"_id": 9, "status": "open"}),
                              UpdateOne({"_id": 0}, {"$set": {"status": "paid"}}),
                              DeleteOne({"_id": 1})])
        db.orders.find_one_and_delete({"_id": 2})
        db.orders.find_one_and_update({"_id": 0}, {"$set": {"seen": True}})
        db.orders.delete_many({"status": "open"})
        db.get_collection("archive").insert_one({"note": "settled"})


def test_later_steps_see_what_earlier_steps_wrote(db: Any) -> None:
    before = take_snapshot(db)
    report = Migrator(db, [OpenOrders, MarkOpen, Settle]).upgrade(dry_run=True)
    changes = [{k: v.model_dump() for k, v in s.changes.items()} for s in report.steps]
    assert changes == [
        {"orders": counts(inserted=3)},
        # The three orders exist only in the rehearsal's transaction, and step 2 sees them.
        {"orders": counts(matched=3, modified=3), "totals": counts(upserted=1)},
        {"archive": counts(inserted=1),
         # bulk: 1 inserted, 1 matched/modified, 1 deleted; find_one_and_delete: 1 deleted;
         # find_one_and_update: 1 matched; delete_many: the inserted _id 9 (1 is gone).
         "orders": counts(inserted=1, matched=2, modified=1, deleted=3)},
    ]
    assert [s.status for s in report.steps] == ["rehearsed"] * 3
    assert_untouched(db, before)


# -- what it would hit -------------------------------------------------------------------------


class Fine(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"checked": True}})


class SwallowsDuplicate(Migration):
    """Seed style: catches the error and returns False."""

    version = 2

    def up(self, db: Any) -> bool:
        try:
            db.users.insert_one({"_id": "ada"})
            return True
        except Exception:
            return False


class NeverReached(Migration):
    version = 3

    def up(self, db: Any) -> None:
        raise AssertionError("a rehearsal stops at the first step that would fail")


def test_a_failing_step_is_reported_with_its_error_and_later_steps_are_not_run(db: Any) -> None:
    db.users.insert_one({"_id": "ada"})
    before = take_snapshot(db)
    report = Migrator(db, [Fine, SwallowsDuplicate, NeverReached]).upgrade(dry_run=True)
    fine, failing, later = report.steps
    assert fine.status == "rehearsed" and fine.changes["users"].model_dump() == counts(
        matched=1, modified=1)
    assert failing.status == "failed" and failing.error is not None
    assert failing.error.type == "MigrationFailedError"
    assert "caught DuplicateKeyError" in failing.error.message
    assert "then returned False" in failing.error.message
    assert later.status == "not_rehearsed" and later.note is not None
    assert "2 would fail before it" in later.note
    assert report.failed is failing
    assert_untouched(db, before)


class DropsACollection(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.users.drop()


def test_a_call_no_transaction_allows_is_the_error_it_would_hit(db: Any) -> None:
    db.users.insert_one({"name": "Ada"})
    before = take_snapshot(db)
    step, = Migrator(db, [DropsACollection]).upgrade(dry_run=True).steps
    assert step.status == "failed" and step.error is not None
    assert step.error.type == "MigrationDefinitionError"
    assert "drop() on 'users'" in step.error.message
    assert_untouched(db, before)


class LogsToCapped(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"checked": True}})
        db.audit.insert_one({"event": "checked"})


def test_a_write_the_server_refuses_in_a_transaction_is_the_error_it_would_hit(
    db: Any
) -> None:
    db.users.insert_one({"name": "Ada"})
    db.create_collection("audit", capped=True, size=4096)
    before = take_snapshot(db)
    step, = Migrator(db, [LogsToCapped]).upgrade(dry_run=True).steps
    assert step.status == "failed" and step.error is not None
    assert step.error.type == "MigrationDefinitionError"
    assert "insert_one() on 'audit'" in step.error.message
    assert "capped collection" in step.error.message
    assert_untouched(db, before)


class CreatesByWriting(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.fresh.insert_one({"email": "ada@example.com"})


class IndexesWhatStepOneCreated(Migration):
    version = 2

    def up(self, db: Any) -> None:
        db.fresh.create_index("email")


def test_an_index_on_a_collection_an_earlier_step_created_is_refused_as_in_the_real_run(
    db: Any
) -> None:
    # The real run commits step 1, so step 2 builds an index on an existing collection.
    migrations = [CreatesByWriting, IndexesWhatStepOneCreated]
    before = take_snapshot(db)
    first, second = Migrator(db, migrations).upgrade(dry_run=True).steps
    assert first.status == "rehearsed" and second.status == "failed"
    assert second.error is not None and "already exists" in second.error.message
    assert_untouched(db, before)
    with pytest.raises(MigrationDefinitionError, match="already exists"):
        Migrator(db, migrations).upgrade()


class Backfill(Migration):
    version = 1

    def up(self, db: Any) -> None:
        db.users.update_many({}, {"$set": {"plan": "free"}})


class BigIndex(Migration):
    version = 2
    transactional = False

    def up(self, db: Any) -> None:
        raise AssertionError("a non-transactional migration is never run by a dry run")


class AfterTheIndex(Migration):
    version = 3

    def up(self, db: Any) -> None:
        raise AssertionError("it comes after a step that was not rehearsed")


def test_non_transactional_steps_and_those_after_them_are_listed_not_run(db: Any) -> None:
    db.users.insert_one({"name": "Ada"})
    before = take_snapshot(db)
    report = Migrator(db, [Backfill, BigIndex, AfterTheIndex]).upgrade(dry_run=True)
    assert [s.status for s in report.steps] == ["rehearsed", "not_rehearsed", "not_rehearsed"]
    assert report.steps[1].note == ("not rehearsable: transactional = False (it runs without "
                                    "a transaction, so its writes could not be rolled back)")
    assert report.steps[2].note is not None and \
        "comes after 2, which was not rehearsed" in report.steps[2].note
    assert_untouched(db, before)


def test_transactions_never_makes_every_step_not_rehearsable(db: Any) -> None:
    report = Migrator(db, [Backfill], transactions="never").upgrade(dry_run=True)
    step, = report.steps
    assert step.status == "not_rehearsed" and step.note is not None
    assert "transactions='never' runs it without a transaction" in step.note


def test_refused_on_a_standalone_before_anything_runs(standalone_db: Any) -> None:
    standalone_db.users.insert_one({"name": "Ada"})
    before = take_snapshot(standalone_db)
    with pytest.raises(TransactionsUnsupportedError) as caught:
        Migrator(standalone_db, [Backfill]).upgrade(dry_run=True)
    assert "A dry run rehearses the migrations in a transaction" in str(caught.value)
    assert "Standalone" in str(caught.value) and "replica set" in caught.value.hint
    assert take_snapshot(standalone_db) == before
    assert "migration_lock" not in standalone_db.list_collection_names()


def test_nothing_pending_is_nothing_to_rehearse(db: Any) -> None:
    migrator = Migrator(db, [Backfill])
    migrator.upgrade()
    report = migrator.upgrade(dry_run=True)
    assert report.dry_run and report.steps == [] and report.end_version == 1


# -- the command line --------------------------------------------------------------------------


def run_cli(db: Any, uri: str, capsys: pytest.CaptureFixture[str], *args: str,
            migrations: str = EXAMPLES) -> Any:
    code = main([*args, "--uri", uri, "--database", db.name, "--migrations", migrations])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_up_dry_run_prints_a_table_and_the_limits(
        db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_users(db)
    before = take_snapshot(db)
    code, out, err = run_cli(db, mongo_uri, capsys, "up", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Dry run on ")
    assert lines[0].endswith(": up from version 0 to 3, 3 steps; nothing was stored")
    assert lines[2].split() == ["VERSION", "DESCRIPTION", "RESULT", "MS", "COLLECTION",
                                "MATCHED", "MODIFIED", "INSERTED", "DELETED", "UPSERTED"]
    assert lines[3].split()[0] == "1" and "rehearsed" in lines[3]
    assert lines[3].split()[-6:] == ["users", "3", "2", "0", "0", "0"]
    assert lines[4].split()[0] == "2"
    assert lines[4].split()[-6:] == ["users", "2", "2", "0", "0", "0"]
    assert lines[5].split()[0] == "3" and "not rehearsed" in lines[5]
    assert "  3: not rehearsable: transactional = False" in out
    assert "60 s" in out and "16 MB" in out
    assert_untouched(db, before)


def test_cli_down_dry_run_json(db: Any, mongo_uri: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    seed_users(db)
    Migrator(db, EXAMPLES).upgrade(2)
    before = take_snapshot(db)
    code, out, err = run_cli(db, mongo_uri, capsys, "down", "--dry-run", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["dry_run"] is True and data["start_version"] == data["end_version"] == 2
    step, = data["steps"]
    assert (step["version"], step["direction"], step["status"]) == (2, "down", "rehearsed")
    assert step["changes"] == {"users": counts(matched=3, modified=3)}
    assert LIMITS in data["notes"]
    assert_untouched(db, before)


FAILING = {
    "0001_backfill.py": "def up(db):\n    db.users.update_many({}, {'$set': {'plan': 'free'}})\n",
    "0002_price.py": "def up(db):\n    raise ValueError('no price for plan free')\n",
}


def test_cli_a_step_that_would_fail_exits_1_and_names_the_error(
        db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    for name, text in FAILING.items():
        (tmp_path / name).write_text(text)
    db.users.insert_one({"name": "Ada"})
    before = take_snapshot(db)
    code, out, _ = run_cli(db, mongo_uri, capsys, "up", "--dry-run",
                             migrations=str(tmp_path))
    assert code == 1
    assert "WOULD FAIL" in out
    assert "  2 would fail: ValueError: no price for plan free" in out
    assert_untouched(db, before)


def test_cli_fake_and_dry_run_exclude_each_other(
        db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(db, mongo_uri, capsys, "up", "--dry-run", "--fake")
    assert code == 2 and "fake and dry_run exclude each other" in err


# -- the doc's example -------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing-your-migrations.md"
_BLOCK = re.compile(r"<!-- (file|dry-run): (.+?) -->\n```[a-z]*\n(.*?)```", re.S)


def _tokens(text: str, database: str) -> List[List[str]]:
    """The lines' words, with the durations (they vary) and the database name left out."""
    lines = []
    for line in text.replace(f"'{database}'", "'app'").strip("\n").splitlines():
        words = line.split()
        if "rehearsed" in words:
            at = words.index("rehearsed") + 1
            words[at] = "MS"
        lines.append(words)
    return lines


def test_the_docs_dry_run_is_what_the_command_prints(
        db: Any, mongo_uri: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    found = _BLOCK.findall(DOC.read_text())
    for kind, name, body in found:
        if kind == "file":
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(body)
    (command, shown), = [(what, body) for kind, what, body in found if kind == "dry-run"]
    assert command == "analytiq-migrations up --dry-run"
    monkeypatch.chdir(tmp_path)
    db.users.insert_many([
        {"_id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
        {"_id": 2, "name": "Grace Hopper", "email": "grace@example.com"},
        {"_id": 3, "first": "Alan", "last": "Turing", "email": "alan@example.com"},
    ])
    assert run_cli(db, mongo_uri, capsys, "up", "1", migrations="migrations")[0] == 0
    before = take_snapshot(db)
    code, out, err = run_cli(db, mongo_uri, capsys, "up", "--dry-run", migrations="migrations")
    assert code == 0, err
    expected = _tokens(shown, db.name)
    assert _tokens(out, db.name)[:len(expected)] == expected, out
    assert_untouched(db, before)


# -- a transient error -------------------------------------------------------------------------

APP = "dry-run-faults"
WRITE_CONFLICT = 112


def test_a_write_conflict_rehearses_again_from_the_start_counting_once(
        client: MongoClient[Any], mongo_uri: str, db: Any) -> None:
    try:
        set_failpoint(client, "off")
    except OperationFailure as exc:
        pytest.skip(f"the server cannot inject faults ({exc.code})")
    mine: MongoClient[Any] = MongoClient(mongo_uri, **client_options(mongo_uri, appname=APP))

    class Insert(Migration):
        version = 1
        runs = 0

        def up(self, db: Any) -> None:
            type(self).runs += 1
            db.orders.insert_many([{"_id": 1}, {"_id": 2}])
            if type(self).runs == 1:  # the next insert (step 2's) conflicts, once
                arm = threading.Thread(target=set_failpoint, args=(client, {"times": 1}, {
                    "failCommands": ["insert"], "errorCode": WRITE_CONFLICT,
                    "errorLabels": ["TransientTransactionError"], "appName": APP}))
                arm.start()
                arm.join()

    class Update(Migration):
        version = 2

        def up(self, db: Any) -> None:
            db.orders.insert_one({"_id": 3})
            db.orders.update_many({}, {"$set": {"open": True}})

    try:
        before = take_snapshot(db)
        report = Migrator(mine[db.name], [Insert, Update],
                          retry=RetryPolicy(attempts=3, seconds=20.0, initial_wait=0.05,
                                            max_wait=0.2)).upgrade(dry_run=True)
    finally:
        set_failpoint(client, "off")
        mine.close()
    assert Insert.runs == 2
    assert [{k: v.model_dump() for k, v in s.changes.items()} for s in report.steps] == [
        {"orders": counts(inserted=2)},
        {"orders": counts(inserted=1, matched=3, modified=3)}]
    assert_untouched(db, before)


def test_a_dry_run_waits_for_the_lock_like_a_real_run(db: Any) -> None:
    now = datetime.now(timezone.utc)
    db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "deploy@web-7:4242/feedbeef", "run_id": "feedbeef",
        "host": "web-7", "pid": 4242, "locked_at": now, "heartbeat_at": now,
        "expires_at": now + timedelta(seconds=600)})
    before = take_snapshot(db)
    with pytest.raises(LockBusyError):
        Migrator(db, [NeverReached]).upgrade(dry_run=True)
    assert take_snapshot(db) == before

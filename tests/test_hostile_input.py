"""What users (and their databases) actually hand the library at run time: dead servers,
broken URIs and names, migrations that misbehave, code and database that disagree,
foreign or damaged documents, and passwords. Each gets a ``MigrationError`` that names
the thing (version, file, host:port) and the way out, and no password ever shows."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pymongo
import pytest
from children import write_migrations
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect
from support import run_python

from analytiq_migrations import (
    ChecksumDriftError,
    ConfigurationError,
    ConnectionFailedError,
    CorruptRecordError,
    IrreversibleMigrationError,
    LockBusyError,
    Migration,
    MigrationDefinitionError,
    MigrationError,
    MigrationFailedError,
    Migrator,
    OutOfOrderError,
)
from analytiq_migrations.cli import main
from analytiq_migrations.errors import redact

PASSWORD = "s3cr3t-Pa55"


class CreatePlans(Migration):
    version = 1
    description = "Create plans"

    def up(self, db: Any) -> None:
        db.plans.insert_many([{"_id": "free"}, {"_id": "pro"}])

    def down(self, db: Any) -> None:
        db.plans.delete_many({})


class PricePlans(Migration):
    version = 2
    description = "Price plans"

    def up(self, db: Any) -> None:
        db.plans.update_many({}, {"$set": {"price": 0}})


# -- servers, URIs and names -----------------------------------------------------------------


def test_an_unreachable_server_fails_in_bounded_time_naming_host_and_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Something accepts the connection but never answers (nothing listening at all is
    # said at once: tests/test_first_contact.py): the URI's own timeout bounds the wait.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    uri = f"mongodb://app:{PASSWORD}@127.0.0.1:{port}/shop?serverSelectionTimeoutMS=1000"
    caplog.set_level(logging.DEBUG, logger="analytiq_migrations")

    with silent, pytest.raises(ConnectionFailedError) as failed:
        Migrator(uri, [CreatePlans]).upgrade()

    message = str(failed.value)
    assert f"Cannot reach MongoDB at 127.0.0.1:{port}" in message
    if pymongo.version_tuple >= (3, 12):  # older pymongo leaves the timeout out of it
        assert "Timeout: 1.0s" in message  # the URI's own timeout, not the library's default
    assert "transient error" not in caplog.text  # a dead host is not waited for twice
    assert "Nothing was changed" in message
    assert PASSWORD not in message and PASSWORD not in caplog.text
    assert failed.value.exit_code == 5


@pytest.mark.parametrize("uri, complaint", [
    (f"mongodb://app:{PASSWORD}@db.internal:27o17/shop", "Port"),
    (f"http://app:{PASSWORD}@db.internal/shop", "scheme"),
    (f"mongodb://app:{PASSWORD}@/shop", "host"),
])
def test_a_bad_uri_is_a_configuration_error_without_the_password(
    uri: str, complaint: str
) -> None:
    with pytest.raises(ConfigurationError) as bad:
        Migrator(uri, [CreatePlans])

    message = str(bad.value)
    assert message.startswith("Bad MongoDB URI") and complaint.lower() in message.lower()
    assert PASSWORD not in message
    assert "mongodb://[user:password@]host[:port]" in message  # the hint reads right
    assert bad.value.exit_code == 2


@pytest.mark.parametrize("name", ["my.shop", "my shop", "shop$", "", "x" * 64])
def test_a_bad_database_name_is_named_before_anything_runs(client: Any, name: str) -> None:
    with pytest.raises(ConfigurationError, match="Bad database name"):
        Migrator(client, [CreatePlans], database=name)


def test_no_database_name_at_all_says_where_to_put_one(mongo_uri: str) -> None:
    with pytest.raises(ConfigurationError, match="No database name") as missing:
        Migrator(mongo_uri, [CreatePlans])
    assert "--database" in str(missing.value)


# -- migrations that misbehave -----------------------------------------------------------------


class Explodes(Migration):
    version = 1
    description = "Backfill totals"

    def up(self, db: Any) -> None:
        db.totals.insert_one({"_id": 1})
        raise ValueError("order 17 has no lines")


class SaysFalse(Migration):
    """Seed style: False means it failed."""

    def __init__(self) -> None:
        super().__init__(version=1, description="Check invoices")

    def up(self, db: Any) -> bool:
        db.totals.insert_one({"_id": 1})
        return False



@pytest.mark.parametrize("migration, says, stored", [
    (Explodes, "ValueError: order 17 has no lines", "ValueError"),
    (SaysFalse(), "returned False", "MigrationFailedError"),
])
def test_a_failing_migration_is_rolled_back_recorded_and_named(
    db: Any, migration: Any, says: str, stored: str
) -> None:
    with pytest.raises(MigrationFailedError) as failed:
        Migrator(db, [migration, PricePlans]).upgrade()

    message = str(failed.value)
    assert "Migration 1" in message and says in message
    assert failed.value.version == 1
    assert db.totals.count_documents({}) == 0  # its transaction was rolled back
    record = db.migrations.find_one({"_id": 1})
    assert (record["status"], record["error"]["type"]) == ("failed", stored)
    assert says.split(": ", 1)[-1] in record["error"]["message"]
    assert db.migrations.find_one({"_id": 2}) is None  # later migrations did not run
    assert [h["status"] for h in db.migrations_history.find()] == ["failed"]


def test_reverting_past_a_migration_without_down_reverts_nothing(db: Any) -> None:
    migrator = Migrator(db, [CreatePlans, PricePlans])
    migrator.upgrade()

    with pytest.raises(IrreversibleMigrationError) as refused:
        migrator.downgrade(0)

    message = str(refused.value)
    assert "2 (Price plans: it has no down())" in message and "Nothing was reverted" in message
    assert migrator.current_version() == 2
    assert db.plans.count_documents({"price": 0}) == 2


def test_duplicate_versions_are_refused_naming_both(db: Any) -> None:
    class AlsoOne(Migration):
        version = 1

        def up(self, db: Any) -> None:
            pass

    with pytest.raises(MigrationDefinitionError) as duplicate:
        Migrator(db, [CreatePlans, AlsoOne])
    assert "CreatePlans" in str(duplicate.value) and "AlsoOne" in str(duplicate.value)


def test_a_new_migration_numbered_below_the_applied_ones_is_refused(db: Any) -> None:
    class Later(Migration):
        version = 5

        def up(self, db: Any) -> None:
            pass

    Migrator(db, [CreatePlans, Later]).upgrade()

    with pytest.raises(OutOfOrderError) as refused:
        Migrator(db, [CreatePlans, PricePlans, Later]).upgrade()

    message = str(refused.value)
    assert "Migration 2 (Price plans) is pending but version 5 is already applied" in message
    assert "allow_out_of_order" in message
    assert db.plans.count_documents({"price": 0}) == 0


def test_a_migration_edited_after_it_was_applied_stops_the_next_upgrade(
    db: Any, tmp_path: Path
) -> None:
    source = write_migrations(tmp_path / "migrations", {
        "0001_create_plans.py": '''\
            """Create plans"""


            def up(db):
                db.plans.insert_one({"_id": "free"})
            ''',
    })
    Migrator(db, source).upgrade()
    write_migrations(source, {
        "0001_create_plans.py": '''\
            """Create plans"""


            def up(db):
                db.plans.insert_one({"_id": "free", "price": 0})
            ''',
        "0002_more.py": '''\
            """More plans"""


            def up(db):
                db.plans.insert_one({"_id": "pro"})
            ''',
    })

    with pytest.raises(ChecksumDriftError) as drift:
        Migrator(db, source).upgrade()

    assert "Migration 1 (Create plans) was changed after it was applied" in str(drift.value)
    assert "repair --accept-checksums" in str(drift.value)
    assert db.plans.count_documents({}) == 1


# -- the lock collection -------------------------------------------------------------------------


def test_the_seed_era_lock_of_a_live_old_deployment_is_respected(db: Any) -> None:
    now = db.client.admin.command("hello")["localTime"]
    db.migration_lock.insert_one({"_id": "migration_lock", "holder": "legacy-app-7f9c",
                                  "locked_at": now, "expires_at": now.replace(year=now.year + 1)})

    with pytest.raises(LockBusyError, match="held by legacy-app-7f9c"):
        Migrator(db, [CreatePlans]).upgrade()
    assert db.plans.count_documents({}) == 0


def test_a_foreign_lock_document_is_shown_as_it_is_and_can_be_broken(db: Any) -> None:
    db.migration_lock.insert_one({"_id": "migration_lock", "owner": 42, "note": "do not touch"})

    with pytest.raises(LockBusyError) as busy:
        Migrator(db, [CreatePlans]).upgrade()

    message = str(busy.value)
    assert "unrecognised lock document" in message and "'owner': 42" in message
    assert "unlock --force" in message
    assert Migrator(db, [CreatePlans]).unlock(force=True) is True
    assert Migrator(db, [CreatePlans]).upgrade().versions == [1]


# -- damaged or orphaned records -----------------------------------------------------------------


@pytest.mark.parametrize("damage, field", [
    ({"_id": 1, "version": "one", "status": "applied"}, "version"),
    ({"_id": 1, "version": 1, "status": "done"}, "status"),
    ({"_id": 1, "version": 1, "status": "applied", "applied_at": "yesterday"}, "applied_at"),
    ({"_id": 1, "version": 2, "status": "applied"}, "_id and version must be equal"),
])
def test_a_damaged_record_is_reported_by_name_and_nothing_runs(
    db: Any, damage: dict[str, Any], field: str
) -> None:
    db.migrations.insert_one(damage)
    migrator = Migrator(db, [CreatePlans, PricePlans])

    with pytest.raises(CorruptRecordError) as corrupt:
        migrator.upgrade()

    message = str(corrupt.value)
    assert "Record 1 in collection 'migrations'" in message and field in message
    assert "Fix the document" in message or "Fix or delete the document" in message
    assert db.plans.count_documents({}) == 0
    problems = migrator.validate()
    assert [p.kind for p in problems] == ["corrupt"]


def test_a_damaged_legacy_version_is_listed_by_validate(db: Any) -> None:
    db.migrations.insert_one({"_id": "schema_version", "version": "three"})
    migrator = Migrator(db, [CreatePlans])

    [problem] = migrator.validate()
    assert problem.kind == "corrupt" and "schema_version" in problem.message
    with pytest.raises(CorruptRecordError, match="schema_version"):
        migrator.upgrade()


def test_a_damaged_history_entry_does_not_hide_the_rest(
    db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    migrator = Migrator(db, [CreatePlans])
    migrator.upgrade()
    db.migrations_history.insert_one({"version": "one", "status": "exploded"})

    with caplog.at_level(logging.WARNING, logger="analytiq_migrations"):
        entries = migrator.history()

    assert [(e.version, e.status) for e in entries] == [(1, "applied")]
    assert "Skipped a malformed entry in 'migrations_history'" in caplog.text


def test_a_record_whose_code_is_gone_is_reported_and_never_reverted_blindly(db: Any) -> None:
    class Retired(Migration):
        version = 3
        description = "Retired plans"

        def up(self, db: Any) -> None:
            db.plans.insert_one({"_id": "legacy"})

    Migrator(db, [CreatePlans, PricePlans, Retired]).upgrade()
    migrator = Migrator(db, [CreatePlans, PricePlans])  # older code, newer database

    [problem] = migrator.validate()
    assert (problem.kind, problem.version) == ("ahead_of_code", 3)  # a warning, a rollback
    assert "redeploying the newer code clears this" in problem.hint
    assert {row.version: row.status for row in migrator.status()}[3] == "ahead_of_code"
    assert migrator.upgrade().steps == []  # nothing to do is not an error
    with pytest.raises(IrreversibleMigrationError, match="3 \\(Retired plans: its code is gone\\)"):
        migrator.downgrade(0)
    assert db.plans.count_documents({}) == 3


# -- credentials -----------------------------------------------------------------------------


class LeaksItsUri(Migration):
    """A migration that reports the URI it was given in its error (as real code does)."""

    version = 2
    description = "Copy plans from the billing database"
    uri = ""

    def up(self, db: Any) -> None:
        raise RuntimeError(f"billing copy failed for {self.uri}: timed out")


def test_credentials_never_reach_errors_logs_or_stored_documents(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    with MongoClient(server.uri) as setup:
        setup.admin.command("createUser", "deployer", pwd=PASSWORD,
                            roles=[{"role": "root", "db": "admin"}])
    server.restart(extra_args=["--auth"])
    uri = f"mongodb://deployer:{PASSWORD}@{server.address}/shop?authSource=admin" \
        "&directConnection=true"
    LeaksItsUri.uri = uri
    caplog.set_level(logging.DEBUG, logger="analytiq_migrations")

    with Migrator(uri, [CreatePlans, LeaksItsUri]) as migrator:
        with pytest.raises(MigrationFailedError) as failed:
            migrator.upgrade()
        assert "billing copy failed for mongodb://***@" in str(failed.value)

    wrong = uri.replace(PASSWORD, "wrong-" + PASSWORD[::-1])
    with pytest.raises(ConfigurationError) as denied, Migrator(wrong, [CreatePlans]) as m:
        m.status()
    assert f"Authentication failed on {server.address}" in str(denied.value)

    with MongoClient(uri) as admin:
        stored = [doc for name in admin.shop.list_collection_names()
                  for doc in admin.shop[name].find()]
    assert any("billing copy failed" in str(doc) for doc in stored)
    everything = " ".join([str(failed.value), str(denied.value), caplog.text, repr(stored)])
    assert PASSWORD not in everything and PASSWORD[::-1] not in everything


def test_every_error_is_a_migration_error(db: Any) -> None:
    # One root to catch, whatever went wrong.
    for failure in (lambda: Migrator(db, [Explodes]).upgrade(),
                    lambda: Migrator("mongodb://h:99999/x", [CreatePlans]),
                    lambda: Migrator(db, [CreatePlans], lock_ttl=0)):
        with pytest.raises(MigrationError):
            failure()


# -- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["²", "+²", "+\u0661", "\u0663"])
def test_a_target_in_other_digits_is_a_usage_error(
    db: Any, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--uri", "mongodb://127.0.0.1:1/x", "down", target])

    err = capsys.readouterr().err
    assert code == 2
    assert f"{target!r} is not a target" in err and "ASCII digits" in err
    with pytest.raises(ConfigurationError, match="Bad target"):
        Migrator(db, [CreatePlans]).downgrade(target)
    assert main(["--uri", "mongodb://127.0.0.1:1/x", "show", target.lstrip("+")]) == 2
    assert main(["--uri", "mongodb://127.0.0.1:1/x", "down", "-" + target.lstrip("+")]) == 2


# -- hostile files in the migrations directory -----------------------------------------------


def test_a_huge_docstring_is_refused_at_load_and_nothing_is_recorded(
    db: Any, tmp_path: Path
) -> None:
    source = tmp_path / "migrations"
    source.mkdir()
    (source / "0001_huge.py").write_text(
        '"""' + "Backfill " * (17 * 1024 * 1024 // 9) + '"""\n\n\ndef up(db):\n'
        '    db.plans.insert_one({"_id": "free"})\n')

    with pytest.raises(MigrationDefinitionError) as refused:
        Migrator(db, source).upgrade()

    message = str(refused.value)
    assert "0001_huge.py" in message and "description is 17,825,7" in message
    assert "Shorten the first line of its docstring" in message
    assert len(message) < 2000
    assert db.migrations.count_documents({}) == 0
    assert db.migrations_history.count_documents({}) == 0
    assert db.plans.count_documents({}) == 0


def test_a_symlink_loop_among_the_migrations_is_named(db: Any, tmp_path: Path) -> None:
    source = write_migrations(tmp_path / "migrations", {
        "0001_create_plans.py": 'def up(db):\n    db.plans.insert_one({"_id": "free"})\n'})
    (source / "0002_loop.py").symlink_to("0002_loop.py")
    (source / "helpers_loop.py").symlink_to("helpers_loop.py")  # not a migration: skipped
    looped_dir = tmp_path / "looped"
    looped_dir.symlink_to(looped_dir)

    with pytest.raises(MigrationDefinitionError) as loop:
        Migrator(db, source).upgrade()
    assert "0002_loop.py" in str(loop.value) and "symbolic link" in str(loop.value)
    with pytest.raises(MigrationDefinitionError, match="symbolic link that leads nowhere"):
        Migrator(db, looped_dir)
    assert main(["--uri", "mongodb://127.0.0.1:1/x", "--migrations", str(source),
                 "plan"]) == 2


def test_a_file_that_is_not_utf8_says_to_save_it_as_utf8(db: Any, tmp_path: Path) -> None:
    source = tmp_path / "migrations"
    source.mkdir()
    (source / "0001_prices.py").write_bytes(
        '"""Prices in €"""\n\n\ndef up(db):\n    pass\n'.encode("cp1252"))

    with pytest.raises(MigrationDefinitionError) as encoding:
        Migrator(db, source)

    message = str(encoding.value)
    assert "0001_prices.py' is not UTF-8 text: byte 0x80 on line 1" in message
    assert "Save the file as UTF-8" in message


# -- a damaged lock ------------------------------------------------------------------------------


@pytest.mark.parametrize("session_ids", [7, "abc", {"id": 1}])
def test_an_expired_lock_with_damaged_session_ids_is_taken_over(
    db: Any, session_ids: Any
) -> None:
    now = db.client.admin.command("hello")["localTime"]
    db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "old@host:1/r1", "run_id": "r1", "host": "elsewhere",
        "locked_at": now, "expires_at": now.replace(year=now.year - 1),
        "session_ids": session_ids})
    migrator = Migrator(db, [CreatePlans])

    assert migrator.lock_info().holder == "old@host:1/r1"  # shown as the lease it is
    assert migrator.upgrade().versions == [1]
    assert db.migration_lock.count_documents({}) == 0


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["pa/ss-W0rd-9", "pa@ss-W0rd-9"])
def test_a_password_with_an_unescaped_slash_or_at_is_never_printed(
    password: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"mongodb://app:{password}@127.0.0.1:1/shop?serverSelectionTimeoutMS=100"

    with pytest.raises(MigrationError) as bad:
        Migrator(uri, [CreatePlans])
    code = main(["--uri", uri, "-v", "status"])
    printed = capsys.readouterr()

    assert code in (2, 5)
    for text in (str(bad.value), printed.out, printed.err,
                 redact(f"copy failed for {uri}: timed out")):
        assert "ss-W0rd-9" not in text, text


def test_secret_uri_options_are_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    uri = ("mongodb://127.0.0.1:1/shop?serverSelectionTimeoutMS=100&tls=true"
           "&tlsCertificateKeyFilePassword=K3y-Pa55&authMechanism=MONGODB-AWS"
           "&authMechanismProperties=AWS_SESSION_TOKEN:T0ken-S3cret")

    code = main(["--uri", uri, "-v", "status"])
    printed = capsys.readouterr()

    assert code in (2, 5)
    shown = redact(f"cannot reach {uri}") + printed.out + printed.err
    assert "K3y-Pa55" not in shown and "T0ken-S3cret" not in shown
    assert "tlsCertificateKeyFilePassword=***" in redact(uri)


def test_redaction_is_linear_in_a_huge_host_name() -> None:
    # 1 MB of dotted host name: the old expression needed about half an hour for this.
    done = run_python('''
        from analytiq_migrations.errors import redact
        host = "a." * 512 * 1024
        text = redact("mongodb://app:pw@" + host + ":27017/db " + "mongodb://" + host)
        assert "pw" not in text and text.count("***") == 1
        assert redact("://[" * 256 * 1024 + "@")  # placeholders all the way: no rescans
        assert redact("x_mongodb://app:pw@h") == "x_mongodb://***@h"
        print("ok")
    ''', timeout=30)
    assert done.stdout.strip() == "ok", done.stderr


class TripsOnAKey(Migration):
    """Inserts a key that is already there: the server's reply quotes it."""

    version = 1
    description = "Import customers"
    transactional = False

    def up(self, db: Any) -> None:
        db.customers.insert_one({"_id": "ssn-078-05-1120"})
        db.customers.insert_one({"_id": "ssn-078-05-1120"})


class AsksForNothing(Migration):
    """A command the server refuses: its reply carries ``$clusterTime``."""

    version = 1
    description = "Resize a capped collection"
    transactional = False

    def up(self, db: Any) -> None:
        db.command("collMod", "no_such_collection", cappedSize=1024)


@pytest.mark.parametrize("migration", [TripsOnAKey, AsksForNothing])
def test_raw_server_replies_are_never_stored_or_printed(
    db: Any, migration: type, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="analytiq_migrations")
    with pytest.raises(MigrationFailedError) as failed:
        Migrator(db, [migration]).upgrade()

    stored = [str(doc) for name in ("migrations", "migrations_history")
              for doc in db[name].find()]
    everything = " ".join([str(failed.value), caplog.text, *stored])
    for raw in ("$clusterTime", "signature", "keyValue", "full error", "078-05-1120"):
        assert raw not in everything, raw
    assert "(code " in " ".join(stored)  # the code and the message are kept


def test_a_retried_repair_note_is_pushed_once(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MigrationFailedError):
        Migrator(db, [Explodes]).upgrade()
    real = Collection.update_one
    lost: list[Any] = []

    def reply_lost_once(self: Any, query: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, query, update, *args, **kwargs)
        if isinstance(update, dict) and "repairs" in update.get("$push", {}) and not lost:
            lost.append(query)
            raise AutoReconnect("connection closed before the reply")  # applied, reply lost
        return result

    monkeypatch.setattr(Collection, "update_one", reply_lost_once)
    [action] = Migrator(db, [Explodes]).repair(clear_failed=True)

    assert lost and action.action == "clear_failed"
    assert len(db.migrations.find_one({"_id": 1})["repairs"]) == 1


def test_a_duplicate_keys_value_is_left_out_and_what_follows_it_kept() -> None:
    """The value may be personal data (an email); our own words after it (the explanation
    around an error a migration caught) must survive."""
    from analytiq_migrations.errors import scrub

    text = ('Migration 2 up() caught DuplicateKeyError from users.insert_one(): E11000 '
            'duplicate key error index: email_1 dup key: { email: "ada@example.com", '
            'org: { id: 7 } } and then returned False. Inside a transaction...')
    assert scrub(text) == ('Migration 2 up() caught DuplicateKeyError from users.insert_one(): '
                           'E11000 duplicate key error index: email_1 dup key: {...} and then '
                           'returned False. Inside a transaction...')
    assert scrub("dup key: { unterminated") == "dup key: {...}"

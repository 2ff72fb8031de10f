"""Flaky networks and failovers, injected with ``failCommand``: what is retried (and
logged), what is never retried, and that records and history tell the truth afterwards.

``failCommand`` is server-wide on SecantusDB, so every fault here is filtered by
``appName`` to the migrator's own client, and armed exactly where it should land: from
inside the migration (on a thread of its own: the migration's thread is bound to the
run's session, which no other client may use) or right before the call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Optional

import pymongo
import pytest
from pymongo import MongoClient
from support import CommandRecorder, client_options, deadline, one_bulk_write, set_failpoint

from analytiq_migrations import (
    ConfigurationError,
    FailedMigrationError,
    Migration,
    MigrationFailedError,
    Migrator,
    RetryPolicy,
)

#: ``appName`` of the client under test; failpoints fire only for its commands.
APP = "migrator-under-fault"

#: Quick retries: the tests prove *that* and *how often* something is retried.
FAST = RetryPolicy(attempts=3, seconds=20.0, initial_wait=0.05, max_wait=0.2)

#: Guard against a regression that would block on a transaction left open.
HANG_GUARD = 60

WRITE_CONFLICT = 112
HOST_UNREACHABLE = 6
PRIMARY_STEPPED_DOWN = 189
MAX_TIME_EXPIRED = 50
BAD_VALUE = 2
VALIDATION_FAILED = 121
UNAUTHORIZED = 13

ADMIN: Optional[MongoClient[Any]] = None  # the test's own client, which arms failpoints


@pytest.fixture
def faulty(mongo_uri: str, client: MongoClient[Any], db: Any) -> Iterator[Any]:
    """``db`` as seen by the migrator's own client (``appName`` = ``APP``), recorded."""
    global ADMIN
    try:
        set_failpoint(client, "off")
    except pymongo.errors.OperationFailure as exc:
        pytest.skip(f"the server cannot inject faults ({exc.code}): start mongod with "
                    "--setParameter enableTestCommands=1")
    ADMIN = client
    recorder = CommandRecorder()
    mine: MongoClient[Any] = MongoClient(
        mongo_uri, **client_options(mongo_uri, appname=APP, event_listeners=[recorder]))
    mine.recorder = recorder  # type: ignore[attr-defined]
    try:
        yield mine[db.name]
    finally:
        set_failpoint(client, "off")
        mine.close()
        ADMIN = None


def arm(mode: Any, **data: Any) -> None:
    """Arm ``failCommand`` for the migrator's client, from a thread of its own."""
    assert ADMIN is not None
    admin = ADMIN
    thread = threading.Thread(target=set_failpoint,
                              args=(admin, mode, {**data, "appName": APP}))
    thread.start()
    thread.join()


@pytest.fixture
def retries(caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    """``retries()``: the retry warnings logged so far."""
    caplog.set_level(logging.INFO, logger="analytiq_migrations")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]

    yield logged


def outcomes(db: Any, version: int = 1) -> list[str]:
    """History of ``version``, oldest first."""
    return [h["status"] for h in db.migrations_history.find({"version": version})
            .sort([("started_at", 1), ("finished_at", 1)])]


def faulty_migration(*, transactional: bool, fault: Optional[dict[str, Any]],
                     writes: str = "update") -> type[Migration]:
    """A migration that counts its runs, arms ``fault`` on its first run, then writes."""

    class Faulty(Migration):
        version = 1
        description = "Give every account a balance"
        runs = 0

        def up(self, db: Any) -> None:
            type(self).runs += 1
            db.accounts.insert_one({"_id": f"attempt-{type(self).runs}"})
            if fault is not None and type(self).runs == 1:
                arm(**fault)
            if writes == "update":
                db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            else:
                db.counters.insert_one({"_id": type(self).runs})

    Faulty.transactional = transactional
    return Faulty


# -- transient faults inside a migration's transaction ---------------------------------------


def test_transient_transaction_error_on_a_migration_write_reruns_the_whole_transaction(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["update"], "errorCode": WRITE_CONFLICT,
        "errorLabels": ["TransientTransactionError"]})

    report = Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert report.versions == [1] and Faulty.runs == 2
    # The first attempt's insert was rolled back with it; only the second one's is there.
    assert [a["_id"] for a in faulty.accounts.find()] == ["attempt-2"]
    assert faulty.counters.find_one({"_id": 1})["runs"] == 1
    assert outcomes(faulty) == ["applied"]
    [retry] = retries()
    assert retry.startswith("migration 1 (up): transient error (attempt 1)")
    # One line with the error code, never the server's raw reply.
    assert "OperationFailure 112 (WriteConflict): " in retry
    assert "$clusterTime" not in retry and "full error" not in retry and "\n" not in retry


def ran_twice_landed_once(db: Any, Faulty: type[Migration], retries: Any) -> None:
    """The whole transaction ran again after one retry; only the second try's writes are
    there, once."""
    assert Faulty.runs == 2  # type: ignore[attr-defined]
    assert [a["_id"] for a in db.accounts.find()] == ["attempt-2"]
    assert db.counters.find_one({"_id": 1})["runs"] == 1
    assert outcomes(db) == ["applied"]
    assert [r.split(":")[0] for r in retries()] == ["migration 1 (up)"]


def test_a_closed_connection_inside_the_transaction_reruns_it(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["update"], "closeConnection": True})

    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    ran_twice_landed_once(faulty, Faulty, retries)
    assert "AutoReconnect" in retries()[0]


def test_unknown_commit_result_retries_the_commit_not_the_migration(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["commitTransaction"],
        "errorCode": MAX_TIME_EXPIRED, "errorLabels": ["UnknownTransactionCommitResult"]})

    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1
    assert len(faulty.client.recorder.filter("commitTransaction")) == 2
    assert faulty.counters.find_one({"_id": 1})["runs"] == 1
    assert outcomes(faulty) == ["applied"]
    [retry] = retries()
    assert retry.startswith("migration 1 (up): commit: transient error (attempt 1)")


def test_transient_errors_that_outlast_the_budget_fail_the_run_cleanly(
    faulty: Any, retries: Any
) -> None:
    # On inserts: the lease re-check that opens each attempt is an update.
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": FAST.attempts}, "failCommands": ["insert"],
        "errorCode": WRITE_CONFLICT, "errorLabels": ["TransientTransactionError"]},
        writes="insert")

    with pytest.raises(MigrationFailedError) as failed:
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == FAST.attempts  # one budget, not one budget per retry layer
    assert len(retries()) == FAST.attempts - 1
    assert "rolled back" in str(failed.value)
    assert faulty.accounts.count_documents({}) == 0 and faulty.counters.count_documents({}) == 0
    record = faulty.migrations.find_one({"_id": 1})
    assert (record["status"], record["error"]["type"]) == ("failed", "OperationFailure")
    assert outcomes(faulty) == ["failed"]

    # Once the network behaves, the next run simply applies it (nothing was committed).
    assert Migrator(faulty, [Faulty], retry=FAST).upgrade().versions == [1]
    assert outcomes(faulty) == ["failed", "applied"]


@pytest.mark.parametrize("fault", [
    {"errorCode": WRITE_CONFLICT, "errorLabels": ["TransientTransactionError"]},
    {"closeConnection": True},
], ids=["write-conflict", "closed-connection"])
def test_a_transient_fault_on_the_record_and_history_bulk_write_reruns_the_transaction(
    faulty: Any, retries: Any, fault: dict[str, Any]
) -> None:
    """On MongoDB 8.0+ the record and its entry go in one ``bulkWrite``, whose errors pymongo
    wraps: the wrapped error's labels still make it a retry, and it lands once."""
    if not one_bulk_write(faulty):
        pytest.skip("needs MongoDB 8.0+ and pymongo 4.9+ (the bulkWrite command)")
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["bulkWrite"], **fault})

    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    ran_twice_landed_once(faulty, Faulty, retries)


# -- transient faults on bookkeeping ---------------------------------------------------------


def test_retryable_errors_on_the_history_write_are_retried_without_duplicates(
    faulty: Any, retries: Any
) -> None:
    # The outcome (record and history) commits in one small transaction, which the library
    # runs again whole: its record write is conditional, so a try that landed is not repeated.
    # (The entry is an insert, or rides in one bulkWrite with the record on MongoDB 8.0+.)
    Faulty = faulty_migration(transactional=False, fault={
        "mode": {"times": 2}, "failCommands": ["insert", "bulkWrite"],
        "errorCode": HOST_UNREACHABLE,
        "errorLabels": ["RetryableWriteError"]})

    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1
    assert outcomes(faulty) == ["applied"]
    assert [r.split(": transient")[0] for r in retries()] == \
        ["record the outcome of version 1"] * 2


def test_a_primary_step_down_while_recording_is_ridden_out(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=False, fault={
        "mode": {"times": 2}, "failCommands": ["update"], "errorCode": PRIMARY_STEPPED_DOWN},
        writes="insert")

    # (No pymongo.timeout() here: within one, pymongo itself retries until it expires.)
    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1
    assert faulty.migrations.find_one({"_id": 1})["status"] == "applied"
    assert outcomes(faulty) == ["applied"]
    # The lease check that opens the outcome's transaction failed twice; the whole small
    # transaction ran again each time.
    assert [r.split(": transient")[0] for r in retries()] == \
        ["record the outcome of version 1"] * 2
    assert all("NotPrimaryError" in r or "NotMasterError" in r  # its name before 3.12
               for r in retries())


def test_closed_connections_while_taking_the_lock_are_retried(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=False, fault=None)
    arm({"times": 2}, failCommands=["findAndModify"], closeConnection=True)

    Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1 and outcomes(faulty) == ["applied"]
    [retry] = retries()
    assert retry.startswith("acquire the migration lock: transient error (attempt 1)")


def test_a_non_transactional_migration_is_never_rerun_after_a_transient_error(
    faulty: Any, retries: Any
) -> None:
    # Twice, so that pymongo's one retry of the migration's own write fails as well.
    Faulty = faulty_migration(transactional=False, fault={
        "mode": {"times": 2}, "failCommands": ["update"], "closeConnection": True})

    with pytest.raises(MigrationFailedError) as failed:
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1 and retries() == []
    assert "may be half applied" in str(failed.value)
    assert [a["_id"] for a in faulty.accounts.find()] == ["attempt-1"]  # what it did, it did
    record = faulty.migrations.find_one({"_id": 1})
    assert (record["status"], record["error"]["type"]) == ("failed", "AutoReconnect")
    assert outcomes(faulty) == ["failed"]
    with pytest.raises(FailedMigrationError, match="repair --clear-failed"):
        Migrator(faulty, [Faulty], retry=FAST).upgrade()
    assert Faulty.runs == 1


# -- permanent errors ------------------------------------------------------------------------


def test_a_permanent_error_in_the_transaction_fails_it_without_retrying(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["update"], "errorCode": VALIDATION_FAILED,
        "errorLabels": []})

    with pytest.raises(MigrationFailedError) as failed:
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1 and retries() == []
    message = str(failed.value)
    assert "Migration 1 (Give every account a balance) failed during 'up'" in message
    assert "rolled back: nothing of it was written" in message
    assert faulty.accounts.count_documents({}) == 0
    assert faulty.migrations.find_one({"_id": 1})["status"] == "failed"
    assert outcomes(faulty) == ["failed"]
    assert faulty.migration_lock.count_documents({}) == 0


def test_a_permanent_error_on_commit_leaves_no_transaction_open(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=True, fault={
        "mode": {"times": 1}, "failCommands": ["commitTransaction"], "errorCode": BAD_VALUE,
        "errorLabels": []})

    # The failed commit left the server-side transaction open, holding the record and the
    # lock: without ending it, recording the failure would wait on it.
    with deadline(HANG_GUARD), pytest.raises(MigrationFailedError):
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert Faulty.runs == 1 and retries() == []
    assert faulty.accounts.count_documents({}) == 0
    assert faulty.migrations.find_one({"_id": 1})["status"] == "failed"
    assert outcomes(faulty) == ["failed"]
    assert faulty.client.recorder.filter("killSessions")
    with deadline(HANG_GUARD):
        assert Migrator(faulty, [Faulty], retry=FAST).upgrade().versions == [1]
    assert [a["_id"] for a in faulty.accounts.find()] == ["attempt-2"]


def test_a_permanent_error_writing_the_record_after_a_non_transactional_migration(
    faulty: Any, retries: Any
) -> None:
    Faulty = faulty_migration(transactional=False, fault={
        "mode": {"times": 1}, "failCommands": ["insert", "bulkWrite"], "errorCode": BAD_VALUE,
        "errorLabels": []}, writes="update")

    with pytest.raises(MigrationFailedError) as failed:
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    # The migration's writes happened; the record does not claim it applied.
    assert Faulty.runs == 1 and retries() == []
    assert faulty.counters.find_one({"_id": 1})["runs"] == 1
    assert "may be half applied" in str(failed.value)
    assert faulty.migrations.find_one({"_id": 1})["status"] == "failed"
    assert outcomes(faulty) == ["failed"]


def test_a_permission_error_is_reported_before_anything_is_written(faulty: Any) -> None:
    Faulty = faulty_migration(transactional=False, fault=None)
    arm({"times": 1}, failCommands=["find"], errorCode=UNAUTHORIZED, errorLabels=[])

    with pytest.raises(ConfigurationError, match="Not authorized") as refused:
        Migrator(faulty, [Faulty], retry=FAST).upgrade()

    assert "may read and write this database" in str(refused.value)
    assert Faulty.runs == 0 and faulty.migrations.count_documents({}) == 0

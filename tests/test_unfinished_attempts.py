"""What the next run does with an attempt that did not finish: resumed only from its own
checkpoint, never across directions, never after a failure outside ``batch_update``;
``sys.exit()`` in a migration is a failure; a live holder in a long transaction keeps
its lease. ``plan``, ``status``, ``validate`` and the run give one answer.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from pymongo import MongoClient
from support import client_options, wait_for

from analytiq_migrations import (
    FailedMigrationError,
    InterruptedMigrationError,
    Migration,
    MigrationFailedError,
    Migrator,
    RetryPolicy,
)
from analytiq_migrations.cli import main
from analytiq_migrations.lock import TRANSACTION_LIFETIME, Lease, ServerClock
from analytiq_migrations.records import RunInfo

ITEMS = 20


def items(db: Any) -> list[int]:
    """Every item's counter, in ``_id`` order."""
    return [d["n"] for d in db.items.find().sort("_id", 1)]


def counted(db: Any) -> int:
    doc = db.counters.find_one({"_id": 1})
    return int(doc["runs"]) if doc else 0


class Tally(Migration):
    """+1 per item on ``up``, -1 on ``down``, five items a batch; ``stop`` makes the given
    direction stop at item 12 (in its third batch) the way ``stop`` says."""

    version = 1
    description = "Tally every item"
    transactional = False
    stop: Optional[tuple[str, Callable[[], BaseException]]] = None

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, self._change("up", 1), batch_size=5)

    def down(self, db: Any) -> None:
        self.batch_update("items", {}, self._change("down", -1), batch_size=5)

    def _change(self, direction: str, delta: int) -> Callable[[dict[str, Any]], Any]:
        def change(doc: dict[str, Any]) -> Any:
            if Tally.stop is not None and Tally.stop[0] == direction and doc["_id"] == 12:
                raise Tally.stop[1]()
            return {"$inc": {"n": delta}}
        return change


@pytest.fixture
def tally(db: Any) -> Iterator[type[Tally]]:
    db.items.insert_many([{"_id": i, "n": 0} for i in range(ITEMS)])
    Tally.stop = None
    yield Tally
    Tally.stop = None


def killed(call: Callable[[], Any], direction: str) -> None:
    """Run ``call`` with ``direction`` stopping mid-walk as a kill does (the process stops:
    nothing is recorded; the next run finds the record ``running``)."""
    Tally.stop = (direction, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        call()
    Tally.stop = None


# -- 3. a checkpoint of the other direction ---------------------------------------------------


def test_a_killed_revert_is_finished_before_anything_goes_up_again(db: Any, tally: Any) -> None:
    Migrator(db, [Tally]).upgrade()
    killed(lambda: Migrator(db, [Tally]).downgrade(0), "down")
    half = items(db)
    assert half == [0] * 10 + [1] * 10

    migrator = Migrator(db, [Tally])
    with pytest.raises(InterruptedMigrationError) as planned:
        migrator.plan()
    assert "stopped during 'down' at a checkpoint" in str(planned.value)
    assert "Finish the 'down' first: `analytiq-migrations down 0`" in str(planned.value)
    [problem] = migrator.validate()
    assert "The next `down` resumes it from its checkpoint" in problem.hint
    assert [row.status for row in migrator.status()] == ["interrupted"]
    with pytest.raises(InterruptedMigrationError, match="Finish the 'down' first"):
        migrator.upgrade()
    assert items(db) == half  # up() did not run over the half-reverted items

    assert migrator.downgrade(0).versions == [1]  # the revert resumes from its checkpoint
    assert items(db) == [0] * ITEMS
    assert migrator.upgrade().versions == [1]
    assert items(db) == [1] * ITEMS


def test_a_killed_apply_is_finished_before_it_is_reverted(db: Any, tally: Any) -> None:
    killed(lambda: Migrator(db, [Tally]).upgrade(), "up")
    assert items(db) == [1] * 10 + [0] * 10

    migrator = Migrator(db, [Tally])
    with pytest.raises(InterruptedMigrationError,
                       match="Finish the 'up' first: `analytiq-migrations up 1`"):
        migrator.downgrade(0)
    assert items(db) == [1] * 10 + [0] * 10  # down() did not revert what never changed
    assert migrator.plan().steps[0].note == "resume from checkpoint"

    assert migrator.upgrade().versions == [1]
    assert items(db) == [1] * ITEMS
    assert migrator.downgrade(0).versions == [1]
    assert items(db) == [0] * ITEMS


# -- 4. which failures resume on their own ----------------------------------------------------


class Reindex(Migration):
    """A backfill, then a step after it that fails (outside ``batch_update``)."""

    version = 1
    description = "Backfill, then rebuild the index"
    transactional = False
    fail = True

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=5)
        db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
        if Reindex.fail:
            raise RuntimeError("the index build failed")


def test_a_failure_after_the_batches_is_refused_not_resumed(db: Any, tally: Any) -> None:
    Reindex.fail = True
    with pytest.raises(MigrationFailedError) as failed:
        Migrator(db, [Reindex]).upgrade()
    assert "repair --clear-failed" in str(failed.value)
    assert "the next run refuses it" in str(failed.value)

    Reindex.fail = False  # fixed; but its code after the batches already ran once
    migrator = Migrator(db, [Reindex])
    with pytest.raises(FailedMigrationError):
        migrator.plan()
    with pytest.raises(FailedMigrationError):
        migrator.upgrade()
    assert counted(db) == 1 and items(db) == [1] * ITEMS
    [problem] = migrator.validate()
    assert problem.kind == "failed" and "repair --clear-failed" in problem.hint


def test_a_failure_inside_batch_update_resumes_from_its_checkpoint(db: Any, tally: Any) -> None:
    Tally.stop = ("up", lambda: ValueError("item 12 is malformed"))
    with pytest.raises(MigrationFailedError) as failed:
        Migrator(db, [Tally]).upgrade()
    assert "resumes after the checkpoint" in str(failed.value)
    assert "clear-failed" not in str(failed.value)
    Tally.stop = None

    migrator = Migrator(db, [Tally])
    assert migrator.plan().steps[0].note == "resume from checkpoint"
    [problem] = migrator.validate()
    assert "The next `up` resumes it from its checkpoint" in problem.hint
    assert migrator.upgrade().versions == [1]
    assert items(db) == [1] * ITEMS


# -- 7. sys.exit() in a migration -------------------------------------------------------------


class Exits(Migration):
    version = 1
    description = "Calls sys.exit"
    code: Any = 0

    def up(self, db: Any) -> None:
        db.exited.insert_one({"at": "before"})
        sys.exit(Exits.code)


@pytest.mark.parametrize("transactional", [True, False])
def test_sys_exit_in_a_migration_is_a_failure_of_that_migration(
    db: Any, transactional: bool
) -> None:
    Exits.transactional = transactional
    with pytest.raises(MigrationFailedError, match=r"up\(\) called sys.exit\(0\)"):
        Migrator(db, [Exits]).upgrade()
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "failed" and record["error"]["type"] == "MigrationFailedError"
    assert db.exited.count_documents({}) == (0 if transactional else 1)


def test_the_command_line_exits_1_when_a_migration_calls_sys_exit(
    db: Any, mongo_uri: str, tmp_path: Path
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "0001_exits.py").write_text(
        '"""Calls sys.exit"""\nimport sys\n\n\ndef up(db):\n    sys.exit(0)\n')
    code = main(["--uri", mongo_uri, "--database", db.name, "--migrations",
                 str(tmp_path / "m"), "up"])
    assert code == 1
    assert db.migrations.find_one({"_id": 1})["status"] == "failed"


def test_ctrl_c_stays_an_interruption_where_sys_exit_is_a_failure(db: Any) -> None:
    class Stops(Migration):
        version = 1
        transactional = False
        how: type[BaseException] = SystemExit

        def up(self, db: Any) -> None:
            raise Stops.how

    with pytest.raises(MigrationFailedError):
        Migrator(db, [Stops]).upgrade()
    assert [row.status for row in Migrator(db, [Stops]).status()] == ["failed"]
    Migrator(db, [Stops]).repair(clear_failed=True)

    Stops.how = KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Migrator(db, [Stops]).upgrade()
    assert [row.status for row in Migrator(db, [Stops]).status()] == ["interrupted"]


# -- 11. a transaction longer than the lease's TTL --------------------------------------------

TTL = 1.0


class Slow(Migration):
    """A transaction that lasts three TTLs."""

    version = 1
    transactional = True

    def up(self, db: Any) -> None:
        db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
        time.sleep(3 * TTL)


def test_a_live_holder_keeps_its_lease_through_a_transaction_longer_than_the_ttl(
    db: Any, mongo_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    first: MongoClient[Any] = MongoClient(mongo_uri, **client_options(mongo_uri))
    second: MongoClient[Any] = MongoClient(mongo_uri, **client_options(mongo_uri))
    outcome: dict[str, Any] = {}

    def holder() -> None:
        try:
            outcome["report"] = Migrator(first[db.name], [Slow], lock_ttl=TTL).upgrade()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        wait_for(lambda: db.counters.database.migration_lock.find_one(), timeout=30)
        waiter = Migrator(second[db.name], [Slow], lock_ttl=TTL, lock_wait=30)
        assert waiter.upgrade().versions == []  # it waited; the holder did the work
    finally:
        thread.join(60)
        first.close()
        second.close()

    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].versions == [1]
    assert counted(db) == 1
    assert "Took over" not in caplog.text and "died" not in caplog.text


def test_while_a_transactional_step_runs_the_lease_covers_its_transaction(db: Any) -> None:
    """What a waiting run sees: the lease as last written outside the transaction."""
    run = RunInfo(run_id="r1", host="here", pid=os.getpid(), user="me", tool_version="0")
    lease = Lease(db.migration_lock, run, TTL, ServerClock(db), RetryPolicy())

    def lasts() -> float:
        doc = db.migration_lock.find_one()
        return float((doc["expires_at"] - doc["heartbeat_at"]).total_seconds())

    lease.step = {"version": 1, "direction": "up"}  # a transactional step runs
    lease.acquire()
    try:
        assert lasts() == TTL + TRANSACTION_LIFETIME
        lease.step = None  # between steps, or a non-transactional one
        lease.renew()
        assert lasts() == TTL
    finally:
        lease.release()


def test_the_lock_ttl_option_says_what_it_means(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "before another run may take it over" in text
    assert "transaction" in text

"""Exactly once, or stop and say so: the bookkeeping under lost replies, paused holders and
kills at an exact command.

Each fault is placed where it bites: ``failCommand`` on ``commitTransaction`` with a
``writeConcernError`` is a commit that happened but reads as unknown; a child process
signals itself (``SIGSTOP``, ``SIGKILL``) as its driver is about to send a given command.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from children import Children, children_for, write_migrations
from support import wait_for
from test_faults import FAST, arm, faulty  # noqa: F401 - the fixture is used by name

from analytiq_migrations import (
    CommitUnknownError,
    InterruptedMigrationError,
    Migration,
    MigrationFailedError,
    Migrator,
)

pytestmark = pytest.mark.slow

#: The paused or killed holder's lease: short, so the next run takes over soon.
SHORT_TTL = 2.0

#: How long the next run may wait for that lease (generous for a loaded machine).
NEXT_WAIT = 60.0

#: A commit that happened but whose reply reads as unknown (a write concern timeout).
LOST_COMMIT = {"code": 64, "codeName": "WriteConcernFailed",
               "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}


@pytest.fixture
def children(mongo_uri: str, db: Any) -> Iterator[Children]:
    yield from children_for(mongo_uri, db.name)


def outcomes(db: Any, version: int = 1) -> list[str]:
    """History of ``version``, oldest first."""
    return [h["status"] for h in db.migrations_history.find({"version": version})
            .sort([("started_at", 1), ("finished_at", 1)])]


def counted(db: Any) -> int:
    doc = db.counters.find_one({"_id": 1})
    return int(doc["runs"]) if doc else 0


# -- 1. a commit whose outcome cannot be read --------------------------------------------------


class ArmOnLog(logging.Handler):
    """Arm a failpoint when the library logs a message containing ``text`` (once)."""

    def __init__(self, text: str, **fault: Any) -> None:
        super().__init__()
        self.text, self.fault, self.done = text, fault, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.done and self.text in record.getMessage():
            self.done = True
            arm(**self.fault)


def test_a_commit_whose_outcome_cannot_be_read_is_never_recorded_as_failed(
    faulty: Any,  # noqa: F811
) -> None:
    class Counted(Migration):
        version = 1
        transactional = True

        def up(self, db: Any) -> None:
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            # The first commit lands but its reply says the write concern failed ...
            arm({"times": 1}, failCommands=["commitTransaction"], writeConcernError=LOST_COMMIT)

    # ... then every retried commit and every read of the outcome loses its connection.
    cut = ArmOnLog("commit: transient error (attempt 1)", mode={"times": 40},
                   failCommands=["commitTransaction", "find"], closeConnection=True)
    log = logging.getLogger("analytiq_migrations")
    log.addHandler(cut)
    try:
        with pytest.raises(CommitUnknownError) as unknown:
            Migrator(faulty, [Counted], retry=FAST).upgrade()
    finally:
        log.removeHandler(cut)
        arm("off")

    assert "the commit of version 1 (up) may have succeeded" in str(unknown.value).lower()
    assert "status" in str(unknown.value)
    assert unknown.value.exit_code == 1
    # Nothing contradicts the commit: the record and history say what committed.
    assert faulty.migrations.find_one({"_id": 1})["status"] == "applied"
    assert outcomes(faulty) == ["applied"]
    assert Migrator(faulty, [Counted]).upgrade().versions == []
    assert counted(faulty) == 1


# -- 10. a body or batch run again after a commit that did land ------------------------------


def counting(first_run: Callable[[], None]) -> Any:
    """A transactional migration that counts its runs in ``counters`` (what commits) and on
    ``runs`` (how often its body ran), calling ``first_run`` during its first run."""

    class Counted(Migration):
        version = 1
        transactional = True
        runs = 0

        def up(self, db: Any) -> None:
            type(self).runs += 1
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            if type(self).runs == 1:
                first_run()

    return Counted


def test_a_transaction_run_again_after_its_commit_landed_conflicts_instead_of_committing_twice(
    faulty: Any,  # noqa: F811
) -> None:
    # Every try of the first commit lands, and each reply says the transaction is gone (as
    # a retried commit is answered after a server restart): the loop runs the body again.
    Counted = counting(lambda: arm({"times": FAST.attempts}, failCommands=["commitTransaction"],
                                   writeConcernError=LOST_COMMIT,
                                   errorLabels=["TransientTransactionError"]))

    report = Migrator(faulty, [Counted], retry=FAST).upgrade()

    assert report.versions == [1]
    assert Counted.runs == 2  # the body did run again ...
    assert counted(faulty) == 1  # ... and its second transaction conflicted, not committed
    assert outcomes(faulty) == ["applied"]


def test_a_batch_run_again_after_its_commit_landed_changes_nothing_twice(
    faulty: Any,  # noqa: F811
) -> None:
    faulty.items.insert_many([{"_id": i, "n": 0} for i in range(30)])

    class Backfill(Migration):
        version = 1
        transactional = False

        def up(self, db: Any) -> None:
            # The "started" checkpoint commits first; then batch 1's commit lands three
            # times over with replies that make the loop run the batch again.
            arm({"skip": 1, "times": FAST.attempts}, failCommands=["commitTransaction"],
                writeConcernError=LOST_COMMIT, errorLabels=["TransientTransactionError"])
            self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=10)

    Migrator(faulty, [Backfill], retry=FAST).upgrade()

    assert sorted(d["n"] for d in faulty.items.find()) == [1] * 30
    record = faulty.migrations.find_one({"_id": 1})
    assert record["status"] == "applied" and outcomes(faulty) == ["applied"]


# -- 2. a holder paused past its lease --------------------------------------------------------

#: A backfill through ``self.batch_update``: 20 items, two batches. Its ``update``s on
#: ``migrations``: 1 running, 2 started, 3-4 the batches, 5 done, 6 the outcome.
BACKFILL = {
    "0001_backfill.py": '''\
        from analytiq_migrations import Migration


        class Backfill(Migration):
            """Count every item (no transaction; declared idempotent so a takeover re-runs it)"""

            version = 1
            transactional = False
            idempotent = True

            def up(self, db):
                self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=10)
        ''',
}


#: The holder's bookkeeping writes at which it is paused: its n-th write to ``migrations``
#: (see ``BACKFILL``): the new record's insert, checkpoint updates, then the outcome (an
#: update and an insert of the history entry, or one ``bulkWrite`` on MongoDB 8.0+).
PAUSE_POINTS = [
    (1, "its running record"),
    (2, "batch_update's started checkpoint"),
    (5, "batch_update's done checkpoint"),
    (6, "the outcome"),
]


@pytest.mark.parametrize("nth, what", PAUSE_POINTS)
def test_a_holder_paused_past_its_lease_lands_none_of_its_writes(
    db: Any, children: Children, tmp_path: Path, nth: int, what: str
) -> None:
    """Replica set: each write is in a small transaction that begins with the lease check;
    the run taking over ends the paused holder's session, and with it that transaction."""
    paused_past_its_lease(db, children, tmp_path, nth, what)


@pytest.mark.parametrize("nth, what", PAUSE_POINTS)
def test_without_transactions_a_paused_holder_lands_none_of_its_writes(
    standalone_db: Any, standalone_uri: str, tmp_path: Path, nth: int, what: str
) -> None:
    """Standalone: each write names the record state it follows (this run's ``running``),
    which the run taking over changed first."""
    for registry in children_for(standalone_uri, standalone_db.name):
        paused_past_its_lease(standalone_db, registry, tmp_path, nth, what)


def paused_past_its_lease(db: Any, children: Children, tmp_path: Path, nth: int,
                          what: str) -> None:
    """Freeze a holder at its ``nth`` bookkeeping write, let another run take over and
    finish, thaw the holder: it must stop, and nothing of it may land."""
    db.items.insert_many([{"_id": i, "n": 0} for i in range(20)])
    source = write_migrations(tmp_path / "migrations", BACKFILL)
    paused = children.upgrade(source, lock_ttl=SHORT_TTL,
                              signal_at=f"SIGSTOP write migrations {nth}")
    paused.expect("SIGNALLED")
    wait_for(lambda: _state(paused.proc.pid) == "T", message="the child did not stop")

    # Another run takes the lease over once it expires and does the whole job.
    taker = Migrator(db, source, lock_ttl=SHORT_TTL, lock_wait=NEXT_WAIT)
    assert taker.upgrade().versions == [1]
    record = db.migrations.find_one({"_id": 1})

    os.kill(paused.proc.pid, signal.SIGCONT)
    assert paused.finish() != 0, f"the paused holder carried on after {what}"

    assert db.migrations.find_one({"_id": 1}) == record  # nothing of it landed
    assert record["status"] == "applied"
    assert sorted(d["n"] for d in db.items.find()) == [1] * 20
    assert outcomes(db).count("applied") == 1
    assert [row.status for row in taker.status()] == ["applied"]


#: Fails until the test puts the flag in place; not idempotent, so a failure is cleared by
#: hand (``repair --clear-failed``) and running it twice would count twice.
FAILS_UNTIL_FLAGGED = {
    "0001_count_orders.py": '''\
        """Count every order once (no transaction, not idempotent)"""

        transactional = False


        def up(db):
            if db.flags.find_one({"_id": "go"}) is None:
                raise RuntimeError("not yet")
            db.orders.update_many({}, {"$inc": {"n": 1}})
        ''',
}


def test_a_repairer_paused_past_its_lease_clears_nothing(db: Any, children: Children,
                                                         tmp_path: Path) -> None:
    """``repair --clear-failed`` frozen at its write while another run clears the failure
    and applies the version: thawed, its stale "clear" must not land on the applied record
    (it would make the version pending, and the next ``up`` would count twice)."""
    repairer_paused_past_its_lease(db, children, tmp_path)


def test_without_transactions_a_repairer_paused_past_its_lease_clears_nothing(
    standalone_db: Any, standalone_uri: str, tmp_path: Path
) -> None:
    for registry in children_for(standalone_uri, standalone_db.name):
        repairer_paused_past_its_lease(standalone_db, registry, tmp_path)


def repairer_paused_past_its_lease(db: Any, children: Children, tmp_path: Path) -> None:
    db.orders.insert_many([{"_id": i, "n": 0} for i in range(5)])
    source = write_migrations(tmp_path / "migrations", FAILS_UNTIL_FLAGGED)
    with pytest.raises(MigrationFailedError):
        Migrator(db, source).upgrade()
    assert db.migrations.find_one({"_id": 1})["status"] == "failed"

    paused = children.upgrade(source, lock_ttl=SHORT_TTL, action="repair_clear_failed",
                              signal_at="SIGSTOP update migrations 1")
    paused.expect("SIGNALLED")
    wait_for(lambda: _state(paused.proc.pid) == "T", message="the child did not stop")

    # Another operator takes the lease over once it expires, clears and applies.
    taker = Migrator(db, source, lock_ttl=SHORT_TTL, lock_wait=NEXT_WAIT)
    assert [a.action for a in taker.repair(clear_failed=True)] == ["clear_failed"]
    db.flags.insert_one({"_id": "go"})
    assert taker.upgrade().versions == [1]
    record = db.migrations.find_one({"_id": 1})
    assert record["status"] == "applied"

    os.kill(paused.proc.pid, signal.SIGCONT)
    assert paused.finish() != 0, "the paused repairer carried on"
    assert db.migrations.find_one({"_id": 1}) == record  # its clear did not land
    assert taker.upgrade().versions == []
    assert sorted(d["n"] for d in db.orders.find()) == [1] * 5


def _state(pid: int) -> str:
    """The process state letter from ``/proc`` ("T" when stopped)."""
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


# -- 5. record and history: together, and each entry once ------------------------------------

NOT_IDEMPOTENT = {
    "0001_tag_orders.py": '''\
        """Count every order's tags (no transaction; running it twice double-counts)"""

        # park helper

        transactional = False


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            park("tagging")
        ''',
}


def test_a_kill_between_record_and_history_never_leaves_an_applied_record_without_history(
    db: Any, children: Children, tmp_path: Path
) -> None:
    source = write_migrations(tmp_path / "migrations", NOT_IDEMPOTENT)
    child = children.upgrade(source, lock_ttl=SHORT_TTL,
                             signal_at="SIGKILL write migrations_history 1")
    child.proc.wait(60)

    record = db.migrations.find_one({"_id": 1})
    assert record["status"] != "applied" or outcomes(db) == ["applied"]
    next_run = Migrator(db, source, lock_wait=NEXT_WAIT)
    with pytest.raises(InterruptedMigrationError):
        next_run.upgrade()
    assert outcomes(db) == ["interrupted"]
    assert [row.status for row in next_run.status()] == ["interrupted"]


def test_a_dead_run_settled_twice_has_one_interrupted_entry(
    db: Any, children: Children, tmp_path: Path
) -> None:
    """Replica set: the entry and the record change commit together."""
    settled_twice(db, children, tmp_path)


def test_without_transactions_a_dead_run_settled_twice_has_one_interrupted_entry(
    standalone_db: Any, standalone_uri: str, tmp_path: Path
) -> None:
    """Standalone: the entry is written first; settling again writes the same ``_id``."""
    for registry in children_for(standalone_uri, standalone_db.name):
        settled_twice(standalone_db, registry, tmp_path)


def settled_twice(db: Any, children: Children, tmp_path: Path) -> None:
    """A run dies mid-migration; the run settling it dies as it writes the record (after
    the history entry); a third run settles it again."""
    source = write_migrations(tmp_path / "migrations", NOT_IDEMPOTENT)
    dead = children.upgrade(source, lock_ttl=SHORT_TTL, park_at="tagging")
    dead.expect("PARKED ")
    dead.kill()
    settler = children.upgrade(source, lock_ttl=SHORT_TTL, lock_wait=NEXT_WAIT,
                               signal_at="SIGKILL update migrations 1")
    settler.proc.wait(90)

    with pytest.raises(InterruptedMigrationError):
        Migrator(db, source, lock_wait=NEXT_WAIT).upgrade()

    assert outcomes(db) == ["interrupted"]
    assert counted(db) == 1

"""A bounded storm: three processes racing to upgrade one database while one of them is
killed at a random moment and the server injects transient faults (write conflicts, cut
connections, commits that land but whose reply says otherwise); then a clean run, and
the invariants: every change exactly once, records, history, ``status`` and the data
agree.

Iterations run until ``BUDGET`` seconds are spent, and at least once per fault; the
seed is printed so a failing storm can be replayed (``CHAOS_SEED``).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from children import Children, write_migrations
from support import set_failpoint, unique_db_name

from analytiq_migrations import InterruptedMigrationError, Migrator

pytestmark = pytest.mark.slow

#: Seconds of storm (kept well under a minute: this runs in CI by default).
BUDGET = 35.0


#: Documents each backfill walks (ten batches of 20).
ITEMS = 200

#: ``appName`` of clients the library builds from a URI: the children's, not the test's.
CHILD_APP = "analytiq-migrations"

#: A commit that lands while its reply says it may not have.
LOST_COMMIT = {"code": 64, "codeName": "WriteConcernFailed",
               "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}

#: The faults a storm draws from: (mode, data), each well within the retry budget.
FAULTS: list[tuple[dict[str, int], dict[str, Any]]] = [
    ({"times": 2}, {"failCommands": ["update"], "errorCode": 112,
                    "errorLabels": ["TransientTransactionError"]}),
    ({"skip": 3, "times": 2}, {"failCommands": ["update", "insert"], "closeConnection": True}),
    ({"skip": 1, "times": 2}, {"failCommands": ["commitTransaction"], "closeConnection": True}),
    ({"skip": 2, "times": 2}, {"failCommands": ["commitTransaction"],
                               "writeConcernError": LOST_COMMIT}),
    # Every try of one commit lands and reads as lost, the last labelled transient (as a
    # retried commit is answered after a server restart): the body or batch runs again.
    ({"skip": 2, "times": 5}, {"failCommands": ["commitTransaction"],
                               "writeConcernError": LOST_COMMIT,
                               "errorLabels": ["TransientTransactionError"]}),
    ({"skip": 4, "times": 1}, {"failCommands": ["find"], "closeConnection": True}),
]

#: Every fault is drawn at least once (in an order the seed shuffles).
MIN_ITERATIONS = len(FAULTS)

MIGRATIONS = {
    "0001_open_ledger.py": '''\
        """Open the ledger (in a transaction)"""


        def up(db):
            db.ledger.update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True)
        ''',
    "0002_backfill_items.py": '''\
        from analytiq_migrations import Migration


        class Backfill(Migration):
            """Count every item once (batches, no transaction, not idempotent)"""

            version = 2
            transactional = False

            def up(self, db):
                self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=20)
        ''',
    "0003_ledger_entry.py": '''\
        """Add to the ledger (in a transaction)"""


        def up(db):
            db.ledger.update_one({"_id": 3}, {"$inc": {"n": 1}}, upsert=True)
        ''',
    "0004_tag_items.py": '''\
        from analytiq_migrations import Migration


        class Tag(Migration):
            """Tag every item once, per document (batches, no transaction)"""

            version = 4
            transactional = False

            def up(self, db):
                self.batch_update("items", {}, lambda doc: {"$inc": {"tags": 1}},
                                  batch_size=20)
        ''',
}


def test_three_racing_processes_with_kills_and_faults_apply_everything_exactly_once(
    client: Any, mongo_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        set_failpoint(client, "off")
    except Exception as exc:  # a server without test commands cannot inject faults
        pytest.skip(f"the server cannot inject faults: {exc}")
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    order = rng.sample(range(len(FAULTS)), len(FAULTS))
    source = write_migrations(tmp_path / "migrations", MIGRATIONS)
    started, iterations, kills, faults = time.monotonic(), 0, 0, 0
    while iterations < MIN_ITERATIONS or time.monotonic() - started < BUDGET:
        iterations += 1
        db = client[unique_db_name(f"chaos_{iterations}")]
        try:
            fault = FAULTS[order[(iterations - 1) % len(FAULTS)]]
            killed, victim = storm(db, mongo_uri, source, rng, client, fault)
            kills, faults = kills + killed, faults + 1
            settle_and_check(db, source, seed, iterations, victim)
        finally:
            set_failpoint(client, "off")
            client.drop_database(db.name)
    with capsys.disabled():
        print(f"\nchaos: seed {seed}, {iterations} iterations, {kills} kills, "
              f"{faults} injected faults, {time.monotonic() - started:.1f}s: invariants held")


def storm(db: Any, uri: str, source: Path, rng: random.Random, admin: Any,
          fault: tuple[dict[str, int], dict[str, Any]]) -> tuple[int, int]:
    """Three racing children, a fault armed (it fires in whichever child sends its
    commands), one child killed at a random moment;
    returns the number of kills (0 when it had already finished) and the victim's pid."""
    db.items.insert_many([{"_id": i, "n": 0, "tags": 0} for i in range(ITEMS)])
    mode, data = fault
    set_failpoint(admin, mode, {**data, "appName": CHILD_APP})
    children = Children(uri, db.name)
    try:
        racers = [children.upgrade(source, lock_ttl=2.0, lock_wait=60.0) for _ in range(3)]
        time.sleep(rng.uniform(0.5, 3.0))
        victim = rng.choice(racers)
        killed = victim.proc.poll() is None
        victim.kill()
        for racer in racers:
            racer.proc.wait(120)
        return int(killed), victim.proc.pid
    finally:
        children.kill_all()


def settle_and_check(db: Any, source: Path, seed: int, iteration: int, victim: int) -> None:
    """A clean run, then every invariant."""
    where = f"(seed {seed}, iteration {iteration})"
    migrator = Migrator(db, source, lock_wait=60)
    try:
        migrator.upgrade()
    except InterruptedMigrationError as exc:
        # The kill landed after version 4's record said `running` and before
        # batch_update saved its first checkpoint: with no checkpoint, the library cannot
        # know what the migration did, so it refuses. The operator's check: nothing of it
        # was written (batch_update marks itself started before its first batch), then
        # forget the attempt and run again.
        record = db.migrations.find_one({"_id": 4})
        assert exc.version == 4 and record["status"] == "running" and \
            not record.get("progress"), (where, exc)
        assert db.items.count_documents({"tags": {"$ne": 0}}) == 0, where
        migrator.repair(clear_failed=True)
        migrator.upgrade()
    rows = migrator.status()
    assert [(r.version, r.status) for r in rows] == [(v, "applied") for v in (1, 2, 3, 4)], where
    assert migrator.validate() == [], where
    for version in (1, 2, 3, 4):
        entries = migrator.history(version)
        outcomes = [h.status for h in entries]
        assert outcomes.count("applied") == 1, (where, version, outcomes)
        assert set(outcomes) <= {"applied", "interrupted", "failed"}, (where, outcomes)
        applied = next(h for h in entries if h.status == "applied")
        record = db.migrations.find_one({"_id": version})
        assert record["run_id"] == applied.run_id, (where, version)
    assert {d["_id"]: d["n"] for d in db.ledger.find()} == {1: 1, 3: 1}, where
    assert db.items.count_documents({}) == ITEMS, where
    assert sorted({(d["n"], d["tags"]) for d in db.items.find()}) == [(1, 1)], where
    # Every run that took the lock released it. The one lock that may be left is the killed
    # child's, taken after the others had finished and before it could release (the clean
    # run, with nothing to do, takes no lock): a dead holder's, which the next run that
    # needs the lock takes over.
    assert db.migration_lock.count_documents({"pid": {"$ne": victim}}) == 0, where

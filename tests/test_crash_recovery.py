"""A run killed with SIGKILL (OOM killer, node loss, ``kill -9``) at each awkward moment,
and what the next run does about it.

Each child parks at the chosen moment and says so on stdout; the test then kills it.
The next run takes the lock over (at once, the dead run having been on this machine;
elsewhere it waits, ``lock_wait``, for the short lease to expire), ends the dead run's
sessions, and settles what it left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from children import Children, children_for, write_migrations
from support import deadline

from analytiq_migrations import InterruptedMigrationError, Migrator

#: The dead run's lease: short so the next run does not wait long for it to expire.
DEAD_TTL = 2.0

#: How long the next run may wait for that lease; generous for a loaded CI machine.
NEXT_WAIT = 60.0

#: Upper bound on the next run as a whole: a regression that blocks on a transaction
#: left open by the dead run fails the test instead of hanging it.
NEXT_RUN_TIMEOUT = 90

pytestmark = pytest.mark.slow


@pytest.fixture
def children(mongo_uri: str, db: Any) -> Iterator[Children]:
    yield from children_for(mongo_uri, db.name)


def next_run(db: Any, source: Path, caplog: pytest.LogCaptureFixture) -> Migrator:
    """The Migrator of the run after the crash (logging captured)."""
    caplog.set_level(logging.INFO, logger="analytiq_migrations")
    return Migrator(db, source, lock_wait=NEXT_WAIT)


def history(db: Any, version: int) -> list[str]:
    """Outcomes of ``version``'s attempts, oldest first."""
    return [h["status"] for h in db.migrations_history.find({"version": version})
            .sort([("started_at", 1), ("finished_at", 1)])]


def runs(db: Any, counter: int = 1) -> int:
    """How many times a migration body got as far as bumping its counter (and it stuck)."""
    doc = db.counters.find_one({"_id": counter})
    return int(doc["runs"]) if doc else 0


def crash(children: Children, source: Path, **where: str) -> None:
    """Run ``upgrade`` in a child, wait until it is where the test wants it, SIGKILL it."""
    child = children.upgrade(source, lock_ttl=DEAD_TTL, **where)
    child.expect("PARKED ")
    child.kill()


# -- during a migration --------------------------------------------------------------------

NOT_IDEMPOTENT = {
    "0001_tag_orders.py": '''\
        """Count every order's tags (no transaction; running it twice double-counts)"""

        # park helper

        transactional = False


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            db.orders.update_many({}, {"$inc": {"tags": 1}})
            park("tagging")
        ''',
}


def test_killed_during_a_non_idempotent_migration_the_next_run_refuses(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.orders.insert_many([{"_id": i} for i in range(5)])
    source = write_migrations(tmp_path / "migrations", NOT_IDEMPOTENT)
    crash(children, source, park_at="tagging")
    assert runs(db) == 1  # half applied, as far as anyone can tell

    migrator = next_run(db, source, caplog)
    with deadline(NEXT_RUN_TIMEOUT), pytest.raises(InterruptedMigrationError) as refused:
        migrator.upgrade()

    message = str(refused.value)
    assert "Migration 1" in message and "interrupted during 'up'" in message
    assert "repair --clear-failed" in message and "idempotent" in message
    assert runs(db) == 1  # not run again behind the operator's back
    problems = migrator.validate()
    assert [(p.kind, p.version) for p in problems] == [("interrupted", 1)]
    assert "repair --clear-failed" in problems[0].hint
    assert history(db, 1) == ["interrupted"]
    record = db.migrations.find_one({"_id": 1})
    assert (record["status"], record["error"]["type"]) == ("failed", "Interrupted")
    assert [row.status for row in migrator.status()] == ["interrupted"]

    # The operator checked the data and decides the migration starts afresh.
    migrator.repair(clear_failed=True)
    assert migrator.upgrade().versions == [1]
    assert runs(db) == 2 and history(db, 1) == ["interrupted", "applied"]
    assert migrator.validate() == []


IDEMPOTENT = {
    "0001_open_orders.py": '''\
        """Mark every order open (no transaction, safe to re-run)"""

        # park helper

        transactional = False
        idempotent = True


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            db.orders.update_many({}, {"$set": {"state": "open"}})
            park("opening")
        ''',
}


def test_killed_during_an_idempotent_migration_the_next_run_completes_it(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.orders.insert_many([{"_id": i} for i in range(5)])
    source = write_migrations(tmp_path / "migrations", IDEMPOTENT)
    crash(children, source, park_at="opening")

    migrator = next_run(db, source, caplog)
    with deadline(NEXT_RUN_TIMEOUT):
        report = migrator.upgrade()

    assert report.versions == [1]
    assert runs(db) == 2  # run again, as its author allowed
    assert db.orders.count_documents({"state": "open"}) == 5
    record = db.migrations.find_one({"_id": 1})
    assert (record["status"], record["attempts"], record["error"]) == ("applied", 2, None)
    assert history(db, 1) == ["interrupted", "applied"]
    assert "Took over" in caplog.text
    assert migrator.validate() == []


TRANSACTIONAL = {
    "0001_split_names.py": '''\
        """Split users' names (in a transaction)"""

        # park helper


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            for user in db.users.find():
                first, last = user["name"].split(" ")
                db.users.update_one({"_id": user["_id"]},
                                    {"$set": {"first": first, "last": last}})
            park("splitting")
        ''',
}


def test_killed_during_a_transaction_nothing_shows_and_the_next_run_completes_it(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.users.insert_many([{"_id": 1, "name": "Ada Lovelace"}, {"_id": 2, "name": "Alan Turing"}])
    source = write_migrations(tmp_path / "migrations", TRANSACTIONAL)
    crash(children, source, park_at="splitting")

    # Nothing of the dead transaction is visible.
    assert runs(db) == 0
    assert db.users.count_documents({"first": {"$exists": True}}) == 0
    # A transactional step writes its record only when it commits; the lock says it ran.
    assert db.migrations.find_one({"_id": 1}) is None
    assert db.migration_lock.find_one()["step"]["version"] == 1

    migrator = next_run(db, source, caplog)
    with deadline(NEXT_RUN_TIMEOUT):  # the dead transaction still holds those users
        report = migrator.upgrade()

    assert report.versions == [1]
    assert runs(db) == 1  # exactly once: the dead attempt never committed
    assert sorted(u["last"] for u in db.users.find()) == ["Lovelace", "Turing"]
    assert history(db, 1) == ["applied"]  # the dead attempt committed nothing
    assert "died at migration 1 (up) before committing it" in caplog.text
    assert "Ended 1 session(s) of the previous lock holder" in caplog.text
    assert migrator.validate() == []


# -- around the migrations -----------------------------------------------------------------

TWO_STEPS = {
    "0001_create_plans.py": '''\
        """Create plans (in a transaction)"""


        def up(db):
            db.counters.update_one({"_id": 1}, {"$inc": {"runs": 1}}, upsert=True)
            db.plans.insert_many([{"_id": "free"}, {"_id": "pro"}])
        ''',
    "0002_index_plans.py": '''\
        """Index plans by price (no transaction)"""

        transactional = False


        def up(db):
            db.counters.update_one({"_id": 2}, {"$inc": {"runs": 1}}, upsert=True)
            db.plans.create_index("price")
        ''',
}


def test_killed_holding_the_lock_before_any_migration_the_next_run_does_everything(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_migrations(tmp_path / "migrations", TWO_STEPS)
    crash(children, source, park_on_log="Acquired the migration lock")
    assert db.migration_lock.count_documents({}) == 1
    assert db.migrations.count_documents({}) == 0

    migrator = next_run(db, source, caplog)
    with deadline(NEXT_RUN_TIMEOUT):
        report = migrator.upgrade()

    assert report.versions == [1, 2]
    assert (runs(db, 1), runs(db, 2)) == (1, 1)
    assert history(db, 1) == ["applied"] and history(db, 2) == ["applied"]
    assert "Took over" in caplog.text
    assert db.migration_lock.count_documents({}) == 0


def test_killed_right_after_a_commit_the_next_run_carries_on_from_there(
    db: Any, children: Children, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_migrations(tmp_path / "migrations", TWO_STEPS)
    crash(children, source, park_on_log="Migration 1 applied")
    assert db.migrations.find_one({"_id": 1})["status"] == "applied"
    assert db.migrations.find_one({"_id": 2}) is None

    migrator = next_run(db, source, caplog)
    with deadline(NEXT_RUN_TIMEOUT):
        report = migrator.upgrade()

    assert report.versions == [2]
    assert (runs(db, 1), runs(db, 2)) == (1, 1)
    assert history(db, 1) == ["applied"] and history(db, 2) == ["applied"]
    assert migrator.current_version() == 2 and migrator.validate() == []

"""Relative targets (``-N``, ``+N``) count from where the database is once the run holds
the lock, not from what it read before waiting for it: two ``down -1`` queued one behind
the other revert two versions, two ``up +1`` apply two."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, List

import pytest
from pymongo import MongoClient, monitoring

from analytiq_migrations import Migration, Migrator
from analytiq_migrations.testing import client_options

HOLD = threading.Event()  # set: migration 3 waits for GATE, in either direction
GATE = threading.Event()
INSIDE = threading.Event()  # set once migration 3 is running


class Step(Migration):
    """Adds (and removes) its version in ``steps``; version 3 can be held open (inside its
    transaction: its record says `applied` until the revert commits)."""

    def _hold(self) -> None:
        if self.version == 3 and HOLD.is_set():
            INSIDE.set()
            assert GATE.wait(30)

    def up(self, db: Any) -> None:
        self._hold()
        db.steps.insert_one({"_id": self.version})

    def down(self, db: Any) -> None:
        self._hold()
        db.steps.delete_one({"_id": self.version})


def steps() -> List[Migration]:
    """Versions 1..4."""
    return [type(f"Step{n}", (Step,), {"version": n, "description": f"step {n}"})()
            for n in range(1, 5)]


class LockAttempt(monitoring.CommandListener):
    """Sets ``tried`` when its client first asks for the migration lock."""

    def __init__(self) -> None:
        self.tried = threading.Event()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "findAndModify" and \
                event.command.get("findAndModify") == "migration_lock":
            self.tried.set()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def queued(mongo_uri: str, db: Any) -> Iterator[Callable[[Callable[[Migrator], Any]], Any]]:
    """Runs ``call(migrator)`` on a second client while migration 3 holds the first run
    inside it: the second one has read the records and is waiting for the lock before
    the first one goes on. Returns what the second call returned."""
    GATE.clear()
    INSIDE.clear()
    HOLD.clear()
    listener = LockAttempt()
    second_client: Any = MongoClient(mongo_uri, **client_options(mongo_uri,
                                                                 event_listeners=[listener]))

    def run(first: Callable[[Migrator], Any], second: Callable[[Migrator], Any]) -> Any:
        results: dict[str, Any] = {}
        HOLD.set()
        one = threading.Thread(target=lambda: results.update(first=first(Migrator(db, steps()))))
        one.start()
        assert INSIDE.wait(30)
        waiting = Migrator(second_client[db.name], steps(), lock_wait=60)
        two = threading.Thread(target=lambda: results.update(second=second(waiting)))
        two.start()
        assert listener.tried.wait(30)  # it read the records and asked for the lock
        GATE.set()
        one.join(60)
        two.join(60)
        return results

    yield run
    GATE.set()
    HOLD.clear()
    second_client.close()


def test_two_queued_down_minus_one_revert_two_versions(db: Any, queued: Any) -> None:
    Migrator(db, steps()).upgrade(4)
    Migrator(db, steps()).downgrade(3)  # now at 3; reverting 3 holds the first run

    results = queued(lambda m: m.downgrade("-1"), lambda m: m.downgrade("-1"))

    assert [s.version for s in results["first"].steps] == [3]
    assert [s.version for s in results["second"].steps] == [2]
    assert Migrator(db, steps()).current_version() == 1
    assert sorted(d["_id"] for d in db.steps.find()) == [1]


def test_two_queued_up_plus_one_apply_two_versions(db: Any, queued: Any) -> None:
    Migrator(db, steps()).upgrade(2)  # applying 3 holds the first run

    results = queued(lambda m: m.upgrade("+1"), lambda m: m.upgrade("+1"))

    assert [s.version for s in results["first"].steps] == [3]
    assert [s.version for s in results["second"].steps] == [4]
    assert Migrator(db, steps()).current_version() == 4

"""One list of ``Migration`` instances shared by runs in several threads at once (a
``Fleet``, or an application migrating its tenants itself): each run sees its own session
and batch context on the shared instances, never another run's."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest
from support import unique_db_name

from analytiq_migrations import Migration, Migrator

#: Generous for a loaded machine; a broken barrier fails the test instead of hanging it.
BARRIER_WAIT = 30.0


class Backfill(Migration):
    """Both runs are inside ``up`` at once before either calls ``batch_update``."""

    version = 1
    description = "Mark every user done, in batches"
    transactional = False

    def __init__(self, meeting: threading.Barrier) -> None:
        super().__init__()
        self.meeting = meeting
        self.changed: Dict[str, int] = {}
        self.sessions: Dict[str, Any] = {}

    def up(self, db: Any) -> None:
        self.meeting.wait(BARRIER_WAIT)  # both runs have bound this instance by now
        self.sessions[db.name] = self.session
        self.changed[db.name] = self.batch_update("users", {}, {"$set": {"done": True}},
                                                  batch_size=2)
        self.meeting.wait(BARRIER_WAIT)  # neither run unbinds before the other is done


@pytest.fixture
def two_databases(client: Any, request: pytest.FixtureRequest) -> Any:
    """Two tenant databases with five users each, dropped afterwards."""
    names = [unique_db_name(request.node.name, prefix) for prefix in ("a", "b")]
    for name in names:
        client[name].users.insert_many([{"n": n} for n in range(5)])
    yield names
    for name in names:
        client.drop_database(name)


def test_two_runs_in_threads_each_batch_their_own_database(client: Any,
                                                           two_databases: List[str]) -> None:
    shared = Backfill(threading.Barrier(2))
    errors: List[BaseException] = []

    def migrate(name: str) -> None:
        try:
            Migrator(client, [shared], database=name).upgrade()
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors.append(exc)
            shared.meeting.abort()

    threads = [threading.Thread(target=migrate, args=(name,)) for name in two_databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * BARRIER_WAIT)
    assert not errors
    assert shared.changed == {name: 5 for name in two_databases}
    for name in two_databases:
        assert client[name].users.count_documents({"done": True}) == 5
        assert Migrator(client, [shared], database=name).current_version() == 1
    first, second = (shared.sessions[name] for name in two_databases)
    assert first is not None and second is not None and first is not second
    assert shared.session is None  # nothing stays bound once the runs are over

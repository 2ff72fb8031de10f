"""What the everyday calls cost in commands: a deploy gate or a pod start runs ``upgrade``
and ``status`` on every start, so their command counts must stay small and must not grow
with the number of migrations. Counted with command monitoring (exact, unlike timings);
``benchmarks/`` has the timed figures.
"""

from __future__ import annotations

import uuid
from datetime import timedelta, timezone
from typing import Any

import pytest
from support import CommandRecorder, one_bulk_write, writes_of

from analytiq_migrations import LockBusyError, Migration, Migrator
from analytiq_migrations.records import HistoryEntry
from analytiq_migrations.retry import NO_RETRY
from analytiq_migrations.store import Store


class Noop(Migration):
    """Applied, then asked about."""

    def up(self, db: Any) -> None:
        """Nothing: only the bookkeeping is counted."""


def applied(db: Any, n: int) -> list[Migration]:
    """``n`` migrations, all applied (without transactions: quicker to set up)."""
    migrations: list[Migration] = [Noop(version=v, description=f"noop {v}")
                                   for v in range(1, n + 1)]
    Migrator(db, migrations, transactions="never").upgrade()
    return migrations


def test_a_no_op_upgrade_reads_the_records_once_and_takes_no_lock(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    migrations = applied(recorded_db, 3)
    migrator = Migrator(recorded_db, migrations)
    migrator.current_version()
    recorder.clear()

    assert migrator.upgrade().versions == []

    assert [(c.name, c.collection) for c in recorder] == [("find", "migrations")]


def test_status_costs_the_same_commands_with_250_migrations_as_with_3(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    # Past 101 records a default find needs a getMore: the records come in one batch.
    few = Migrator(recorded_db, applied(recorded_db, 3))
    few.current_version()
    recorder.clear()
    few.status()
    with_few = recorder.names()

    many = Migrator(recorded_db, applied(recorded_db, 250))
    recorder.clear()
    assert len(many.status()) == 250

    assert recorder.names() == with_few == ["find", "find"]  # records, lock


class Touch(Migration):
    """Inserts one document into an existing collection."""

    def up(self, db: Any) -> None:
        """One insert: the migration's own command."""
        db.touched.insert_one({"v": self.version})


def per_step(db: Any) -> list[tuple[str, Any]]:
    """Commands sent in each transactional step besides the migration's own and the commit:
    the lease re-check, then the new record and its history entry (one ``bulkWrite`` on
    MongoDB 8.0+ with pymongo 4.9+, else an insert each)."""
    if one_bulk_write(db):
        return [("update", "migration_lock"), ("bulkWrite", None)]
    return [("update", "migration_lock"), ("insert", "migrations"),
            ("insert", "migrations_history")]


def bookkeeping(db: Any, recorder: CommandRecorder, n: int) -> list[tuple[str, Any]]:
    """The commands of an upgrade applying ``n`` transactional ``Touch`` migrations, without
    the migrations' own commands and the commits (the run's data is dropped afterwards)."""
    db.touched.insert_one({"_id": "there before"})  # an existing collection
    recorder.clear()
    Migrator(db, [Touch(version=v) for v in range(1, n + 1)]).upgrade()
    sent = [(c.name, c.collection) for c in recorder
            if c.collection != "touched" and c.name != "commitTransaction"]
    assert len(recorder.filter("commitTransaction")) == n
    for name in ("migrations", "migrations_history", "touched"):
        db.drop_collection(name)
    return sent


def test_each_applied_migration_costs_two_or_three_bookkeeping_commands(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    """In the transaction: lease, record, history (plus the commit)."""
    per_migration = (len(bookkeeping(recorded_db, recorder, 6)) -
                     len(bookkeeping(recorded_db, recorder, 2))) / 4
    assert per_migration == len(per_step(recorded_db)) == (2 if one_bulk_write(recorded_db) else 3)


def test_the_record_and_its_history_entry_go_in_one_bulk_write_where_the_server_has_it(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    """On MongoDB 8.0+ (pymongo 4.9+): one command in the step's transaction, writing the
    record and the entry; both are there afterwards, exactly as separate writes leave them."""
    if not one_bulk_write(recorded_db):
        pytest.skip("needs MongoDB 8.0+ and pymongo 4.9+ (the bulkWrite command)")
    recorded_db.touched.insert_one({"_id": "there before"})  # an existing collection
    recorder.clear()
    Migrator(recorded_db, [Touch(version=1)]).upgrade()
    (sent,) = recorder.filter("bulkWrite")
    assert sent.txn_number is not None  # in the step's own transaction
    assert writes_of([sent]) == [("insert", "migrations"), ("insert", "migrations_history")]
    record = recorded_db.migrations.find_one({"_id": 1})
    assert record["status"] == "applied" and record["version"] == 1
    assert recorded_db.migrations_history.count_documents({"version": 1, "status": "applied"}) == 1


@pytest.mark.parametrize("together_", [False, True], ids=["two-commands", "one-bulk-write"])
def test_the_record_and_entry_are_stored_alike_either_way(
    recorded_db: Any, together_: bool
) -> None:
    """One ``bulkWrite`` or two commands store the same documents, with the records'
    codec: a UUID in a checkpoint is stored although the client has no uuidRepresentation
    (its own codec would refuse it)."""
    if together_ and not one_bulk_write(recorded_db):
        pytest.skip("needs MongoDB 8.0+ and pymongo 4.9+ (the bulkWrite command)")
    store = Store(recorded_db, "migrations", NO_RETRY)
    last = uuid.uuid4()
    entry = HistoryEntry(version=7, status="paused", run_id="r1", attempt=1)
    update = {"$set": {"version": 7, "status": "paused", "run_id": "r1",
                       "progress": {"last": last}}}
    with recorded_db.client.start_session() as session, session.start_transaction():
        if together_:
            assert store.transition_with_history(7, None, update, entry, None, session=session)
        else:
            assert store.transition(7, None, update, session=session)
            store.append_history(entry, session=session)
    assert store.read_record(7) == {"_id": 7, "version": 7, "status": "paused",
                                    "run_id": "r1", "progress": {"last": last}}
    assert [h.status for h in store.read_history(7)] == ["paused"]
    with recorded_db.client.start_session() as session, session.start_transaction():
        # The record is there: a new record's write collides, and nothing is written.
        moved = store.transition_with_history(7, None, update, entry, None, session=session) \
            if together_ else store.transition(7, None, update, session=session)
        assert moved is False
        session.abort_transaction()


def test_a_transactional_run_costs_four_fixed_commands(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    """Plan, take the lock, re-read under it, release: no lock read before taking it, no
    collection list for the transaction rules."""
    two, six = bookkeeping(recorded_db, recorder, 2), bookkeeping(recorded_db, recorder, 6)

    before = [("find", "migrations"), ("findAndModify", "migration_lock"),
              ("find", "migrations")]
    after = [("delete", "migration_lock")]
    assert two == before + per_step(recorded_db) * 2 + after
    assert six == before + per_step(recorded_db) * 6 + after


def test_a_busy_lock_is_known_after_two_lock_commands(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    now = recorded_db.client.admin.command("hello")["localTime"].replace(tzinfo=timezone.utc)
    recorded_db.migration_lock.insert_one({
        "_id": "migration_lock", "holder": "deploy@web-7:4242/feedbeef", "run_id": "feedbeef",
        "host": "web-7", "pid": 4242, "locked_at": now, "expires_at": now + timedelta(minutes=10),
    })
    recorder.clear()

    with pytest.raises(LockBusyError, match="held by deploy@web-7:4242/feedbeef"):
        Migrator(recorded_db, [Touch(version=1)]).upgrade()

    assert [(c.name, c.collection) for c in recorder] == [
        ("find", "migrations"), ("findAndModify", "migration_lock"),
        ("find", "migration_lock")]
    assert recorder.filter("findAndModify")[0].outcome == "failed"  # collided on _id



def fenced_step(db: Any) -> list[tuple[str, Any]]:
    """A non-transactional step's bookkeeping: two small transactions, each opening with the
    lease check, so that a run that lost its lease lands neither: running (lease, the new
    record, commit), then the outcome (lease, record and history entry, commit)."""
    outcome = [("bulkWrite", None)] if one_bulk_write(db) else \
        [("update", "migrations"), ("insert", "migrations_history")]
    return [("update", "migration_lock"), ("insert", "migrations"), ("commitTransaction", None),
            ("update", "migration_lock"), *outcome, ("commitTransaction", None)]


def test_a_non_transactional_step_costs_two_fenced_transactions(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    """Running (lease, record, commit); outcome (lease, record, history, commit)."""

    class Plain(Touch):
        transactional = False

    recorded_db.touched.insert_one({"_id": "there before"})
    recorder.clear()
    Migrator(recorded_db, [Plain(version=v) for v in (1, 2, 3)]).upgrade()

    sent = [(c.name, c.collection) for c in recorder if c.collection != "touched"]
    assert sent == [("find", "migrations"), ("findAndModify", "migration_lock"),
                    ("find", "migrations")] + fenced_step(recorded_db) * 3 + \
        [("delete", "migration_lock")]


#: Prints every command a child process sends (the handshake and pings left out).
_PRINT_COMMANDS = '''\
import sys
from pymongo import monitoring


class Printer(monitoring.CommandListener):
    def started(self, event):
        if event.command_name not in ("hello", "isMaster", "ismaster", "endSessions", "ping"):
            target = event.command.get(event.command_name)
            print("CMD", event.command_name, target if isinstance(target, str) else "",
                  file=sys.stderr, flush=True)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


monitoring.register(Printer())
'''


def test_the_benchmarks_baseline_sends_exactly_the_commands_up_sends(
    client: Any, mongo_uri: str, tmp_path: Any
) -> None:
    """Figure 6 splits our time into the commands' and the library's own by timing bare
    pymongo that sends the very commands ``up`` sends: it must stay exactly that."""
    import subprocess
    import sys

    from support import REPO_ROOT, child_env

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from peers import APPLY3, same_commands, write_ours
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    (tmp_path / "printer").mkdir()
    (tmp_path / "printer" / "sitecustomize.py").write_text(_PRINT_COMMANDS)
    env = child_env({"PYTHONPATH": str(tmp_path / "printer")})
    baseline, prefix = same_commands(), f"rt_{uuid.uuid4().hex[:8]}"
    sent = []
    for name, write, argv in (
            ("ours", write_ours, [sys.executable, "-m", "analytiq_migrations", "up", "-q",
                                  "--uri", mongo_uri, "--database", f"{prefix}_ours",
                                  "--migrations", str(tmp_path / "ours" / "migrations")]),
            ("bare", baseline.write, baseline.argv(tmp_path / "bare", mongo_uri,
                                                   f"{prefix}_bare"))):
        write(tmp_path / name / "migrations", APPLY3.steps)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        sent.append([line for line in done.stderr.splitlines() if line.startswith("CMD")])
        assert APPLY3.applied(client[f"{prefix}_{name}"])
        client.drop_database(f"{prefix}_{name}")
    assert len(sent[0]) > 3 * len(APPLY3.steps)
    assert sent[0] == sent[1]

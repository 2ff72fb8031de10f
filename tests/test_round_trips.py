"""What the everyday calls cost in commands: a deploy gate or a pod start runs ``upgrade``
and ``status`` on every start, so their command counts must stay small and must not grow
with the number of migrations. Counted with command monitoring (exact, unlike timings);
``benchmarks/`` has the timed figures.
"""

from __future__ import annotations

from typing import Any

from support import CommandRecorder

from analytiq_migrations import Migration, Migrator


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


def test_each_applied_migration_costs_four_bookkeeping_commands(
    recorded_db: Any, recorder: CommandRecorder
) -> None:
    """Record running, then in the transaction: lease, record, history (plus the commit)."""

    class Touch(Migration):
        def up(self, db: Any) -> None:
            db.touched.insert_one({"v": self.version})

    def bookkeeping(n: int) -> int:
        recorder.clear()
        Migrator(recorded_db, [Touch(version=v) for v in range(1, n + 1)]).upgrade()
        sent = recorder.commands
        own = [c for c in sent if c.collection == "touched" or c.name == "commitTransaction"]
        recorded_db.drop_collection("migrations")
        recorded_db.drop_collection("touched")
        return len(sent) - len(own)

    per_migration = (bookkeeping(6) - bookkeeping(2)) / 4
    assert per_migration == 3

"""Figure 2: commands for a no-op ``upgrade`` (everything already applied).

The common case in production: every deploy, cron tick and pod start runs ``upgrade``
and there is nothing to do. Counted with pymongo command monitoring on a new
``Migrator`` (as a new process would build it), after the connection handshake.

Baseline: the least any tool can do to know that nothing is pending, one ``find`` on
the records collection with bare pymongo.

    python benchmarks/bench_noop.py [--migrations 50] [--runs 20] [--uri URI]
"""

from __future__ import annotations

import sys
from typing import Any

from common import (
    Commands,
    client,
    describe_machine,
    fresh_db,
    median_of,
    parser,
    server,
    table,
    verdict,
)

from analytiq_migrations import Migration, Migrator

#: The contract's budget for a no-op upgrade.
TARGET_COMMANDS = 3


class Noop(Migration):
    """Nothing to do: only the bookkeeping is measured."""

    def up(self, db: Any) -> None:
        db.data.insert_one({"version": self.version})


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--migrations", type=int, default=50, help="applied migrations")
    p.add_argument("--runs", type=int, default=20, help="timed no-op upgrades")
    args = p.parse_args(argv)
    migrations = [Noop(version=v, description=f"noop {v}") for v in range(1, args.migrations + 1)]
    with server(args.uri) as uri:
        commands = Commands()
        c = client(uri, event_listeners=[commands])
        print(f"Machine: {describe_machine(c)}")
        with fresh_db(c) as db:
            Migrator(db, migrations).upgrade()

            migrator = Migrator(db, migrations)
            migrator.client.admin.command("ping")  # connected: handshakes are not counted
            commands.clear()
            report = migrator.upgrade()
            commands.on = False
            assert not report.versions, "expected nothing to do"
            sent = commands.breakdown()
            lock_touched = any("migration_lock" in kind for kind in sent)
            library = len(commands)

            commands.clear()
            commands.on = True
            list(db.migrations.find({}))
            commands.on = False
            bare = len(commands)

            lib_s, _ = median_of(args.runs, lambda: Migrator(db, migrations).upgrade())
            bare_s, _ = median_of(args.runs, lambda: list(db.migrations.find({})))
        c.close()
    met = library <= TARGET_COMMANDS and not lock_touched
    print(table(
        ["", "commands", "lock taken", "median ms", f"target <= {TARGET_COMMANDS}, no lock"],
        [["no-op upgrade()", library, "yes" if lock_touched else "no", lib_s * 1000,
          verdict(met)],
         ["bare find on records", bare, "no", bare_s * 1000, ""],
         ["ratio", round(library / bare, 2), "", round(lib_s / bare_s, 2), ""]],
        title=f"\nFigure 2: a no-op upgrade with {args.migrations} applied migrations "
        f"(median of {args.runs})"))
    print("\ncommands sent: " + ", ".join(f"{k} x{v}" for k, v in sorted(sent.items())))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Figure 3: ``status()`` with 1,000 applied migrations.

``status`` is what dashboards, readiness probes and ``status --check`` deploy gates
call, often; its cost must not grow with the number of migrations in commands, and
stay well under a second in time. Measured with 10 and with ``--migrations`` applied
migrations on a new ``Migrator`` each time.

Baseline: bare pymongo reading the same records (one ``find``).

    python benchmarks/bench_status.py [--migrations 1000] [--runs 10] [--uri URI]
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
    timed,
    verdict,
)

from analytiq_migrations import Migration, Migrator

#: The target for one ``status()`` call with 1,000 applied migrations.
TARGET_SECONDS = 0.5

#: The small collection the large one is compared with.
FEW = 10


class Noop(Migration):
    """Applied, not measured."""

    def up(self, db: Any) -> None:
        """Nothing: only records matter here."""


def measure(uri: str, n: int, runs: int) -> dict[str, Any]:
    """Commands and median seconds of ``status()`` (and of the bare read) with ``n`` applied."""
    commands = Commands()
    c = client(uri, event_listeners=[commands])
    migrations = [Noop(version=v, description=f"noop {v}") for v in range(1, n + 1)]
    with fresh_db(c) as db:
        setup = timed(lambda: Migrator(db, migrations, transactions="never").upgrade())
        migrator = Migrator(db, migrations)
        migrator.client.admin.command("ping")
        commands.clear()
        rows = migrator.status()
        commands.on = False
        assert len(rows) == n and all(r.status == "applied" for r in rows)
        sent = len(commands)
        status_s, _ = median_of(runs, lambda: Migrator(db, migrations).status())
        bare_s, _ = median_of(runs, lambda: list(db.migrations.find({})))
    c.close()
    return {"commands": sent, "status_s": status_s, "bare_s": bare_s, "setup_s": setup}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--migrations", type=int, default=1000, help="applied migrations")
    p.add_argument("--runs", type=int, default=10, help="timed status() calls")
    args = p.parse_args(argv)
    with server(args.uri) as uri:
        c = client(uri)
        print(f"Machine: {describe_machine(c)}")
        c.close()
        few = measure(uri, FEW, args.runs)
        many = measure(uri, args.migrations, args.runs)
    constant = few["commands"] == many["commands"]
    fast = many["status_s"] < TARGET_SECONDS
    rows = [[f"{n:,} applied", r["commands"], r["status_s"] * 1000, r["bare_s"] * 1000,
             round(r["status_s"] / r["bare_s"], 2)]
            for n, r in ((FEW, few), (args.migrations, many))]
    print(table(["", "commands", "status() median ms", "bare find ms", "ratio"], rows,
                title=f"\nFigure 3: status() (median of {args.runs}; setup of "
                f"{args.migrations:,} migrations took {many['setup_s']:.1f} s)"))
    print(f"\nconstant command count: {verdict(constant)}; "
          f"< {TARGET_SECONDS} s with {args.migrations:,}: {verdict(fast)}")
    return 0 if constant and fast else 1


if __name__ == "__main__":
    sys.exit(main())

"""Figure 1: bookkeeping commands per applied migration.

Each migration inserts one document (its own work). Every command sent during
``upgrade`` is counted with pymongo command monitoring; the migrations' own inserts and
the commits of their transactions are subtracted; what is left is bookkeeping. Two runs
(``--small`` and ``--small + --migrations`` migrations) separate the per-migration cost
from the fixed per-run cost (reading records, taking and releasing the lock).

Baseline: bare pymongo applying the same migrations (insert + commit each), with no
records, no lock and no history.

Then, where the server has the ``bulkWrite`` command (MongoDB 8.0+, pymongo 4.9+), the
time per applied migration with the record and its history entry in one command against
two commands, in interleaved rounds (``--rounds``) of ``--steps`` migrations each.

    python benchmarks/bench_bookkeeping.py [--migrations 20] [--steps 200] [--rounds 5]
                                           [--uri URI]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections import Counter
from typing import Any
from unittest import mock

import pymongo
from common import (
    Commands,
    client,
    describe_machine,
    fresh_db,
    parser,
    server,
    table,
    verdict,
)

from analytiq_migrations import Migration, Migrator
from analytiq_migrations.store import writes_together

#: The budget per applied transactional migration: in its transaction the lease fence,
#: the record write and the history insert (the commit is counted as the migration's).
#: Nothing is written before the transaction: the lock's step field says it runs. On
#: MongoDB 8.0+ the record and the entry go in one ``bulkWrite``: 2.
TARGET_PER_MIGRATION = 3
#: Without a transaction the running record is written first (a crash must leave a
#: trace), then lease re-check, record and history.
TARGET_PER_PLAIN_MIGRATION = 4
#: Per run: read the records, take the lock, read them again under it, release it.
TARGET_PER_RUN = 4


class InsertOne(Migration):
    """One insert: the migration's own work."""

    def up(self, db: Any) -> None:
        db.data.insert_one({"version": self.version})


def migrations(n: int) -> list[Migration]:
    return [InsertOne(version=v, description=f"insert {v}") for v in range(1, n + 1)]


def bookkeeping(uri: str, n: int, transactions: str) -> tuple[int, int, Counter[str]]:
    """(all commands, bookkeeping commands, bookkeeping by kind) for ``upgrade`` of ``n``."""
    commands = Commands()
    c = client(uri, event_listeners=[commands])
    with fresh_db(c) as db:
        migrator = Migrator(db, migrations(n), transactions=transactions)
        migrator.current_version()  # connected: the handshake is not the library's cost
        commands.clear()
        report = migrator.upgrade()
        commands.on = False
        assert len(report.versions) == n
        kinds = commands.breakdown()
        own = Counter({k: v for k, v in kinds.items()
                       if k.startswith("insert data") or k.startswith("commitTransaction")})
        kinds.subtract(own)
        kinds = +kinds
        total = len(commands)
    c.close()
    return total, sum(kinds.values()), kinds


def bare(uri: str, n: int, transactions: bool) -> int:
    """Commands bare pymongo sends to apply ``n`` inserts, each in its own transaction."""
    commands = Commands()
    c = client(uri, event_listeners=[commands])
    with fresh_db(c) as db:
        db.command("ping")
        commands.clear()
        for v in range(1, n + 1):
            if transactions:
                with c.start_session() as s, s.start_transaction():
                    db.data.insert_one({"version": v}, session=s)
            else:
                db.data.insert_one({"version": v})
        commands.on = False
    c.close()
    return len(commands)


def ms_per_step(uri: str, n: int, together: bool) -> float:
    """Wall ms per migration of an in-process ``upgrade`` of ``n`` (record and history in
    one command, or forced into two)."""
    c = client(uri)
    with fresh_db(c) as db:
        migrator = Migrator(db, migrations(n))
        migrator.current_version()
        apart = mock.patch("analytiq_migrations.runkit.writes_together", return_value=False)
        with contextlib.nullcontext() if together else apart:
            start = time.perf_counter()
            migrator.upgrade()
            elapsed = time.perf_counter() - start
    c.close()
    return elapsed * 1000 / n


def compare_together(uri: str, steps: int, rounds: int) -> list[list[Any]]:
    """Rows: median ms per migration, two commands against one ``bulkWrite``."""
    times: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    for r in range(rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        got = {flag: ms_per_step(uri, steps, flag) for flag in order}
        for flag, ms in got.items():
            times[flag].append(ms)
        ratios.append(got[True] / got[False])
    apart, together = statistics.median(times[False]), statistics.median(times[True])
    return [["record, then history entry: 2 commands", round(apart, 3), 1.0],
            ["both in one bulkWrite", round(together, 3), round(statistics.median(ratios), 3)]]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=1, help="migrations in the first run")
    p.add_argument("--migrations", type=int, default=20,
                   help="extra migrations in the second run")
    p.add_argument("--steps", type=int, default=200, help="migrations per timed bulkWrite run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    args = p.parse_args(argv)
    small, large = args.small, args.small + args.migrations
    with server(args.uri) as uri:
        c = client(uri)
        print(f"Machine: {describe_machine(c)}")
        replica_set = bool(c.admin.command("hello").get("setName"))
        c.close()
        rows, details, ok = [], [], True
        modes = [("transactional", "auto")] if replica_set else []
        modes.append(("no transactions", "never"))
        for label, mode in modes:
            _, book_s, kinds_s = bookkeeping(uri, small, mode)
            total_l, book_l, kinds_l = bookkeeping(uri, large, mode)
            per = (book_l - book_s) / (large - small)
            fixed = book_s - per * small
            bare_l = bare(uri, large, mode != "never")
            budget = TARGET_PER_MIGRATION if mode != "never" else TARGET_PER_PLAIN_MIGRATION
            met = per <= budget and fixed <= TARGET_PER_RUN
            ok = ok and met
            rows.append([label, large, total_l, bare_l, round(total_l / bare_l, 2), per, fixed,
                         f"<= {budget} + {TARGET_PER_RUN}: {verdict(met)}"])
            per_kind = {k: (kinds_l[k] - kinds_s.get(k, 0)) / (large - small) for k in kinds_l}
            details.append(f"{label}: per migration: " + ", ".join(
                f"{k} x{v:g}" for k, v in sorted(per_kind.items()) if v))
            fixed_kind = {k: kinds_s[k] - per_kind.get(k, 0) * small for k in kinds_s}
            details.append(f"{label}: fixed per run: " + ", ".join(
                f"{k} x{v:g}" for k, v in sorted(fixed_kind.items()) if v))
        print(table(
            ["mode", "migrations", "commands", "bare pymongo", "ratio", "bookkeeping/migration",
             "fixed/run", "target per migration + per run"],
            rows, title="\nFigure 1: commands during upgrade (bookkeeping = all minus the "
            "migrations' own inserts and commits)"))
        print()
        print("\n".join(details))
        c = client(uri)
        wire = c.admin.command("hello")["maxWireVersion"]
        if replica_set and writes_together(c, wire):
            print(table(["transactional step's record and history", "ms per migration",
                         "x two commands"], compare_together(uri, args.steps, args.rounds),
                        title=f"\nFigure 1b: {args.steps} migrations in-process, median of "
                        f"{args.rounds} interleaved rounds"))
        else:
            print(f"\nFigure 1b: skipped (wire version {wire}, pymongo {pymongo.version}: "
                  "no bulkWrite command)")
        c.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

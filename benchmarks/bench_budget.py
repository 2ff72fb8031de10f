"""Figure 7: a backfill finished by budgeted runs, as a cron job would run it.

The same ``batch_update`` (``$inc`` a counter on every document) over ``--docs``
documents, three ways, each on a fresh server with a freshly seeded collection, each
checked afterwards (every document changed exactly once):

* one unbudgeted ``upgrade`` (the reference);
* the same with the per-checkpoint pause check switched off (the run reads the record's
  pause request after each checkpoint: its cost is the difference);
* repeated ``upgrade(time_budget=--budget)`` runs, each a new ``Migrator`` (a new cron
  run), until the version is applied: how many runs, their total time, and the wall
  time including what happens between runs.

Commands per batch are counted with pymongo command monitoring (exact).

    python benchmarks/bench_budget.py [--docs 200000] [--budget 10] [--batch-size 1000]
                                      [--uri URI]
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional
from unittest import mock

from common import DATABASE, Commands, client, describe_machine, parser, server, table, verdict

from analytiq_migrations import Migration, Migrator

#: Target: budgeted runs take at most 1.2x the unbudgeted run's time in total (each
#: adds a lock, a plan and reading the checkpoint back); the pause check costs < 5%.
TARGET_TOTAL_VS_ONE = 1.2
TARGET_CHECK_OVERHEAD = 0.05

#: Documents per insert_many while seeding (well below the 48 MB message limit).
SEED_CHUNK = 10_000

#: Bytes of filler per document, as in figure 5 (~200 B documents).
PAD = "x" * 150


class Bump(Migration):
    """``$inc`` every item's counter, in batches."""

    transactional = False

    def __init__(self, batch_size: int) -> None:
        super().__init__(version=1, description="bump every item")
        self.batch_size = batch_size

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, {"$inc": {"n": 1}}, batch_size=self.batch_size)


def seed(db: Any, n: int) -> None:
    """Items ``0..n-1`` with a zero counter."""
    for first in range(0, n, SEED_CHUNK):
        db.items.insert_many([{"_id": i, "n": 0, "pad": PAD}
                              for i in range(first, min(n, first + SEED_CHUNK))])


def check(db: Any, n: int, label: str) -> None:
    """Every document changed exactly once."""
    once = db.items.count_documents({"n": 1})
    other = db.items.count_documents({"n": {"$ne": 1}})
    assert (once, other) == (n, 0), f"{label}: {once:,} changed once, {other:,} not"


def on_fresh_server(uri: Optional[str], n: int,
                    body: Callable[[Any, Commands], dict[str, Any]]) -> dict[str, Any]:
    """Seed ``n`` documents on a fresh server (or database), run ``body(db, commands)``."""
    with server(uri) as url:
        commands = Commands()
        c = client(url, event_listeners=[commands])
        c.drop_database(DATABASE)
        db = c[DATABASE]
        seed(db, n)
        commands.clear()
        try:
            result = body(db, commands)
            result["machine"] = describe_machine(c)
            return result
        finally:
            c.drop_database(DATABASE)
            c.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=200_000)
    p.add_argument("--budget", type=float, default=10.0, help="seconds per budgeted run")
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args(argv)
    n, size = args.docs, args.batch_size
    batches = -(-n // size)

    def one_run(db: Any, commands: Commands) -> dict[str, Any]:
        start = time.perf_counter()
        report = Migrator(db, [Bump(size)]).upgrade()
        seconds = time.perf_counter() - start
        assert report.versions == [1]
        check(db, n, "one run")
        return {"seconds": seconds, "commands": len(commands),
                "reads": commands.breakdown()["find migrations"]}

    def without_check(db: Any, commands: Commands) -> dict[str, Any]:
        with mock.patch("analytiq_migrations.step.stop_reason", lambda *a: None):
            return one_run(db, commands)

    def budgeted(db: Any, commands: Commands) -> dict[str, Any]:
        runs, total, began = [], 0.0, time.perf_counter()
        while True:
            start = time.perf_counter()
            report = Migrator(db, [Bump(size)]).upgrade(time_budget=args.budget)
            seconds = time.perf_counter() - start
            total += seconds
            runs.append((seconds, (report.paused or {}).get("done")))
            where = f"paused at {report.paused['done']:,}" if report.paused else "applied"
            print(f"  budgeted run {len(runs)}: {seconds:.1f} s, {where}", flush=True)
            if report.paused is None:
                break
            assert len(runs) < batches + 2, "no progress"
        check(db, n, "budgeted runs")
        return {"seconds": total, "wall": time.perf_counter() - began, "runs": runs,
                "commands": len(commands)}

    print(f"{n:,} documents, batch_size {size}, budget {args.budget:g} s", flush=True)
    one = on_fresh_server(args.uri, n, one_run)
    print(f"  one run: {one['seconds']:.1f} s", flush=True)
    bare = on_fresh_server(args.uri, n, without_check)
    print(f"  one run without the pause check: {bare['seconds']:.1f} s", flush=True)
    cron = on_fresh_server(args.uri, n, budgeted)

    print(f"Machine: {one['machine']}")
    rows = [["one unbudgeted run", 1, one["seconds"], n / one["seconds"], one["commands"],
             1.0],
            ["the same, no pause check", 1, bare["seconds"], n / bare["seconds"],
             bare["commands"], bare["seconds"] / one["seconds"]],
            [f"budgeted runs ({args.budget:g} s each)", len(cron["runs"]), cron["seconds"],
             n / cron["seconds"], cron["commands"], cron["seconds"] / one["seconds"]]]
    print(table(["how", "runs", "seconds", "docs/s", "commands", "x one run"], rows,
                title=f"\nFigure 7: $inc over {n:,} documents ({batches:,} batches), "
                "each way on a fresh server"))
    per_batch = (one["commands"] - bare["commands"]) / batches
    overhead = one["seconds"] / bare["seconds"] - 1
    vs_one = cron["seconds"] / one["seconds"]
    print(f"\nbudgeted runs: {len(cron['runs'])}, {cron['seconds']:.1f} s in runs, "
          f"{cron['wall']:.1f} s wall; {vs_one:.2f}x one run (target <= "
          f"{TARGET_TOTAL_VS_ONE:g}x: {verdict(vs_one <= TARGET_TOTAL_VS_ONE)})")
    print(f"pause check: {per_batch:.2f} extra commands per batch, {overhead:+.1%} time "
          f"(target < {TARGET_CHECK_OVERHEAD:.0%}: {verdict(overhead < TARGET_CHECK_OVERHEAD)})")
    return 0 if vs_one <= TARGET_TOTAL_VS_ONE and overhead < TARGET_CHECK_OVERHEAD else 1


if __name__ == "__main__":
    sys.exit(main())

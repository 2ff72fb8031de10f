"""Figure 7: one migration set on many tenant databases (``Fleet`` / ``up --databases``).

Three measurements on one server:

1. A no-op fleet ``upgrade`` over ``--databases`` tenants that are all at head: commands
   per database (pymongo command monitoring) and wall time, against a bare pymongo script
   that reads each database's records once at the same concurrency. Targets: at most 3
   commands per database, at most 1.5x the bare script's time.
2. Real work, ``--work-databases`` tenants whose migration takes ``--work-seconds`` each
   (a wait standing for the server's work: a sleep, so the figure measures the fleet's
   concurrency, not how fast this machine's in-process test server can write): the
   ``--concurrency 8`` run against ``--concurrency 1``. Target: at least 5x faster.
3. Peak RSS growth of a no-op fleet run as the command line does it (reports not kept),
   in a fresh child process, over 100 and over all the tenants. Target: flat (the larger
   run grows at most 1.5x the smaller one's growth plus 5 MB).

    python benchmarks/bench_fleet.py [--databases 1000] [--concurrency 8]
                                     [--work-databases 16] [--work-seconds 1] [--uri URI]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    Commands,
    client,
    describe_machine,
    median_of,
    parser,
    server,
    table,
    verdict,
)

from analytiq_migrations import Fleet, Migration, Migrator

#: Name prefix of the tenant databases this script creates (and drops).
PREFIX = "benchfleet_"

#: Timed runs of each side of figure 1 (the median is reported).
RUNS = 5

#: The contract's budgets (issue 22).
TARGET_COMMANDS = 3
TARGET_RATIO = 1.5
TARGET_SPEEDUP = 5.0

#: RSS "flat": the large run may grow 1.5x the small one's growth, plus this much (MB)
#: for allocator noise (arenas are not returned at once).
RSS_SLACK_MB = 5.0

MIGRATIONS = {
    f"{n:04d}_step{n}.py": f'"""Step {n}."""\n\n\ndef up(db):\n'
    f'    db.users.update_many({{}}, {{"$set": {{"step{n}": True}}}})\n'
    for n in range(1, 4)
}

RSS_CHILD = r"""
import json, sys
import pymongo
from analytiq_migrations import Fleet

uri, source, pattern, warm = sys.argv[1:5]

def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field}")

c = pymongo.MongoClient(uri)
fleet = Fleet(c, source, pattern, concurrency=8)
Fleet(c, source, warm, concurrency=8).run("up", keep=False)  # imports, pools, threads
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status_mb("VmRSS")
report = fleet.run("up", keep=False)
after = status_mb("VmHWM")
print(json.dumps({"before_mb": before, "after_mb": after, "done": report.finished}))
"""


#: The baseline process: list the tenants, read each one's records at the same concurrency.
BARE_SCRIPT = r"""
import sys
from concurrent.futures import ThreadPoolExecutor
import pymongo

uri, prefix, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = pymongo.MongoClient(uri)
names = [n for n in c.list_database_names() if n.startswith(prefix)]
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(lambda n: list(c[n].migrations.find({})), names))
c.close()
"""


class Slow(Migration):
    """One tenant's work: a wait standing for the server's."""

    version = 1
    description = "a second of work per tenant"
    transactional = False

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def up(self, db: Any) -> None:
        time.sleep(self.seconds)
        db.users.update_many({}, {"$set": {"done": True}})


def seed(c: Any, source: Path, count: int) -> list[str]:
    """``count`` tenants at head: one migrated for real, its records copied to the rest."""
    names = [f"{PREFIX}{n:04d}" for n in range(count)]
    Migrator(c, source, database=names[0]).upgrade()
    records = list(c[names[0]].migrations.find({}))
    for name in names[1:]:
        c[name].migrations.insert_many(records)
    return names


def drop_all(c: Any) -> None:
    """Drop every database this script made."""
    for name in c.list_database_names():
        if name.startswith(PREFIX):
            c.drop_database(name)


def noop_figure(c: Any, uri: str, commands: Commands, source: Path, names: list[str],
                concurrency: int) -> tuple[list[list[Any]], bool]:
    """Figure 7.1: commands and wall time of a no-op fleet vs a bare read of each."""
    def fleet() -> None:
        report = Fleet(c, source, f"{PREFIX}*", concurrency=concurrency).run("up", keep=False)
        assert report.finished == len(names) and report.exit_code == 0, report.summary()

    commands.clear()
    commands.on = True
    fleet()
    commands.on = False
    per_db = (len(commands) - 1) / len(names)  # less the one listDatabases

    def bare() -> None:
        listed = [n for n in c.list_database_names() if n.startswith(PREFIX)]
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda n: list(c[n].migrations.find({})), listed))

    cli = [sys.executable, "-m", "analytiq_migrations", "up", "-q", "--uri", uri,
           "--migrations", str(source), "--databases", f"{PREFIX}*",
           "--concurrency", str(concurrency)]
    script = [sys.executable, "-c", BARE_SCRIPT, uri, PREFIX, str(concurrency)]

    fleet_s, _ = median_of(RUNS, fleet)
    bare_s, _ = median_of(RUNS, bare)
    cli_s, _ = median_of(RUNS, lambda: subprocess.run(cli, check=True, cwd=str(REPO_ROOT)))
    script_s, _ = median_of(RUNS, lambda: subprocess.run(script, check=True))
    ratio, cli_ratio = fleet_s / bare_s, cli_s / script_s
    met = per_db <= TARGET_COMMANDS and ratio <= TARGET_RATIO and cli_ratio <= TARGET_RATIO
    rows = [[f"Fleet.upgrade(), {len(names)} dbs", per_db, fleet_s, ratio,
             f"<= {TARGET_COMMANDS} cmds, <= {TARGET_RATIO}x: {verdict(met)}"],
            ["bare read of each db's records", 1.0, bare_s, 1.0, ""],
            ["`up --databases`, whole process", per_db, cli_s, cli_ratio, ""],
            ["bare pymongo script, whole process", 1.0, script_s, 1.0, ""]]
    return rows, met


def work_figure(c: Any, count: int, seconds: float) -> tuple[list[list[Any]], bool]:
    """Figure 7.2: ``count`` tenants of ``seconds`` of work, concurrency 8 vs 1."""
    timings = {}
    for concurrency in (1, 8):
        names = [f"{PREFIX}work{concurrency}_{n:03d}" for n in range(count)]
        start = time.perf_counter()
        report = Fleet(c, [Slow(seconds)], names, concurrency=concurrency).upgrade()
        timings[concurrency] = time.perf_counter() - start
        assert report.exit_code == 0 and report.at_version == {1: count}, report.summary()
    speedup = timings[1] / timings[8]
    met = speedup >= TARGET_SPEEDUP
    return [[f"{count} dbs x {seconds:g} s, concurrency 1", timings[1], 1.0, ""],
            [f"{count} dbs x {seconds:g} s, concurrency 8", timings[8], speedup,
             f">= {TARGET_SPEEDUP}x: {verdict(met)}"]], met


def rss_figure(uri: str, source: Path, total: int) -> tuple[list[list[Any]], bool]:
    """Figure 7.3: peak RSS growth over 100 and over ``total`` databases, in a child."""
    rows, growth = [], {}
    # 100 tenants: benchfleet_0000..0099; warm-up on the first ten of them.
    for count, pattern in ((100, f"{PREFIX}00??"), (total, f"{PREFIX}[0-9]*")):
        out = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, uri, str(source), pattern, f"{PREFIX}000?"],
            capture_output=True, text=True, check=True, cwd=str(REPO_ROOT),
            env={"PYTHONPATH": str(REPO_ROOT)})
        data = json.loads(out.stdout)
        assert data["done"] == count, data
        growth[count] = data["after_mb"] - data["before_mb"]
        rows.append([f"no-op fleet up, {count} dbs", data["before_mb"], growth[count], ""])
    met = growth[total] <= 1.5 * max(growth[100], 0.0) + RSS_SLACK_MB
    rows[-1][-1] = f"flat: {verdict(met)}"
    return rows, met


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--databases", type=int, default=1000, help="tenants for figures 1 and 3")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--work-databases", type=int, default=16, help="tenants for figure 2")
    p.add_argument("--work-seconds", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.databases < 100:
        p.error("--databases must be at least 100 (figure 3 compares 100 with it)")
    with server(args.uri) as uri, tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "migrations"
        source.mkdir()
        for name, text in MIGRATIONS.items():
            (source / name).write_text(textwrap.dedent(text))
        commands = Commands()
        c = client(uri, event_listeners=[commands], maxPoolSize=args.concurrency + 2)
        print(f"Machine: {describe_machine(c)}", flush=True)
        drop_all(c)
        try:
            start = time.perf_counter()
            names = seed(c, source, args.databases)
            print(f"Seeded {len(names)} tenant databases in {time.perf_counter() - start:.0f} s",
                  flush=True)
            noop_rows, noop_met = noop_figure(c, uri, commands, source, names,
                                             args.concurrency)
            print(table(["", "cmds/db", "wall s", "vs bare", "target"], noop_rows,
                        "\n7.1 No-op fleet up"), flush=True)
            rss_rows, rss_met = rss_figure(uri, source, args.databases)
            print(table(["", "RSS before MB", "peak growth MB", "target"], rss_rows,
                        "\n7.3 Peak RSS growth, reports not kept (the command line's way)"),
                  flush=True)
            work_rows, work_met = work_figure(c, args.work_databases, args.work_seconds)
            print(table(["", "wall s", "speed-up", "target"], work_rows,
                        "\n7.2 Real work: concurrency 8 vs 1"), flush=True)
        finally:
            drop_all(c)
            c.close()
    return 0 if noop_met and work_met and rss_met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Figure 6: whole-process runs of ``analytiq-migrations up`` side by side with the peers.

Each tool runs as a deploy step runs it, one fresh process per run, on the same server:

- apply 3 migrations (insert a document, create an index, update every document),
  20 migrations over 20 documents (each updates them all) and 200 tiny ones (each
  inserts a document), each to an empty database (checked afterwards);
- the no-op: ``up`` again on a database where the 3 are applied;
- the floor (``python -c``: import pymongo, ping, read one record) and our no-op with
  ``--files`` migration files (0 leaves it out);
- the baseline of the apply rows: bare pymongo sending exactly the commands this library
  sends for the same migrations (``peers.SAME_COMMANDS``), so that "x ours" splits our
  time into the commands' and the library's own.

Every round runs on a fresh SecantusDB (unless ``--uri``), after an uncounted warm-up
round. Tools: ``analytiq-migrations`` (the installed console script), optionally the same
script on an older checkout of the library (``--before DIR``), and the peers in
``peers.py``. Every round runs every command once, the tools in a rotating order, so
load on the machine hits them alike; figures are medians over ``--runs`` rounds, wall
time and CPU time (user + system of the process), and ratios are medians of the ratios
within each round. The 1-minute load average is recorded
at every round.

    python benchmarks/bench_peers.py [--runs 7] [--files 1000] [--no-peers] [--before DIR]
                                     [--log]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import REPO_ROOT, client, describe_machine, parser, server, table, verdict
from peers import (
    APPLY3,
    APPLY20,
    APPLY200,
    SAME,
    Tool,
    Workload,
    bare_floor,
    migrate_mongo,
    ours,
    python_peers,
    same_commands,
    write_ours,
)

from analytiq_migrations import Migrator

#: Targets of the no-op against the floor's median, as ratios (wall, CPU).
TARGET_1000 = (1.2, 1.5)
TARGET_3_WALL = 1.1
#: Targets against migrate-mongo's median wall time in the same run (ours / theirs).
TARGET_APPLY3_VS_MM = 0.9
TARGET_APPLY200_VS_MM = 1.0

NOOP = "no-op (3 applied)"
FLOOR = "floor: pymongo ping + find_one"
OURS = "analytiq-migrations"

MANY = '''\
"""Set users.step{n}"""

transactional = False


def up(db):
    db.users.update_many({{}}, {{"$set": {{"step{n}": True}}}})
'''


def measure(argv: list[str], env: dict[str, str], cwd: Optional[Path] = None
            ) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


class Runs:
    """Wall and CPU seconds per (row, tool)."""

    def __init__(self) -> None:
        self.wall: dict[tuple[str, str], list[float]] = {}
        self.cpu: dict[tuple[str, str], list[float]] = {}

    def add(self, row: str, tool: str, wall: float, cpu: float) -> None:
        self.wall.setdefault((row, tool), []).append(wall)
        self.cpu.setdefault((row, tool), []).append(cpu)

    def median(self, row: str, tool: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[row, tool])

    def medians(self, row: str, tool: str) -> tuple[float, float]:
        return self.median(row, tool), self.median(row, tool, cpu=True)

    def paired(self, row: str, tool: str, other: str, cpu: bool = False) -> float:
        """Median over the rounds of ``tool``'s time / ``other``'s in the same round: on a
        shared machine steadier than a ratio of medians (a busy moment hits both)."""
        times = self.cpu if cpu else self.wall
        return statistics.median(a / b for a, b in zip(times[row, tool], times[row, other]))

    def spread(self, row: str, tool: str) -> str:
        times = self.wall[row, tool]
        return f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="rounds (medians are over these)")
    p.add_argument("--files", type=int, default=1000, help="files of the large no-op (0: none)")
    p.add_argument("--no-peers", action="store_true", help="only this library (no installs)")
    p.add_argument("--log", action="store_true", help="print every measurement")
    p.add_argument("--before", metavar="DIR", help="also run an older checkout of the "
                   "library (a directory holding its analytiq_migrations package)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = Path(sys.executable).with_name("analytiq-migrations")
        command = [str(script)] if script.exists() else [sys.executable, "-m",
                                                         "analytiq_migrations"]
        tools = [ours(OURS, command, PYTHONPATH=str(REPO_ROOT))]
        if args.before:
            tools.append(ours(f"{OURS} (before)", command,
                              PYTHONPATH=str(Path(args.before).resolve())))
        tools.append(same_commands())
        if not args.no_peers:
            mm = migrate_mongo(tmp)
            tools += ([mm] if mm else []) + python_peers(tmp)
        bench = Bench(args, tmp, command, tools)
        for r in range(args.runs + 1):  # round 0 warms file and bytecode caches: not counted
            # A fresh server per round (unless --uri): SecantusDB slows down with every
            # write it has taken, which would make later rounds slower than earlier ones.
            with server(args.uri) as uri:
                bench.round(uri, r)
    return report(args, bench.runs, tools, bench.rows, list(bench.extra), bench.loads)


def measures(tool: Tool, row: str) -> bool:
    """Whether ``tool`` runs in ``row``: a baseline that only applies has no no-op."""
    return tool.peer or row != NOOP


class Bench:
    """The projects of every tool and workload, measured round by round."""

    def __init__(self, args: Any, tmp: Path, command: list[str], tools: list[Tool]) -> None:
        self.args, self.command, self.tools = args, command, tools
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        # Bytecode cached as after `pip install`, in a temporary directory.
        self.env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        self.workloads = [APPLY3, APPLY20, APPLY200]
        self.rows = [w.name for w in self.workloads] + [NOOP]
        self.projects: dict[tuple[str, str], tuple[Workload, Path, str]] = {}
        for t, tool in enumerate(tools):
            for w, work in enumerate([*self.workloads, APPLY3]):
                directory = tmp / f"t{t}w{w}"
                tool.write(directory / "migrations", work.steps)
                db = f"bench_peer_t{t}w{w}"
                self.projects[self.rows[w], tool.name] = (work, directory, db)
        self.many = tmp / "many"
        write_ours(self.many, [])
        for n in range(1, args.files + 1):
            (self.many / f"{n:04d}_step{n}.py").write_text(MANY.format(n=n))
        self.extra = [FLOOR] + ([f"{OURS}, no-op, {args.files:,} files"] if args.files else [])
        self.runs, self.loads = Runs(), [os.getloadavg()[0]]

    def round(self, uri: str, r: int) -> None:
        """Set up the no-op databases on ``uri``, then run every command once."""
        c = client(uri)
        if r == 0:
            print(f"Machine: {describe_machine(c)}")
        for tool in self.tools:  # each tool's own no-op database: the 3 applied by it
            if not measures(tool, NOOP):
                continue
            c.drop_database(self.projects[NOOP, tool.name][2])
            self.run(c, uri, NOOP, tool, None)
        extra = {FLOOR: bare_floor(uri, self.projects[NOOP, OURS][2])}
        if self.args.files:
            c.drop_database("bench_peer_many")
            with Migrator(c, self.many, database="bench_peer_many") as m:
                m.upgrade()
            extra[self.extra[1]] = [*self.command, "up", "-q", "--uri", uri, "--database",
                                    "bench_peer_many", "--migrations", str(self.many)]
        runs = self.runs if r else None
        order = self.tools[r % len(self.tools):] + self.tools[:r % len(self.tools)]
        for row in self.rows:
            for tool in order:
                if measures(tool, row):
                    self.run(c, uri, row, tool, runs)
        for name, argv in extra.items():
            wall, cpu = measure(argv, {**self.env, **self.tools[0].env})
            if runs is not None:
                runs.add(name, "", wall, cpu)
        for _, _, db in self.projects.values():
            c.drop_database(db)
        c.drop_database("bench_peer_many")
        c.close()
        self.loads.append(os.getloadavg()[0])
        print(f"  round {r}/{self.args.runs} done{' (warm-up)' if not r else ''}, "
              f"load {self.loads[-1]:.2f}", flush=True)

    def run(self, c: Any, uri: str, row: str, tool: Tool, runs: Optional[Runs]) -> None:
        """One measured process: ``tool`` on ``row``'s database (prepared, then checked)."""
        work, directory, db = self.projects[row, tool.name]
        if row != NOOP:
            work.prepare(c[db])
        wall, cpu = measure(tool.argv(directory, uri, db), {**self.env, **tool.env}, directory)
        if row != NOOP and not work.applied(c[db]):
            raise SystemExit(f"{tool.name} did not apply '{row}' (check {work.check})")
        if runs is not None:
            runs.add(row, tool.name, wall, cpu)
            if self.args.log:
                print(f"    {row} | {tool.name}: {wall * 1000:.0f} ms wall, "
                      f"{cpu * 1000:.0f} ms CPU, load {os.getloadavg()[0]:.2f}", flush=True)


def report(args: Any, runs: Runs, tools: list[Tool], rows: list[str], extra: list[str],
           loads: list[float]) -> int:
    """Print the tables and the verdicts; 0 when every target is met."""
    print(f"\nLoad (1-minute average) over the run: {min(loads):.2f}-{max(loads):.2f}, "
          f"median {statistics.median(loads):.2f}, on {os.cpu_count()} cores")
    for row in rows:
        print(table(["tool", "wall ms", "min-max", "CPU ms", "x ours wall", "x ours CPU"],
                    [[t.name, runs.median(row, t.name) * 1000, runs.spread(row, t.name),
                      runs.median(row, t.name, cpu=True) * 1000,
                      round(runs.paired(row, t.name, OURS), 2),
                      round(runs.paired(row, t.name, OURS, cpu=True), 2)]
                     for t in tools if measures(t, row)],
                    title=f"\nFigure 6, {row}: whole process, median of {args.runs} rounds "
                    "(x ours: median of the per-round ratios)"))
    floor_w, floor_c = runs.medians(FLOOR, "")
    noop = [(FLOOR, floor_w, floor_c),
            (f"{OURS}, no-op, 3 files", *runs.medians(NOOP, OURS)),
            *[(name, *runs.medians(name, "")) for name in extra[1:]]]
    print(table(["no-op run", "wall ms", "CPU ms", "x floor wall", "x floor CPU"],
                [[name, w * 1000, u * 1000, round(w / floor_w, 2), round(u / floor_c, 2)]
                 for name, w, u in noop],
                title="\nFigure 6, the no-op against the floor"))
    checks = [(f"no-op, 3 files: wall <= {TARGET_3_WALL}x floor",
               runs.median(NOOP, OURS) / floor_w <= TARGET_3_WALL)]
    if args.files:
        wall, cpu = runs.medians(extra[1], "")
        checks += [(f"no-op, {args.files:,} files: wall <= {TARGET_1000[0]}x floor",
                    wall / floor_w <= TARGET_1000[0]),
                   (f"no-op, {args.files:,} files: CPU <= {TARGET_1000[1]}x floor",
                    cpu / floor_c <= TARGET_1000[1])]
    peers = [t.name for t in tools if t.peer and not t.name.startswith(OURS)]
    mm = next((name for name in peers if name.startswith("migrate-mongo")), None)
    if mm is not None:
        for row, limit in ((APPLY3.name, TARGET_APPLY3_VS_MM),
                           (APPLY200.name, TARGET_APPLY200_VS_MM)):
            ratio = runs.paired(row, OURS, mm)
            checks.append((f"{row}: {ratio:.2f}x migrate-mongo's wall time (CPU "
                           f"{runs.paired(row, OURS, mm, cpu=True):.2f}x; target <= {limit}x; "
                           f"our commands from bare pymongo: {runs.paired(row, SAME, mm):.2f}x)",
                           ratio <= limit))
    if peers:
        fastest = min(peers, key=lambda name: runs.paired(NOOP, name, OURS))
        checks.append((f"no-op: faster than every peer (the fastest: {fastest}, "
                       f"{runs.paired(NOOP, fastest, OURS):.2f}x ours)",
                       runs.paired(NOOP, fastest, OURS) > 1))
    print("\nTargets:\n" + "\n".join(f"  {what}: {verdict(ok)}" for what, ok in checks))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Figure 6: whole-process runs of ``analytiq-migrations up`` side by side with the peers.

Each tool runs as a deploy step runs it, one fresh process per run, on the same server:

- apply 3 migrations (insert a document, create an index, update every document),
  20 migrations over 20 documents (each updates them all) and 200 tiny ones (each
  inserts a document), each to an empty database (checked afterwards);
- the no-op: ``up`` again on a database where the 3 are applied;
- the floor (``python -c``: import pymongo, ping, read one record) and our no-op with
  ``--files`` migration files (0 leaves it out).

Tools: ``analytiq-migrations`` (the installed console script), optionally the same
script on an older checkout of the library (``--before DIR``), and the peers in
``peers.py``. Every round runs every command once, the tools in a rotating order, so
load on the machine hits them alike; figures are medians over ``--runs`` rounds, wall
time and CPU time (user + system of the process). The 1-minute load average is recorded
at every round.

    python benchmarks/bench_peers.py [--runs 7] [--files 1000] [--no-peers] [--before DIR]
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
    Tool,
    bare_floor,
    migrate_mongo,
    ours,
    python_peers,
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

    def spread(self, row: str, tool: str) -> str:
        times = self.wall[row, tool]
        return f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="rounds (medians are over these)")
    p.add_argument("--files", type=int, default=1000, help="files of the large no-op (0: none)")
    p.add_argument("--no-peers", action="store_true", help="only this library (no installs)")
    p.add_argument("--before", metavar="DIR", help="also run an older checkout of the "
                   "library (a directory holding its analytiq_migrations package)")
    args = p.parse_args(argv)
    with server(args.uri) as uri, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        # Bytecode cached as after `pip install`, in a temporary directory.
        base["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        c = client(uri)
        print(f"Machine: {describe_machine(c)}")
        script = Path(sys.executable).with_name("analytiq-migrations")
        command = [str(script)] if script.exists() else [sys.executable, "-m",
                                                         "analytiq_migrations"]
        tools = [ours(OURS, command, PYTHONPATH=str(REPO_ROOT))]
        if args.before:
            tools.append(ours(f"{OURS} (before)", command,
                              PYTHONPATH=str(Path(args.before).resolve())))
        if not args.no_peers:
            mm = migrate_mongo(tmp)
            tools += ([mm] if mm else []) + python_peers(tmp)
        workloads = [APPLY3, APPLY20, APPLY200]
        projects: dict[tuple[str, str], tuple[list[str], Path, str]] = {}
        for t, tool in enumerate(tools):
            for w, work in enumerate([*workloads, APPLY3]):
                row = NOOP if w == len(workloads) else work.name
                directory, db = tmp / f"t{t}w{w}", f"bench_peer_t{t}w{w}"
                projects[row, tool.name] = (tool.project(directory, work, uri, db), directory, db)
        floor_db = projects[NOOP, OURS][2]
        extra: dict[str, tuple[list[str], Optional[Path]]] = {FLOOR: (bare_floor(uri, floor_db),
                                                                      None)}
        if args.files:
            many, many_db = tmp / "many", "bench_peer_many"
            write_ours(many, [])
            for n in range(1, args.files + 1):
                (many / f"{n:04d}_step{n}.py").write_text(MANY.format(n=n))
            c.drop_database(many_db)
            with Migrator(c, many, database=many_db) as m:
                m.upgrade()
            extra[f"{OURS}, no-op, {args.files:,} files"] = (
                [*command, "up", "-q", "--uri", uri, "--database", many_db, "--migrations",
                 str(many)], None)

        def run(row: str, tool: Tool, runs: Optional[Runs]) -> None:
            argv_, directory, db = projects[row, tool.name]
            work = next((w for w in workloads if w.name == row), None)
            if work is not None:
                work.prepare(c[db])
            wall, cpu = measure(argv_, {**base, **tool.env}, directory)
            if work is not None and not work.applied(c[db]):
                raise SystemExit(f"{tool.name} did not apply '{row}' (check {work.check})")
            if runs is not None:
                runs.add(row, tool.name, wall, cpu)

        for tool in tools:  # set up the no-op databases; warm file and bytecode caches
            c.drop_database(projects[NOOP, tool.name][2])
            run(NOOP, tool, None)
            for work in workloads:
                run(work.name, tool, None)
        runs, loads = Runs(), [os.getloadavg()[0]]
        env_ours = {**base, **tools[0].env}
        for r in range(args.runs):
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            for row in [w.name for w in workloads] + [NOOP]:
                for tool in order:
                    run(row, tool, runs)
            for name, (argv_, cwd) in extra.items():
                runs.add(name, "", *measure(argv_, env_ours, cwd))
            loads.append(os.getloadavg()[0])
            print(f"  round {r + 1}/{args.runs} done, load {loads[-1]:.2f}", flush=True)
        for _, _, db in projects.values():
            c.drop_database(db)
        if args.files:
            c.drop_database("bench_peer_many")
        c.close()
    return report(args, runs, tools, [w.name for w in workloads] + [NOOP], list(extra), loads)


def report(args: Any, runs: Runs, tools: list[Tool], rows: list[str], extra: list[str],
           loads: list[float]) -> int:
    """Print the tables and the verdicts; 0 when every target is met."""
    print(f"\nLoad (1-minute average) over the run: {min(loads):.2f}-{max(loads):.2f}, "
          f"median {statistics.median(loads):.2f}, on {os.cpu_count()} cores")
    for row in rows:
        mine = runs.median(row, OURS)
        print(table(["tool", "wall ms", "min-max", "CPU ms", f"x {OURS}"],
                    [[t.name, runs.median(row, t.name) * 1000, runs.spread(row, t.name),
                      runs.median(row, t.name, cpu=True) * 1000,
                      round(runs.median(row, t.name) / mine, 2)] for t in tools],
                    title=f"\nFigure 6, {row}: whole process, median of {args.runs} rounds"))
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
    peers = [t.name for t in tools if not t.name.startswith(OURS)]
    mm = next((name for name in peers if name.startswith("migrate-mongo")), None)
    if mm is not None:
        for row, limit in ((APPLY3.name, TARGET_APPLY3_VS_MM),
                           (APPLY200.name, TARGET_APPLY200_VS_MM)):
            ratio = runs.median(row, OURS) / runs.median(row, mm)
            checks.append((f"{row}: {ratio:.2f}x migrate-mongo (target <= {limit}x)",
                           ratio <= limit))
    if peers:
        fastest = min(peers, key=lambda name: runs.median(NOOP, name))
        checks.append((f"no-op: faster than every peer (the fastest: {fastest})",
                       runs.median(NOOP, OURS) < runs.median(NOOP, fastest)))
    print("\nTargets:\n" + "\n".join(f"  {what}: {verdict(ok)}" for what, ok in checks))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

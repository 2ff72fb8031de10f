"""Figure 4: whole-process time of a no-op ``analytiq-migrations up``.

What a deploy step or a pod's init container pays on every start when there is nothing
to migrate: interpreter start, imports, connecting, one read. Runs are interleaved with
the baseline so that load on the machine hits both alike; the figure is the ratio of
the medians.

Baseline: ``python -c "import pymongo; MongoClient(uri).admin.command('ping')"``.
Also printed: where the CLI's import time goes (``python -X importtime``).

    python benchmarks/bench_startup.py [--runs 15] [--uri URI]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATABASE, REPO_ROOT, client, describe_machine, parser, server, table, verdict

from analytiq_migrations import Migrator

#: The issue's budget: a no-op ``up`` within 1.3x a bare pymongo ping.
TARGET_RATIO = 1.3

MIGRATION = '''\
"""Add an index on users.email"""

transactional = False


def up(db):
    db.users.create_index("email")
'''


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("analytiq-migrations")
    found = str(script) if script.exists() else shutil.which("analytiq-migrations")
    return [found] if found else [sys.executable, "-m", "analytiq_migrations"]


def run(argv: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one process, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")
    return elapsed


def import_profile(env: dict[str, str], top: int = 8) -> list[tuple[str, float]]:
    """Where ``import analytiq_migrations.cli`` spends its time: self ms by top package."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import analytiq_migrations.cli"],
                          env=env, capture_output=True, text=True, check=True)
    by_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:") or "self" in parts[0]:
            continue
        root = parts[2].strip().split(".")[0]
        self_us = int(parts[0].replace("import time:", "").strip())
        by_package[root] = by_package.get(root, 0.0) + self_us / 1000
    ranked = sorted(by_package.items(), key=lambda kv: kv[1], reverse=True)
    return [("total", sum(by_package.values())), *ranked[:top]]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15, help="runs of each command (>= 10)")
    args = p.parse_args(argv)
    with server(args.uri) as uri, tempfile.TemporaryDirectory() as tmp:
        # Bytecode cached, as after `pip install` (which compiles it): without a cache
        # every start compiles the library from source. The cache goes to a temporary
        # directory, never into the source tree.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPATH=str(REPO_ROOT), PYTHONPYCACHEPREFIX=str(Path(tmp) / "pycache"))
        source = Path(tmp) / "migrations"
        source.mkdir()
        (source / "0001_users_email_index.py").write_text(MIGRATION)
        c = client(uri)
        print(f"Machine: {describe_machine(c)}")
        c.drop_database(DATABASE)
        with Migrator(c, str(source), database=DATABASE) as migrator:
            migrator.upgrade()
        cli = [*cli_command(), "up", "--uri", uri, "--database", DATABASE,
               "--migrations", str(source)]
        bare = [sys.executable, "-c",
                f"import pymongo; pymongo.MongoClient({uri!r}).admin.command('ping')"]
        empty = [sys.executable, "-c", "pass"]
        for warm_up in (cli, bare, empty):  # the file cache and the bytecode cache
            run(warm_up, env)
        times: dict[str, list[float]] = {"cli": [], "bare": [], "empty": []}
        for _ in range(args.runs):
            times["cli"].append(run(cli, env))
            times["bare"].append(run(bare, env))
            times["empty"].append(run(empty, env))
        profile = import_profile(env)
        c.drop_database(DATABASE)
        c.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["cli"] / med["bare"]
    print(table(
        ["process", "median ms", "min ms", "max ms", "vs bare ping"],
        [["analytiq-migrations up (no-op)", med["cli"] * 1000, min(times["cli"]) * 1000,
          max(times["cli"]) * 1000, round(ratio, 2)],
         ["python -c 'MongoClient(uri).admin.command(\"ping\")'", med["bare"] * 1000,
          min(times["bare"]) * 1000, max(times["bare"]) * 1000, 1.0],
         ["python -c pass", med["empty"] * 1000, min(times["empty"]) * 1000,
          max(times["empty"]) * 1000, round(med["empty"] / med["bare"], 2)]],
        title=f"\nFigure 4: whole-process time, median of {args.runs} interleaved runs "
        f"(target <= {TARGET_RATIO}x: {verdict(ratio <= TARGET_RATIO)})"))
    print("\nimport analytiq_migrations.cli, ms spent per top-level package: " + ", ".join(
        f"{name} {ms:.0f}" for name, ms in profile))
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())

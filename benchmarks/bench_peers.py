"""Figure 6: whole-process no-op and apply runs, side by side with the peers.

The same workload (3 migrations: insert a document, create an index, update every
document) on the same server, run as a deploy step runs it: one fresh process per run.

- ``analytiq-migrations up`` (the installed console script) with 3 and with 1,000
  migration files, all applied (the no-op), and applying the 3 to an empty database;
- the floor: ``python -c`` that imports pymongo, pings and reads one record;
- migrate-mongo (``npm install migrate-mongo`` into a temporary directory) and
  pymongo-migrate (``pip install pymongo-migrate`` into a temporary venv), each on its
  own database, no-op and apply, skipped with a note when they cannot be installed.

Runs are interleaved (load on the machine hits every command alike); each figure is the
median of ``--runs`` runs, wall time and CPU time (user + system of the process).

    python benchmarks/bench_peers.py [--runs 7] [--files 1000] [--no-peers] [--uri URI]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

from common import REPO_ROOT, client, describe_machine, parser, server, table, verdict

from analytiq_migrations import Migrator

#: The issue's targets, as ratios to the floor's median (wall, CPU).
TARGET_1000 = (1.2, 1.5)
TARGET_3_WALL = 1.1

OURS = {
    "0001_first_user.py": '''\
        """Insert the first user"""

        def up(db):
            db.users.insert_one({"name": "ada", "email": "ada@example.com"})
        ''',
    "0002_email_index.py": '''\
        """Index users by email"""

        transactional = False

        def up(db):
            db.users.create_index("email")
        ''',
    "0003_plan.py": '''\
        """Every user starts on the free plan"""

        def up(db):
            db.users.update_many({}, {"$set": {"plan": "free"}})
        ''',
}

MIGRATE_MONGO = {
    "20260101000001-first-user.js": """\
        module.exports = {
          async up(db) {
            await db.collection('users').insertOne({name: 'ada', email: 'ada@example.com'});
          },
          async down(db) { await db.collection('users').deleteMany({}); }
        };
        """,
    "20260101000002-email-index.js": """\
        module.exports = {
          async up(db) { await db.collection('users').createIndex({email: 1}); },
          async down(db) { await db.collection('users').dropIndex('email_1'); }
        };
        """,
    "20260101000003-plan.js": """\
        module.exports = {
          async up(db) { await db.collection('users').updateMany({}, {$set: {plan: 'free'}}); },
          async down(db) { await db.collection('users').updateMany({}, {$unset: {plan: ''}}); }
        };
        """,
}

PYMONGO_MIGRATE = {
    "0001_first_user.py": '''\
        name = "0001_first_user"
        dependencies = []

        def upgrade(db):
            db.users.insert_one({"name": "ada", "email": "ada@example.com"})

        def downgrade(db):
            db.users.delete_many({})
        ''',
    "0002_email_index.py": '''\
        name = "0002_email_index"
        dependencies = ["0001_first_user"]

        def upgrade(db):
            db.users.create_index("email")

        def downgrade(db):
            db.users.drop_index("email_1")
        ''',
    "0003_plan.py": '''\
        name = "0003_plan"
        dependencies = ["0002_email_index"]

        def upgrade(db):
            db.users.update_many({}, {"$set": {"plan": "free"}})

        def downgrade(db):
            db.users.update_many({}, {"$unset": {"plan": ""}})
        ''',
}

MANY = '''\
"""Set users.step{n}"""

transactional = False


def up(db):
    db.users.update_many({{}}, {{"$set": {{"step{n}": True}}}})
'''


def write(directory: Path, files: dict[str, str]) -> Path:
    """Write ``files`` into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


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


def install_migrate_mongo(tmp: Path) -> Optional[list[str]]:
    """``migrate-mongo`` installed with npm into ``tmp``, or ``None`` (with a note)."""
    npm = shutil.which("npm")
    if npm is None:
        print("migrate-mongo: skipped (no npm here)")
        return None
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent",
                           "migrate-mongo"], cwd=tmp, capture_output=True, text=True)
    script = tmp / "node_modules" / ".bin" / "migrate-mongo"
    if done.returncode != 0 or not script.exists():
        print(f"migrate-mongo: skipped (npm install failed: {done.stderr.strip()[:200]})")
        return None
    return [str(script)]


def install_pymongo_migrate(tmp: Path) -> Optional[list[str]]:
    """``pymongo-migrate`` installed with pip into a venv in ``tmp``, or ``None``."""
    venv = tmp / "pymongo-migrate-venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
    pip = venv / "bin" / "pip"
    done = subprocess.run([str(pip), "install", "-q", "pymongo-migrate"], capture_output=True,
                          text=True) if made.returncode == 0 else made
    script = venv / "bin" / "pymongo-migrate"
    if done.returncode != 0 or not script.exists():
        print("pymongo-migrate: skipped (pip install failed)")
        return None
    return [str(script)]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="runs of each command (median)")
    p.add_argument("--files", type=int, default=1000, help="files of the large no-op")
    p.add_argument("--no-peers", action="store_true", help="skip migrate-mongo and "
                   "pymongo-migrate (no installs)")
    args = p.parse_args(argv)
    with server(args.uri) as uri, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # Bytecode cached as after `pip install`, in a temporary directory.
        env.update(PYTHONPATH=str(REPO_ROOT), PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
        c = client(uri)
        print(f"Machine: {describe_machine(c)}")
        script = Path(sys.executable).with_name("analytiq-migrations")
        ours = [str(script)] if script.exists() else [sys.executable, "-m",
                                                       "analytiq_migrations"]
        three = write(tmp / "ours3", OURS)
        many = write(tmp / "ours_many", {f"{n:04d}_step{n}.py": MANY.format(n=n)
                                         for n in range(1, args.files + 1)})
        dbs = {"ours3": "bench_peer_ours3", "ours_many": "bench_peer_ours_many",
               "ours_apply": "bench_peer_ours_apply", "mm": "bench_peer_mm",
               "pm": "bench_peer_pm"}
        for name in dbs.values():
            c.drop_database(name)
        with Migrator(c, three, database=dbs["ours3"]) as m:
            m.upgrade()
        with Migrator(c, many, database=dbs["ours_many"]) as m:
            m.upgrade()

        def up(source: Path, db: str) -> list[str]:
            return [*ours, "up", "-q", "--uri", uri, "--database", db,
                    "--migrations", str(source)]

        bare = [sys.executable, "-c", "import pymongo; c = pymongo.MongoClient("
                f"{uri!r}); c.admin.command('ping'); c[{dbs['ours3']!r}].migrations"
                ".find_one()"]
        noop: dict[str, tuple[list[str], Optional[Path]]] = {
            "floor: pymongo ping + find_one": (bare, None),
            "analytiq-migrations up, 3 files": (up(three, dbs["ours3"]), None),
            f"analytiq-migrations up, {args.files:,} files": (up(many, dbs["ours_many"]), None),
        }
        apply: dict[str, tuple[list[str], Optional[Path], str]] = {
            "analytiq-migrations up (apply)": (up(three, dbs["ours_apply"]), None,
                                               dbs["ours_apply"]),
        }
        if not args.no_peers:
            mm = install_migrate_mongo(tmp)
            if mm is not None:
                write(tmp / "mm" / "migrations", MIGRATE_MONGO)
                config = {"mongodb": {"url": uri, "databaseName": dbs["mm"], "options": {}},
                          "migrationsDir": "migrations", "changelogCollectionName": "changelog",
                          "lockCollectionName": "changelog_lock", "lockTtl": 0,
                          "migrationFileExtension": ".js", "useFileHash": False,
                          "moduleSystem": "commonjs"}
                (tmp / "mm" / "migrate-mongo-config.js").write_text(
                    f"module.exports = {json.dumps(config)};\n")
                subprocess.run([*mm, "up"], cwd=tmp / "mm", check=True, capture_output=True)
                noop["migrate-mongo up"] = ([*mm, "up"], tmp / "mm")
                apply["migrate-mongo up (apply)"] = ([*mm, "up"], tmp / "mm", dbs["mm"])
            pm = install_pymongo_migrate(tmp)
            if pm is not None:
                source = write(tmp / "pm", PYMONGO_MIGRATE)
                pm_up = [*pm, "migrate", "-u", uri, "-d", dbs["pm"], "-m", str(source)]
                subprocess.run(pm_up, check=True, capture_output=True)
                noop["pymongo-migrate migrate"] = (pm_up, None)
                apply["pymongo-migrate migrate (apply)"] = (pm_up, None, dbs["pm"])
        for argv_, cwd in noop.values():  # warm up: file and bytecode caches
            measure(argv_, env, cwd)
        wall: dict[str, list[float]] = {k: [] for k in [*noop, *apply]}
        cpu: dict[str, list[float]] = {k: [] for k in [*noop, *apply]}
        for _ in range(args.runs):
            for name, (argv_, cwd) in noop.items():
                w, u = measure(argv_, env, cwd)
                wall[name].append(w)
                cpu[name].append(u)
            for name, (argv_, cwd, db) in apply.items():
                c.drop_database(db)
                w, u = measure(argv_, env, cwd)
                wall[name].append(w)
                cpu[name].append(u)
        for name in dbs.values():
            c.drop_database(name)
        c.close()
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    floor = "floor: pymongo ping + find_one"
    rows = [[name, med_w[name] * 1000, med_c[name] * 1000,
             round(med_w[name] / med_w[floor], 2), round(med_c[name] / med_c[floor], 2)]
            for name in noop]
    print(table(["no-op run (all applied)", "wall ms", "CPU ms", "x floor wall",
                 "x floor CPU"], rows,
                title=f"\nFigure 6a: no-op, whole process, median of {args.runs} "
                "interleaved runs"))
    ours_apply = med_w["analytiq-migrations up (apply)"]
    print(table(["apply 3 migrations to an empty database", "wall ms", "CPU ms",
                 "x analytiq-migrations"],
                [[name.removesuffix(" (apply)"), med_w[name] * 1000, med_c[name] * 1000,
                  round(med_w[name] / ours_apply, 2)] for name in apply],
                title=f"\nFigure 6b: apply, whole process, median of {args.runs} runs"))
    many_name = f"analytiq-migrations up, {args.files:,} files"
    checks = [
        (f"{args.files:,} files: wall <= {TARGET_1000[0]}x floor",
         med_w[many_name] / med_w[floor] <= TARGET_1000[0]),
        (f"{args.files:,} files: CPU <= {TARGET_1000[1]}x floor",
         med_c[many_name] / med_c[floor] <= TARGET_1000[1]),
        (f"3 files: wall <= {TARGET_3_WALL}x floor",
         med_w["analytiq-migrations up, 3 files"] / med_w[floor] <= TARGET_3_WALL),
    ]
    if "migrate-mongo up" in noop:
        checks.append(("3 files: faster than migrate-mongo's no-op",
                       med_w["analytiq-migrations up, 3 files"] < med_w["migrate-mongo up"]))
    print("\nTargets:\n" + "\n".join(f"  {what}: {verdict(ok)}" for what, ok in checks))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

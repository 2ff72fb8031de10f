"""Run every benchmark against one server and print their tables.

    python benchmarks/run_all.py            # the issue's sizes (about 25 min on SecantusDB)
    python benchmarks/run_all.py --quick    # small sizes, about 4 minutes: checks the scripts
    MONGODB_URI=mongodb://host/ python benchmarks/run_all.py   # a real MongoDB

Each script exits 0 when its targets are met, 1 when not; the summary lists them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT

HERE = Path(__file__).resolve().parent

#: (script, arguments at full size, arguments with --quick)
SCRIPTS: list[tuple[str, list[str], list[str]]] = [
    ("bench_bookkeeping.py", [], ["--migrations", "5"]),
    ("bench_noop.py", [], ["--runs", "5"]),
    ("bench_status.py", [], ["--migrations", "150", "--runs", "3"]),
    ("bench_startup.py", [], ["--runs", "10"]),
    ("bench_peers.py", [], ["--runs", "3", "--files", "200"]),
    ("bench_batch.py", [], ["--docs", "3000", "--loop-docs", "1000", "--rss-docs", "6000"]),
    ("bench_fleet.py", [], ["--databases", "100", "--work-databases", "8",
                            "--work-seconds", "0.5"]),
    ("bench_budget.py", [], ["--docs", "5000", "--budget", "0.5", "--batch-size", "500"]),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI"))
    p.add_argument("--quick", action="store_true", help="small sizes (checks the scripts)")
    p.add_argument("only", nargs="*", help="run only these scripts (e.g. bench_noop)")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Without a URI each script starts its own SecantusDB (bench_batch one per run,
    # bench_peers one per round): that server slows down with every write it takes, so
    # sharing one would make each figure depend on the ones before it.
    where = ["--uri", args.uri] if args.uri else []
    outcome = []
    for script, full, quick in SCRIPTS:
        if args.only and script.removesuffix(".py") not in args.only:
            continue
        print(f"\n===== {script} =====", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *where,
                                *(quick if args.quick else full)], env=env)
        outcome.append((script, code, time.perf_counter() - start))
    print("\n===== summary =====")
    for script, code, seconds in outcome:
        state = {0: "targets met", 1: "target(s) NOT met"}.get(code, f"failed (exit {code})")
        print(f"{script:24s} {state:20s} {seconds:7.1f} s")
    return max((code for _, code, _ in outcome), default=0)


if __name__ == "__main__":
    sys.exit(main())

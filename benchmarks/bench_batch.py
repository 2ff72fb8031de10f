"""Figure 5: ``batch_update`` over many documents, and its memory.

The same change (``$inc`` a counter on every document) made four ways on one collection,
each through a complete run:

* the seed's way: a per-document ``update_one`` loop over ``find()`` (the baseline);
* one ``update_many`` (the server-side floor; no checkpoints, no resumption);
* ``batch_update`` with a static update document, inside ``Migrator.upgrade``;
* ``batch_update`` with a function ``doc -> update`` (full documents read), once giving
  every document the same change (written like a static update, a few ``_id``s per
  statement) and once a change of each document's own (one statement each).

Then, in a fresh child process, peak RSS growth of ``batch_update`` (function kind: it
holds whole documents) over ``--rss-docs`` documents, against a child that holds the
whole result of ``find()`` as a naive migration would. Linux only (``/proc/self``).

    python benchmarks/bench_batch.py [--docs 100000] [--loop-docs 10000]
                                     [--rss-docs 200000] [--batch-size 1000] [--uri URI]
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any, Callable

from common import (
    DATABASE,
    REPO_ROOT,
    client,
    describe_machine,
    parser,
    server,
    table,
    timed,
    verdict,
)
from pymongo.errors import CursorNotFound

from analytiq_migrations import Migration, Migrator

#: The targets: a static update within 1.3x one update_many (the server's own floor, with
#: no checkpoints: what is left is one checkpoint and one commit per batch); function
#: updates at least 10x the seed's loop; memory flat (growth well under one collection).
TARGET_VS_UPDATE_MANY = 1.3
TARGET_VS_LOOP = 10.0
TARGET_RSS_MB = 50.0

#: The same change as an update pipeline, against one update_many of that pipeline.
PIPELINE = [{"$set": {"n": {"$add": ["$n", 1]}}}]
MANY_PIPELINE, BATCH_PIPELINE = "one update_many, pipeline", "batch_update, pipeline"

#: Documents per insert_many while seeding: large enough to be quick, small enough to
#: stay far below the 48 MB message limit.
SEED_CHUNK = 10_000

#: Bytes of filler per document, so documents weigh something like real ones (~200 B).
PAD = "x" * 150

RSS_CHILD = r"""
import json, sys
import pymongo
from analytiq_migrations import Migration, Migrator

uri, database, mode, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = pymongo.MongoClient(uri)[database]

def status_mb(field):
    # /proc/self/status, not ru_maxrss: Linux carries ru_maxrss over from the forked
    # parent across exec, which would hide any peak below the parent's size.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise SystemExit(f"no {field} in /proc/self/status")

class Bump(Migration):
    transactional = False
    def __init__(self, version, collection):
        super().__init__(version=version, description=f"bump {collection}")
        self.collection = collection
    def up(self, db):
        self.batch_update(self.collection, {}, lambda doc: {"$inc": {"n": 1}},
                          batch_size=batch_size)

db.drop_collection("rss_runs"); db.drop_collection("rss_runs_history")
# Warm up every code path on a small collection first: imports, pydantic models,
# connection pools and the first batch's buffers are not "growth with documents".
Migrator(db, [Bump(1, "warm")], collection="rss_runs").upgrade()
list(db.warm.find())
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status_mb("VmRSS")
if mode == "batch_update":
    Migrator(db, [Bump(1, "warm"), Bump(2, "items")], collection="rss_runs").upgrade()
else:
    docs = list(db.items.find())
after = status_mb("VmHWM")
db.drop_collection("rss_runs"); db.drop_collection("rss_runs_history")
print(json.dumps({"before_mb": before, "after_mb": after}))
"""


class Bump(Migration):
    """``$inc`` every item's counter, in batches."""

    transactional = False

    def __init__(self, update: Any, batch_size: int) -> None:
        super().__init__(version=1, description="bump every item")
        self.update = update
        self.batch_size = batch_size

    def up(self, db: Any) -> None:
        self.batch_update("items", {}, self.update, batch_size=self.batch_size)


def seed(db: Any, start: int, stop: int) -> None:
    """Items ``start..stop-1`` with a zero counter."""
    for first in range(start, stop, SEED_CHUNK):
        db.items.insert_many([{"_id": i, "n": 0, "group": i % 10, "pad": PAD}
                              for i in range(first, min(stop, first + SEED_CHUNK))])


def with_migrator(update: Any, batch_size: int) -> Callable[[Any], None]:
    """A complete ``upgrade`` running one ``batch_update`` on ``db``."""

    def go(db: Any) -> None:
        report = Migrator(db, [Bump(update, batch_size)]).upgrade()
        assert report.versions == [1]

    return go


def rss(uri: str, mode: str, batch_size: int) -> dict[str, float]:
    """RSS before, and peak RSS during, the ``mode`` run in a fresh child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, uri, DATABASE, mode,
                           str(batch_size)], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"RSS child failed: {done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100_000,
                   help="documents in the timed runs (0: skip them)")
    p.add_argument("--loop-docs", type=int, default=10_000,
                   help="documents the update_one loop walks (compared by rate; 0: all); "
                   "on SecantusDB the loop over 100,000 takes well over half an hour")
    p.add_argument("--rss-docs", type=int, default=200_000,
                   help="documents for the memory figure (0: skip it)")
    p.add_argument("--batch-size", type=int, default=1000)
    args = p.parse_args(argv)
    n = args.docs
    loop_n = min(args.loop_docs or n, n)

    looped = {"docs": 0, "lost": False}

    def loop(db: Any) -> None:
        try:
            for i, doc in enumerate(db.items.find()):
                if i == loop_n:
                    break
                db.items.update_one({"_id": doc["_id"]}, {"$inc": {"n": 1}})
                looped["docs"] = i + 1
        except CursorNotFound:
            # The seed's loop holds one find() cursor for the whole walk; when a batch
            # takes longer than the server's idle-cursor timeout (10 minutes, as on
            # mongod) to work through, the cursor is gone. Its rate so far still counts.
            looped["lost"] = True

    runs: list[tuple[str, int, Callable[[Any], Any]]] = [
        ("update_one loop (baseline)", loop_n, loop),
        ("one update_many", n, lambda db: db.items.update_many({}, {"$inc": {"n": 1}})),
        ("batch_update, static $inc", n, with_migrator({"$inc": {"n": 1}}, args.batch_size)),
        (MANY_PIPELINE, n, lambda db: db.items.update_many({}, PIPELINE)),
        (BATCH_PIPELINE, n, with_migrator(PIPELINE, args.batch_size)),
        ("batch_update, function", n,
         with_migrator(lambda doc: {"$inc": {"n": 1}}, args.batch_size)),
        ("batch_update, function, own change", n,
         with_migrator(lambda doc: {"$inc": {"n": 1}, "$set": {"tag": doc["_id"]}},
                       args.batch_size)),
    ]
    results = []
    machine = ""
    for label, docs, fn in runs if n else []:
        # A fresh server (or a fresh database on the given one) per run: SecantusDB gets
        # slower with every write it has taken, which would favour whichever ran first.
        with server(args.uri) as uri:
            c = client(uri)
            machine = machine or describe_machine(c)
            c.drop_database(DATABASE)
            db = c[DATABASE]
            seed(db, 0, n)
            seconds = timed(functools.partial(fn, db))
            if fn is loop:
                docs = looped["docs"]
                if looped["lost"]:
                    print(f"  {label}: its cursor was lost after {docs:,} documents "
                          f"({seconds:.0f} s): CursorNotFound", flush=True)
            once = db.items.count_documents({"n": 1})
            twice = db.items.count_documents({"n": {"$gt": 1}})
            assert (once, twice) == (docs, 0), \
                f"{label}: {once:,} documents changed once, {twice:,} more than once"
            c.drop_database(DATABASE)
            c.close()
        results.append((label, docs, seconds, docs / seconds))
        print(f"  {label}: {docs:,} documents in {seconds:.1f} s", flush=True)

    memory: dict[str, dict[str, float]] = {}
    if args.rss_docs:
        with server(args.uri) as uri:
            c = client(uri)
            machine = machine or describe_machine(c)
            c.drop_database(DATABASE)
            db = c[DATABASE]
            seed(db, 0, args.rss_docs)
            db.warm.insert_many([{"_id": i, "n": 0, "pad": PAD}
                                 for i in range(args.batch_size * 3)])
            for mode in ("batch_update", "naive"):
                memory[mode] = rss(uri, mode, args.batch_size)
            c.drop_database(DATABASE)
            c.close()

    print(f"Machine: {machine}")
    ok = True
    if results:
        ok = timing_table(results, n, loop_n, args.batch_size)
    if memory:
        growth = {k: v["after_mb"] - v["before_mb"] for k, v in memory.items()}
        print(table(["child process", "RSS before MB", "peak RSS during MB", "growth MB"],
                    [["batch_update (function)", memory["batch_update"]["before_mb"],
                      memory["batch_update"]["after_mb"], growth["batch_update"]],
                     ["list(find()) (naive)", memory["naive"]["before_mb"],
                      memory["naive"]["after_mb"], growth["naive"]]],
                    title=f"\nMemory over {args.rss_docs:,} documents (VmRSS before, "
                    "VmHWM after, of a fresh child)"))
        flat = growth["batch_update"] < TARGET_RSS_MB
        print(f"\nbatch_update peak RSS growth {growth['batch_update']:.1f} MB (target < "
              f"{TARGET_RSS_MB:g} MB: {verdict(flat)})")
        ok = ok and flat
    return 0 if ok else 1


def timing_table(results: list[tuple[str, int, float, float]], n: int, loop_n: int,
                 batch_size: int) -> bool:
    """Print the timing figure; True when its targets are met."""
    rates = {label: rate for label, _, _, rate in results}
    loop_rate, many_rate = results[0][3], results[1][3]

    def floor(label: str) -> float:
        """The update_many a run is compared with: the pipeline's for pipelines."""
        return rates.get(MANY_PIPELINE, many_rate) if "pipeline" in label else many_rate

    print(table(["run", "documents", "seconds", "docs/s", "x loop", "x update_many time"],
                [[label, docs, seconds, rate, round(rate / loop_rate, 2),
                  round(floor(label) / rate, 2)] for label, docs, seconds, rate in results],
                title=f"\nFigure 5: $inc over {n:,} documents (the loop: its first "
                f"{loop_n:,}), batch_size {batch_size}, each run on a fresh server "
                "(pipelines against the update_many of the same pipeline)"))
    ok = True
    print()
    for label in ("batch_update, static $inc", BATCH_PIPELINE):
        vs_many = floor(label) / rates[label]
        print(f"{label} vs update_many: {vs_many:.2f}x its time (target <= "
              f"{TARGET_VS_UPDATE_MANY:g}x: {verdict(vs_many <= TARGET_VS_UPDATE_MANY)})")
        ok = ok and vs_many <= TARGET_VS_UPDATE_MANY
    functions = [r for r in results if r[0].startswith("batch_update, function")]
    for label, _, _, rate in functions:
        vs_loop = rate / loop_rate
        print(f"{label} vs loop: {vs_loop:.1f}x faster (target >= {TARGET_VS_LOOP:g}x: "
              f"{verdict(vs_loop >= TARGET_VS_LOOP)})")
        ok = ok and vs_loop >= TARGET_VS_LOOP
    return ok


if __name__ == "__main__":
    sys.exit(main())

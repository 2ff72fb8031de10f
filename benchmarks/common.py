"""Shared plumbing for the benchmark scripts: a server, command counting, tables.

Every script talks to ``MONGODB_URI`` when it is set, and otherwise starts a throw-away
SecantusDB (the test suite's ``start_server``) for the length of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import pymongo
from pymongo import monitoring

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: Database the benchmarks create (and drop) on the server they are given.
DATABASE = "analytiq_migrations_bench"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--uri", default=os.environ.get("MONGODB_URI"),
                   help="MongoDB to measure (default: $MONGODB_URI, else a SecantusDB "
                   "started for this run)")
    return p


@contextlib.contextmanager
def server(uri: str | None) -> Iterator[str]:
    """The URI to measure: ``uri`` as given, or a SecantusDB started (and stopped) here."""
    if uri:
        yield uri
        return
    from analytiq_migrations.testing import start_server

    srv = start_server()
    try:
        yield srv.uri
    finally:
        srv.stop()


def client(uri: str, **options: Any) -> pymongo.MongoClient[dict[str, Any]]:
    """A client with the timeouts the test suite uses."""
    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=15_000, **options)


@contextlib.contextmanager
def fresh_db(c: pymongo.MongoClient[Any], name: str = DATABASE) -> Iterator[Any]:
    """An empty database, dropped afterwards."""
    c.drop_database(name)
    try:
        yield c[name]
    finally:
        c.drop_database(name)


class Commands(monitoring.CommandListener):
    """Counts the commands a client sends (handshakes excluded), by name and collection."""

    IGNORED = frozenset({"hello", "isMaster", "ismaster", "saslStart", "saslContinue"})

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bool]] = []  # (command, collection, in_transaction)
        self.on = True

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on or event.command_name in self.IGNORED:
            return
        target = event.command.get(event.command_name)
        self.sent.append((event.command_name, target if isinstance(target, str) else "",
                          event.command.get("autocommit") is False))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Not needed: a command counts when it is sent."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Not needed: a command counts when it is sent."""

    def clear(self) -> None:
        self.sent.clear()

    def __len__(self) -> int:
        return len(self.sent)

    def breakdown(self) -> Counter[str]:
        """``"update migrations (txn)" -> count``."""
        return Counter(f"{name} {coll}".strip() + (" (txn)" if txn else "")
                       for name, coll, txn in self.sent)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(runs: int, fn: Callable[[], Any]) -> tuple[float, list[float]]:
    """Median seconds of ``runs`` calls of ``fn``, and all of them."""
    times = [timed(fn) for _ in range(runs)]
    return statistics.median(times), times


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def describe_machine(c: pymongo.MongoClient[Any]) -> str:
    """Cores, Python, pymongo and the server, for the head of every report."""
    info = c.admin.command("buildInfo")
    hello = c.admin.command("hello")
    kind = "replica set" if hello.get("setName") else "standalone"
    server = (f"SecantusDB {info['secantusVersion']}" if "secantusVersion" in info
              else f"MongoDB {info.get('version', '?')}")
    return (f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, pymongo {pymongo.version}, {server} ({kind})")


def verdict(ok: bool) -> str:
    """``met`` / ``NOT met``."""
    return "met" if ok else "NOT met"

"""See it work: ``python -m analytiq_migrations.demo``.

Starts a throw-away SecantusDB server in a temporary directory (the ``server`` extra) or
uses the server given with ``--uri`` (never one it was not given: an exported
``MONGODB_URI`` is ignored), seeds a few users in a new database, prints the status,
applies the example migrations (``analytiq_migrations.examples``), prints the status
again, downgrades one step, and drops its database.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from typing import Any, Iterator, Optional, Sequence

from .connect import client_for
from .errors import MigrationError, redact
from .records import StatusRow
from .runner import Migrator
from .timetext import text_time

EXAMPLES = "analytiq_migrations.examples"

USERS = [
    {"name": "Ada Lovelace", "email": "ada@example.com"},
    {"name": "Alan Turing", "email": "alan@example.com"},
    {"name": "Grace Hopper", "email": "grace@example.com"},
]


def status_table(rows: Sequence[StatusRow]) -> str:
    """A plain-text status table."""
    lines = [f"{'version':>7}  {'status':<11}  {'applied at (UTC)':<20}  description"]
    for row in rows:
        applied = text_time(row.applied_at) if row.applied_at else "-"
        lines.append(f"{row.version:>7}  {row.status:<11}  {applied:<20}  {row.description}")
    return "\n".join(lines)


@contextlib.contextmanager
def _server(uri: Optional[str]) -> Iterator[str]:
    """The given URI, or a throw-away embedded server's."""
    if uri:
        print(f"Using the server given with --uri: {redact(uri)}")
        yield uri
        return
    from .testing import embedded_server, require_secantus

    require_secantus()
    print("Starting a throw-away SecantusDB server in a temporary directory...")
    with embedded_server() as server:
        print(f"Using it at {server.uri}")
        yield server.uri


def _show(db: Any) -> None:
    """Print a user and the users indexes."""
    print(f"\nA user now: {db.users.find_one({}, {'_id': 0})}")
    print(f"Indexes on users: {sorted(db.users.index_information())}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m analytiq_migrations.demo",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uri", default=None,
                        help="use this server instead of a throw-away one (MONGODB_URI is "
                             "not read: pass --uri \"$MONGODB_URI\" to use it)")
    args = parser.parse_args(argv)
    from pymongo.errors import PyMongoError

    from .testing import ServerStartError

    try:
        return _run(args.uri)
    except MigrationError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return exc.exit_code
    except (PyMongoError, ServerStartError) as exc:
        print(f"demo: {redact(str(exc))}", file=sys.stderr)
        return 1


def _run(given_uri: Optional[str]) -> int:
    with _server(given_uri) as uri:
        client = client_for(uri)
        name = f"analytiq_demo_{uuid.uuid4().hex[:8]}"
        db = client[name]
        try:
            db.users.insert_many([dict(u) for u in USERS])
            migrator = Migrator(db, EXAMPLES)
            print(f"\nDatabase '{name}', before:\n{status_table(migrator.status())}")
            report = migrator.upgrade()
            print(f"\nupgrade: version {report.start_version} -> {report.end_version}, applied "
                  f"{report.versions}")
            print(f"\nAfter upgrade:\n{status_table(migrator.status())}")
            _show(db)
            report = migrator.downgrade("-1")
            print(f"\ndowngrade -1: version {report.start_version} -> {report.end_version}")
            print(f"\nAfter downgrading one step:\n{status_table(migrator.status())}")
            _show(db)
            print("\nHistory (newest first):")
            for entry in migrator.history():
                print(f"  {entry.finished_at:%H:%M:%S}  v{entry.version}  {entry.direction:<4} "
                      f"{entry.status:<11} {entry.duration_ms} ms  "
                      f"{'in a transaction' if entry.transactional else 'no transaction'}")
        finally:
            client.drop_database(name)
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``Fleet``: one migration set applied to many databases (a database per tenant).

Each database keeps its own records, history and lock, exactly as a single-database
``Migrator`` on it would; the fleet only decides which databases, in which order, how
many at once, and when to stop starting new ones. The work runs in a bounded pool of
threads sharing one client; each database's outcome is handed to ``on_result`` as it
finishes (and kept in the returned ``FleetReport`` unless ``keep=False``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import logging
import os
import socket
import uuid
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

from pymongo.errors import InvalidName, PyMongoError

from .connect import client_for
from .errors import ConfigurationError
from .fleetdriver import Driver, NameTheDatabase
from .fleetreport import (
    DatabaseProblems,
    DatabaseStatus,
    FleetReport,
    Outcome,
    RunInterruptedError,
    pending_versions,
    version_of,
)
from .leaserules import LOCK_ID, recorded_sessions
from .loader import MigrationSource, load_migrations
from .noop import read_and_judge
from .plan import Target
from .records import RunReport
from .runner import Migrator
from .store import utcnow
from .unlock import kill_sessions

log = logging.getLogger("analytiq_migrations")

#: A glob, a list of names, or a callable returning names.
DatabaseSpec = Union[str, Iterable[str], Callable[[], Iterable[str]]]

#: Never migrated by a glob: the server's own databases.
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})

#: Characters that make a pattern a glob (otherwise it is one database's name).
_GLOB_CHARS = frozenset("*?[")


class Fleet:
    """Applies one migration set to many databases on one server, a few at a time."""

    def __init__(
        self,
        client: Any,
        migrations: MigrationSource,
        databases: DatabaseSpec,
        *,
        concurrency: int = 4,
        canary: int = 0,
        continue_on_error: bool = False,
        shard: Optional[Tuple[int, int]] = None,
        **migrator_options: Any,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be a whole number of at least 1, not "
                                     f"{concurrency!r}.")
        if isinstance(canary, bool) or not isinstance(canary, int) or canary < 0:
            raise ConfigurationError(f"canary must be a whole number of 0 or more, not "
                                     f"{canary!r}.")
        if shard is not None:
            check_shard(shard)
        unknown = sorted(set(migrator_options) - _MIGRATOR_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"Fleet got unknown option(s) {', '.join(unknown)}.",
                hint=f"Migrator options are {', '.join(sorted(_MIGRATOR_OPTIONS))}; each "
                "database is named by `databases`.")
        self._owns_client = isinstance(client, str)
        if self._owns_client:
            client = client_for(client)
        elif type(client).__name__ == "Database":
            client = client.client
        self.client = client
        self.migrations = load_migrations(migrations, lazy=True)
        self.databases = databases
        self.concurrency = concurrency
        self.canary = canary
        self.continue_on_error = continue_on_error
        self.shard = shard
        self.lock_wait = float(migrator_options.pop("lock_wait", 0.0) or 0.0)
        self.options = migrator_options
        # The quick no-op answer needs the files' bytes and the CLI's conditions (noop.py).
        self._quick = all(m.source_bytes is not None for m in self.migrations) and \
            migrator_options.get("transactions", "auto") != "always"
        # Refuses bad options (and a bad lock_wait) once, before any database is touched.
        Migrator(self.client, self.migrations, database="admin", lock_wait=self.lock_wait,
                 **self.options)

    def close(self) -> None:
        """Close the client if this Fleet created it from a URI."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs ------------------------------------------------------------------------

    def plan(self, target: Target = None, **kwargs: Any) -> FleetReport:
        """Each database's ``Plan`` for ``target``."""
        return self.run("plan", target, **kwargs)

    def upgrade(self, target: Target = None, **kwargs: Any) -> FleetReport:
        """Upgrade each database to ``target`` (default: the latest); a ``RunReport`` each."""
        return self.run("up", target, **kwargs)

    def downgrade(self, target: Target, **kwargs: Any) -> FleetReport:
        """Revert each database to ``target``; a ``RunReport`` each."""
        return self.run("down", target, **kwargs)

    def status(self, **kwargs: Any) -> FleetReport:
        """Each database's ``DatabaseStatus``."""
        return self.run("status", None, **kwargs)

    def validate(self, **kwargs: Any) -> FleetReport:
        """Each database's ``DatabaseProblems``."""
        return self.run("validate", None, **kwargs)

    def current_version(self, **kwargs: Any) -> FleetReport:
        """Each database's current version (an ``int``)."""
        return self.run("current", None, **kwargs)

    def names(self) -> List[str]:
        """The databases this fleet (and this shard of it) covers, in name order."""
        names = sorted(set(_validated(self._listed())))
        if self.shard is not None:
            names = [n for n in names if in_shard(n, self.shard)]
        return names

    def run(self, action: str, target: Target = None, *,
            on_result: Optional[Callable[[str, Outcome], None]] = None,
            keep: bool = True) -> FleetReport:
        """Do ``action`` (plan, up, down, status, validate, current) on every database.

        ``on_result(name, outcome)`` is called (in this thread) as each one finishes;
        ``keep=False`` keeps only counts and errors in the report (flat memory). On
        Ctrl-C or another ``BaseException`` no new database starts, running ones are
        interrupted like a single-database run, and the exception is re-raised carrying
        the report so far as ``fleet_report``."""
        if action not in _ACTIONS:
            raise ConfigurationError(f"Unknown fleet action {action!r}.")
        names = self.names()
        report = FleetReport(action, keep=keep)
        driver = Driver(self, action, target, report, on_result)
        canaries, rest = names[:self.canary], iter(names[self.canary:])
        naming = NameTheDatabase()
        log.addFilter(naming)
        try:
            driver.phase(iter(canaries))
            if self.canary and any(n in report.failed for n in canaries):
                log.error("A canary database failed: no other database starts")
                driver.halt.set()
            driver.phase(rest)
        except BaseException as exc:
            report.not_started.extend(rest)  # those the canaries' phase never reached
            report.interrupted = "SIGINT" if isinstance(exc, KeyboardInterrupt) else \
                None if isinstance(exc, Exception) else "SIGTERM"
            exc.fleet_report = report  # type: ignore[attr-defined]
            raise
        finally:
            log.removeFilter(naming)
        return report

    # -- one database -----------------------------------------------------------------------

    def migrator(self, name: str, stop: Optional[Callable[[], bool]] = None) -> Migrator:
        """A ``Migrator`` on database ``name`` sharing this fleet's client and migrations."""
        return Migrator(self.client, self.migrations, database=name, stop=stop,
                        **self.options)

    def one(self, action: str, target: Target, name: str,
            stop: Optional[Callable[[], bool]] = None) -> Outcome:
        """Do ``action`` on database ``name``; returns its outcome or raises its error."""
        if action == "up" and self._quick and (target is None or
                                               str(target).strip().lower() == "head"):
            done = self._at_head(name)
            if done is not None:
                return done
        m = self.migrator(name, stop)
        if action == "up":
            return m.upgrade(target)
        if action == "down":
            return m.downgrade(target)
        if action == "plan":
            return m.plan(target)
        if action == "current":
            return m.current_version()
        if action == "validate":
            return DatabaseProblems(name, m.current_version(), m.validate())
        return database_status(m)

    def release_leftover(self, name: str) -> None:
        """After an interrupted database's thread has ended: remove the lock document this
        process still holds there, if any. Ctrl-C reaches a pool thread as an exception
        raised wherever it is, which may be between taking the lock and the block that
        releases it; no run of this fleet uses that database any more, so the lease is
        dead (otherwise it would only expire after its TTL)."""
        collection = self.migrator(name).lock_collection
        try:
            doc = collection.find_one({"_id": LOCK_ID, "host": socket.gethostname(),
                                       "pid": os.getpid()})
            if doc is None:
                return
            kill_sessions(collection, recorded_sessions(doc))  # an open transaction holds it
            if collection.delete_one({"_id": LOCK_ID, "run_id": doc.get("run_id")}) \
                    .deleted_count:
                log.info("%s: released the lock its interrupted run held", name)
        except PyMongoError as exc:
            log.warning("%s: could not release the lock its interrupted run held (it expires "
                        "after its TTL): %s", name, exc)

    def _at_head(self, name: str) -> Optional[RunReport]:
        """The no-op ``up`` of a database at head from one read of its records, as on the
        command line (``noop.py``); ``None`` when not sure (the full path decides)."""
        try:
            db = self.client[name]
        except (InvalidName, TypeError):
            return None  # the Migrator names the mistake
        version, why = read_and_judge(db, self.options.get("collection", "migrations"),
                                      self.migrations)
        if version is None:
            log.debug("%s: %s; taking the full path", name, why)
            return None
        now = utcnow()
        return RunReport(run_id=uuid.uuid4().hex, direction="up", start_version=version,
                         end_version=version, started_at=now, finished_at=now)

    def _listed(self) -> Iterable[Any]:
        """The names ``databases`` gives (a glob is matched against the server's)."""
        spec = self.databases
        if callable(spec):
            spec = spec()
        if isinstance(spec, str):
            if "," in spec:
                return [part.strip() for part in spec.split(",") if part.strip()]
            if not _GLOB_CHARS & set(spec):
                return [spec.strip()]
            existing = self.client.list_database_names()
            return [n for n in existing
                    if n not in SYSTEM_DATABASES and fnmatch.fnmatchcase(n, spec)]
        try:
            return list(spec)
        except TypeError:
            raise ConfigurationError(
                f"Cannot read database names from {spec!r}.",
                hint="Pass a glob ('tenant_*'), a list of names, or a function returning "
                "names.") from None


def database_status(m: Migrator) -> DatabaseStatus:
    """``status`` of one database: everything ``up`` would run (or stops at) is pending."""
    rows = m.status()
    return DatabaseStatus(database=m.db.name, current_version=m.current_version(),
                          head_version=max((int(x.version or 0) for x in m.migrations),
                                           default=0),
                          pending=pending_versions(m.migrations, rows),
                          problems=m.validate(), migrations=rows)


def check_shard(shard: Tuple[int, int]) -> None:
    """Refuse a shard that is not ``(I, N)`` with ``1 <= I <= N``."""
    try:
        index, count = shard
        good = all(type(x) is int for x in shard) and 1 <= index <= count
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigurationError(f"Bad shard {shard!r}: it is I/N with 1 <= I <= N.",
                                 hint="For example --shard 2/3: the second of three hosts.")


def in_shard(name: str, shard: Tuple[int, int]) -> bool:
    """Whether ``name`` falls in shard ``I`` of ``N`` (sha256 of the name: stable across
    hosts, processes and Python versions, unlike ``hash``)."""
    index, count = shard
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count \
        == index - 1


def _validated(names: Iterable[Any]) -> Iterator[str]:
    """Each name, once it is a non-empty string."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"Bad database name {name!r} in the databases given.",
                                     hint="Database names are non-empty strings.")
        yield name

_ACTIONS = ("plan", "up", "down", "status", "validate", "current")

#: What ``**migrator_options`` may hold (``Migrator``'s keyword arguments but these).
_MIGRATOR_OPTIONS = frozenset(inspect.signature(Migrator.__init__).parameters) - {
    "self", "client_or_db", "migrations", "database", "stop"}

def parse_shard(text: str) -> Tuple[int, int]:
    """``"I/N"`` as ``(I, N)``; a ``ConfigurationError`` otherwise."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ConfigurationError(f"Bad shard {text!r}: it is I/N with 1 <= I <= N.",
                                 hint="For example --shard 2/3: the second of three hosts.")
    shard = (int(parts[0]), int(parts[1]))
    check_shard(shard)
    return shard


__all__ = ["DatabaseProblems", "DatabaseStatus", "Fleet", "FleetReport",
           "RunInterruptedError", "in_shard", "parse_shard", "version_of"]

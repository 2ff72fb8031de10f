"""``Migrator``: plan, apply and revert migrations under the lock; report, never print.

A facade: the work is done by small parts, built once per ``Migrator``:
``Capabilities`` (what the server can do), ``Drift`` (checksums), ``RunKit`` (the records,
the target, the plan, the lock), ``runloop`` (one upgrade/downgrade), ``bookkeeping``
(fake, baseline, adopt, repair) and ``rehearsal`` (the dry run). ``connect`` makes the
client from a URI.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, TypeVar

from pymongo.errors import PyMongoError

from . import bookkeeping, runloop, txnpending
from .budget import make_budget
from .capabilities import Capabilities
from .connect import ClientOrDb, refuse_unreachable, resolve_database
from .drift import DRIFT_MODES, Drift
from .errors import ConfigurationError, MigrationError
from .lifecycle import clear_pause, request_pause
from .loader import MigrationSource, load_migrations
from .lock import ServerClock, break_lock, lease_live, read_lock
from .migration import Migration
from .plan import Target, current_version, find_problems, status_rows
from .records import (
    HistoryEntry,
    LockInfo,
    MigrationRecord,
    Plan,
    Problem,
    ProgressEvent,
    RepairAction,
    RepairNote,
    RunReport,
    StatusRow,
    StepEvent,
)
from .repairnotes import repair_notes
from .retry import RetryPolicy
from .runkit import RunKit, new_run
from .server import own_collection
from .store import Store
from .stored import APPLIED_STATUSES

log = logging.getLogger("analytiq_migrations")

F = TypeVar("F", bound=Callable[..., Any])

#: What ``transactions`` may say: follow the server, demand them, or never use them.
TRANSACTION_MODES = ("auto", "always", "never")


@dataclass
class VersionDetails:
    """What ``Migrator.show(version)`` returns: one version, from the code and the database."""

    version: int
    description: str
    #: As in ``status()``: pending, applied, baselined, failed, running, missing...
    status: str
    #: The migration's file (or module.Class), ``None`` when the code no longer has it.
    file: Optional[str]
    #: Checksum of the code now, and the one recorded when it was applied.
    checksum: Optional[str]
    recorded_checksum: Optional[str]
    checksum_ok: Optional[bool]
    transactional: Optional[bool]
    reversible: Optional[bool]
    #: The record was written without running the code (``--fake``, ``baseline``).
    faked: bool
    record: Optional[MigrationRecord]
    #: The newest attempt that ended with an error, if any.
    last_failure: Optional[HistoryEntry]
    #: Every attempt at this version, newest first.
    history: List[HistoryEntry] = field(default_factory=list)

    def model_dump(self) -> Dict[str, Any]:
        """Plain data (records and history entries as dicts)."""
        data = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        data["record"] = self.record.model_dump() if self.record else None
        data["last_failure"] = self.last_failure.model_dump() if self.last_failure else None
        data["history"] = [entry.model_dump() for entry in self.history]
        return data


def _reversible(migration: Optional[Migration]) -> Optional[bool]:
    """Whether the code can revert ``migration`` (imports its file: ``status`` does not, for
    applied, unchanged files); ``None`` when the file is gone or does not load."""
    if migration is None:
        return None
    try:
        return migration.reversible
    except MigrationError:
        return None


def _translate_errors(method: F) -> F:
    """Turn driver errors escaping a public method into ``MigrationError`` subclasses."""

    @functools.wraps(method)
    def wrapper(self: Migrator, *args: Any, **kwargs: Any) -> Any:
        try:
            if not self._reached:  # a client made from a URI: its first contact fails fast
                refuse_unreachable(self.client)
                self._reached = True
            return method(self, *args, **kwargs)
        except MigrationError:
            raise
        except PyMongoError as exc:
            translated = self.translate_error(exc)
            translated.report = getattr(exc, "report", None)  # what a run did before it
            raise translated from exc

    return wrapper  # type: ignore[return-value]


class Migrator:
    """Applies a set of migrations to one database, safely, from any number of processes."""

    def __init__(
        self,
        client_or_db: ClientOrDb,
        migrations: MigrationSource,
        database: Optional[str] = None,
        collection: str = "migrations",
        transactions: str = "auto",
        lock_ttl: float = 60.0,
        lock_wait: float = 0.0,
        on_drift: str = "error",
        *,
        allow_out_of_order: bool = False,
        retry: Optional[RetryPolicy] = None,
        progress: Optional[Callable[[ProgressEvent], None]] = None,
        stop: Optional[Callable[[], bool]] = None,
        on_step: Optional[Callable[[StepEvent], None]] = None,
    ) -> None:
        if transactions not in TRANSACTION_MODES:
            raise ConfigurationError(
                f"transactions={transactions!r} is not one of {', '.join(TRANSACTION_MODES)}."
            )
        if on_drift not in DRIFT_MODES:
            raise ConfigurationError(
                f"on_drift={on_drift!r} is not one of {', '.join(DRIFT_MODES)}."
            )
        if not lock_ttl or lock_ttl <= 0:
            raise ConfigurationError(
                f"lock_ttl must be a positive number of seconds, not {lock_ttl!r}."
            )
        if lock_wait is None or lock_wait < 0:
            raise ConfigurationError(f"lock_wait must be 0 or more seconds, not {lock_wait!r}.")
        if not collection or "$" in collection or collection.startswith("system."):
            raise ConfigurationError(f"Bad collection name {collection!r}.")
        self._owns_client = isinstance(client_or_db, str)
        #: Until a client made here from a URI was probed (``connect.refuse_unreachable``); the
        #: application's own client is its business, and may not be connected yet by design.
        self._reached = not self._owns_client
        self.db = resolve_database(client_or_db, database)
        self.client = self.db.client
        # Files are imported only when their code is needed (see FileMigration).
        self.migrations: list[Migration] = load_migrations(migrations, lazy=True)
        # The settings, as given: the parts below are built from them, once.
        self.transactions = transactions
        self.lock_ttl = float(lock_ttl)
        self.lock_wait = float(lock_wait)
        self.on_drift = on_drift
        self.allow_out_of_order = allow_out_of_order
        self.retry = retry or RetryPolicy()
        self.progress = progress
        #: Asked before each step of a run: True ends the run there (a ``Fleet`` stopping).
        self.stop = stop
        #: Told as each step of ``upgrade``/``downgrade`` starts and ends.
        self.on_step = on_step
        self.store = Store(self.db, collection, self.retry)
        lock_name = "migration_lock" if collection == "migrations" else f"{collection}_lock"
        self.lock_collection = own_collection(self.db, lock_name)
        #: The parts doing the work (see the module's docstring).
        self.capabilities = Capabilities(self.client, self.db.name, transactions)
        self.kit = RunKit(self.db, self.migrations, self.store, self.lock_collection,
                          self.capabilities, Drift(self.migrations, self.store, on_drift),
                          lock_ttl=self.lock_ttl, lock_wait=self.lock_wait, retry=self.retry,
                          allow_out_of_order=allow_out_of_order)

    # -- context management ----------------------------------------------------------------

    def close(self) -> None:
        """Close the client if this Migrator created it from a URI."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Migrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read-only questions -----------------------------------------------------------------

    @_translate_errors
    def plan(self, target: Target = None) -> Plan:
        """What ``upgrade(target)`` (or a downgrade, for a lower target) would do."""
        records = self.kit.records(self.kit.load())
        current = current_version(records)
        resolved = self.kit.resolve(target, current, "up")
        plan = self.kit.steps("down" if resolved < current else "up", records, resolved)
        txnpending.mark(self.capabilities, self.db, plan, self.kit.by_version)
        return plan

    @_translate_errors
    def status(self) -> list[StatusRow]:
        """One row per version in the code or the database, pending ones included."""
        return self._rows(self.kit.records(self.kit.load()))

    def _rows(self, records: dict[int, MigrationRecord]) -> list[StatusRow]:
        """Status rows, a live lease's run and step judged as ``lease_live`` says."""
        info = self._live_lock()
        step = info.step if info is not None and info.step else None
        return status_rows(self.migrations, records,
                           info.run_id if info is not None else None,
                           live_step=step.get("version") if step else None)

    @_translate_errors
    def current_version(self) -> int:
        """Highest applied (or baselined) version; 0 when none."""
        return current_version(self.kit.records(self.kit.load()))

    @_translate_errors
    def history(self, version: Optional[int] = None, limit: int = 0) -> list[HistoryEntry]:
        """Audit entries, newest first."""
        return self.store.read_history(version, limit)

    @_translate_errors
    def repairs(self, version: Optional[int] = None) -> list[RepairNote]:
        """The fixes ``repair()`` made (noted on the records), newest first."""
        return repair_notes(self.kit.load().records, version)

    @_translate_errors
    def lock_info(self) -> Optional[LockInfo]:
        """The lock document as stored (live or expired), or ``None`` when unlocked."""
        return read_lock(self.lock_collection)

    @_translate_errors
    def server_now(self) -> datetime:
        """The server's current time (from ``hello.localTime``): what leases are judged by."""
        return ServerClock(self.db).now()

    @_translate_errors
    def validate(self) -> list[Problem]:
        """Everything wrong between the code and the database; empty when healthy."""
        state = self.kit.load()
        records = self.kit.records(state)
        problems = find_problems(self.migrations, records, state.corrupt, self._live_run_id())
        pending = [m for m in self.migrations
                   if records.get(int(m.version or 0)) is None
                   or records[int(m.version or 0)].status not in APPLIED_STATUSES]
        for migration in pending:
            migration.loaded()  # a pending file that does not load fails validate (exit 2)
        return problems + txnpending.problems(self.capabilities, self.db, pending)

    # -- changes -------------------------------------------------------------------------------

    @_translate_errors
    def upgrade(self, target: Target = None, *, fake: bool = False,
                dry_run: bool = False, time_budget: Optional[float] = None) -> RunReport:
        """Apply pending migrations up to ``target`` (default: the latest).

        ``time_budget`` (seconds): once spent, a ``batch_update`` stops at its next
        checkpoint and the version is recorded ``paused`` (``RunReport.paused``); the next
        ``upgrade`` continues it. Ordinary migration code is never stopped mid-step.
        ``fake=True`` records them ``baselined`` (``faked: true``) without running them:
        for changes already made by other means. ``dry_run=True`` rehearses them in one
        transaction that is aborted, and stores nothing (see ``rehearsal``)."""
        if dry_run:
            return self._rehearse("up", target, fake)
        if fake:
            return bookkeeping.fake(self.kit, "up", target)
        return runloop.traced(self.kit, "up", target, self._hooks(), make_budget(time_budget))

    @_translate_errors
    def downgrade(self, target: Target, *, fake: bool = False,
                  dry_run: bool = False) -> RunReport:
        """Revert applied migrations above ``target`` (0 reverts all).

        ``fake=True`` records them ``rolled_back`` (``faked: true``) without running
        ``down()``, reversible or not: for changes already undone by other means.
        ``dry_run=True`` rehearses the reverts in one aborted transaction, storing nothing."""
        if dry_run:
            return self._rehearse("down", target, fake)
        if fake:
            return bookkeeping.fake(self.kit, "down", target)
        return runloop.traced(self.kit, "down", target, self._hooks())

    @_translate_errors
    def repair(
        self, accept_checksums: bool = False, clear_failed: bool = False,
        accept_missing: bool = False,
    ) -> list[RepairAction]:
        """Explicit fixes: accept edited checksums, forget failed/interrupted attempts,
        record applied versions whose files were pruned or squashed as gone on purpose."""
        return bookkeeping.repair(self.kit, accept_checksums, clear_failed, accept_missing)

    @_translate_errors
    def baseline(self, version: int) -> RunReport:
        """Record the database as being at ``version`` without running any code: adopt an
        existing database (1..``version`` marked ``baselined``), or, below the current
        version, mark the versions above it ``rolled_back`` (like ``downgrade(version,
        fake=True)``). Every record and history entry written says ``faked: true``."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigurationError(f"baseline needs a version (0 or more), not {version!r}.")
        return bookkeeping.fake(self.kit, None, version)

    @_translate_errors
    def show(self, version: int) -> VersionDetails:
        """Everything known about one version: code, record, checksums, history."""
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise ConfigurationError(f"show needs a positive version, not {version!r}.")
        state = self.kit.load()
        records = self.kit.records(state)
        rows = {row.version: row for row in self._rows(records)}
        row = rows.get(version)
        if row is None:
            known = ", ".join(str(v) for v in sorted(rows)) or "none"
            raise ConfigurationError(
                f"Version {version} is neither in the code nor in the database "
                f"(versions: {known}).",
                hint="`status` lists every version.",
            )
        migration = self.kit.by_version.get(version)
        record = state.records.get(version) or records.get(version)
        history = self.store.read_history(version)
        failed = next((e for e in history if e.error is not None), None)
        return VersionDetails(
            version=version, description=row.description, status=row.status,
            file=migration.name if migration else None,
            checksum=migration.checksum if migration else None,
            recorded_checksum=record.checksum if record else None,
            checksum_ok=row.checksum_ok, transactional=row.transactional,
            reversible=_reversible(migration), faked=bool(getattr(record, "faked", False)),
            record=record, last_failure=failed, history=history,
        )

    @_translate_errors
    def unlock(self, force: bool = False) -> bool:
        """Release the lock; ``force=True`` breaks anyone's. True when a lock was removed."""
        return break_lock(
            self.lock_collection, run_id=self.kit.holder, force=force, clock=ServerClock(self.db)
        )

    @_translate_errors
    def pause(self, version: int) -> Dict[str, Any]:
        """Ask the run working on ``version`` to stop at its next ``batch_update``
        checkpoint, and keep later ``upgrade`` calls from continuing it until ``resume``.
        Needs no lock (any process or host). Returns the record's ``pause`` request."""
        return request_pause(self.store, version, new_run())

    @_translate_errors
    def resume(self, version: int) -> bool:
        """Clear a ``pause`` request: the next ``upgrade`` continues the version from its
        checkpoint. False when the version had none."""
        return clear_pause(self.store, version)

    # -- the parts ------------------------------------------------------------------------------

    def translate_error(self, exc: PyMongoError) -> MigrationError:
        """The ``MigrationError`` a driver error stands for (every public method uses it)."""
        return self.capabilities.translate_error(exc)

    def _hooks(self) -> runloop.Hooks:
        """The callbacks as set now (the command line sets ``on_step`` after building us)."""
        return runloop.Hooks(progress=self.progress, on_step=self.on_step, stop=self.stop)

    def _rehearse(self, direction: str, target: Target, fake: bool) -> RunReport:
        """``dry_run=True``: the rehearsal (rehearsal.py)."""
        if fake:
            raise ConfigurationError("fake and dry_run exclude each other: a fake run runs "
                                     "no code, a dry run runs it and keeps nothing.",
                                     hint="Pick one (`--fake` or `--dry-run`).")
        from .rehearsal import rehearse

        return rehearse(self.kit, direction, target, on_step=self.on_step)

    # -- the lock ------------------------------------------------------------------------------

    def _live_run_id(self) -> Optional[str]:
        """``run_id`` of the current, unexpired lock holder (``None`` if none)."""
        info = self._live_lock()
        return info.run_id if info is not None else None

    def _live_lock(self) -> Optional[LockInfo]:
        """The lock, if it is held and its lease has not run out."""
        info = self.lock_info()
        if info is None or lease_live(info.expires_at, self.server_now()):
            return info
        return None


def run_migrations(
    client_or_db: ClientOrDb,
    target_version: Optional[int] = None,
    migrations: Optional[MigrationSource] = None,
    database: Optional[str] = None,
    **options: Any,
) -> RunReport:
    """The seed's entry point: go up (or down) to ``target_version`` (default: latest)."""
    source = migrations if migrations is not None else os.environ.get("ANALYTIQ_MIGRATIONS_SOURCE")
    if source is None:
        raise ConfigurationError(
            "run_migrations needs migrations: a list, a package name or a directory.",
            hint="Pass migrations=MIGRATIONS (or set ANALYTIQ_MIGRATIONS_SOURCE).",
        )
    with Migrator(client_or_db, source, database=database, **options) as migrator:
        if target_version is not None and target_version < migrator.current_version():
            return migrator.downgrade(target_version)
        return migrator.upgrade(target_version)


__all__ = ["Migrator", "VersionDetails", "run_migrations"]

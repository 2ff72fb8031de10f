"""``Migrator``: plan, apply and revert migrations under the lock; report, never print."""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar, Union

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import (
    ConnectionFailure,
    InvalidName,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from . import __version__, otel
from .budget import Budget, make_budget
from .dbproxy import HAS_BIND
from .errors import (
    ChecksumDriftError,
    ConfigurationError,
    ConnectionFailedError,
    FailedMigrationError,
    InterruptedMigrationError,
    MigrationError,
    TransactionsUnsupportedError,
    first_line,
    redact,
)
from .hints import spell
from .lifecycle import Lifecycle, clear_pause, request_pause
from .loader import MigrationSource, load_migrations
from .lock import Lease, ServerClock, break_lock, dead_holder, lease_live, read_lock
from .migration import Migration
from .outside import note_joining
from .pauses import stopped_note
from .plan import (
    Target,
    accepts_missing,
    current_version,
    find_problems,
    plan_downgrade,
    plan_upgrade,
    resolve_target,
    status_rows,
    unchanged,
    virtual_records,
)
from .reach import SetNames, set_name_mismatch
from .records import (
    HistoryEntry,
    LockInfo,
    MigrationRecord,
    Plan,
    Problem,
    ProgressEvent,
    RepairAction,
    RepairNote,
    RunInfo,
    RunReport,
    StatusRow,
    StepEvent,
    StepResult,
    field_names,
)
from .repairnotes import repair_notes
from .retry import RetryPolicy
from .runsteps import run_steps
from .server import (
    MIN_WIRE_VERSION,
    PIPELINE_UPDATE_WIRE_VERSION,
    SERVER_SELECTION_TIMEOUT_MS,
    hosts,
    mongodb_release,
    own_collection,
    topology,
)
from .startonce import refuse_repeated_failure
from .step import StepEnv, step_marker
from .store import DatabaseState, Store, utcnow
from .stored import APPLIED_STATUSES
from .txnrules import way_out
from .txnscan import Finding, refusals_of

log = logging.getLogger("analytiq_migrations")

F = TypeVar("F", bound=Callable[..., Any])

#: MongoDB refuses longer database names (fewer than 64 bytes), but only once something
#: is written; checked up front so the mistake is named before anything runs.
MAX_DATABASE_NAME = 63

TRANSACTION_MODES = ("auto", "always", "never")
DRIFT_MODES = ("error", "warn", "ignore")

ClientOrDb = Union[str, "pymongo.MongoClient[Any]", "Database[Any]", Any]


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
        self.db = _resolve_database(client_or_db, database)
        self.client = self.db.client
        # Files are imported only when their code is needed (see FileMigration).
        self.migrations: list[Migration] = load_migrations(migrations, lazy=True)
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
        self._by_version = {int(m.version or 0): m for m in self.migrations}
        self._run_id: Optional[str] = None  # set while this object runs upgrade/downgrade

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
        state = self._load()
        records = self._records(state)
        current = current_version(records)
        resolved = self._resolve(target, current, "up")
        if resolved < current:
            plan = plan_downgrade(self.migrations, records, resolved, self._use_transaction)
        else:
            plan = plan_upgrade(
                self.migrations, records, resolved, self._use_transaction,
                allow_out_of_order=self.allow_out_of_order,
            )
        existing = self._collection_names()
        for step in plan.steps:
            migration = self._by_version.get(step.version)
            findings = self._scan(migration, step.direction, existing) \
                if step.transactional and migration is not None else []
            if findings:
                step.refused = f"{findings[0].call} (line {findings[0].line})"
        return plan

    @_translate_errors
    def status(self) -> list[StatusRow]:
        """One row per version in the code or the database, pending ones included."""
        return self._rows(self._records(self._load()))

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
        return current_version(self._records(self._load()))

    @_translate_errors
    def history(self, version: Optional[int] = None, limit: int = 0) -> list[HistoryEntry]:
        """Audit entries, newest first."""
        return self.store.read_history(version, limit)

    @_translate_errors
    def repairs(self, version: Optional[int] = None) -> list[RepairNote]:
        """The fixes ``repair()`` made (noted on the records), newest first."""
        return repair_notes(self._load().records, version)

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
        state = self._load()
        records = self._records(state)
        problems = find_problems(self.migrations, records, state.corrupt, self._live_run_id())
        pending = [m for m in self.migrations
                   if records.get(int(m.version or 0)) is None
                   or records[int(m.version or 0)].status not in APPLIED_STATUSES]
        for migration in pending:
            migration.loaded()  # a pending file that does not load fails validate (exit 2)
        return problems + self._refusals(pending)

    def _refusals(self, pending: List[Migration]) -> List[Problem]:
        """A ``refused_in_transaction`` problem per pending migration that would run in a
        transaction and calls what a transaction refuses (read from its code, not run)."""
        problems, existing = [], self._collection_names()
        for migration in pending:
            findings = self._scan(migration, "up", existing)
            if not findings:
                continue
            calls = "; ".join(f"{f.call} (line {f.line}): {f.reason}" for f in findings)
            problems.append(Problem(
                kind="refused_in_transaction", version=migration.version,
                message=f"Migration {migration.version} ({migration.name}) runs in a "
                f"transaction, and its up() calls what MongoDB refuses there: {calls}.",
                hint=way_out(),
            ))
        return problems

    def _scan(self, migration: Migration, direction: str,
              existing: Callable[[], frozenset[str]]) -> List[Finding]:
        """What ``migration``'s ``direction`` calls that its transaction would refuse
        (nothing when it does not run in one)."""
        try:
            if not self._use_transaction(migration):
                return []
        except TransactionsUnsupportedError:
            return []  # refused on its own, with its own error, when it runs
        return refusals_of(migration, direction, database=self.db.name,
                           wire_version=self._wire_version() if self._is_real_client() else 0,
                           existing=existing)

    def _collection_names(self) -> Callable[[], frozenset[str]]:
        """Reads the database's collections once, on first call (an index build is refused
        in a transaction only on a collection that exists)."""
        names: List[frozenset[str]] = []

        def read() -> frozenset[str]:
            if not names:
                names.append(frozenset(self.db.list_collection_names()))
            return names[0]

        return read

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
            return self._fake("up", target)
        return self._traced("up", target, make_budget(time_budget))

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
            return self._fake("down", target)
        return self._traced("down", target)

    @_translate_errors
    def repair(
        self, accept_checksums: bool = False, clear_failed: bool = False,
        accept_missing: bool = False,
    ) -> list[RepairAction]:
        """Explicit fixes: accept edited checksums, forget failed/interrupted attempts,
        record applied versions whose files were pruned or squashed as gone on purpose."""
        run = self._new_run()
        actions: list[RepairAction] = []
        with self._locked(run):
            state = self._load()
            self._raise_corrupt(state)
            for version, record in sorted(self._records(state).items()):
                migration = self._by_version.get(version)
                note = {"at": utcnow(), **run.model_dump()}
                if accept_checksums and migration is not None and record.checksum and \
                        record.status in APPLIED_STATUSES and record.checksum != migration.checksum:
                    detail = f"checksum {record.checksum[:12]} -> {migration.checksum[:12]}"
                    self.store.note_repair(version, {
                        "checksum": migration.checksum,
                        "raw_checksum": migration.raw_checksum()}, {
                        **note, "id": f"{run.run_id}/accept_checksum",
                        "action": "accept_checksum", "old": record.checksum,
                        "new": migration.checksum})
                    actions.append(RepairAction(version=version, action="accept_checksum",
                                                detail=detail))
                if clear_failed and record.status in ("failed", "running"):
                    back = "applied" if record.direction == "down" else "rolled_back"
                    detail = (f"{record.status} '{record.direction}' cleared: version is now "
                              f"{'applied' if back == 'applied' else 'pending'}")
                    self.store.note_repair(version, {
                        "status": back, "error": None, "progress": None}, {
                        **note, "id": f"{run.run_id}/clear_failed",
                        "action": "clear_failed", "was": record.status,
                        "direction": record.direction,
                        "error": record.error.model_dump() if record.error else None})
                    actions.append(RepairAction(version=version, action="clear_failed",
                                                detail=detail))
                if accept_missing and accepts_missing(record, migration):
                    self.store.note_repair(version, {"pruned": True}, {
                        **note, "id": f"{run.run_id}/accept_missing",
                        "action": "accept_missing"})
                    actions.append(RepairAction(
                        version=version, action="accept_missing",
                        detail="file removed on purpose: applied, no longer reported missing"))
        for action in actions:
            log.warning("repair: version %d: %s", action.version, action.detail)
        return actions

    @_translate_errors
    def baseline(self, version: int) -> RunReport:
        """Record the database as being at ``version`` without running any code: adopt an
        existing database (1..``version`` marked ``baselined``), or, below the current
        version, mark the versions above it ``rolled_back`` (like ``downgrade(version,
        fake=True)``). Every record and history entry written says ``faked: true``."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigurationError(f"baseline needs a version (0 or more), not {version!r}.")
        return self._fake(None, version)

    @_translate_errors
    def show(self, version: int) -> VersionDetails:
        """Everything known about one version: code, record, checksums, history."""
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise ConfigurationError(f"show needs a positive version, not {version!r}.")
        state = self._load()
        records = self._records(state)
        rows = {row.version: row for row in self._rows(records)}
        row = rows.get(version)
        if row is None:
            known = ", ".join(str(v) for v in sorted(rows)) or "none"
            raise ConfigurationError(
                f"Version {version} is neither in the code nor in the database "
                f"(versions: {known}).",
                hint="`status` lists every version.",
            )
        migration = self._by_version.get(version)
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
            self.lock_collection, run_id=self._run_id, force=force, clock=ServerClock(self.db)
        )

    @_translate_errors
    def pause(self, version: int) -> Dict[str, Any]:
        """Ask the run working on ``version`` to stop at its next ``batch_update``
        checkpoint, and keep later ``upgrade`` calls from continuing it until ``resume``.
        Needs no lock (any process or host). Returns the record's ``pause`` request."""
        return request_pause(self.store, version, self._new_run())

    @_translate_errors
    def resume(self, version: int) -> bool:
        """Clear a ``pause`` request: the next ``upgrade`` continues the version from its
        checkpoint. False when the version had none."""
        return clear_pause(self.store, version)

    # -- the run -------------------------------------------------------------------------------

    def _fake(self, direction: Optional[str], target: Target) -> RunReport:
        """Move the records to ``target`` without running code (``fake``, ``baseline``).

        ``direction`` ``None`` (baseline): whichever way ``target`` lies, and a target
        the code does not have is recorded too (adopting a database newer than the code).
        """
        run = self._new_run()
        started = utcnow()
        steps: list[StepResult] = []
        with self._locked(run) as (lease, session):
            book = self._book(lease, session, run)
            state = self._load()
            self._raise_corrupt(state)
            if state.adoptable:
                self._adopt(state, run, book)
                state = self._load()
            # A dead run's attempt recorded as "finished by hand" is first recorded as
            # interrupted: the history tells both.
            book.settle(state.records)
            records = self._records(state)
            start = current_version(records)
            if direction is None:
                resolved = int(target)  # type: ignore[arg-type]
                way = "up" if resolved >= start else "down"
            else:
                resolved = self._resolve(target, start, direction)
                way = direction
                if way == "up" and resolved < start:
                    raise ConfigurationError(
                        f"Target {resolved} is below the current version {start}.",
                        hint=spell(f"Use downgrade({resolved}, fake=True) (`down --fake "
                                   f"{resolved}`) to record going back.",
                                   cli=f"Use `down --fake {resolved}` to record going back."))
                if way == "down" and resolved > start:
                    raise ConfigurationError(
                        f"Target {resolved} is above the current version {start}.",
                        hint=spell(f"Use upgrade({resolved}, fake=True) (`up --fake "
                                   f"{resolved}`).", cli=f"Use `up --fake {resolved}`."))
            if way == "up":
                versions = [v for v in self._by_version if v <= resolved]
                if direction is None and resolved and resolved not in self._by_version:
                    versions.append(resolved)
                for v in sorted(versions):
                    record = records.get(v)
                    if record is not None and record.status in APPLIED_STATUSES:
                        continue
                    migration = self._by_version.get(v)
                    self._write_baselined(v, migration, run, "baseline", book)
                    records[v] = MigrationRecord(version=v, status="baselined")
                    steps.append(StepResult(
                        version=v, direction="up", status="baselined", transactional=False,
                        duration_ms=0,
                        description=migration.summary() if migration else f"baseline {v}"))
            else:
                for v in sorted(records, reverse=True):
                    record = records[v]
                    if v <= resolved or record.status not in APPLIED_STATUSES | {"failed",
                                                                                 "running"}:
                        continue
                    self._write_faked_revert(v, record, run, book)
                    records[v] = record.model_copy(update={"status": "rolled_back"})
                    steps.append(StepResult(
                        version=v, direction="down", status="rolled_back",
                        transactional=False, duration_ms=0, description=record.description))
            end = current_version(records)
            if state.legacy_version is not None and steps:
                self.store.set_legacy(end)
        for step in steps:
            log.info("Migration %d recorded %s without running it (faked)", step.version,
                     step.status)
        return RunReport(run_id=run.run_id, direction=way, start_version=start,  # type: ignore[arg-type]
                         end_version=end, started_at=started, finished_at=utcnow(), steps=steps)

    def _write_faked_revert(self, version: int, record: MigrationRecord, run: RunInfo,
                            book: Lifecycle) -> None:
        """Record ``version`` as ``rolled_back`` (``faked: true``) and say so in the history."""
        now = utcnow()
        fields: dict[str, Any] = {
            "status": "rolled_back", "direction": "down", "started_at": now,
            "finished_at": now, "duration_ms": 0, "transactional": False, "attempts": 0,
            "error": None, "progress": None, "faked": True, **run.model_dump(),
        }
        book.put(version, {"$set": fields, "$unset": {"applied_at": ""}}, HistoryEntry(
            version=version, description=record.description, checksum=record.checksum,
            status="rolled_back", direction="down", started_at=now, finished_at=now,
            duration_ms=0, transactional=False, attempt=0,
            **{**run.model_dump(), "faked": True}))

    def _traced(self, direction: str, target: Target,
                budget: Optional[Budget] = None) -> RunReport:
        """``_migrate`` in an OpenTelemetry span (``otel.py``; nothing without the API)."""
        with otel.span("run", direction=direction, database=self.db.name) as span:
            report = self._migrate(direction, target, budget)
            otel.annotate(span, **otel.report_fields(report))
            return report

    def _migrate(self, direction: str, target: Target,
                 budget: Optional[Budget] = None) -> RunReport:
        """Shared body of upgrade/downgrade."""
        run = self._new_run()
        started = utcnow()
        state = self._load()
        self._check_transactions_possible()
        self._raise_corrupt(state)
        records = self._records(state)
        current = current_version(records)
        resolved = self._resolve(target, current, direction)
        try:
            plan = self._plan(direction, records, resolved)
        except (InterruptedMigrationError, FailedMigrationError):
            plan = None  # unfinished attempts: decided again under the lock, where it is safe
        if plan is not None and not plan.steps:
            log.info("Nothing to do: database at version %d", current)
            return RunReport(run_id=run.run_id, direction=direction, start_version=current,  # type: ignore[arg-type]
                             end_version=current, started_at=started, finished_at=utcnow(),
                             paused=plan.paused)
        # The lock says which transactional step runs: the first one goes with acquiring it.
        first = step_marker(plan.steps[0]) if plan is not None else None
        with self._locked(run, first) as (lease, session):
            book = self._book(lease, session, run)
            state = self._load()
            self._raise_corrupt(state)
            if state.adoptable:
                self._adopt(state, run, book)
                state = self._load()
            book.settle(state.records)
            self._settle_dead_step(lease, state.records)
            records = state.records
            start = current_version(records)
            # Resolved again from the records read under the lock: `-1` queued behind
            # another run's `-1` means one below where that run left the database.
            resolved = self._resolve(target, start, direction)
            plan = self._plan(direction, records, resolved)
            note_joining([s.transactional for s in plan.steps], HAS_BIND)
            refuse_repeated_failure(plan.steps, records, self._by_version)
            real = self._is_real_client()
            env = StepEnv(
                db=self.db, store=self.store, lease=lease, session=session, run=run,
                retry=self.retry, legacy=state.legacy_version is not None,
                # Batches bring their own small transactions wherever transactions are possible.
                batch_transactions=book.transactions,
                wire_version=self._wire_version() if real else 0, progress=self.progress,
                lifecycle=book, budget=budget,
            )
            steps = run_steps(env, plan, self._by_version, records, started=started,
                              start=start, on_step=self.on_step, stop=self.stop)
            paused = stopped_note(records[steps[-1].version]) \
                if steps and steps[-1].status == "paused" else plan.paused
        end = current_version(records)
        log.info("Database now at version %d (was %d)", end, start)
        return RunReport(run_id=run.run_id, direction=direction, start_version=start,  # type: ignore[arg-type]
                         end_version=end, started_at=started, finished_at=utcnow(), steps=steps,
                         paused=paused, lock_wait_s=round(lease.waited_s, 3))

    def _rehearse(self, direction: str, target: Target, fake: bool) -> RunReport:
        """``dry_run=True``: the rehearsal (rehearsal.py)."""
        if fake:
            raise ConfigurationError("fake and dry_run exclude each other: a fake run runs "
                                     "no code, a dry run runs it and keeps nothing.",
                                     hint="Pick one (`--fake` or `--dry-run`).")
        from .rehearsal import rehearse

        return rehearse(self, direction, target)

    def _resolve(self, target: Target, current: int, direction: str) -> int:
        """The target version; "latest" never means "down" when the code is behind the db."""
        resolved = resolve_target(target, self.migrations, current, default_head=direction == "up")
        if target is None or (isinstance(target, str) and target.strip().lower() == "head"):
            return max(resolved, current)
        return resolved

    def _plan(self, direction: str, records: dict[int, MigrationRecord], target: int,
              *, remember: bool = True) -> Plan:
        """Check drift, then plan in ``direction`` (``remember=False``: write nothing)."""
        self._check_drift(records, remember=remember)
        if direction == "up":
            return plan_upgrade(self.migrations, records, target, self._use_transaction,
                                allow_out_of_order=self.allow_out_of_order)
        return plan_downgrade(self.migrations, records, target, self._use_transaction)

    # -- bookkeeping helpers ---------------------------------------------------------------------

    def _new_run(self) -> RunInfo:
        """Identity of this run, stored on everything it writes."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError, ImportError):
            user = "unknown"
        run = RunInfo(run_id=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                      user=user, tool_version=__version__)
        return run

    @contextlib.contextmanager
    def _locked(self, run: RunInfo,
                step: Optional[dict[str, Any]] = None) -> Iterator[tuple[Lease, Any]]:
        """Hold the lock (and a session whose id the lease records) for the block; ``step``:
        the transactional step the lock should say runs first."""
        # Refuses an unsupported server before anything is written.
        wire = self._wire_version() if self._is_real_client() else 0
        session = self._start_session()
        session_ids = [session.session_id] if session is not None else []
        # $$NOW needs a pipeline update (4.2+); on 4.0 the lease uses the estimated server clock.
        server_time = wire >= PIPELINE_UPDATE_WIRE_VERSION
        lease = Lease(self.lock_collection, run, self.lock_ttl, ServerClock(self.db), self.retry,
                      session_ids=session_ids, server_time=server_time)
        lease.step = step
        try:
            lease.acquire(self.lock_wait)
            self._run_id = run.run_id
            try:
                yield lease, session
            finally:
                self._run_id = None
                lease.release()
        finally:
            if session is not None:
                session.end_session()

    def _book(self, lease: Lease, session: Any, run: RunInfo) -> Lifecycle:
        """The run's bookkeeping: in small fenced transactions wherever they are possible."""
        return Lifecycle(store=self.store, lease=lease, run=run, retry=self.retry,
                         session=session, transactions=session is not None and
                         self.transactions != "never" and self._transactions_available())

    def _wire_version(self) -> int:
        """The server's wire version; refuses servers older than MongoDB 4.0 up front."""
        description = self._server_description()
        wire = int(description.max_wire_version or 0) if description is not None else 0
        if description is not None and wire < MIN_WIRE_VERSION:
            raise ConfigurationError(
                f"The server at {hosts(self.client)} is MongoDB {mongodb_release(wire)} "
                f"(wire version {wire}); analytiq_migrations needs MongoDB 4.0 or newer.",
                hint="Upgrade the server to MongoDB 4.0+ (sessions, killSessions and "
                "transactions start there). Nothing was changed.",
            )
        return wire

    def _start_session(self) -> Any:
        """A session for the run, or ``None`` where sessions don't exist (mongomock)."""
        if not self._is_real_client():
            return None
        try:
            return self.client.start_session(causal_consistency=True)
        except (PyMongoConfigurationError, NotImplementedError):
            return None

    def _load(self) -> DatabaseState:
        """Read the records."""
        return self.store.load()

    def _records(self, state: DatabaseState) -> dict[int, MigrationRecord]:
        """Records, with a seed-era database's adoption applied virtually."""
        return virtual_records(self.migrations, state.records, state.legacy_version)

    def _raise_corrupt(self, state: DatabaseState) -> None:
        """Refuse to act on a database with malformed records."""
        if state.corrupt:
            raise state.corrupt[0]

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

    def _settle_dead_step(self, lease: Lease, records: dict[int, MigrationRecord]) -> None:
        """The expired lease we took over names the transactional step its run was at: that
        step committed nothing (its record would say so), so it simply runs again. Logged,
        not put in the history: the lock names the step before it starts (that costs no
        round trip), so the dead run may have died just before starting it."""
        previous = lease.previous_holder or {}
        step = previous.get("step")
        if not isinstance(step, dict) or not isinstance(step.get("version"), int):
            return
        version, record = step["version"], records.get(step["version"])
        if record is not None and record.run_id == previous.get("run_id") and \
                record.direction == step.get("direction") and record.status != "running":
            return  # it did commit
        # Dead only when its process is known to be gone: an expired lease alone may belong
        # to a live holder whose transaction outlived the server's limit.
        how = "died" if dead_holder(previous, lease.run.host) else "let its lease run out"
        log.warning("Run %s on %s (pid %s) %s at migration %d (%s) before committing it: "
                    "nothing of it was written; it runs again", previous.get("run_id"),
                    previous.get("host"), previous.get("pid"), how, version,
                    step.get("direction"))

    def _check_drift(self, records: dict[int, MigrationRecord], *,
                     remember: bool = True) -> None:
        """Stop (or warn) when applied migrations' code changed."""
        if self.on_drift == "ignore":
            return
        drifted = [p for p in find_problems(self.migrations, records) if p.kind == "checksum_drift"]
        if remember:
            self._remember_raw_checksums(records)
        if not drifted:
            return
        if self.on_drift == "warn":
            for problem in drifted:
                log.warning("%s", problem)
            return
        # Each problem's message says it all once; several are listed under one sentence.
        said = drifted[0].message if len(drifted) == 1 else (
            f"{len(drifted)} applied migrations were changed: "
            + " ".join(p.message for p in drifted))
        raise ChecksumDriftError(
            f"{said} Nothing was run.",
            version=drifted[0].version,
            hint=spell("Revert the edits, or accept them with `analytiq-migrations repair "
                       "--accept-checksums` (repair(accept_checksums=True)), or run with "
                       "on_drift='warn'.",
                       cli="Revert the edits, or accept them with `analytiq-migrations repair "
                       "--accept-checksums`, or run with --on-drift warn."),
        )

    def _remember_raw_checksums(self, records: dict[int, MigrationRecord]) -> None:
        """Store the bytes' hash of files whose edits were cosmetic (or that older
        versions recorded without one), so later runs compare them without tokenizing."""
        stale = {}
        for version, record in records.items():
            migration = self._by_version.get(version)
            if migration is None or migration.source_bytes is None or not record.checksum \
                    or record.status not in APPLIED_STATUSES or unchanged(migration, record):
                continue
            if record.checksum == migration.checksum:  # tokenized already by the drift check
                raw = str(migration.raw_checksum())
                stale[version] = (record.checksum, raw)
                records[version] = record.model_copy(update={"raw_checksum": raw})
        if stale:
            self.store.remember_raw_checksums(stale)

    def _adopt(self, state: DatabaseState, run: RunInfo, book: Lifecycle) -> None:
        """Turn the seed's ``schema_version`` into baselined per-version records."""
        legacy = int(state.legacy_version or 0)
        log.warning("Adopting a database at legacy schema_version %d: versions up to it are "
                    "marked baselined", legacy)
        for version, record in sorted(virtual_records(self.migrations, {}, legacy).items()):
            self._write_baselined(version, self._by_version.get(version), run,
                                  record.description or "adopted from schema_version", book)

    def _write_baselined(self, version: int, migration: Optional[Migration], run: RunInfo,
                         description: str, book: Lifecycle) -> None:
        """A ``baselined`` record and its history entry."""
        now = utcnow()
        record = MigrationRecord(
            version=version,
            description=migration.summary() if migration else description,
            checksum=migration.checksum if migration else None,
            raw_checksum=migration.raw_checksum() if migration else None,
            status="baselined", direction="up", applied_at=now, started_at=now,
            finished_at=now, duration_ms=0, transactional=False, attempts=0,
            **{**run.model_dump(), "faked": True},
        )
        book.put(version, {"_id": version, **record.model_dump()}, HistoryEntry(**{
            **record.model_dump(include=set(field_names(HistoryEntry))), "status": "baselined",
            "attempt": 0, "faked": True}))

    # -- transactions --------------------------------------------------------------------------

    def _is_real_client(self) -> bool:
        """A pymongo client (not mongomock): sessions and server time exist."""
        return isinstance(self.client, pymongo.MongoClient)

    def _transactions_available(self) -> bool:
        """Replica-set member or mongos with sessions, according to ``hello``."""
        if not self._is_real_client():
            return False
        description = self._server_description()
        if description is None:
            return False
        kind = description.server_type_name
        if kind not in ("RSPrimary", "Mongos"):
            return False
        if description.logical_session_timeout_minutes is None:
            return False
        # Transactions need 4.0 (wire 7) on a replica set, 4.2 (wire 8) through mongos.
        return bool(description.max_wire_version >= (8 if kind == "Mongos" else 7))

    def _server_description(self) -> Any:
        """The primary's (or mongos') description, from its ``hello``; connects if needed."""
        for _ in range(2):
            known = [d for d in topology(self.client).server_descriptions().values()
                     if d.is_server_type_known]
            # Writes (and so transactions) go to the writable server: a secondary that
            # happens to be listed first says nothing about them.
            writable = [d for d in known if d.is_writable]
            if writable or known:
                return (writable or known)[0]
            self.client.admin.command("ping")  # connects; works on every server release
        return None

    def _check_transactions_possible(self) -> None:
        """``transactions="always"`` fails up front on a server without them."""
        if self.transactions == "always" and not self._transactions_available():
            raise TransactionsUnsupportedError(
                spell("transactions='always'", cli="--transactions always")
                + f" but the server does not support transactions ({self._server_kind()}).",
                hint="Use a replica set or mongos (a single-node replica set works), or "
                + spell("transactions='auto'.", cli="--transactions auto."),
            )

    def _server_kind(self) -> str:
        """A short description of the server type, for messages."""
        if not self._is_real_client():
            return "not a pymongo client"
        description = self._server_description()
        return description.server_type_name if description else "unknown"

    def _use_transaction(self, migration: Migration) -> bool:
        """Whether ``migration`` runs in a transaction; refuses impossible demands."""
        if migration.transactional is False or (self.transactions == "never" and \
                migration.transactional is None):
            return False
        if self._transactions_available():
            return True
        if migration.transactional is True or self.transactions == "always":
            raise TransactionsUnsupportedError(
                f"Migration {migration.version} requires a transaction but the server does "
                f"not support them ({self._server_kind()}).",
                version=migration.version,
                hint="Run it against a replica set or mongos, or set transactional = None/False "
                "on the migration.",
            )
        return False

    # -- errors --------------------------------------------------------------------------------

    def translate_error(self, exc: PyMongoError) -> MigrationError:
        """The ``MigrationError`` a driver error stands for (every public method uses it)."""
        where = hosts(self.client)
        if isinstance(exc, PyMongoConfigurationError) and "wire version" in str(exc):
            return ConfigurationError(
                f"pymongo {pymongo.version} cannot talk to the server at {where}: "
                f"{first_line(exc)}",
                hint="Install a pymongo release that supports this server (pymongo 4.10 and "
                "3.12 both talk to MongoDB 4.0), or upgrade the server. Nothing was changed.",
            )
        mismatch = set_name_mismatch(self.client)
        if isinstance(exc, ServerSelectionTimeoutError) and mismatch is not None:
            return ConnectionFailedError(
                f"Cannot use MongoDB at {where}: {mismatch}.",
                hint="Put the server's replica-set name in the URI's replicaSet option. "
                "Nothing was changed.",
            )
        if isinstance(exc, (ServerSelectionTimeoutError, ConnectionFailure)):
            return ConnectionFailedError(
                f"Cannot reach MongoDB at {where}: {first_line(exc)}",
                hint="Check the URI, that the server is running and reachable from here, and "
                "any firewall/TLS settings. Nothing was changed.",
            )
        if isinstance(exc, OperationFailure) and exc.code in (18, 13):
            what = "Authentication failed" if exc.code == 18 else "Not authorized"
            return ConfigurationError(
                f"{what} on {where} (database '{self.db.name}'): {first_line(exc)}",
                hint="Check the user, password and authSource in the URI, and that the user "
                "may read and write this database.",
            )
        return MigrationError(
            f"MongoDB error on {where}: {type(exc).__name__}: {first_line(exc)}",
            hint="Run `analytiq-migrations status` to see the state; records are written "
            "so that a later run can continue.",
        )


def _is_database(obj: Any) -> bool:
    """A pymongo (or mongomock) Database, as opposed to a client."""
    kind = type(obj)
    return isinstance(obj, Database) or (
        kind.__name__ == "Database" and kind.__module__.startswith("mongomock")
    )


def _resolve_database(client_or_db: ClientOrDb, database: Optional[str]) -> Any:
    """A Database from a URI, a client (+ name or the URI's default) or a Database."""
    if isinstance(client_or_db, str):
        # Our defaults, unless the URI sets them (keyword arguments would override it).
        options: dict[str, Any] = {"serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
                                   "appname": "analytiq-migrations"}
        options = {k: v for k, v in options.items() if f"{k.lower()}=" not in
                   client_or_db.lower()}
        try:
            client: Any = pymongo.MongoClient(client_or_db, connect=False,
                                              event_listeners=[SetNames()], **options)
        except (PyMongoConfigurationError, ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"Bad MongoDB URI {redact(client_or_db)!r}: {redact(str(exc))}",
                hint="It looks like mongodb://[user:password@]host[:port]/[database][?options].",
            ) from None
    elif _is_database(client_or_db):
        if database is not None and database != client_or_db.name:
            raise ConfigurationError(
                f"Got database '{client_or_db.name}' and database={database!r}; which one?",
                hint="Pass a client with database=..., or just the Database.",
            )
        return client_or_db
    else:
        client = client_or_db
    if database is None:
        try:
            return client.get_default_database()
        except (PyMongoConfigurationError, AttributeError):
            raise ConfigurationError(
                "No database name: none was given and the URI names none.",
                hint="Pass database='name' (--database, ANALYTIQ_MIGRATIONS_DATABASE) or put "
                "it in the URI path: mongodb://host/name.",
            ) from None
    if isinstance(database, str) and len(database.encode()) > MAX_DATABASE_NAME:
        raise ConfigurationError(
            f"Bad database name {database!r}: longer than {MAX_DATABASE_NAME} bytes.")
    try:
        return client[database]
    except (InvalidName, TypeError) as exc:
        raise ConfigurationError(f"Bad database name {database!r}: {exc}") from None


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

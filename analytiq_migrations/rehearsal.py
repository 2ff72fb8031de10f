"""The dry run: ``upgrade(target, dry_run=True)`` / ``downgrade(target, dry_run=True)``.

How it works: under the migration lock, every pending step runs, in plan order, inside ONE
transaction on the run's session, which is aborted at the end. So each step sees what the
earlier steps wrote (as in the real run, where they would have committed), and nothing is
stored: no data, no record, no history entry (the lock is taken and released as by any run;
it never says a step is running, so a killed dry run leaves nothing to settle).

Each step gets the same watched, session-bound ``db`` a transactional step gets
(``dbproxy``): the transaction rules are enforced the same way, and the write results of
its calls are summed per collection into ``StepResult.changes``. A step that fails is
reported with the error the real run would stop at (status ``failed``); the steps after it
are not run. A step that would run without a transaction (``transactional = False``, or
``transactions="never"``) cannot be rolled back, so it is not run (``not_rehearsed``), and
neither is anything after it: its input would not be what the real run gives it.

The price of one transaction for all steps: MongoDB's limits for one transaction (60 s by
default, ``transactionLifetimeLimitSeconds``; 16 MB of writes before MongoDB 4.2) apply to
the sum of the steps, while the real run commits each step in its own. The report says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional

import pymongo
from pymongo.errors import PyMongoError

from .context import RunContext
from .dbproxy import HAS_BIND, StepWatch, joined
from .errors import (
    ConfigurationError,
    FailedMigrationError,
    InterruptedMigrationError,
    MigrationDefinitionError,
    MigrationFailedError,
    TransactionsUnsupportedError,
    error_message,
    first_line,
)
from .locate import migration_files
from .plan import Target, current_version
from .records import (
    CollectionChanges,
    ErrorInfo,
    MigrationRecord,
    Plan,
    PlanStep,
    RunReport,
    StepEvent,
    StepResult,
)
from .retry import has_label
from .runkit import RunKit, new_run, raise_corrupt
from .runsteps import StepHook, tell
from .store import utcnow
from .swallowed import logged_during, returned_false
from .txnrules import Catalog
from .writes import Changes, count_write

if TYPE_CHECKING:
    from .lock import Lease

log = logging.getLogger("analytiq_migrations")

#: Server error codes for a transaction that outgrew its limits: NoSuchTransaction (the
#: server aborted it, e.g. after transactionLifetimeLimitSeconds), TransactionTooLarge
#: (4.0: over 16 MB), TransactionExceededLifetimeLimitSeconds, BSONObjectTooLarge.
LIMIT_CODES = frozenset({251, 257, 290, 10334})

ONE_TRANSACTION = ("Rehearsed in one transaction, aborted at the end: each step saw the "
                   "earlier steps' writes, and nothing was stored (no data, no record, no "
                   "history; the lock was taken and released).")
LIMITS = ("One transaction holds every rehearsed step, so MongoDB's limits for one "
          "transaction apply to all of them together: 60 s (transactionLifetimeLimitSeconds, "
          "the default) and, before MongoDB 4.2, 16 MB of writes. The real run commits each "
          "step in its own transaction; if the rehearsal hits a limit, rehearse fewer steps "
          "at a time (a lower TARGET).")


def rehearse(kit: RunKit, direction: str, target: Target,
             on_step: Optional[StepHook] = None) -> RunReport:
    """Rehearse ``upgrade``/``downgrade`` to ``target``; returns the report, stores nothing.

    A step that would fail does not raise: the report carries its error (``report.failed``).
    Refused (``TransactionsUnsupportedError``) where the server has no transactions.
    ``on_step`` is told as each step starts and ends."""
    if not HAS_BIND:
        # Only a bound session guarantees that every write on the client joins the aborted
        # transaction; with the proxy alone, a write through db.client[...] or an ODM would
        # be real. A rehearsal that might write to production is refused, not attempted.
        raise ConfigurationError(
            f"A dry run needs pymongo 4.17 or newer (this is {pymongo.version}): only there "
            "is every operation on the client bound to the rehearsal's transaction. Here, a "
            "migration reaching the database other than through `db` (db.client[...], a "
            "module-level collection, an ODM) would write for real. Nothing was run.",
            hint="Rehearse from an environment with pymongo>=4.17 (a separate venv with this "
            "package and your migrations is enough; it needs MongoDB 4.2+), or rehearse "
            "against a restored copy of the data, or review `plan` instead.",
        )
    if not kit.caps.transactions_available():
        raise TransactionsUnsupportedError(
            "A dry run rehearses the migrations in a transaction that it aborts, and this "
            f"server has no transactions ({kit.caps.server_kind()}: a standalone server, or one "
            "older than MongoDB 4.0). Nothing was run.",
            hint="Rehearse on a replica set (a single-node replica set works: restore a copy "
            "of the data into one), or review `plan` instead.",
        )
    run = new_run()
    started = utcnow()
    state = kit.load()
    raise_corrupt(state)
    records = kit.records(state)
    current = current_version(records)
    resolved = kit.resolve(target, current, direction)
    if _nothing_to_do(kit, direction, records, resolved):
        return RunReport(run_id=run.run_id, direction=direction,  # type: ignore[arg-type]
                         start_version=current, end_version=current, started_at=started,
                         finished_at=utcnow(), dry_run=True, target_version=current)
    fresh = not _exists(kit.lock_collection)
    try:
        with kit.locked(run) as (lease, session):
            state = kit.load()
            raise_corrupt(state)
            records = _settled(kit.records(state), run.run_id)
            start = current_version(records)
            resolved = kit.resolve(target, start, direction)  # `-N`/`+N`: from under the lock
            plan = kit.plan(direction, records, resolved, remember=False)
            rehearsal = _Rehearsal(kit, lease, session, plan, on_step)
            steps = kit.retry.retrying("dry run", _retry_rehearsal)(rehearsal.run)
    finally:
        if fresh:
            _drop_if_empty(kit.lock_collection)
    notes = [ONE_TRANSACTION, LIMITS]
    report = RunReport(run_id=run.run_id, direction=direction,  # type: ignore[arg-type]
                       start_version=start, end_version=start, started_at=started,
                       finished_at=utcnow(), steps=steps, dry_run=True,
                       target_version=plan.target_version, notes=notes)
    failed = report.failed
    log.info("Dry run of %s to version %d: %d step(s) rehearsed%s; nothing was stored",
             direction, plan.target_version, sum(s.status == "rehearsed" for s in steps),
             f", {failed.version} would fail" if failed else "")
    return report


def _exists(collection: Any) -> bool:
    """Whether ``collection`` exists (a dry run leaves none behind that it created)."""
    return bool(collection.database.list_collection_names(filter={"name": collection.name}))


def _drop_if_empty(collection: Any) -> None:
    """Drop the lock collection this dry run created, unless a lock is in it now. (A run
    that took the lock between the count and the drop loses its lock document: its next
    lease check, before each step and inside each transaction, stops it with
    ``LockLostError`` before it writes anything more.)"""
    try:
        if collection.count_documents({}) == 0:
            collection.drop()
    except PyMongoError as exc:
        log.warning("Could not remove the empty lock collection the dry run created: %s",
                    first_line(exc))


def _nothing_to_do(kit: RunKit, direction: str, records: Dict[int, MigrationRecord],
                   target: int) -> bool:
    """Before the lock, as the real run decides it (unfinished attempts: ask under it)."""
    try:
        return not kit.plan(direction, dict(records), target, remember=False).steps
    except (InterruptedMigrationError, FailedMigrationError):
        return False


def _settled(records: Dict[int, MigrationRecord], run_id: str) -> Dict[int, MigrationRecord]:
    """The records as the real run sees them once it has settled dead runs (a ``running``
    record under the lock is an interrupted attempt), without writing that down."""
    return {version: record.model_copy(update={"status": "failed"})
            if record.status == "running" and record.run_id != run_id else record
            for version, record in records.items()}


def _retry_rehearsal(exc: BaseException) -> bool:
    """A transient error (a write conflict with the application, a failover) rehearses
    again from the start; a transaction that outgrew its limits would only do so again."""
    return has_label(exc, "TransientTransactionError") and \
        getattr(exc, "code", None) not in LIMIT_CODES


class _Rehearsal:
    """One attempt at rehearsing the plan's steps in one transaction."""

    def __init__(self, kit: RunKit, lease: Lease, session: Any, plan: Plan,
                 on_step: Optional[StepHook]) -> None:
        self.kit, self.lease, self.session, self.plan = kit, lease, session, plan
        self.on_step = on_step
        self.wire_version = kit.caps.wire_version()

    def run(self) -> List[StepResult]:
        catalog = Catalog(loader=self._read_catalog, wire_version=self.wire_version)
        results: List[StepResult] = []
        blocked: Optional[str] = None
        with self._transaction():
            for index, step in enumerate(self.plan.steps, 1):
                if blocked is None and not step.transactional:
                    results.append(_skipped(step, self._why_not(step)))
                    blocked = (f"not rehearsed: it comes after {step.version}, which was not "
                               "rehearsed, so its input would not be what the real run gives it")
                    continue
                if blocked is not None:
                    results.append(_skipped(step, blocked))
                    continue
                self.lease.check()  # renews outside the transaction: the lock never says "step"
                event = StepEvent(version=step.version, direction=step.direction,
                                  description=step.description, transactional=True,
                                  status="started", index=index, total=len(self.plan.steps))
                tell(self.on_step, event)
                result = self._step(step, catalog)
                tell(self.on_step, event.model_copy(update={
                    "status": result.status, "duration_ms": result.duration_ms,
                    "error": result.error}))
                results.append(result)
                if result.status == "failed":
                    blocked = f"not rehearsed: {result.version} would fail before it"
                catalog.next_step()  # the real run commits here: created collections exist
        return results

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """The rehearsal's transaction, always aborted."""
        self.session.start_transaction()
        try:
            yield
        finally:
            if self.session.in_transaction:
                try:
                    self.session.abort_transaction()
                except PyMongoError as exc:  # the server discards it anyway
                    log.debug("Aborting the dry run's transaction: %s", first_line(exc))

    def _why_not(self, step: PlanStep) -> str:
        migration = self.kit.by_version[step.version]
        if migration.transactional is False:
            return ("not rehearsable: transactional = False (it runs without a transaction, "
                    "so its writes could not be rolled back)")
        return (f"not rehearsable: transactions={self.kit.caps.transactions!r} runs it without a "
                "transaction, so its writes could not be rolled back")

    def _step(self, step: PlanStep, catalog: Catalog) -> StepResult:
        """Run one step's ``up``/``down`` in the transaction and count what it wrote."""
        migration = self.kit.by_version[step.version].loaded()
        fn = migration.up if step.direction == "up" else migration.down
        watch = StepWatch(step.version, step.direction, catalog)
        changes: Changes = {}
        home = self.kit.db.name
        watch.observers.append(
            lambda database, collection, method, result:
            count_write(changes, home, database, collection, method, result))
        migration._context = self._context(step)
        migration.session = self.session
        clock = time.monotonic()
        raised: Optional[BaseException] = None
        returned: Any = None
        try:
            with joined(self.kit.db, self.session, watch) as db, logged_during() as logged:
                returned = fn(db)
        except Exception as exc:
            raised = exc
        finally:
            migration._context = None
            migration.session = None
        duration = int((time.monotonic() - clock) * 1000)
        error = _error(step, watch, raised, returned)
        if returned is False and isinstance(error, MigrationFailedError) and \
                watch.first_error is None:  # the cause it hid, as the real run says it
            error = returned_false(step, watch, logged, changes, in_transaction=True,
                                   below=max([s.version for s in self.plan.steps
                                              if s.version < step.version] +
                                             [self.plan.target_version]),
                                   files=migration_files(migration))
        if error is not None and _retry_rehearsal(error):
            raise error  # rehearse everything again (the transaction is gone)
        counted = {name: CollectionChanges(**counts) for name, counts in sorted(changes.items())}
        if error is None:
            return StepResult(version=step.version, direction=step.direction,
                              description=step.description, status="rehearsed",
                              transactional=True, duration_ms=duration, changes=counted,
                              note=step.note)
        limit = getattr(error, "code", None) in LIMIT_CODES
        return StepResult(
            version=step.version, direction=step.direction, description=step.description,
            status="failed", transactional=True, duration_ms=duration, changes=counted,
            error=ErrorInfo(type=type(error).__name__, message=error_message(error)),
            note="the rehearsal's one transaction hit a MongoDB limit (60 s, or 16 MB before "
            "4.2); the real run commits each step separately: rehearse fewer steps at a time"
            if limit else f"the real run would stop here: nothing after {step.version} "
            "would run",
        )

    def _context(self, step: PlanStep) -> RunContext:
        """What ``batch_update`` sees: a transaction (it refuses to run in one)."""

        def no_progress(progress: Dict[str, Any], session: Any = None) -> None:
            raise MigrationDefinitionError("A dry run stores no checkpoint.",
                                           version=step.version)

        def no_transaction(fn: Callable[[Any], Any]) -> Any:
            raise MigrationDefinitionError("A dry run runs no transaction of its own.",
                                           version=step.version)

        return RunContext(version=step.version, direction=step.direction, db=self.kit.db,
                          session=self.session, in_transaction=True, progress=None,
                          save_progress=no_progress, run_in_transaction=no_transaction)

    def _read_catalog(self) -> Dict[str, Any]:
        """name -> options of the collections, read outside the transaction."""
        try:
            with self.kit.db.client.start_session() as own:
                return {c["name"]: c.get("options", {})
                        for c in self.kit.db.list_collections(session=own)}
        except PyMongoError as exc:
            log.warning("Could not list collections to check the transaction rules: %s",
                        first_line(exc))
            return {}


def _skipped(step: PlanStep, why: str) -> StepResult:
    return StepResult(version=step.version, direction=step.direction,
                      description=step.description, status="not_rehearsed",
                      transactional=step.transactional, duration_ms=0, note=why)


def _error(step: PlanStep, watch: StepWatch, raised: Optional[BaseException],
           returned: Any) -> Optional[BaseException]:
    """The error the real run would stop at: a refused call (even if caught), a driver
    error the migration caught (it aborted the transaction), what it raised, or ``False``."""
    if watch.refused is not None:
        return watch.refused
    hidden = watch.first_error
    if hidden is not None and hidden.error is not raised:
        if has_label(hidden.error, "TransientTransactionError"):
            return hidden.error
        then = f"then raised {type(raised).__name__}" if raised is not None else \
            "then returned False" if returned is False else "then carried on"
        return MigrationFailedError(
            f"Migration {step.version} {step.direction}() caught {hidden.describe()} and "
            f"{then}. Inside a transaction that error aborts the transaction on the server.",
            version=step.version)
    if raised is not None:
        return raised
    if returned is False:
        return MigrationFailedError(
            f"Migration {step.version} {step.direction}() returned False.",
            version=step.version)
    return None


__all__: List[str] = ["LIMITS", "ONE_TRANSACTION", "rehearse"]

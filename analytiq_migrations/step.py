"""The life of one step: call ``up``/``down`` (in a transaction where it runs in one), record
the outcome, and turn a failure into an error that says what happened and what to do.

Bookkeeping, per step:

* transactional: lease fence, record, history entry, all inside the step's transaction, then
  the commit. Nothing is written before the transaction: an aborted or killed one leaves the
  record exactly as it was (an applied version whose ``down`` failed is still applied; the
  failure goes to ``last_error`` and the history). The record write is conditional on the
  record the step started from, so a body run again after a commit whose outcome was lost
  conflicts instead of committing twice;
* non-transactional: record ``running``, call, record the outcome with its history entry
  (each write fenced by the lease: see ``lifecycle.py``).

A commit whose reply is lost is checked by reading the record back (under the retry
budget); when that cannot be read either, the run stops with ``CommitUnknownError`` and
writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Dict, List, NoReturn, Optional, Tuple

from pymongo.errors import PyMongoError

from . import checkpoints, otel
from .budget import StopAtCheckpoint
from .checkpoints import PROGRESS_KEY
from .context import RecordConflict, RunContext
from .dbproxy import StepWatch, joined, watched
from .errors import (
    CommitUnknownError,
    LockLostError,
    MigrationError,
    MigrationFailedError,
    error_message,
    first_line,
)
from .lifecycle import expected_state
from .locate import failure_site, migration_files
from .lock import Lease
from .migration import Migration
from .outside import OutsideWrites
from .plan import current_version
from .records import (
    ErrorInfo,
    HistoryEntry,
    MigrationRecord,
    PlanStep,
    StepResult,
)
from .refusals import by_hand_hint, refusal, resume_checkpoint
from .retry import run_transaction
from .stepenv import StepEnv, step_context, step_marker
from .stepfaults import foreign_client_error, raise_hidden
from .store import Store, utcnow
from .stored import APPLIED_STATUSES
from .swallowed import logged_during, returned_false
from .txnrules import Catalog
from .writes import Changes, count_write

log = logging.getLogger("analytiq_migrations")


def run_step(env: StepEnv, step: PlanStep, migration: Migration,
             records: Dict[int, MigrationRecord],
             next_step: Optional[PlanStep] = None) -> StepResult:
    """Run one step and record its outcome (``records`` updated in place); raises a
    ``MigrationError`` on failure, after recording it. ``next_step``: the plan's next one
    (its marker is written into the lock with this step's commit: no write of its own)."""
    with otel.span("step", version=step.version, direction=step.direction,
                   database=env.db.name, transactional=step.transactional) as span:
        result = _Step(env, step, migration, records, next_step).run()
        otel.annotate(span, status=result.status, attempts=result.attempts)
        return result


class _Step:
    """One attempt at one step."""

    def __init__(self, env: StepEnv, step: PlanStep, migration: Migration,
                 records: Dict[int, MigrationRecord], next_step: Optional[PlanStep]) -> None:
        self.env, self.step, self.migration, self.records = env, step, migration, records
        self.marker, self.next_marker = step_marker(step), step_marker(next_step)
        self.previous = records.get(step.version)
        previous = self.previous
        # attempts counts tries at the current transition; a finished one starts afresh.
        unfinished = previous is not None and (previous.status in ("failed", "running", "paused") or
                                               previous.last_error is not None)
        self.attempts = (previous.attempts if previous and unfinished else 0) + 1
        self.resume = resume_checkpoint(previous, step.direction)
        self.expected = expected_state(previous)
        #: A commit of this step was sent: from then on its outcome is only known by reading.
        self.commit_tried = False
        self.ctx: Optional[RunContext] = None
        self.success = "applied" if step.direction == "up" else "rolled_back"
        self.started = utcnow()
        self.clock = time.monotonic()
        self.watch: Optional[StepWatch] = None
        self.outside = OutsideWrites(step.version, step.description, step.direction)
        self.start = Store.start_fields(
            version=step.version, description=step.description, checksum=migration.checksum,
            raw_checksum=migration.raw_checksum(), direction=step.direction, run=env.run,
            transactional=step.transactional, attempts=self.attempts, started_at=self.started,
            progress=self.resume,
        )

    # -- the step ----------------------------------------------------------------------------

    def run(self) -> StepResult:
        env, step, migration = self.env, self.step, self.migration
        # Each step starts with at least two thirds of the TTL left; a transactional step
        # then proves the lease inside its transaction, a non-transactional one after it.
        # A transactional step writes no record before it commits: the lock says it runs,
        # written by the lock's acquisition or the previous step's commit when they knew it.
        if self.marker is not None and env.lease.step != self.marker:
            env.lease.renew(step=self.marker)
        else:
            env.lease.refresh()
        log.info("Migration %d (%s): %s%s", step.version, step.description, step.direction,
                 " in a transaction" if step.transactional else "")
        self.ctx = migration._context = step_context(env, step, self.resume)
        migration.session = env.session
        try:
            if step.transactional:
                fields = run_transaction(env.session, self.outside.no_retry(self._in_transaction),
                                         env.retry, f"migration {step.version} ({step.direction})")
                self.outside.committed()
                env.lease.step = self.next_marker  # committed with it
                if env.catalog is not None:
                    env.catalog.next_step()  # committed: what it created exists now
            else:
                env.book.start(step.version, self.start, self.previous)
                self._call(env.session)
                fields = self._record_success(None)
        except LockLostError:
            raise  # someone else owns the run now: writing our record could clobber theirs
        except StopAtCheckpoint as stop:
            fields = self._record_pause(stop.reason)
        except Exception as exc:
            fields = self._after_error(exc)
        finally:
            migration._context = None
            migration.session = None
        self.records[step.version] = self._merge(fields)
        status = "paused" if fields.get("status") == "paused" else self.success
        log.info("Migration %d %s in %d ms", step.version, status, fields["duration_ms"])
        return StepResult(version=step.version, direction=step.direction,
                          description=step.description, status=status,  # type: ignore[arg-type]
                          transactional=step.transactional, duration_ms=fields["duration_ms"],
                          attempts=self.attempts)

    def _in_transaction(self, txn_session: Any) -> Dict[str, Any]:
        """The transaction's body (run again by the retry loop on transient errors)."""
        self.env.lease.check(txn_session, next_step=self.next_marker)
        self._call(txn_session)
        fields = self._record_success(txn_session)
        self.commit_tried = True  # what follows is the commit
        return fields

    def _call(self, session: Any) -> None:
        """Run ``up``/``down`` (in a transaction: on a watched, session-bound ``db``)."""
        step = self.step
        fn = self.migration.up if step.direction == "up" else self.migration.down
        # Joined only in a transaction, where every call must join it: pymongo refuses any
        # other client's operations while a session is bound, and a migration without a
        # transaction may well use a second client (copying from another cluster, say).
        in_txn = session is not None and session.in_transaction
        if in_txn:
            if self.env.catalog is None:
                self.env.catalog = Catalog(loader=self._read_catalog,
                                           wire_version=self.env.wire_version)
            self.env.catalog.new_attempt()  # a retry: the last try's creations rolled back
            self.watch = StepWatch(step.version, step.direction, self.env.catalog, self.outside)
            handle: Any = joined(self.env.db, session, self.watch)
        else:
            self.env.catalog = None
            self.watch = StepWatch(step.version, step.direction, None)  # watched, not bound
            handle = contextlib.nullcontext(watched(self.env.db, self.watch))
        writes: Changes = {}
        home = self.env.db.name
        self.watch.observers.append(lambda database, collection, method, result: count_write(
            writes, home, database, collection, method, result))
        try:
            with handle as db, logged_during() as logged:
                result = fn(db)
        except SystemExit as exc:
            # sys.exit() in migration code is that migration failing, not the run being
            # stopped (Ctrl-C and SIGTERM still stop it: KeyboardInterrupt is left alone).
            failure = MigrationFailedError(
                f"Migration {step.version} {step.direction}() called sys.exit({exc.code!r}).",
                version=step.version,
                hint="Raise an exception (or return False) to fail a migration; sys.exit() "
                "inside one is treated as a failure.")
            raise_hidden(self.watch, self.step, failure)
            raise failure from exc
        except Exception as exc:
            raise_hidden(self.watch, self.step, exc)
            raise
        raise_hidden(self.watch, self.step, None, returned_false=result is False)
        if result is False:
            raise returned_false(step, self.watch, logged, writes, in_transaction=in_txn,
                                 below=max((v for v in self.records if v < step.version),
                                           default=0),
                                 files=migration_files(self.migration))
        # Any other return value (a pymongo result, say) is ignored: only False means failure.

    def _read_catalog(self) -> Dict[str, Any]:
        """name -> options of the database's collections, read outside the transaction (in a
        session of its own: the run's session may be bound to the client)."""
        try:
            with self.env.db.client.start_session() as own:
                return {c["name"]: c.get("options", {})
                        for c in self.env.db.list_collections(session=own)}
        except PyMongoError as exc:
            log.warning("Could not list collections to check the transaction rules: %s",
                        first_line(exc))
            return {}

    # -- outcomes ------------------------------------------------------------------------------

    def _outcome(self, status: str, error: Optional[ErrorInfo]) -> Tuple[Dict[str, Any],
                                                                          HistoryEntry]:
        """The record's outcome fields and the history entry for ``status``."""
        finished = utcnow()
        duration = int((time.monotonic() - self.clock) * 1000)
        fields: Dict[str, Any] = {
            "status": status, "finished_at": finished, "duration_ms": duration,
            "error": error.model_dump() if error else None, "attempts": self.attempts,
        }
        if status == "applied":
            fields.update(applied_at=finished, progress=None)
        elif status == "rolled_back":
            fields.update(progress=None)
        step, run = self.step, self.env.run
        entry = HistoryEntry(
            version=step.version, description=step.description,
            checksum=self.migration.checksum, direction=step.direction,
            transactional=step.transactional, **run.model_dump(),
            status=status,  # type: ignore[arg-type]
            started_at=self.started, finished_at=finished, duration_ms=duration,
            attempt=self.attempts, error=error,
        )
        return fields, entry

    def _record_success(self, txn_session: Any) -> Dict[str, Any]:
        """Record the success (in ``txn_session``'s transaction when given): conditional on
        the record the step started from (transactional) or on this run's ``running``."""
        env, step = self.env, self.step
        outcome, entry = self._outcome(self.success, None)
        # Transactional steps wrote nothing before: the record gets every field here.
        fields = {**self.start, **outcome} if step.transactional else outcome
        unset = ["faked", "last_error", "outside_writes", "pruned", "pause", "paused_reason"] + \
            (["applied_at"] if self.success == "rolled_back" else [])
        legacy = None
        if env.legacy:
            after = dict(self.records)
            after[step.version] = MigrationRecord(version=step.version,
                                                  status=self.success)  # type: ignore[arg-type]
            legacy = current_version(after)
        expected = self.expected if step.transactional else env.book.mine()
        done = env.book.finish(step.version, step.direction, expected,
                               {"$set": fields, "$unset": {name: "" for name in unset}},
                               entry, session=txn_session, legacy=legacy)
        return done or fields

    def _record_pause(self, reason: str) -> Dict[str, Any]:
        """Stopped at a checkpoint: record ``paused`` (its checkpoint kept) and its entry."""
        fields, entry = self._outcome("paused", None)
        assert self.ctx is not None  # stopped inside the step's batch_update
        fields.update(paused_reason=reason, progress=checkpoints.saved(self.ctx))
        self.env.book.pause(self.step.version, self.step.direction, fields, entry)
        return fields

    def _after_error(self, exc: Exception) -> Dict[str, Any]:
        """After ``exc``: the fields of a commit that did land, else record the failure and
        raise (``CommitUnknownError`` when the commit's outcome cannot be read)."""
        env, step = self.env, self.step
        if not env.book.transactions:
            _confirm_lease(env.lease, exc)  # (with transactions the writes below are fenced)
        if step.transactional:
            committed = self._committed_anyway(exc)
            if committed is not None:
                if isinstance(exc, RecordConflict):
                    log.warning("Migration %d: its transaction was run again after a commit "
                                "whose reply was lost; that commit had landed, so the second "
                                "try conflicted and was rolled back (%s once)",
                                step.version, self.success)
                else:
                    log.warning("Migration %d: the commit reported %s, but the transaction "
                                "did commit", step.version, first_line(exc))
                return committed
            if isinstance(exc, RecordConflict):
                raise env.book.lost(exc) from None
        self._record_failure(exc)

    def _record_failure(self, exc: Exception) -> NoReturn:
        """Store a failed attempt (record and history, conditionally: never over a record
        this run's transaction committed) and raise the error for it."""
        env, step, previous = self.env, self.step, self.previous
        in_batch = self.ctx is not None and self.ctx.batch_error is not None and \
            self.ctx.batch_error is exc
        site = failure_site(exc, self.migration)  # where it failed in the migration
        exc = self.outside.explain(foreign_client_error(self.step, self.env.db.client, exc)
                                   or exc)
        error = ErrorInfo(type=type(exc).__name__, message=error_message(exc),
                          **({"at": "batch_update"} if in_batch else {}), **site.stored())
        fields, entry = self._outcome("failed", error)
        outside = self.outside.fields()  # writes kept although the transaction rolled back
        entry = entry.model_copy(update=outside) if outside else entry
        fields.pop("progress", None)  # keep the checkpoint: the next run resumes from it
        unchanged = step.transactional and previous is not None and \
            previous.status in APPLIED_STATUSES
        if unchanged:
            # Rolled back: the version is what it was. Only the failure is new.
            assert previous is not None
            fields = {"last_error": {"type": error.type, "message": error.message,
                                     "direction": step.direction, "at": fields["finished_at"],
                                     **site.stored()},
                      "attempts": self.attempts}
        elif step.transactional:
            fields = {**self.start, **fields}
        fields.update(outside)
        expected = self.expected if step.transactional else env.book.mine()
        env.book.finish(step.version, step.direction, expected, {"$set": fields}, entry)
        # The checkpoint stays as stored: the last one this attempt saved, else the one it
        # resumed from.
        kept = {PROGRESS_KEY: list(self.ctx.checkpoints)} \
            if self.ctx is not None and self.ctx.checkpoints else self.resume
        self.records[step.version] = self._merge({**fields, "progress": kept}) \
            if not unchanged else \
            previous.model_copy(update={"last_error": fields["last_error"],  # type: ignore[union-attr]
                                        "attempts": self.attempts})
        if isinstance(exc, MigrationError):
            exc.locate(site.location, site.trace)
            raise exc  # already says what happened and what to do
        rolled_back = "The transaction was rolled back: nothing of it was written"
        if unchanged:
            hint = (f"{rolled_back}, so version {step.version} is still applied. Fix its "
                    f"{step.direction}() and run the same command again.")
        elif step.transactional:
            hint = f"{rolled_back}. Fix the migration and run again."
        elif refusal(self.migration, self.records[step.version], step.direction) is None:
            # What the next plan does with it, decided where the plan decides it.
            hint = ("It stopped at a checkpoint of batch_update: fix the cause and run the "
                    "same command again; the next run resumes after the checkpoint."
                    if not self.migration.idempotent else
                    "It is idempotent: fix the cause and run the same command again; the "
                    "next run runs it again.")
        else:
            hint = ("It ran without a transaction and may be half applied; until it is "
                    "settled the next run refuses it. "
                    + by_hand_hint(step.version, step.direction,
                                   max((v for v in self.records if v < step.version),
                                       default=0)))
        failure = MigrationFailedError(
            f"Migration {step.version} ({step.description}) failed during "
            f"'{step.direction}': {error.type}: {error.message}",
            version=step.version, hint=hint,
        )
        failure.locate(site.location, site.trace)
        raise failure from exc

    def _committed_anyway(self, cause: Exception) -> Optional[Dict[str, Any]]:
        """After an error: the record's fields if this run's transaction committed (read
        under the retry budget). Unreadable after a commit was sent: ``CommitUnknownError``."""
        step = self.step
        try:
            return self.env.book.ours(step.version, self.success, step.direction)
        except PyMongoError as exc:
            if not self.commit_tried:
                return None  # the body failed before any commit: nothing was committed
            raise CommitUnknownError(
                f"The commit of version {step.version} ({step.direction}) may have "
                f"succeeded: its reply was lost ({first_line(cause)}) and the record could "
                f"not be read back ({first_line(exc)}). Nothing more was written.",
                version=step.version,
                hint="Run `analytiq-migrations status` once the server answers: it says "
                f"whether version {step.version} is {self.success}. Then run the same "
                "command again; a committed step is not run twice.",
            ) from exc

    def _merge(self, fields: Dict[str, Any]) -> MigrationRecord:
        """The in-memory record after the step (saves re-reading it)."""
        previous, step, migration = self.previous, self.step, self.migration
        base: Dict[str, Any] = previous.model_dump() if previous else {"version": step.version}
        base.update(description=step.description, checksum=migration.checksum,
                    raw_checksum=migration.raw_checksum(), direction=step.direction,
                    transactional=step.transactional)
        base.update({k: v for k, v in fields.items() if k != "error"})
        base["error"] = fields.get("error")
        base["last_error"] = fields.get("last_error")
        return MigrationRecord.model_validate(base)


def _confirm_lease(lease: Lease, cause: BaseException) -> None:
    """Before recording a failure: raise ``LockLostError`` if the lock is no longer ours."""
    try:
        lease.check()
    except LockLostError as lost:
        raise lost from cause
    except PyMongoError as exc:
        log.warning("Could not confirm the migration lock before recording the failure: %s",
                    first_line(exc))


__all__: List[str] = ["StepEnv", "run_step", "step_marker"]

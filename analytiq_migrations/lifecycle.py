"""The life of a version, and every bookkeeping write that moves it along.

A record goes through these states (``status``), and only through this module::

    (none) | rolled_back | failed  --start-->   running            non-transactional step
    running                        --finish-->  applied | rolled_back | failed
    (as it was)                    --commit-->  applied | rolled_back  transactional step,
                                                                      in its own transaction
    (as it was)                    --fail-->    failed (or, for an applied version whose
                                                transactional down failed, last_error)
    running (of a dead run)        --settle-->  failed, error type Interrupted
    running                        --pause-->   paused (at a batch_update checkpoint)
    paused                         --start-->   running (the next ``up`` continues it)
    running | failed | paused      --request_pause / clear_pause--> the same, with or
                                                without a ``pause`` request on it
    anything                       --baseline-> baselined  /  --fake revert--> rolled_back

Every write is *fenced* by the lease and *conditional* on the record still being in the
state the transition starts from:

* where transactions exist, the record, its history entry (and the legacy document)
  are written in one small transaction that begins with the lease check: a run that
  lost its lease (a paused process, a frozen VM) cannot commit any of them;
* without transactions, each write follows a lease check and names the state it expects
  (``running`` by this run, or the record as this run read it under the lock). A new
  holder settles the dead run's ``running`` before anything else, and writes every
  record it moves, so a stale run's write matches nothing and it stops with
  ``LockLostError``. What is left is a stale ``running`` write racing the takeover on a
  version the new holder has not reached yet: the new holder's own write then conflicts
  and it stops instead (nothing runs twice);
* a write that matches nothing was either this run's own earlier write whose reply
  was lost (the record then says so, and the transition is done) or someone else's:
  the run stops.

A pause request (``pause VERSION``) is the one write made without the lock: whoever asks
is not the lock holder, and must not wait for a run that may take hours. It is a single
conditional update that touches only the record's ``pause`` field, and only on a
version that is running or unfinished, so it cannot undo any transition; the run reads
it at its next checkpoint, and every later write of the run leaves it in place (until
the version is applied, which clears it).

History entries carry a deterministic ``_id`` (see ``store.history_id``), so writing
one twice keeps one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, TypeVar

from .context import RecordConflict
from .errors import ConfigurationError, LockLostError
from .lock import Lease
from .pauses import PAUSABLE
from .pauses import REQUEST as PAUSE_REQUEST
from .records import ErrorInfo, HistoryEntry, MigrationRecord, RunInfo, field_names
from .retry import RetryPolicy, is_transient, run_transaction
from .store import Store, utcnow

log = logging.getLogger("analytiq_migrations")

T = TypeVar("T")


def expected_state(record: Optional[MigrationRecord]) -> Optional[Dict[str, Any]]:
    """The filter that matches ``record`` while nobody changed it (``None``: no record).

    ``status`` and ``run_id`` say who last moved the version: any transition by another
    run (or by this run's own earlier, committed attempt) changes at least one of them."""
    if record is None:
        return None
    return {"status": record.status, "run_id": record.run_id}


@dataclass
class Lifecycle:
    """One run's bookkeeping: every transition of every record it touches."""

    store: Store
    lease: Lease
    run: RunInfo
    retry: RetryPolicy
    #: The run's session (``None`` without sessions).
    session: Any
    #: Bookkeeping writes go into small transactions (a replica set or mongos).
    transactions: bool
    #: A record and its history entry go in one command (``store.writes_together``).
    together: bool = False

    # -- fencing -----------------------------------------------------------------------------

    def fenced(self, what: str, body: Callable[[Any], T]) -> T:
        """``body(session)`` under the lease: in a small transaction beginning with the lease
        check, or (no transactions) right after a lease check, with ``session`` ``None``."""
        if self.transactions and self.session is not None:
            def in_transaction(txn_session: Any) -> T:
                self.lease.check(txn_session, next_step=self.lease.step)
                return body(txn_session)

            # Any transient error runs it again: its writes are conditional, so a try that
            # did commit (its reply lost) makes the next one conflict, not write twice.
            return run_transaction(self.session, in_transaction, self.retry, what,
                                   retry_on=is_transient)
        self.lease.check()
        return body(None)

    def mine(self, status: str = "running") -> Dict[str, Any]:
        """The state of a record this run moved to ``status``."""
        return {"status": status, "run_id": self.run.run_id}

    def _move(self, version: int, expected: Optional[Dict[str, Any]], update: Dict[str, Any],
              session: Any, what: str) -> None:
        """One conditional record write; ``RecordConflict`` when the record moved on."""
        if not self.store.transition(version, expected, update, session=session):
            raise RecordConflict(version, what)

    def ours(self, version: int, status: str, direction: str) -> Optional[Dict[str, Any]]:
        """The record's fields when this run already moved it to ``status`` (a write or
        commit whose reply was lost), else ``None``. Read under the retry budget."""
        doc = self.store.read_record(version)
        if doc and doc.get("status") == status and doc.get("run_id") == self.run.run_id \
                and doc.get("direction") == direction:
            return {k: v for k, v in doc.items() if k != "_id"}
        return None

    def lost(self, conflict: RecordConflict) -> LockLostError:
        """The error for a record another run (or a hand edit) changed under this run."""
        return LockLostError(
            f"The record of version {conflict.version} changed under this run "
            f"({conflict.what}): another run took the lock over, or it was edited by hand. "
            "This run wrote nothing over it and stops.",
            version=conflict.version,
            hint="Check `status` and `history`, then run again. If this happens often, "
            "raise the lock TTL (--lock-ttl).",
        )

    # -- transitions -------------------------------------------------------------------------

    def start(self, version: int, fields: Dict[str, Any],
              previous: Optional[MigrationRecord]) -> None:
        """``running`` (non-transactional step), from the record as this run read it."""
        # A real run replaces a record written by --fake/baseline: it is no longer faked.
        update = {"$set": fields, "$unset": {"faked": "", "last_error": "", "pruned": ""}}
        try:
            self.fenced(f"record version {version} as running",
                        lambda s: self._move(version, expected_state(previous), update, s,
                                             "it is no longer as this run read it"))
        except RecordConflict as conflict:
            if self.ours(version, "running", fields["direction"]) is None:
                raise self.lost(conflict) from None

    def finish(self, version: int, direction: str, expected: Optional[Dict[str, Any]],
               update: Dict[str, Any], entry: HistoryEntry, session: Any = None,
               legacy: Optional[int] = None) -> Optional[Dict[str, Any]]:
        """Write an outcome (record, history entry, legacy document) together.

        ``session`` in a transaction: the step's own (a transactional step; the caller's
        transaction aborts on a conflict). Otherwise a fenced write of its own. Returns the
        stored record when this run had already written this very outcome, else ``None``.
        """
        status = entry.status

        def write(s: Any) -> None:
            if s is not None and self.together:
                if not self.store.transition_with_history(version, expected, update, entry,
                                                          legacy, session=s):
                    raise RecordConflict(version, f"writing '{status}'")
                return
            self._move(version, expected, update, s, f"writing '{status}'")
            self.store.append_history(entry, session=s)
            if legacy is not None:
                self.store.set_legacy(legacy, session=s)

        if session is not None and session.in_transaction:
            write(session)
            return None
        try:
            self.fenced(f"record the outcome of version {version}", write)
        except RecordConflict as conflict:
            done = self.ours(version, status, direction)
            if done is None:
                raise self.lost(conflict) from None
            return done
        return None

    def checkpoint(self, version: int, progress: Dict[str, Any], guard: Dict[str, Any],
                   session: Any = None) -> None:
        """Store a checkpoint if the record still holds the one it follows (``guard``:
        compare-and-set on the previous batch's last ``_id``) and is this run's."""
        update = {"$set": {"progress": progress}}

        def write(s: Any) -> None:
            self._move(version, {**self.mine(), **guard}, update, s,
                       "its checkpoint is not the one this batch follows")

        if session is not None and session.in_transaction:
            write(session)
            return
        try:
            self.fenced(f"save the checkpoint of version {version}", write)
        except RecordConflict as conflict:
            if self.saved_progress(version) != progress:  # else: an earlier try landed
                raise self.lost(conflict) from None

    def pause(self, version: int, direction: str, fields: Dict[str, Any],
              entry: HistoryEntry) -> None:
        """``running`` -> ``paused``, keeping the checkpoint (``fields``: the outcome)."""
        self.finish(version, direction, self.mine(), {"$set": fields}, entry)

    def pause_requested(self, version: int) -> bool:
        """Is there a ``pause VERSION`` request on the record (read at each checkpoint)?"""
        doc = self.store.policy.call(
            f"read the pause request of version {version}",
            lambda: self.store.records.find_one({"_id": version}, {"pause": 1}))
        pause = (doc or {}).get("pause")
        return isinstance(pause, dict) and pause.get("reason") == PAUSE_REQUEST

    def saved_progress(self, version: int) -> Optional[Dict[str, Any]]:
        """The checkpoint of a record this run is running (``None`` otherwise)."""
        doc = self.store.read_record(version)
        if doc and doc.get("status") == "running" and doc.get("run_id") == self.run.run_id:
            progress = doc.get("progress")
            return progress if isinstance(progress, dict) else None
        return None

    def settle(self, records: Dict[int, MigrationRecord]) -> None:
        """Under the lock, ``running`` records of other runs are dead runs: record them
        ``failed`` (error type ``Interrupted``) with an ``interrupted`` history entry."""
        for version, record in sorted(records.items()):
            if record.status != "running" or record.run_id == self.run.run_id:
                continue
            message = (f"interrupted: run {record.run_id} on {record.host} (pid {record.pid}) "
                       f"stopped during '{record.direction}' without finishing")
            error = ErrorInfo(type="Interrupted", message=message)
            now = utcnow()
            log.warning("Migration %d was %s", version, message)
            entry = HistoryEntry(**{
                **record.model_dump(include=set(field_names(HistoryEntry))),
                "status": "interrupted", "finished_at": now, "attempt": record.attempts,
                "error": error})
            update = {"$set": {"status": "failed", "error": error.model_dump(),
                               "finished_at": now}}

            expected = expected_state(record)

            def write(s: Any, entry: HistoryEntry = entry, version: int = version,
                      update: Dict[str, Any] = update,
                      expected: Optional[Dict[str, Any]] = expected) -> None:
                # The entry first: without transactions, a kill between the two writes
                # leaves the record running, and the next settlement writes the same
                # entry again, which keeps one.
                self.store.append_history(entry, session=s)
                self._move(version, expected, update, s, "settling a dead run")

            try:
                self.fenced(f"record version {version} as interrupted", write)
            except RecordConflict as conflict:
                doc = self.store.read_record(version) or {}
                if doc.get("status") != "failed" or doc.get("run_id") != record.run_id or \
                        (doc.get("error") or {}).get("type") != "Interrupted":
                    raise self.lost(conflict) from None  # else: an earlier try landed
            records[version] = record.model_copy(update={"status": "failed", "error": error})

    def repair(self, version: int, previous: MigrationRecord, fields: Dict[str, Any],
               note: Dict[str, Any]) -> None:
        """A ``repair`` fix and its note on the record, only while the record is as this run
        read it (``previous``): a repairer paused past its lease cannot clear or accept what
        a later run moved on. The note's ``id`` makes a retried write a no-op."""
        update: Dict[str, Any] = {"$push": {"repairs": note}}
        if fields:
            update["$set"] = fields
        expected = {**(expected_state(previous) or {}), "repairs.id": {"$ne": note["id"]}}
        try:
            self.fenced(f"repair record of version {version}",
                        lambda s: self._move(version, expected, update, s,
                                             "it is no longer as this repair read it"))
        except RecordConflict as conflict:
            doc = self.store.read_record(version) or {}
            if not any(isinstance(n, dict) and n.get("id") == note["id"]
                       for n in doc.get("repairs") or ()):
                raise self.lost(conflict) from None  # else: an earlier try landed

    def put(self, version: int, change: Dict[str, Any], entry: HistoryEntry) -> None:
        """Write a record outright (``change``: a whole document, or an update) with its
        history entry: baseline, adoption, fake revert. Fenced; one transaction where
        transactions exist."""
        records = self.store.records
        replace = not all(key.startswith("$") for key in change)

        def put(s: Any) -> Any:
            if replace:
                return records.replace_one({"_id": version}, change, upsert=True, session=s)
            return records.update_one({"_id": version}, change, upsert=True, session=s)

        def write(s: Any) -> None:
            if s is not None:
                put(s)
            else:
                self.store.policy.call(f"write record of version {version}", lambda: put(None))
            self.store.append_history(entry, session=s)

        self.fenced(f"record version {version}", write)


def request_pause(store: Store, version: int, who: RunInfo) -> Dict[str, Any]:
    """Put a pause request on a running or unfinished version (no lock: see the module
    docstring) and return it. A standing request is kept as it was (who asked first, and
    when). ``ConfigurationError`` when the version has nothing to pause."""
    request = {"reason": PAUSE_REQUEST, "at": utcnow(), "host": who.host, "pid": who.pid,
               "user": who.user, "run_id": who.run_id}
    store.policy.call(f"request a pause of version {version}", lambda: store.records.update_one(
        {"_id": version, "status": {"$in": list(PAUSABLE)},
         "pause.reason": {"$ne": PAUSE_REQUEST}},
        {"$set": {"pause": request}}))
    doc = store.read_record(version) or {}
    pause = doc.get("pause")
    if isinstance(pause, dict) and pause.get("reason") == PAUSE_REQUEST:
        return dict(pause)
    state = f"it is {doc['status']}" if doc.get("status") else "it has not been started"
    raise ConfigurationError(
        f"Version {version} has nothing to pause: {state}. A pause stops a backfill "
        "(batch_update) that is running or unfinished.",
        hint="`analytiq-migrations status` shows which versions are running or unfinished.")


def clear_pause(store: Store, version: int) -> bool:
    """Remove a pause request (``resume VERSION``); False when there was none."""
    result = store.policy.call(
        f"clear the pause request of version {version}",
        lambda: store.records.update_one({"_id": version, "pause.reason": PAUSE_REQUEST},
                                         {"$unset": {"pause": ""}}))
    return bool(result.modified_count)

"""Per-version records, the append-only history, and the seed's legacy version document.

All reads and writes of the ``migrations`` and ``migrations_history`` collections go
through :class:`Store`. Writes take an optional session so they can join a transaction
(the migration's own, or a small bookkeeping one). Which write happens when, and under
which condition, is decided by ``lifecycle.py``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import bson
from bson.raw_bson import RawBSONDocument
from pymongo import DESCENDING, InsertOne, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from .errors import CorruptRecordError, InvalidData
from .records import HistoryEntry, MigrationRecord, RunInfo
from .retry import RetryPolicy
from .server import RECORDS_BATCH, own_collection
from .stored import LEGACY_ID, is_foreign

log = logging.getLogger("analytiq_migrations")

#: MongoDB 8.0 (wire version 25) has the ``bulkWrite`` command, one command that writes
#: to several collections; pymongo 4.9 sends it (``MongoClient.bulk_write``). A step's
#: record and history entry then cost one round trip, not two: 0.3 ms less per applied
#: migration, 6% of its time on SecantusDB (benchmarks/bench_bookkeeping.py, figure 1b).
BULK_WRITE_WIRE_VERSION = 25

#: The server's code for a duplicate key.
DUPLICATE_KEY = 11000


def writes_together(client: Any, wire_version: int) -> bool:
    """Whether one ``bulkWrite`` command can carry a record and its history entry."""
    return wire_version >= BULK_WRITE_WIRE_VERSION and \
        callable(getattr(type(client), "bulk_write", None))


def utcnow() -> datetime:
    """Now, as an aware UTC datetime truncated to BSON's millisecond precision."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass
class DatabaseState:
    """Everything the ``migrations`` collection says, read in one query."""

    records: dict[int, MigrationRecord] = field(default_factory=dict)
    #: ``version`` of the seed's ``{_id: "schema_version"}`` document, if it exists.
    legacy_version: Optional[int] = None
    corrupt: list[CorruptRecordError] = field(default_factory=list)
    #: How many documents of another tool share the collection (see ``is_foreign``), and
    #: their field names: ignored, never changed.
    foreign: int = 0
    foreign_fields: set[str] = field(default_factory=set)

    @property
    def adoptable(self) -> bool:
        """A seed-era database: a legacy version and no per-version records yet."""
        return bool(self.legacy_version) and not self.records and not self.corrupt


class Store:
    """Reads and writes records and history for one database."""

    def __init__(self, db: Any, collection: str, policy: RetryPolicy) -> None:
        self.db = db
        self.collection_name = collection
        self.history_name = f"{collection}_history"
        self.records = own_collection(db, collection)
        self.history = own_collection(db, self.history_name)
        self.policy = policy
        self._foreign_noted = False

    # -- reads ---------------------------------------------------------------------------

    def load(self) -> DatabaseState:
        """Read every record (and the legacy document) in one round trip."""
        state = DatabaseState()
        docs = self.policy.call("read migration records", lambda: list(
            self.records.find({}, batch_size=RECORDS_BATCH)))
        for doc in docs:
            if is_foreign(doc):
                state.foreign += 1
                state.foreign_fields.update(k for k in doc if k != "_id")
                continue
            if doc.get("_id") == LEGACY_ID:
                try:
                    state.legacy_version = _legacy_version(doc, self.collection_name)
                except CorruptRecordError as exc:
                    state.corrupt.append(exc)
                continue
            try:
                record = MigrationRecord.from_document(doc, self.collection_name)
            except CorruptRecordError as exc:
                state.corrupt.append(exc)
                continue
            state.records[record.version] = record
        if state.foreign and not self._foreign_noted:
            self._foreign_noted = True
            log.info("'%s' also holds %d document(s) of another tool (fields: %s); they are "
                     "left alone: this library's records are the ones whose _id is a version "
                     "number", self.collection_name, state.foreign,
                     ", ".join(sorted(state.foreign_fields)[:8]))
        return state

    def read_history(self, version: Optional[int] = None, limit: int = 0) -> list[HistoryEntry]:
        """History entries, newest first (optionally for one version)."""
        query: dict[str, Any] = {} if version is None else {"version": version}
        cursor = self.history.find(query, {"_id": 0}).sort(
            [("started_at", DESCENDING), ("finished_at", DESCENDING)]
        )
        if limit:
            cursor = cursor.limit(limit)
        entries = []
        for doc in cursor:
            try:
                entries.append(HistoryEntry.model_validate(doc))
            except InvalidData as exc:
                # An audit log is read to investigate: one damaged entry must not hide the rest.
                log.warning("Skipped a malformed entry in '%s' (version %r): %s",
                            self.history_name, doc.get("version"),
                            exc.reason)
        return entries

    # -- writes --------------------------------------------------------------------------

    @staticmethod
    def start_fields(
        *,
        version: int,
        description: str,
        checksum: str,
        raw_checksum: Optional[str] = None,
        direction: str,
        run: RunInfo,
        transactional: bool,
        attempts: int,
        started_at: datetime,
        progress: Optional[dict[str, Any]],
    ) -> dict[str, Any]:
        """The record's fields for an attempt that starts now (status ``running``)."""
        return {
            "version": version,
            "description": description,
            "checksum": checksum,
            "raw_checksum": raw_checksum,
            "status": "running",
            "direction": direction,
            "started_at": started_at,
            "finished_at": None,
            "duration_ms": None,
            "transactional": transactional,
            "attempts": attempts,
            "error": None,
            "progress": progress,
            **run.model_dump(),
        }

    def transition(self, version: int, expected: Optional[dict[str, Any]],
                   update: dict[str, Any], *, session: Any = None) -> bool:
        """Apply ``update`` to the record only while it still matches ``expected`` (``None``:
        while there is no record, which it then creates); False when it did not match."""
        query = _transition_query(version, expected)
        fresh = _new_record(version, expected, update)

        def write(s: Any) -> bool:
            try:
                if fresh is not None:
                    self.records.insert_one(fresh, session=s)
                    return True
                result = self.records.update_one(query, update, upsert=expected is None,
                                                 session=s)
            except DuplicateKeyError:
                return False
            return _moved(result)

        if session is not None and session.in_transaction:
            return write(session)
        return self.policy.call(f"record version {version}", lambda: write(None))

    def transition_with_history(self, version: int, expected: Optional[dict[str, Any]],
                                update: dict[str, Any], entry: HistoryEntry,
                                legacy: Optional[int], *, session: Any) -> bool:
        """``transition`` and ``append_history`` (and ``set_legacy``) in one ``bulkWrite``
        command, inside ``session``'s transaction (see ``writes_together``); False when the
        record did not match (the caller aborts the transaction: the entry goes with it)."""
        def namespace(collection: Any) -> str:
            return f"{collection.database.name}.{collection.name}"

        def own(doc: dict[str, Any]) -> Any:
            # Encoded as the records collection encodes (OWN_CODEC): the client's own
            # codec, which bulkWrite would use, may refuse what the collection takes
            # (a UUID in a checkpoint, on a client with no uuidRepresentation).
            return RawBSONDocument(bson.encode(doc, codec_options=self.records.codec_options))

        records, fresh = namespace(self.records), _new_record(version, expected, update)
        first: Any = InsertOne(own(fresh), namespace=records) if fresh is not None else \
            UpdateOne(own(_transition_query(version, expected)), own(update),
                      upsert=expected is None, namespace=records)
        models = [first, InsertOne(own(_history_document(entry)),
                                   namespace=namespace(self.history))]
        if legacy is not None:
            models.append(UpdateOne({"_id": LEGACY_ID}, own(_legacy_update(legacy)),
                                    namespace=records))
        try:
            result = self.records.database.client.bulk_write(
                models, session=session, ordered=True, verbose_results=fresh is None)
        except OperationFailure as exc:  # ClientBulkWriteException, from pymongo 4.9 only
            errors = getattr(exc, "write_errors", None) or []
            if errors and errors[0].get("idx") == 0 and errors[0].get("code") == DUPLICATE_KEY:
                return False  # the record exists: not the state expected
            inner = getattr(exc, "error", None)
            if isinstance(inner, BaseException):
                # A top-level error comes wrapped: its labels (TransientTransactionError)
                # are on the inner one, which the transaction's retry loop must see.
                raise inner from None
            raise
        if fresh is not None:
            return True
        done = result.update_results.get(0)
        return done is not None and _moved(done)

    def read_record(self, version: int) -> Optional[dict[str, Any]]:
        """One record as stored (``None`` when there is none), under the retry budget."""
        doc: Optional[dict[str, Any]] = self.policy.call(
            f"read the record of version {version}",
            lambda: self.records.find_one({"_id": version}))
        return doc

    def append_history(self, entry: HistoryEntry, *, session: Any = None) -> None:
        """Append one attempt to the history (never rewrites an entry). Its ``_id`` names
        the run, version, direction, attempt and outcome: the same entry written twice (a
        retry whose reply was lost, a dead run settled twice) is there once."""
        doc = _history_document(entry)

        def insert(s: Any) -> None:
            if s is not None:
                self.history.insert_one(doc, session=s)
                return
            with contextlib.suppress(DuplicateKeyError):
                self.history.insert_one(doc)

        self._write(f"append history for version {entry.version}", insert, session)

    def _write(self, what: str, write: Callable[[Any], object], session: Any) -> None:
        """``write(session)`` inside the caller's transaction (whose loop retries it), or
        ``write(None)`` on its own under the retry budget."""
        if session is not None and session.in_transaction:
            write(session)
        else:
            self.policy.call(what, lambda: write(None))

    def set_legacy(self, version: int, *, session: Any = None) -> None:
        """Keep the seed's ``schema_version`` document equal to the current version."""
        update = _legacy_update(version)
        self._write(
            "update the legacy schema_version document",
            lambda s: self.records.update_one({"_id": LEGACY_ID}, update, session=s),
            session,
        )

    def remember_raw_checksums(self, hashes: dict[int, tuple[str, str]]) -> None:
        """Set ``raw_checksum`` on records whose ``checksum`` is still the one compared
        (``{version: (checksum, raw)}``), in one command; a concurrent repair wins."""
        requests = [UpdateOne({"_id": version, "checksum": checksum},
                              {"$set": {"raw_checksum": raw}})
                    for version, (checksum, raw) in sorted(hashes.items())]
        try:
            self.policy.call("remember file hashes",
                             lambda: self.records.bulk_write(requests, ordered=False))
        except PyMongoError as exc:  # only an optimisation: the next run compares again
            log.warning("Could not store the migration files' hashes: %s", exc)



def _transition_query(version: int, expected: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The filter of a record still in the ``expected`` state (``None``: no record)."""
    if expected is None:
        # Only a missing record matches: any record (it always has a version) makes the
        # write collide on _id, and nothing is written.
        return {"_id": version, "version": {"$exists": False}}
    return {"_id": version, **expected}


def _new_record(version: int, expected: Optional[dict[str, Any]],
                update: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The whole document to insert when the write creates the record (``expected`` is
    ``None``) and ``update`` is plain ``$set``/``$unset`` of top-level fields; else ``None``
    (a conditional update, or an upsert). An insert is cheaper on the server than an
    upsert (0.3 ms a step) and collides on ``_id`` alike."""
    if expected is not None or not set(update) <= {"$set", "$unset"} or \
            any("." in key or key.startswith("$") for key in update.get("$set", {})):
        return None
    return {**update.get("$set", {}), "_id": version}


def _moved(result: Any) -> bool:
    """Whether a conditional record update matched (or upserted) its record."""
    return bool(result.matched_count or result.upserted_id is not None)


def _legacy_update(version: int) -> dict[str, Any]:
    """The update that sets the seed's ``schema_version`` document to ``version``."""
    return {"$set": {"version": version, "updated_at": utcnow()}}


def _history_document(entry: HistoryEntry) -> dict[str, Any]:
    """A history entry as stored, with its deterministic ``_id``."""
    return {"_id": history_id(entry), **entry.model_dump()}


def history_id(entry: HistoryEntry) -> str:
    """The deterministic ``_id`` of a history entry (run, version, direction, attempt,
    outcome)."""
    return (f"{entry.run_id or '-'}:{entry.version}:{entry.direction}:{entry.attempt}:"
            f"{entry.status}")


def _legacy_version(doc: dict[str, Any], collection: str) -> int:
    """The ``version`` of the seed's document, checked."""
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CorruptRecordError(
            f"The legacy document {{_id: '{LEGACY_ID}'}} in '{collection}' has version "
            f"{version!r}; expected a non-negative integer.",
            hint="Set its version to the last migration the old code applied, or delete it "
            "and use `baseline VERSION`.",
        )
    return version

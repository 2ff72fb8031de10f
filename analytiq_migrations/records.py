"""Data shapes: what is stored (records, history) and what methods return (plans, reports).

Plain models (``modelbase.py``), no I/O. Stored documents are validated on the way in
(by pydantic when they are not plainly right), so a hand-edited or corrupted record is
reported by name instead of crashing a run.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Literal, Optional

from .errors import CorruptRecordError, InvalidData
from .modelbase import Field, Model
from .modelbase import field_names as field_names
from .valuetypes import BSONData, UTCDateTime

#: How to give this library a records collection of its own (and keep what is applied).
FOREIGN_HINT = ("--collection NAME, ANALYTIQ_MIGRATIONS_COLLECTION or Migrator(collection=...); "
                "there `baseline VERSION` marks the versions already applied")

RecordStatus = Literal["running", "applied", "failed", "rolled_back", "baselined", "paused"]
HistoryStatus = Literal["applied", "failed", "rolled_back", "interrupted", "baselined", "paused"]
Direction = Literal["up", "down"]
#: How a step of a run ended: a history status, or, in a dry run, ``rehearsed`` (run in the
#: rehearsal's transaction, then aborted) / ``not_rehearsed`` (not run; ``note`` says why).
StepStatus = Literal[
    "applied", "failed", "rolled_back", "interrupted", "baselined", "rehearsed", "not_rehearsed",
    "paused",
]
RowStatus = Literal[
    "pending", "running", "applied", "failed", "rolled_back", "baselined", "interrupted", "missing",
    # applied, its file absent above the code's newest version (older code deployed)
    "ahead_of_code",
    # applied, its file removed on purpose (``repair(accept_missing=True)``)
    "pruned",
    "paused",
]


class ErrorInfo(Model, extra="allow"):
    """The error stored with a failed attempt: exception type and message (and ``at:
    "batch_update"`` when raised inside it: the attempt stopped at a checkpoint)."""

    type: str
    message: str


class LastError(Model, extra="ignore"):
    """A failed transactional attempt that changed nothing: the record keeps its status
    (an applied version whose ``down`` failed is still applied) and says why here."""

    type: str
    message: str
    direction: Direction
    at: Optional[UTCDateTime] = None


class RunInfo(Model):
    """Who is running: stored on records, history entries and the lock."""

    run_id: str
    host: str
    pid: int
    user: str
    tool_version: str


class MigrationRecord(Model, extra="allow"):
    """One document per version in the ``migrations`` collection (``_id`` = version)."""

    version: int = Field(gt=0)
    description: str = ""
    checksum: Optional[str] = None
    #: sha256 of the file's bytes when ``checksum`` was taken (``None`` for classes and
    #: older records): equal bytes spare tokenizing; ``checksum`` stays the truth.
    raw_checksum: Optional[str] = None
    status: RecordStatus
    direction: Direction = "up"
    applied_at: Optional[UTCDateTime] = None
    started_at: Optional[UTCDateTime] = None
    finished_at: Optional[UTCDateTime] = None
    duration_ms: Optional[int] = None
    run_id: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    user: Optional[str] = None
    tool_version: Optional[str] = None
    transactional: bool = False
    attempts: int = 0
    error: Optional[ErrorInfo] = None
    #: Set when a transactional attempt failed and rolled back, leaving ``status`` as it was.
    last_error: Optional[LastError] = None
    progress: Optional[Dict[str, Optional[BSONData]]] = None
    #: Why the version is paused or should pause (see ``pauses.py``): ``reason``
    #: (``request`` or ``time_budget``), ``at``, ``host``, ``pid``, ``user``.
    pause: Optional[Dict[str, Optional[BSONData]]] = None

    @classmethod
    def from_document(cls, doc: dict[str, Any], collection: str) -> MigrationRecord:
        """Validate a stored document; a malformed one raises ``CorruptRecordError``."""
        body = {k: v for k, v in doc.items() if k != "_id"}
        try:
            record = cls.model_validate(body)
        except InvalidData as exc:
            raise CorruptRecordError(
                f"Record {doc.get('_id')!r} in collection '{collection}' is malformed: "
                f"{exc.where}: {exc.reason}",
                version=doc.get("_id") if isinstance(doc.get("_id"), int) else None,
                hint=f"Fix the document {{_id: {doc.get('_id')!r}}} in '{collection}' (the history "
                "collection still has every attempt), then run validate again. If it belongs to "
                "another tool, leave it and give this library a collection of its own "
                f"({FOREIGN_HINT}).",
            ) from None
        if doc.get("_id") != record.version:
            raise CorruptRecordError(
                f"Record {doc.get('_id')!r} in collection '{collection}' says version "
                f"{record.version}; _id and version must be equal.",
                version=record.version,
                hint=f"Fix the document's _id or version field in '{collection}'. If it belongs "
                f"to another tool, leave it and give this library a collection of its own "
                f"({FOREIGN_HINT}).",
            )
        return record


class HistoryEntry(Model, extra="allow"):
    """One attempt, in either direction, in the append-only ``migrations_history``."""

    version: int
    description: str = ""
    checksum: Optional[str] = None
    status: HistoryStatus
    direction: Direction = "up"
    started_at: Optional[UTCDateTime] = None
    finished_at: Optional[UTCDateTime] = None
    duration_ms: Optional[int] = None
    run_id: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    user: Optional[str] = None
    tool_version: Optional[str] = None
    transactional: bool = False
    attempt: int = 1
    error: Optional[ErrorInfo] = None


class PlanStep(Model):
    """One migration to run, in one direction."""

    version: int
    direction: Direction
    description: str
    transactional: bool
    #: Why this step is there when it is not a plain pending migration
    #: ("resume", "retry after failure", "re-run after interruption").
    note: Optional[str] = None
    #: A transactional step whose code calls what a transaction refuses: the first such
    #: call and why (``validate`` lists them all); ``None`` when none is seen.
    refused: Optional[str] = None


class Plan(Model):
    """What ``upgrade``/``downgrade`` would do, in order. Computing it writes nothing."""

    direction: Direction
    current_version: int
    target_version: int
    steps: List[PlanStep] = Field(default_factory=list)
    #: A version paused by ``pause VERSION`` that the plan stops before (``pauses.py``).
    paused: Optional[Dict[str, Any]] = None

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[PlanStep]:
        return iter(self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def versions(self) -> List[int]:
        """The versions the plan touches, in execution order."""
        return [s.version for s in self.steps]


class CollectionChanges(Model):
    """What a dry-run step's writes to one collection did, summed from the write results
    the server returned for the calls made through ``db``."""

    matched: int = 0
    modified: int = 0
    inserted: int = 0
    deleted: int = 0
    upserted: int = 0


class StepResult(Model):
    """How one step of a run ended."""

    version: int
    direction: Direction
    description: str
    status: StepStatus
    transactional: bool
    duration_ms: int
    attempts: int = 1
    error: Optional[ErrorInfo] = None
    #: Dry run: per collection (``name``, or ``database.name`` outside the migrations'
    #: database), what the step's writes matched, modified, inserted, deleted, upserted.
    changes: Dict[str, CollectionChanges] = Field(default_factory=dict)
    #: Dry run: why a step was not rehearsed, or what its error means.
    note: Optional[str] = None


class RunReport(Model):
    """What ``upgrade``/``downgrade`` did."""

    run_id: str
    direction: Direction
    start_version: int
    end_version: int
    started_at: UTCDateTime
    finished_at: UTCDateTime
    steps: List[StepResult] = Field(default_factory=list)
    #: A rehearsal (``dry_run=True``): nothing was stored, ``end_version == start_version``.
    dry_run: bool = False
    #: Dry run: the version the real run would reach if every step succeeded.
    target_version: Optional[int] = None
    #: Dry run: how the steps were rehearsed, and the limits that applied.
    notes: List[str] = Field(default_factory=list)
    #: The run stopped at a checkpoint (``--time-budget`` or ``pause``), or did not start a
    #: version paused by ``pause``: ``version``, ``reason``, ``held``, progress figures.
    paused: Optional[Dict[str, Any]] = None
    #: Seconds spent waiting for the lock (``lock_wait``), for the metrics.
    lock_wait_s: float = 0.0

    @property
    def versions(self) -> List[int]:
        """Versions that completed in this run, in order (none in a dry run)."""
        return [s.version for s in self.steps
                if s.status not in ("failed", "rehearsed", "not_rehearsed", "paused")]

    @property
    def failed(self) -> Optional[StepResult]:
        """The step that failed (in a dry run: that would fail), if any."""
        return next((s for s in self.steps if s.status == "failed"), None)

    @property
    def changed(self) -> bool:
        """True when the run applied or reverted anything."""
        return bool(self.versions)


class StatusRow(Model):
    """One line of ``status()``: a version known to the code, the database, or both."""

    version: int
    description: str
    status: RowStatus
    applied_at: Optional[UTCDateTime] = None
    checksum_ok: Optional[bool] = None
    transactional: Optional[bool] = None
    reversible: Optional[bool] = None
    attempts: int = 0
    error: Optional[ErrorInfo] = None
    #: A failed transactional attempt that changed nothing (an applied version whose
    #: ``down`` failed and rolled back is still applied).
    last_error: Optional[LastError] = None
    progress: Optional[Dict[str, Optional[BSONData]]] = None
    #: ``progress`` for people (``items: 4,000 of 10,000 documents, ...``), if any.
    checkpoint: Optional[str] = None
    #: The record's ``pause`` (who paused it, when, why), if any.
    pause: Optional[Dict[str, Optional[BSONData]]] = None


ProblemKind = Literal[
    "checksum_drift", "missing", "out_of_order", "interrupted", "failed", "corrupt", "running",
    "refused_in_transaction", "ahead_of_code",
]


class Problem(Model):
    """One thing ``validate()`` found wrong, with what to do about it."""

    kind: ProblemKind
    version: Optional[int]
    message: str
    hint: str
    #: ``warning``: reported, but healthy enough to serve (``status --check`` and
    #: ``validate`` exit 0 unless ``--strict``); ``error``: exit 4.
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.message} -> {self.hint}"


class LockInfo(Model, extra="allow"):
    """The lock document as stored (``_id: "migration_lock"``)."""

    holder: Optional[str] = None
    locked_at: Optional[UTCDateTime] = None
    expires_at: Optional[UTCDateTime] = None
    heartbeat_at: Optional[UTCDateTime] = None
    host: Optional[str] = None
    pid: Optional[int] = None
    run_id: Optional[str] = None
    user: Optional[str] = None
    tool_version: Optional[str] = None
    #: The transactional step running now (``{version, direction, started_at}``): such a
    #: step writes its record only when it commits.
    step: Optional[Dict[str, Optional[BSONData]]] = None
    #: The holder's session ids (``{"id": UUID}``), ended by whoever takes over.
    session_ids: List[Optional[BSONData]] = Field(default_factory=list)


class ProgressEvent(Model):
    """A progress report from a long-running step (``batch_update``)."""

    version: int
    collection: str
    #: Documents walked so far (they matched the filter), changed or not.
    scanned: int = 0
    #: Documents the updates matched, and those they actually changed.
    matched: int
    modified: int
    batches: int
    elapsed_s: float
    total: Optional[int] = None
    done: bool = False


class StepEvent(Model):
    """A step of ``upgrade``/``downgrade`` starting, or ending (``Migrator(on_step=...)``)."""

    version: int
    direction: Direction
    description: str
    transactional: bool
    #: ``started``, or how the step ended (``applied``, ``rolled_back``, ``failed``; in a
    #: dry run ``rehearsed``, or ``failed``: it would fail).
    status: Literal["started", "applied", "rolled_back", "failed", "rehearsed"]
    #: Its place in the run (1-based) and the run's number of steps.
    index: int
    total: int
    #: When it ended: how long it took, and its error if it failed.
    duration_ms: Optional[int] = None
    error: Optional[ErrorInfo] = None


class RepairNote(Model, extra="allow"):
    """A fix ``repair()`` made, as the record notes it (``repairs``): shown in the history."""

    version: int
    action: str
    at: Optional[UTCDateTime] = None
    run_id: Optional[str] = None
    host: Optional[str] = None
    user: Optional[str] = None
    #: What it changed, for people (``checksum 1a2b... -> 3c4d...``).
    detail: str = ""


class RepairAction(Model):
    """One fix ``repair()`` made (also logged, and noted on the record's ``repairs``)."""

    version: int
    action: Literal["accept_checksum", "clear_failed", "accept_missing"]
    detail: str

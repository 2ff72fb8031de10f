"""Pure planning: from the code's migrations and the stored records to steps, rows, problems.

Nothing here does I/O, so every rule about what runs, in which order, and what is
refused can be read (and tested) without a server: which version a target names is
decided in ``targets.py``, what may run over an unfinished attempt in ``refusals.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

from .errors import (
    ConfigurationError,
    CorruptRecordError,
    IrreversibleMigrationError,
    OutOfOrderError,
)
from .hints import spell
from .migration import Migration
from .pauses import held, held_note
from .progress import describe_checkpoint
from .records import (
    MigrationRecord,
    Plan,
    PlanStep,
    Problem,
    StatusRow,
)
from .refusals import (
    UNFINISHED,
    refusal,
    resume_checkpoint,
    unfinished_hint,
)
from .stored import APPLIED_STATUSES
from .targets import Target, check_target, resolve_target

UseTransaction = Callable[[Migration], bool]
#: What an applied version whose file is absent is (see ``_without_code``).
Gone = Literal["pruned", "ahead_of_code", "missing"]

#: What callers import from here (``Target`` and ``resolve_target`` live in ``targets``).
__all__ = [
    "Target", "UseTransaction", "accepts_missing", "below", "checksum_ok", "current_version",
    "find_problems", "plan_downgrade", "plan_upgrade", "resolve_target", "status_rows",
    "unchanged", "virtual_records",
]


def virtual_records(
    migrations: Sequence[Migration], records: dict[int, MigrationRecord],
    legacy_version: Optional[int],
) -> dict[int, MigrationRecord]:
    """Records as they are, or, for a seed-era database, as adoption will write them."""
    if records or not legacy_version:
        return dict(records)
    adopted = {}
    for migration in migrations:
        version = int(migration.version or 0)
        if version <= legacy_version:
            adopted[version] = MigrationRecord(
                version=version,
                description=migration.summary(),
                checksum=migration.checksum,
                raw_checksum=migration.raw_checksum(),
                status="baselined",
            )
    if legacy_version not in adopted:
        adopted[legacy_version] = MigrationRecord(
            version=legacy_version, description="adopted from schema_version", status="baselined"
        )
    return adopted


def unchanged(migration: Migration, record: MigrationRecord) -> bool:
    """The migration's file is byte for byte the one recorded: no need to tokenize it."""
    return record.raw_checksum is not None and record.checksum is not None and \
        migration.raw_checksum(record.checksum) == record.raw_checksum


def checksum_ok(migration: Migration, record: MigrationRecord) -> bool:
    """The code is the recorded code (the normalized checksum decides; equal bytes suffice)."""
    return unchanged(migration, record) or record.checksum == migration.checksum


def current_version(records: dict[int, MigrationRecord]) -> int:
    """Highest applied (or baselined) version; 0 when none."""
    return max((v for v, r in records.items() if r.status in APPLIED_STATUSES), default=0)


def _note(record: Optional[MigrationRecord], direction: str) -> Optional[str]:
    """Why a step re-runs an earlier attempt."""
    if record is None or record.status in ("rolled_back",):
        return None
    resumes = resume_checkpoint(record, direction) is not None
    if record.status == "running":
        return "resume from checkpoint" if resumes else "re-run after interruption"
    if record.status == "failed":
        return "resume from checkpoint" if resumes else "retry after failure"
    if record.status == "paused":
        return "continue from checkpoint (paused)"
    return None


def below(version: int, migrations: Sequence[Migration],
          records: dict[int, MigrationRecord]) -> int:
    """The highest version under ``version`` that the code or the database knows (0)."""
    known = {int(m.version or 0) for m in migrations} | set(records)
    return max((v for v in known if v < version), default=0)


def plan_upgrade(
    migrations: Sequence[Migration],
    records: dict[int, MigrationRecord],
    target: int,
    use_transaction: UseTransaction,
    *,
    allow_out_of_order: bool = False,
) -> Plan:
    """Steps to bring the database up to ``target`` (refusing unsafe states)."""
    current = current_version(records)
    check_target(target, migrations, records)
    if target < current:
        raise ConfigurationError(
            f"Target {target} is below the current version {current}.",
            hint=spell(f"Use downgrade({target}) (`analytiq-migrations down {target}`) to go "
                       "back.", cli=f"Use `analytiq-migrations down {target}` to go back."),
        )
    steps = []
    paused: Optional[dict[str, Any]] = None
    for migration in migrations:
        version = int(migration.version or 0)
        if version > target:
            break
        record = records.get(version)
        if record is not None and record.status in APPLIED_STATUSES:
            continue
        hold = held(record)
        if hold is not None:
            paused = held_note(version, hold)  # it, and every later version, waits
            break
        if record is not None and record.status in UNFINISHED:
            if record.direction == "down" and record.transactional and record.status == "failed":
                continue  # a failed transactional revert left the migration applied
            refused = refusal(migration, record, "up", below(version, migrations, records))
            if refused is not None:
                raise refused
        if version < current and not allow_out_of_order:
            raise OutOfOrderError(
                f"Migration {version} ({migration.summary()}) is pending but version "
                f"{current} is already applied.",
                version=version,
                hint="Renumber the new migration above the current version, or allow it "
                "explicitly with " + _out_of_order() + ".",
            )
        steps.append(
            PlanStep(
                version=version,
                direction="up",
                description=migration.summary(),
                transactional=use_transaction(migration),
                note=_note(record, "up"),
            )
        )
    return Plan(direction="up", current_version=current, target_version=target, steps=steps,
                paused=paused)


def plan_downgrade(
    migrations: Sequence[Migration],
    records: dict[int, MigrationRecord],
    target: int,
    use_transaction: UseTransaction,
) -> Plan:
    """Steps to revert everything above ``target``, newest first; refuses irreversibles."""
    current = current_version(records)
    if target < 0:
        raise ConfigurationError(f"Bad downgrade target {target}.", hint="Use 0 (base) or more.")
    if target > current:
        raise ConfigurationError(
            f"Target {target} is above the current version {current}.",
            hint=spell(f"Use upgrade({target}) (`analytiq-migrations up {target}`) to go "
                       "forward.", cli=f"Use `analytiq-migrations up {target}` to go forward."),
        )
    by_version = {int(m.version or 0): m for m in migrations}
    steps, blocked = [], []
    for version in sorted(records, reverse=True):
        record = records[version]
        if version <= target or not _present(record):
            continue
        migration = by_version.get(version)
        if migration is None or not migration.reversible:
            why = "its code is gone" if migration is None else "it has no down()"
            blocked.append(f"{version} ({record.description}: {why})")
            continue
        if record.status in UNFINISHED:
            refused = refusal(migration, record, "down", below(version, migrations, records))
            if refused is not None:
                raise refused
        steps.append(
            PlanStep(
                version=version,
                direction="down",
                description=migration.summary(),
                transactional=use_transaction(migration),
                note=_note(record, "down"),
            )
        )
    if blocked:
        raise IrreversibleMigrationError(
            f"Cannot downgrade to {target}: irreversible migration(s) in the way: "
            f"{', '.join(blocked)}. Nothing was reverted.",
            version=int(blocked[0].split()[0]),
            hint="Downgrade only to a version above them, or add a down() to those "
            "migrations.",
        )
    return Plan(direction="down", current_version=current, target_version=target, steps=steps)


def _present(record: MigrationRecord) -> bool:
    """Is this version's change (possibly partly) in the database?"""
    if record.status in APPLIED_STATUSES:
        return True
    if record.status in UNFINISHED:
        # A transactional attempt that failed committed nothing: the state is what it
        # was before it, i.e. applied for a revert, absent for an apply.
        return not (record.transactional and record.direction == "up")
    return False


def status_rows(
    migrations: Sequence[Migration],
    records: dict[int, MigrationRecord],
    live_run_id: Optional[str] = None,
    live_step: Optional[int] = None,
) -> list[StatusRow]:
    """One row per version known to the code or the database, in version order
    (``live_step``: the version a live run's transaction is running now)."""
    by_version = {int(m.version or 0): m for m in migrations}
    head = max(by_version, default=0)
    rows = []
    for version in sorted(set(by_version) | set(records)):
        migration, record = by_version.get(version), records.get(version)
        row = StatusRow(version=version, description=record.description if record else "",
                        status="pending")
        if migration is not None and not (
            record is not None and record.status in APPLIED_STATUSES
            and not migration.is_loaded and unchanged(migration, record)
        ):
            # (An applied file unchanged since is described by its record: not imported.)
            row.description = migration.summary()
            row.transactional = migration.transactional
            row.reversible = migration.reversible
        if record is not None:
            if record.status in APPLIED_STATUSES or record.status == "failed":
                row.transactional = record.transactional  # how it actually ran
            row.status = record.status
            row.applied_at = record.applied_at
            row.attempts = record.attempts
            row.error = record.error
            row.last_error = record.last_error
            row.progress = record.progress
            row.checkpoint = describe_checkpoint(record.progress)
            if record.status == "rolled_back":
                row.status = "pending" if migration is not None else "rolled_back"
            if record.status == "running" and record.run_id != live_run_id:
                row.status = "interrupted"
            if record.status == "failed" and record.error and record.error.type == "Interrupted":
                row.status = "interrupted"  # settled by a later run: still what happened
            row.pause = record.pause
            if held(record, live_run_id) is not None:
                row.status = "paused"  # `pause VERSION`: not continued until `resume`
            if record.status in APPLIED_STATUSES:
                if migration is None:
                    row.status = _without_code(record, head) or record.status
                elif record.checksum:
                    row.checksum_ok = checksum_ok(migration, record)
        if version == live_step:
            row.status = "running"
        rows.append(row)
    return rows


def find_problems(
    migrations: Sequence[Migration],
    records: dict[int, MigrationRecord],
    corrupt: Sequence[CorruptRecordError] = (),
    live_run_id: Optional[str] = None,
) -> list[Problem]:
    """Everything that makes the database and the code disagree."""
    problems = [
        Problem(kind="corrupt", version=e.version, message=e.message, hint=e.hint or "")
        for e in corrupt
    ]
    by_version = {int(m.version or 0): m for m in migrations}
    head = max(by_version, default=0)
    current = current_version(records)
    for version in sorted(set(by_version) | set(records)):
        migration, record = by_version.get(version), records.get(version)
        if record is None or record.status == "rolled_back":
            if migration is not None and version < current:
                problems.append(Problem(
                    kind="out_of_order", version=version,
                    message=f"Migration {version} is pending below the current version "
                    f"{current}.",
                    hint="Renumber it above the current version, or apply it with "
                    + _out_of_order() + ".",
                ))
            continue
        label = f"Migration {version} ({record.description})"
        if held(record, live_run_id) is not None:
            continue  # paused on purpose: pending (status --check: 6), not a problem
        gone = _without_code(record, head) if migration is None else None
        if gone == "ahead_of_code":
            problems.append(Problem(
                kind="ahead_of_code", version=version, severity="warning",
                message=f"{label} is applied but the code stops at version {head}: the "
                "database is ahead of the code (older code deployed, a rollback).",
                hint="Nothing to do for a rollback: the code runs on a database migrated "
                "further, and redeploying the newer code clears this. "
                + _accept_missing_hint() + " if the file was removed on purpose.",
            ))
        elif gone == "missing":
            problems.append(Problem(
                kind="missing", version=version,
                message=f"{label} is applied but its file is gone, below the code's newest "
                f"version {head}.",
                hint="Restore the migration file, or, if it was pruned or squashed on "
                "purpose, record that: " + _accept_missing_hint() + ".",
            ))
        elif record.status in APPLIED_STATUSES and migration is not None and record.checksum \
                and not checksum_ok(migration, record):
            problems.append(Problem(
                kind="checksum_drift", version=version,
                message=f"{label} was changed after it was applied (checksum "
                f"{record.checksum[:12]} stored, {migration.checksum[:12]} in code).",
                hint="Revert the edit, or if it was deliberate and the database needs nothing "
                "more, accept it: `analytiq-migrations repair --accept-checksums`.",
            ))
        elif record.status == "running":
            if live_run_id is not None and record.run_id == live_run_id:
                problems.append(Problem(
                    kind="running", version=version,
                    message=f"{label} is being applied right now (run {record.run_id}).",
                    hint="Wait for the run to finish.",
                ))
            else:
                problems.append(Problem(
                    kind="interrupted", version=version,
                    message=f"{label} was interrupted during '{record.direction}' (run "
                    f"{record.run_id} on {record.host}, pid {record.pid}).",
                    hint=unfinished_hint(migration, record, below(version, migrations,
                                                                    records)),
                ))
        elif record.status == "failed":
            interrupted = record.error is not None and record.error.type == "Interrupted"
            problems.append(Problem(
                kind="interrupted" if interrupted else "failed", version=version,
                message=f"{label} {'was interrupted' if interrupted else 'failed'} during "
                f"'{record.direction}': {record.error.message if record.error else '?'}",
                hint=unfinished_hint(migration, record, below(version, migrations, records)),
            ))
    return problems


def _without_code(record: MigrationRecord, head: int) -> Optional[Gone]:
    """What an applied version without a file in the code is: ``pruned`` (removed on
    purpose, ``repair(accept_missing=True)``), ``ahead_of_code`` (above the code's newest
    version), ``missing`` (a gap below it); ``None`` for a baselined one (never code)."""
    if getattr(record, "pruned", False):
        return "pruned"
    if record.status != "applied":
        return None
    return "ahead_of_code" if record.version > head else "missing"


def accepts_missing(record: MigrationRecord, migration: Optional[Migration]) -> bool:
    """Does ``repair(accept_missing=True)`` mark this record's file as removed on purpose?"""
    return migration is None and record.status == "applied" and \
        not getattr(record, "pruned", False)


def _accept_missing_hint() -> str:
    """How to record removed files as gone on purpose, spelled for the entry point."""
    return spell("`analytiq-migrations repair --accept-missing` (repair(accept_missing=True))",
                 cli="`analytiq-migrations repair --accept-missing`")


def _out_of_order() -> str:
    """How to allow a version below the current one, spelled for the entry point."""
    return spell("allow_out_of_order=True (--allow-out-of-order)", cli="--allow-out-of-order")

"""What may run over an attempt that did not finish, and what to do about one that may
not: the refusals (``refusal``), the checkpoint a step resumes from, and the ways out
(finish or undo by hand, forget the attempt). Pure: the plan, ``status``, ``validate``
and the run all ask here.
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import FailedMigrationError, InterruptedMigrationError, MigrationError
from .hints import spell
from .migration import Migration
from .progress import describe_checkpoint
from .records import MigrationRecord

#: Record statuses of a version whose last attempt did not finish (``paused``: stopped at
#: a ``batch_update`` checkpoint on purpose, see ``pauses.py``).
UNFINISHED = ("running", "failed", "paused")


def interrupted(record: MigrationRecord) -> bool:
    """The attempt was killed (still ``running``, or settled as interrupted), not failed."""
    return record.status == "running" or (record.error is not None and
                                          record.error.type == "Interrupted")


def resume_checkpoint(record: Optional[MigrationRecord],
                      direction: str) -> Optional[dict[str, Any]]:
    """The checkpoint a step in ``direction`` resumes from (``None``: it starts afresh).
    Only an unfinished attempt in the same direction leaves one to resume."""
    if record is None or not record.progress or record.direction != direction or \
            record.status not in UNFINISHED:
        return None
    return dict(record.progress)


def refusal(migration: Migration, record: MigrationRecord, direction: str,
            below: int = 0) -> Optional[MigrationError]:
    """May a step in ``direction`` run over this unfinished attempt (``running`` or
    ``failed``)? ``None``: yes; else the error that refuses it. Plan, status, validate
    and the run all ask here. ``below``: the version under this one (for the command
    that finishes a revert).

    Yes when nothing of it was kept (transactional), when re-running is declared safe
    (idempotent), or when it resumes its own checkpoint: the attempt was killed, or
    failed inside ``batch_update`` (which stops exactly at a checkpoint). A checkpoint
    of the other direction is never resumed by this one. A transactional attempt that
    sent writes outside its transaction (``outside_writes``) kept those: it is half done
    like a non-transactional one."""
    if (record.transactional and not kept_outside(record)) or migration.idempotent:
        return None
    version = record.version
    if record.progress and record.direction != direction:
        finish = (f"`analytiq-migrations up {version}`" if record.direction == "up"
                  else f"`analytiq-migrations down {below}`")
        return InterruptedMigrationError(
            f"Migration {version} ({record.description}) stopped during "
            f"'{record.direction}' at a checkpoint ({describe_checkpoint(record.progress)}); "
            f"'{direction}' now would run over a half-{_done(record.direction)} change.",
            version=version,
            hint=f"Finish the '{record.direction}' first: {finish} resumes it from its "
            f"checkpoint; then run '{direction}' again.",
        )
    if record.progress and (interrupted(record) or record.status == "paused" or
                            getattr(record.error, "at", None) == "batch_update"):
        return None
    try:
        _refuse_unfinished(migration, record, below)
    except (InterruptedMigrationError, FailedMigrationError) as exc:
        return exc
    return None  # pragma: no cover - _refuse_unfinished always raises


def kept_outside(record: MigrationRecord) -> bool:
    """The attempt's writes outside its transaction persisted although it rolled back."""
    return bool(getattr(record, "outside_writes", None))


def _done(direction: str) -> str:
    """What a direction does to the change, as a past participle."""
    return "applied" if direction == "up" else "reverted"


def _refuse_unfinished(migration: Migration, record: MigrationRecord, below: int) -> None:
    """Raise the error for an attempt that stopped halfway and cannot be re-run."""
    version = record.version
    ways = by_hand_hint(version, record.direction, below) + \
        " Or mark the migration idempotent if re-running it is safe."
    if interrupted(record):
        raise InterruptedMigrationError(
            f"Migration {version} ({record.description}) was interrupted during "
            f"'{record.direction}' (run {record.run_id} on {record.host}, pid {record.pid}); "
            "it is not transactional and not idempotent, so it may be half applied.",
            version=version, hint=ways,
        )
    message = record.error.message if record.error else "unknown error"
    why = "its transaction was rolled back but the writes it sent outside the transaction " \
        "were kept" if kept_outside(record) else "it is not transactional"
    raise FailedMigrationError(
        f"Migration {version} ({record.description}) failed during '{record.direction}' "
        f"and {why}, so it may be half applied: {message}",
        version=version, hint=ways,
    )


def by_hand_hint(version: int, direction: str, below: int) -> str:
    """Both ways out of a non-transactional attempt that may be half done: it was
    finished by hand (record it as done, without running it again), or undone by hand
    (forget the attempt, so the next run starts it afresh). ``below``: the version under
    this one (where a finished revert leaves the database)."""
    if direction == "down":
        done = spell(f"`analytiq-migrations down --fake {below}` "
                     f"(downgrade({below}, fake=True))",
                     cli=f"`analytiq-migrations down --fake {below}`")
        return (f"Inspect the data. If you finished reverting version {version} by hand, "
                f"record it as reverted: {done}. If you undid the revert by hand (the "
                f"change is in place again), record it as applied again: "
                f"{clear_failed_hint()}.")
    done = spell(f"`analytiq-migrations up --fake {version}` (upgrade({version}, fake=True))",
                 cli=f"`analytiq-migrations up --fake {version}`")
    return (f"Inspect the data. If you finished the change of version {version} by hand, "
            f"record it as applied without running it again: {done}. If you undid it by "
            f"hand, forget the attempt so the next `up` runs it afresh: "
            f"{clear_failed_hint()}.")


def unfinished_hint(migration: Optional[Migration], record: MigrationRecord,
                     under: int = 0) -> str:
    """What to do about an unfinished attempt."""
    if record.transactional and kept_outside(record) and \
            not (migration is not None and migration.idempotent):
        return ("Its transaction was rolled back, but writes it sent outside the transaction "
                "were kept (the error names them), so the next run refuses it until it is "
                "settled. " + by_hand_hint(record.version, record.direction, under))
    if record.transactional and migration is None:
        return ("It ran in a transaction that was rolled back, so nothing of it was written; "
                "its file is gone: restore the file, or " + clear_failed_hint()
                + " to forget the attempt.")
    if record.transactional and record.error is not None and \
            record.error.type == "MigrationDefinitionError":
        # Refused (e.g. DDL in its transaction) and rolled back: the code must change
        # first, or the next run is refused the same way.
        return ("Nothing of it was written. Change the migration as the error says, then "
                "run it again: unchanged, it is refused again.")
    if migration is not None and refusal(migration, record, record.direction, under) is None:
        how = "runs it again safely (transactional or idempotent)" \
            if record.transactional or migration.idempotent else "resumes it from its checkpoint"
        return f"The next `{record.direction}` {how}."
    return "It may be half applied. " + by_hand_hint(record.version, record.direction, under)


def clear_failed_hint() -> str:
    """How to forget an unfinished attempt, spelled for the entry point."""
    return spell("`analytiq-migrations repair --clear-failed` (repair(clear_failed=True))",
                 cli="`analytiq-migrations repair --clear-failed`")

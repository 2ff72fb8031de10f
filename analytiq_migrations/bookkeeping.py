"""Bookkeeping moves: records written without running migration code.

Faking (``upgrade``/``downgrade`` with ``fake=True``), ``baseline``, adopting a seed-era
database, settling what a dead run left, and ``repair``. Each takes the ``RunKit`` and,
under the lock, the ``Held`` run it writes for.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from .errors import ConfigurationError
from .hints import spell
from .lock import dead_holder
from .migration import Migration
from .plan import Target, accepts_missing, current_version, virtual_records
from .records import HistoryEntry, MigrationRecord, RepairAction, RunReport, StepResult, field_names
from .runkit import Held, RunKit, new_run, raise_corrupt
from .store import DatabaseState, utcnow
from .stored import APPLIED_STATUSES

log = logging.getLogger("analytiq_migrations")


def settled_state(kit: RunKit, held: Held) -> DatabaseState:
    """The records read under the lock: malformed ones refused, a seed-era database
    adopted, a dead run's attempts recorded as interrupted (the history tells it)."""
    state = kit.load()
    raise_corrupt(state)
    if state.adoptable:
        adopt(kit, state, held)
        state = kit.load()
    held.book.settle(state.records)
    return state


def adopt(kit: RunKit, state: DatabaseState, held: Held) -> None:
    """Turn the seed's ``schema_version`` into baselined per-version records."""
    legacy = int(state.legacy_version or 0)
    log.warning("Adopting a database at legacy schema_version %d: versions up to it are "
                "marked baselined", legacy)
    for version, record in sorted(virtual_records(kit.migrations, {}, legacy).items()):
        write_baselined(held, version, kit.by_version.get(version),
                        record.description or "adopted from schema_version")


def settle_dead_step(held: Held, records: Dict[int, MigrationRecord]) -> None:
    """The expired lease we took over names the transactional step its run was at: that
    step committed nothing (its record would say so), so it simply runs again. Logged,
    not put in the history: the lock names the step before it starts (that costs no
    round trip), so the dead run may have died just before starting it."""
    lease = held.lease
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


def write_baselined(held: Held, version: int, migration: Optional[Migration],
                    description: str) -> None:
    """A ``baselined`` record and its history entry."""
    now = utcnow()
    record = MigrationRecord(
        version=version,
        description=migration.summary() if migration else description,
        checksum=migration.checksum if migration else None,
        raw_checksum=migration.raw_checksum() if migration else None,
        status="baselined", direction="up", applied_at=now, started_at=now,
        finished_at=now, duration_ms=0, transactional=False, attempts=0,
        **{**held.run.model_dump(), "faked": True},
    )
    held.book.put(version, {"_id": version, **record.model_dump()}, HistoryEntry(**{
        **record.model_dump(include=set(field_names(HistoryEntry))), "status": "baselined",
        "attempt": 0, "faked": True}))


def write_faked_revert(held: Held, version: int, record: MigrationRecord) -> None:
    """Record ``version`` as ``rolled_back`` (``faked: true``) and say so in the history."""
    now = utcnow()
    run = held.run
    fields: Dict[str, Any] = {
        "status": "rolled_back", "direction": "down", "started_at": now,
        "finished_at": now, "duration_ms": 0, "transactional": False, "attempts": 0,
        "error": None, "progress": None, "faked": True, **run.model_dump(),
    }
    held.book.put(version, {"$set": fields, "$unset": {"applied_at": ""}}, HistoryEntry(
        version=version, description=record.description, checksum=record.checksum,
        status="rolled_back", direction="down", started_at=now, finished_at=now,
        duration_ms=0, transactional=False, attempt=0,
        **{**run.model_dump(), "faked": True}))


def _fake_way(kit: RunKit, direction: Optional[str], target: Target, start: int) -> Tuple[int, str]:
    """``(resolved target, "up"/"down")`` of a fake run; refuses a target the wrong way."""
    if direction is None:
        resolved = int(target)  # type: ignore[arg-type]
        return resolved, "up" if resolved >= start else "down"
    resolved = kit.resolve(target, start, direction)
    if direction == "up" and resolved < start:
        raise ConfigurationError(
            f"Target {resolved} is below the current version {start}.",
            hint=spell(f"Use downgrade({resolved}, fake=True) (`down --fake "
                       f"{resolved}`) to record going back.",
                       cli=f"Use `down --fake {resolved}` to record going back."))
    if direction == "down" and resolved > start:
        raise ConfigurationError(
            f"Target {resolved} is above the current version {start}.",
            hint=spell(f"Use upgrade({resolved}, fake=True) (`up --fake "
                       f"{resolved}`).", cli=f"Use `up --fake {resolved}`."))
    return resolved, direction


def fake(kit: RunKit, direction: Optional[str], target: Target) -> RunReport:
    """Move the records to ``target`` without running code (``fake``, ``baseline``).

    ``direction`` ``None`` (baseline): whichever way ``target`` lies, and a target
    the code does not have is recorded too (adopting a database newer than the code).
    """
    run = new_run()
    started = utcnow()
    steps: List[StepResult] = []
    with kit.hold(run) as held:
        # A dead run's attempt recorded as "finished by hand" is first recorded as
        # interrupted: the history tells both.
        state = settled_state(kit, held)
        records = kit.records(state)
        start = current_version(records)
        resolved, way = _fake_way(kit, direction, target, start)
        if way == "up":
            versions = [v for v in kit.by_version if v <= resolved]
            if direction is None and resolved and resolved not in kit.by_version:
                versions.append(resolved)
            for v in sorted(versions):
                record = records.get(v)
                if record is not None and record.status in APPLIED_STATUSES:
                    continue
                migration = kit.by_version.get(v)
                write_baselined(held, v, migration, "baseline")
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
                write_faked_revert(held, v, record)
                records[v] = record.model_copy(update={"status": "rolled_back"})
                steps.append(StepResult(
                    version=v, direction="down", status="rolled_back",
                    transactional=False, duration_ms=0, description=record.description))
        end = current_version(records)
        if state.legacy_version is not None and steps:
            held.book.fenced("record the legacy version",
                             lambda s: kit.store.set_legacy(end, session=s))
    for step in steps:
        log.info("Migration %d recorded %s without running it (faked)", step.version,
                 step.status)
    return RunReport(run_id=run.run_id, direction=way, start_version=start,  # type: ignore[arg-type]
                     end_version=end, started_at=started, finished_at=utcnow(), steps=steps)


def repair(kit: RunKit, accept_checksums: bool, clear_failed: bool,
           accept_missing: bool) -> List[RepairAction]:
    """Explicit fixes under the lock (``Migrator.repair``), each noted on its record."""
    run = new_run()
    actions: List[RepairAction] = []
    with kit.hold(run) as held:
        state = kit.load()
        raise_corrupt(state)
        for version, record in sorted(kit.records(state).items()):
            migration = kit.by_version.get(version)
            note = {"at": utcnow(), **run.model_dump()}
            if accept_checksums and migration is not None and record.checksum and \
                    record.status in APPLIED_STATUSES and record.checksum != migration.checksum:
                detail = f"checksum {record.checksum[:12]} -> {migration.checksum[:12]}"
                held.book.repair(version, record, {
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
                held.book.repair(version, record, {
                    "status": back, "error": None, "progress": None}, {
                    **note, "id": f"{run.run_id}/clear_failed",
                    "action": "clear_failed", "was": record.status,
                    "direction": record.direction,
                    "error": record.error.model_dump() if record.error else None})
                record = record.model_copy(update={"status": back})
                actions.append(RepairAction(version=version, action="clear_failed",
                                            detail=detail))
            if accept_missing and accepts_missing(record, migration):
                held.book.repair(version, record, {"pruned": True}, {
                    **note, "id": f"{run.run_id}/accept_missing",
                    "action": "accept_missing"})
                actions.append(RepairAction(
                    version=version, action="accept_missing",
                    detail="file removed on purpose: applied, no longer reported missing"))
    for action in actions:
        log.warning("repair: version %d: %s", action.version, action.detail)
    return actions


__all__ = ["adopt", "fake", "repair", "settle_dead_step", "settled_state", "write_baselined",
           "write_faked_revert"]

"""What pending migrations call that their transaction would refuse, read from their code
(not run): marked on ``plan()``'s steps and reported by ``validate()``."""

from __future__ import annotations

from typing import Any, Callable, Dict, FrozenSet, List

from .capabilities import Capabilities
from .errors import TransactionsUnsupportedError
from .migration import Migration
from .records import Plan, Problem
from .txnrules import way_out
from .txnscan import Finding, refusals_of


def mark(caps: Capabilities, db: Any, plan: Plan, by_version: Dict[int, Migration]) -> None:
    """Set ``refused`` on each transactional step of ``plan`` whose code calls what its
    transaction would refuse (the first such call)."""
    existing = collection_names(db)
    for step in plan.steps:
        migration = by_version.get(step.version)
        findings = scan(caps, db, migration, step.direction, existing) \
            if step.transactional and migration is not None else []
        if findings:
            step.refused = f"{findings[0].call} (line {findings[0].line})"


def problems(caps: Capabilities, db: Any, pending: List[Migration]) -> List[Problem]:
    """A ``refused_in_transaction`` problem per pending migration that would run in a
    transaction and calls what a transaction refuses."""
    found, existing = [], collection_names(db)
    for migration in pending:
        findings = scan(caps, db, migration, "up", existing)
        if not findings:
            continue
        calls = "; ".join(f"{f.call} (line {f.line}): {f.reason}" for f in findings)
        found.append(Problem(
            kind="refused_in_transaction", version=migration.version,
            message=f"Migration {migration.version} ({migration.name}) runs in a "
            f"transaction, and its up() calls what MongoDB refuses there: {calls}.",
            hint=way_out(),
        ))
    return found


def scan(caps: Capabilities, db: Any, migration: Migration, direction: str,
         existing: Callable[[], FrozenSet[str]]) -> List[Finding]:
    """What ``migration``'s ``direction`` calls that its transaction would refuse
    (nothing when it does not run in one)."""
    try:
        if not caps.use_transaction(migration):
            return []
    except TransactionsUnsupportedError:
        return []  # refused on its own, with its own error, when it runs
    return refusals_of(migration, direction, database=db.name,
                       wire_version=caps.known_wire_version(), existing=existing)


def collection_names(db: Any) -> Callable[[], FrozenSet[str]]:
    """Reads the database's collections once, on first call (an index build is refused
    in a transaction only on a collection that exists)."""
    names: List[FrozenSet[str]] = []

    def read() -> FrozenSet[str]:
        if not names:
            names.append(frozenset(db.list_collection_names()))
        return names[0]

    return read


__all__ = ["collection_names", "mark", "problems", "scan"]

"""Versioned, transactional, lock-safe schema and data migrations for MongoDB.

    from analytiq_migrations import Migration, Migrator

    class AddEmailIndex(Migration):
        version = 1
        transactional = False
        def up(self, db):
            db.users.create_index("email", unique=True)

    Migrator(client, [AddEmailIndex], database="app").upgrade()

The names below are imported on first use (PEP 562): a migration file's ``from
analytiq_migrations import Migration`` and the command line's no-op ``up`` load neither
the runner nor the record models, which would double a cron job's start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from .errors import (
    ChecksumDriftError,
    CommitUnknownError,
    ConfigurationError,
    ConnectionFailedError,
    CorruptRecordError,
    FailedMigrationError,
    InterruptedMigrationError,
    InvalidData,
    IrreversibleMigrationError,
    LockBusyError,
    LockLostError,
    MigrationDefinitionError,
    MigrationError,
    MigrationFailedError,
    MissingMigrationError,
    OutOfOrderError,
    TransactionsUnsupportedError,
    ValidationProblemError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .fleet import Fleet
    from .fleetreport import FleetReport
    from .loader import load_migrations
    from .migration import Migration
    from .records import (
        HistoryEntry,
        MigrationRecord,
        Plan,
        PlanStep,
        Problem,
        ProgressEvent,
        RepairAction,
        RunReport,
        StatusRow,
        StepEvent,
        StepResult,
    )
    from .retry import RetryPolicy
    from .runner import Migrator, run_migrations

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY: Dict[str, str] = {
    "load_migrations": "loader",
    "Migration": "migration",
    **{name: "records" for name in (
        "HistoryEntry", "MigrationRecord", "Plan", "PlanStep", "Problem", "ProgressEvent",
        "RepairAction", "RunReport", "StatusRow", "StepEvent", "StepResult")},
    "RetryPolicy": "retry",
    "Fleet": "fleet",
    "FleetReport": "fleetreport",
    "Migrator": "runner",
    "run_migrations": "runner",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (then it is an ordinary attribute)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ChecksumDriftError",
    "CommitUnknownError",
    "ConfigurationError",
    "ConnectionFailedError",
    "CorruptRecordError",
    "FailedMigrationError",
    "Fleet",
    "FleetReport",
    "HistoryEntry",
    "InterruptedMigrationError",
    "InvalidData",
    "IrreversibleMigrationError",
    "LockBusyError",
    "LockLostError",
    "Migration",
    "MigrationDefinitionError",
    "MigrationError",
    "MigrationFailedError",
    "MigrationRecord",
    "Migrator",
    "MissingMigrationError",
    "OutOfOrderError",
    "Plan",
    "PlanStep",
    "Problem",
    "ProgressEvent",
    "RepairAction",
    "RetryPolicy",
    "RunReport",
    "StatusRow",
    "StepEvent",
    "StepResult",
    "TransactionsUnsupportedError",
    "ValidationProblemError",
    "__version__",
    "load_migrations",
    "run_migrations",
]

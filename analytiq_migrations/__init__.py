"""Versioned, transactional, lock-safe schema and data migrations for MongoDB.

    from analytiq_migrations import Migration, Migrator

    class AddEmailIndex(Migration):
        version = 1
        transactional = False
        def up(self, db):
            db.users.create_index("email", unique=True)

    Migrator(client, [AddEmailIndex], database="app").upgrade()
"""

__version__ = "0.1.0"

from .errors import (
    ChecksumDriftError,
    ConfigurationError,
    ConnectionFailedError,
    CorruptRecordError,
    FailedMigrationError,
    InterruptedMigrationError,
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
    StepResult,
)
from .retry import RetryPolicy
from .runner import Migrator, run_migrations

__all__ = [
    "ChecksumDriftError",
    "ConfigurationError",
    "ConnectionFailedError",
    "CorruptRecordError",
    "FailedMigrationError",
    "HistoryEntry",
    "InterruptedMigrationError",
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
    "StepResult",
    "TransactionsUnsupportedError",
    "ValidationProblemError",
    "__version__",
    "load_migrations",
    "run_migrations",
]

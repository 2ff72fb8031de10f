"""A failed attempt is not repeated by every process that starts after it.

Start-up upgrades run in each worker a server starts (gunicorn's three workers, say): when
the first one's attempt at a migration fails, the others must not run it again in turn.
Within :func:`no_repeat_of_failures`, a run that finds the next step already ``failed``
with the same code (the record's checksum) stops under the lock with that failure, before
running anything. A changed file, or ``repair --clear-failed``, lets the next run try again.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, Sequence

from .errors import MigrationFailedError
from .hints import spell

_ACTIVE: ContextVar[bool] = ContextVar("analytiq_migrations_no_repeat", default=False)


@contextlib.contextmanager
def no_repeat_of_failures() -> Iterator[None]:
    """Within the block, runs refuse to repeat a failure of the same code."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def refuse_repeated_failure(steps: Sequence[Any], records: Mapping[int, Any],
                            migrations: Mapping[int, Any]) -> None:
    """Raise the recorded failure when the first step failed before with this code."""
    from .plan import checksum_ok

    if not _ACTIVE.get() or not steps or steps[0].direction != "up":
        return
    version = steps[0].version
    record, migration = records.get(version), migrations.get(version)
    if record is None or migration is None or record.status != "failed" or \
            not record.checksum or not checksum_ok(migration, record):
        return
    what = f"{record.error.type}: {record.error.message}" if record.error else "an error"
    where = f" on {record.host} (pid {record.pid})" if record.host else ""
    raise MigrationFailedError(
        f"Migration {version} ({record.description}) already failed{where} with this same "
        f"code, so it is not run again at start-up: {what}",
        version=version,
        hint="Fix the migration (a changed file is tried at the next start), or try it again "
        "unchanged by hand: " + spell(
            "Migrator.upgrade() (after repair(clear_failed=True) if it is not transactional)",
            cli="`analytiq-migrations up` (after `analytiq-migrations repair --clear-failed` "
                "if it is not transactional)") + ".",
    )

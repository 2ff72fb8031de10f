"""Drift: applied migrations whose code changed since they ran (checksums, raw hashes)."""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

from .errors import ChecksumDriftError
from .hints import spell
from .migration import Migration
from .plan import find_problems, unchanged
from .records import MigrationRecord
from .store import Store
from .stored import APPLIED_STATUSES

log = logging.getLogger("analytiq_migrations")

#: What ``on_drift`` may say: stop the run, warn and go on, or not look.
DRIFT_MODES = ("error", "warn", "ignore")


class Drift:
    """Compares the code's checksums with the records', as ``on_drift`` says."""

    def __init__(self, migrations: List[Migration], store: Store, on_drift: str) -> None:
        self.migrations = migrations
        self.by_version = {int(m.version or 0): m for m in migrations}
        self.store = store
        self.on_drift = on_drift

    def check(self, records: Dict[int, MigrationRecord], *, remember: bool = True) -> None:
        """Stop (or warn) when applied migrations' code changed; ``remember=False``: write
        nothing (not even the raw hashes of cosmetic edits)."""
        if self.on_drift == "ignore":
            return
        drifted = [p for p in find_problems(self.migrations, records)
                   if p.kind == "checksum_drift"]
        if remember:
            self.remember_raw_checksums(records)
        if not drifted:
            return
        if self.on_drift == "warn":
            for problem in drifted:
                log.warning("%s", problem)
            return
        # Each problem's message says it all once; several are listed under one sentence.
        said = drifted[0].message if len(drifted) == 1 else (
            f"{len(drifted)} applied migrations were changed: "
            + " ".join(p.message for p in drifted))
        raise ChecksumDriftError(
            f"{said} Nothing was run.",
            version=drifted[0].version,
            hint=spell("Revert the edits, or accept them with `analytiq-migrations repair "
                       "--accept-checksums` (repair(accept_checksums=True)), or run with "
                       "on_drift='warn'.",
                       cli="Revert the edits, or accept them with `analytiq-migrations repair "
                       "--accept-checksums`, or run with --on-drift warn."),
        )

    def remember_raw_checksums(self, records: Dict[int, MigrationRecord]) -> None:
        """Store the bytes' hash of files whose edits were cosmetic (or that older
        versions recorded without one), so later runs compare them without tokenizing."""
        stale: Dict[int, Tuple[str, str]] = {}
        for version, record in records.items():
            migration = self.by_version.get(version)
            if migration is None or migration.source_bytes is None or not record.checksum \
                    or record.status not in APPLIED_STATUSES or unchanged(migration, record):
                continue
            if record.checksum == migration.checksum:  # tokenized already by the drift check
                raw = str(migration.raw_checksum())
                stale[version] = (record.checksum, raw)
                records[version] = record.model_copy(update={"raw_checksum": raw})
        if stale:
            self.store.remember_raw_checksums(stale)


__all__ = ["DRIFT_MODES", "Drift"]

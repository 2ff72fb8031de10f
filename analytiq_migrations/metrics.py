"""``--metrics-file PATH``: the database's migration state in Prometheus text format.

Written for node_exporter's textfile collector (or anything that reads the format): the
whole file is written to a temporary file in the same directory and renamed over
``PATH``, so a scrape never reads half a file. Every series carries a ``database`` label;
backfill series also carry ``version``. docs/metrics.md lists them with an alert.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import ConfigurationError

if TYPE_CHECKING:  # the models stay off the command line's quick path
    from .records import HistoryEntry, RunReport, StatusRow

#: Prefix of every metric name (Prometheus naming: ``<namespace>_<name>_<unit>``).
PREFIX = "analytiq_migrations"

#: How a run can end, one series each (1 for the last run's, 0 for the others): an
#: alert can then match ``outcome="failed"`` without knowing the other values.
OUTCOMES = ("applied", "nothing_to_do", "paused", "failed")

#: Row statuses counted as failed: a failed or killed attempt still waiting for a fix.
FAILED_ROWS = ("failed", "interrupted")

Sample = Tuple[Dict[str, str], float]


class LastRun:
    """When the last run ended, how long it took and how it ended."""

    def __init__(self, finished_at: Optional[datetime], duration_s: float, outcome: str,
                 lock_wait_s: Optional[float] = None) -> None:
        self.finished_at = finished_at
        self.duration_s = duration_s
        self.outcome = outcome
        self.lock_wait_s = lock_wait_s


def from_report(report: RunReport) -> LastRun:
    """The last run, from this process's own ``RunReport``."""
    if report.failed is not None:
        outcome = "failed"
    elif report.paused is not None:
        outcome = "paused"
    else:
        outcome = "applied" if report.steps else "nothing_to_do"
    duration = (report.finished_at - report.started_at).total_seconds()
    return LastRun(report.finished_at, max(duration, 0.0), outcome, report.lock_wait_s)


def from_history(entries: Sequence[HistoryEntry]) -> Optional[LastRun]:
    """The last run that wrote anything, from the history (newest first): its entries
    share a ``run_id``; it failed if one of them did, paused if one paused."""
    if not entries:
        return None
    run_id = entries[0].run_id
    mine = [e for e in entries if e.run_id == run_id]
    statuses = {e.status for e in mine}
    outcome = "failed" if statuses & {"failed", "interrupted"} else \
        "paused" if "paused" in statuses else "applied"
    ends = [e.finished_at for e in mine if e.finished_at is not None]
    starts = [e.started_at for e in mine if e.started_at is not None]
    finished = max(ends) if ends else None
    duration = (finished - min(starts)).total_seconds() if finished and starts else 0.0
    return LastRun(finished, max(duration, 0.0), outcome)


def render(database: str, rows: Sequence[StatusRow], last: Optional[LastRun]) -> str:
    """The exposition text for one database."""
    db = {"database": database}
    count = _counter(rows)
    families: List[Tuple[str, str, List[Sample]]] = [
        ("pending_versions", "Versions not applied yet (paused and unfinished included).",
         [(db, float(count["pending"]))]),
        ("paused_versions", "Versions paused at a batch_update checkpoint.",
         [(db, float(count["paused"]))]),
        ("applied_versions", "Versions applied or baselined.", [(db, float(count["applied"]))]),
        ("failed_versions", "Versions whose last attempt failed or was interrupted.",
         [(db, float(count["failed"]))]),
        ("backfill_documents_done", "Documents a batch_update has walked, per version.",
         _backfill(db, rows, "done")),
        ("backfill_documents_total", "Documents the batch_update calls walk (may be an "
         "estimate), per version.", _backfill(db, rows, "total")),
    ]
    if last is not None:
        if last.finished_at is not None:
            families.append(("last_run_timestamp_seconds", "When the last run ended (Unix "
                             "time).", [(db, last.finished_at.timestamp())]))
        families += [
            ("last_run_duration_seconds", "How long the last run took.",
             [(db, last.duration_s)]),
            ("last_run_outcome", "1 for how the last run ended, 0 for the other outcomes.",
             [({**db, "outcome": o}, 1.0 if o == last.outcome else 0.0) for o in OUTCOMES]),
        ]
        if last.lock_wait_s is not None:
            families.append(("lock_wait_seconds", "How long the last run waited for the "
                             "migration lock.", [(db, last.lock_wait_s)]))
    return "".join(_family(name, text, samples) for name, text, samples in families)


def write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory (a
    rename is atomic only within one file system), then renamed over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigurationError(f"--metrics-file {path!r}: directory {directory!r} does "
                                 "not exist.", hint="Create it, or point the option elsewhere.")
    fd, temp = tempfile.mkstemp(prefix=".analytiq_migrations.", suffix=".prom.tmp",
                                dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)  # the collector runs as another user
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def _counter(rows: Iterable[StatusRow]) -> Dict[str, int]:
    """How many versions are pending, paused, applied, failed."""
    count = {"pending": 0, "paused": 0, "applied": 0, "failed": 0}
    for row in rows:
        if row.status in ("applied", "baselined"):
            count["applied"] += 1
            continue
        if row.status in ("missing", "rolled_back"):
            continue
        count["pending"] += 1
        if row.status == "paused":
            count["paused"] += 1
        if row.status in FAILED_ROWS:
            count["failed"] += 1
    return count


def _backfill(db: Dict[str, str], rows: Sequence[StatusRow], key: str) -> List[Sample]:
    """One sample per version with backfill progress on its record."""
    samples = []
    for row in rows:
        value = (row.progress or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            samples.append(({**db, "version": str(row.version)}, float(value)))
    return samples


def _family(name: str, text: str, samples: Sequence[Sample]) -> str:
    """``# HELP``, ``# TYPE`` and the samples of one gauge."""
    full = f"{PREFIX}_{name}"
    lines = [f"# HELP {full} {text}", f"# TYPE {full} gauge"]
    for labels, value in samples:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        lines.append(f"{full}{{{inner}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A label value as the format wants it (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Integers without a decimal point; others as Python writes them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def status_text(migrator: Any) -> str:
    """The exposition for ``status --metrics-file``: rows, and the last run from history."""
    rows = migrator.status()
    return render(migrator.db.name, rows, from_history(migrator.history(limit=50)))


def report_text(migrator: Any, report: Optional[RunReport], failed: bool = False) -> str:
    """The exposition for ``up --metrics-file``: rows read now, the last run from this
    process's report (``failed``: the run raised, its failure is in the history)."""
    rows = migrator.status()
    if report is not None:
        last: Optional[LastRun] = from_report(report)
    else:
        last = from_history(migrator.history(limit=50))
        if last is not None and failed:
            last.outcome = "failed"
    return render(migrator.db.name, rows, last)

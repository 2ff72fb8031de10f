"""Paused versions: what a record's ``pause`` field means, decided here only.

A ``batch_update`` backfill stops at a checkpoint and its record becomes ``paused`` in two
ways (``reason``):

* ``time_budget``: ``up --time-budget`` ran out; the next ``up`` continues it;
* ``request``: someone ran ``pause VERSION`` (from any host). The request is stored on
  the record at once (``pause``), the run working on the version stops at its next
  checkpoint, and no ``up`` continues the version until ``resume VERSION`` clears the
  request. A request on a record whose run was killed before it reached a checkpoint
  holds the same way: the next ``up`` settles the dead run and leaves the version alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:  # the models stay off the command line's quick path
    from .records import MigrationRecord


#: ``pause.reason`` of a request made with ``pause VERSION``.
REQUEST = "request"
#: ``pause.reason`` of a stop because ``--time-budget`` ran out.
TIME_BUDGET = "time_budget"

#: Statuses a pause request may be set on: a version with a run in progress or unfinished.
PAUSABLE = ("running", "failed", "paused")


def requested(record: Optional[MigrationRecord]) -> Optional[Dict[str, Any]]:
    """The standing ``pause VERSION`` request on an unfinished version (``None``: none)."""
    if record is None or record.status not in PAUSABLE or not isinstance(record.pause, dict):
        return None
    return dict(record.pause) if record.pause.get("reason") == REQUEST else None


def held(record: Optional[MigrationRecord], live_run_id: Optional[str] = None
         ) -> Optional[Dict[str, Any]]:
    """What keeps ``up`` from continuing this version: a pause request, unless a live run
    is still on its way to the next checkpoint (it stops there)."""
    request = requested(record)
    if request is None or (record is not None and record.status == "running" and
                           live_run_id is not None and record.run_id == live_run_id):
        return None
    return request


def who(pause: Dict[str, Any]) -> str:
    """``ann@db-host (pid 42) at 2026-12-05 12:00:00 UTC``."""
    at = pause.get("at")
    when = at.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(at, datetime) else "?"
    return (f"{pause.get('user') or '?'}@{pause.get('host') or '?'} "
            f"(pid {pause.get('pid') or '?'}) at {when}")


def held_note(version: int, pause: Dict[str, Any]) -> Dict[str, Any]:
    """The ``paused`` entry of a plan or report for a version a request holds."""
    return {"version": version, "reason": REQUEST, "held": True, "by": who(pause),
            "at": pause.get("at"), "host": pause.get("host"), "user": pause.get("user"),
            "pid": pause.get("pid")}


def held_text(note: Dict[str, Any]) -> str:
    """One line for people about a version a request holds."""
    version = note["version"]
    return (f"Version {version} is paused (paused by {note.get('by')}): not continued, "
            f"and later versions wait behind it. `analytiq-migrations resume {version}` "
            "lets the next `up` continue it.")


def stopped_note(record: MigrationRecord) -> Dict[str, Any]:
    """The ``paused`` entry of a report for a run that stopped at ``record``'s checkpoint:
    why, and how far the backfill got (``done``, ``total``, ``eta_s``...)."""
    progress = dict(record.progress or {})
    request = requested(record)
    note: Dict[str, Any] = {
        "version": record.version, "held": False,
        "reason": REQUEST if request is not None else
        str(getattr(record, "paused_reason", None) or TIME_BUDGET),
        **{key: progress.get(key) for key in ("done", "total", "total_estimated", "rate",
                                             "eta_s")}}
    if request is not None:
        note.update(by=who(request), at=request.get("at"))
    return note


def stopped_text(note: Dict[str, Any]) -> str:
    """One line for people about a run that stopped at a checkpoint."""
    version = note["version"]
    why = f"paused by {note.get('by')}" if note.get("reason") == REQUEST else \
        "time budget spent"
    then = f"`analytiq-migrations resume {version}`, then `up`, continues it" \
        if note.get("reason") == REQUEST else "the next `up` continues from the checkpoint"
    return f"Version {version} paused ({why}) at {figures(note)}; {then}."


def figures(progress: Dict[str, Any]) -> str:
    """``4,000 of ~10,000 documents (40%), 2,500 documents/s, about 2s left`` (``~``: the
    total is an estimate)."""
    done, total = int(progress.get("done") or 0), progress.get("total")
    if total:
        text = f"{done:,} of {'~' if progress.get('total_estimated') else ''}{total:,} " \
            f"documents ({min(done / total, 1.0):.0%})"
    else:
        text = f"{done:,} documents"
    rate, eta = progress.get("rate"), progress.get("eta_s")
    if rate:
        text += f", {rate:,.0f} documents/s"
    if isinstance(eta, (int, float)):
        text += f", about {_duration(eta)} left"
    return text


def _duration(seconds: float) -> str:
    """``45s``, ``12m 05s``, ``3h 20m``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"

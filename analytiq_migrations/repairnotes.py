"""The repairs noted on the records (``repairs``), read back for the history: each fix
``repair()`` made, when, by whom, and what it changed."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from .records import MigrationRecord, RepairNote

#: Note fields that say who and when, not what: left out of a note's detail.
_RUN_FIELDS = frozenset({"id", "at", "action", "run_id", "host", "pid", "user",
                         "tool_version"})


def repair_notes(records: Mapping[int, MigrationRecord],
                 version: Optional[int] = None) -> List[RepairNote]:
    """The repairs noted on ``records`` (one version's, or all), newest first."""
    notes: List[RepairNote] = []
    for number, record in records.items():
        if version is not None and number != version:
            continue
        for note in getattr(record, "repairs", None) or []:
            if not isinstance(note, dict) or not isinstance(note.get("action"), str):
                continue  # a damaged note: the record itself is what matters
            notes.append(RepairNote.model_validate({
                "version": number, "action": note["action"], "at": note.get("at"),
                "run_id": note.get("run_id"), "host": note.get("host"),
                "user": note.get("user"), "detail": _detail(note)}))
    return sorted(notes, key=lambda n: (n.at is not None, n.at), reverse=True)


def _detail(note: Dict[str, Any]) -> str:
    """What a note says was changed."""
    action = note["action"]
    if action == "accept_checksum":
        return f"checksum {str(note.get('old'))[:12]} -> {str(note.get('new'))[:12]} accepted"
    if action == "clear_failed":
        return f"{note.get('was')} '{note.get('direction')}' attempt cleared"
    rest = {k: v for k, v in note.items() if k not in _RUN_FIELDS and v is not None}
    return ", ".join(f"{k} {v}" for k, v in sorted(rest.items()))

"""Is there nothing to do? The command line's cheap answer for the everyday no-op ``up``.

A cron job or a pod start runs ``up`` on every start, and almost always nothing is
pending. This module decides that from the migration files' names and bytes and one read
of the records, with plain dictionaries: it imports no migration, tokenizes no file,
builds none of the record models and takes no lock. It only ever answers
"nothing to do" when the full path (``Migrator.upgrade``) would answer the same; whenever
it is not sure it gives the reason, and the command line takes the full path, which
decides, reports and explains everything else (pending, failed, drifted, damaged,
adopted, out of order...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

from pymongo.errors import PyMongoError

from .checksum import raw_checksum
from .migration import Migration
from .server import RECORDS_BATCH, own_collection
from .stored import APPLIED_STATUSES, LEGACY_ID, is_foreign

#: What a clean record's fields may hold, strictly (``None`` where the model allows it).
#: Stricter than the record model: a value the model would coerce or refuse makes the
#: answer "not sure", never "nothing to do".
_TEXT = (str, type(None))
_FIELDS: Mapping[str, Tuple[type, ...]] = {
    "description": (str,), "checksum": (str,), "raw_checksum": (str,), "status": (str,),
    "direction": (str,), "applied_at": (datetime, type(None)),
    "started_at": (datetime, type(None)), "finished_at": (datetime, type(None)),
    "duration_ms": (int, type(None)), "run_id": _TEXT, "host": _TEXT, "pid": (int, type(None)),
    "user": _TEXT, "tool_version": _TEXT, "transactional": (bool,), "attempts": (int,),
    "error": (type(None),), "last_error": (type(None),), "progress": (dict, type(None)),
    "pause": (type(None),),
}

#: Fields a clean applied record always has (the rest may be missing).
_REQUIRED = ("version", "status", "checksum", "raw_checksum")

#: A verdict: the current version when nothing is to do, else ``None`` and why not.
Verdict = Tuple[Optional[int], str]


def judge(migrations: Sequence[Migration], docs: Iterable[Mapping[str, Any]]) -> Verdict:
    """Whether ``up`` to head has nothing to do, from the (lazily loaded) file migrations
    and the raw documents of the records collection."""
    files = {int(m.version or 0): m for m in migrations}
    if any(m.source_bytes is None for m in files.values()):
        return None, "a migration is not a file (its bytes are not known)"
    applied: dict[int, Mapping[str, Any]] = {}
    for doc in docs:
        if doc.get("_id") == LEGACY_ID or is_foreign(doc):
            continue  # the seed's is informational (kept current by runs); another tool's too
        reason = _unclean(doc)
        if reason:
            return None, reason
        applied[doc["version"]] = doc
    if not applied:
        return None, "no per-version records (a new or a seed-era database)"
    pending = sorted(set(files) - set(applied))
    if pending:
        return None, f"version {pending[0]} is not applied"
    missing = sorted(set(applied) - set(files))
    if missing:
        return None, f"version {missing[0]} is recorded but has no file"
    for version, doc in applied.items():
        data = files[version].source_bytes
        assert data is not None  # checked above
        if raw_checksum(data, doc["checksum"]) != doc["raw_checksum"]:
            return None, f"the file of version {version} changed since it was recorded"
    return max(applied), "every file is applied and unchanged"


def _unclean(doc: Mapping[str, Any]) -> str:
    """Why a record is not plainly "applied, as recorded" (empty when it is)."""
    version = doc.get("version")
    if type(version) is not int or version <= 0 or doc.get("_id") != version:
        return f"record {doc.get('_id')!r} has no plain version"
    for name in _REQUIRED:
        if name not in doc:
            return f"record {version} has no {name}"
    if doc["status"] not in APPLIED_STATUSES:
        return f"version {version} is {doc['status']!r}"
    if doc.get("direction", "up") != "up":
        return f"version {version} was last run down"
    for name, kinds in _FIELDS.items():
        if name in doc and type(doc[name]) not in kinds:
            return f"record {version} has an unexpected {name}"
    return ""


def read_and_judge(db: Any, collection: str, migrations: Sequence[Migration]) -> Verdict:
    """Read the records (one round trip, like ``Store.load``) and :func:`judge` them; a
    failed read is "not sure" (the full path reads again and reports the error)."""
    try:
        docs = list(own_collection(db, collection).find({}, batch_size=RECORDS_BATCH))
    except PyMongoError as exc:
        return None, f"reading the records failed ({type(exc).__name__})"
    return judge(migrations, docs)

"""What a step's writes did, per collection, summed from the write results the server
returned for the calls made through ``db`` (a dry run's counts; what a failed step wrote)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from pymongo.results import (
    BulkWriteResult,
    DeleteResult,
    InsertManyResult,
    InsertOneResult,
    UpdateResult,
)

#: collection (``name``, or ``database.name`` outside the migrations' database) -> counts.
Changes = Dict[str, Dict[str, int]]

#: The counts kept per collection, in the order they are shown.
COUNTS = ("matched", "modified", "inserted", "deleted", "upserted")


def count_write(changes: Changes, home: str, database: str, collection: Optional[str],
                method: str, result: Any) -> None:
    """Add one call's write result to ``changes`` (reads and other calls add nothing)."""
    if collection is None or not getattr(result, "acknowledged", True):
        return
    counts: Dict[str, int] = {}
    if isinstance(result, InsertOneResult):
        counts["inserted"] = 1
    elif isinstance(result, InsertManyResult):
        counts["inserted"] = len(result.inserted_ids)
    elif isinstance(result, UpdateResult):
        counts.update(matched=result.matched_count, modified=result.modified_count,
                      upserted=int(result.upserted_id is not None))
    elif isinstance(result, DeleteResult):
        counts["deleted"] = result.deleted_count
    elif isinstance(result, BulkWriteResult):
        counts.update(inserted=result.inserted_count, matched=result.matched_count,
                      modified=result.modified_count, deleted=result.deleted_count,
                      upserted=result.upserted_count)
    elif method.startswith("find_one_and_"):
        # The server's own counts do not come back from these: the document does.
        if result is None:
            counts["matched"] = 0
        elif method == "find_one_and_delete":
            counts["deleted"] = 1
        else:
            counts["matched"] = 1
    else:
        return
    key = collection if database == home else f"{database}.{collection}"
    total = changes.setdefault(key, {name: 0 for name in COUNTS})
    for name, value in counts.items():
        total[name] += value




def describe_writes(changes: Changes) -> str:
    """``roles: 1 inserted; settings: 1 matched, 1 modified`` (``nothing`` when empty)."""
    parts = []
    for name, counts in sorted(changes.items()):
        said = ", ".join(f"{counts[k]} {k}" for k in COUNTS if counts.get(k))
        parts.append(f"{name}: {said or 'no document changed'}")
    return "; ".join(parts) or "nothing"

"""``batch_update``: change any number of documents in ``_id`` order, one checkpoint per batch.

The walk is by ``_id`` range (``_id > last_id``), never by skip or by re-running the
filter from the start, so a document changed by one batch is never visited again even
when the filter is on the field being changed, and only one batch is ever in memory.

On a replica set each batch (read, write and checkpoint) is one small transaction, so a
run killed at any instant resumes with every document updated exactly once. Without
transactions a batch's writes and its checkpoint are two steps: a crash between them
re-applies that one batch (at-least-once per batch).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from pymongo import ASCENDING, UpdateMany, UpdateOne

from .errors import MigrationDefinitionError
from .records import ProgressEvent

if TYPE_CHECKING:
    from .migration import RunContext

#: A static update document, an update pipeline, or ``doc -> update document | None``.
UpdateSpec = Union[dict[str, Any], list[dict[str, Any]], Callable[[dict[str, Any]], Any]]

#: Key of this helper's checkpoints inside a record's ``progress``.
PROGRESS_KEY = "batch_update"


def batch_update(
    ctx: RunContext,
    collection: Any,
    filter: dict[str, Any],
    update: UpdateSpec,
    batch_size: int = 1000,
    *,
    pause: float = 0.0,
) -> int:
    """Apply ``update`` to documents matching ``filter``; returns how many were modified."""
    coll = ctx.db[collection] if isinstance(collection, str) else collection
    _check_arguments(ctx, coll.name, update, batch_size)
    call = ctx.next_call()
    state = _checkpoint(ctx, call, coll.name)
    if state.get("done"):
        return int(state.get("modified", 0))
    projection = None if callable(update) else {"_id": 1}
    total = _total(ctx, coll, filter)
    clock = time.monotonic() - float(state.get("elapsed_s", 0.0))

    def one_batch(session: Any) -> Optional[dict[str, Any]]:
        query = filter if "last_id" not in state else {
            "$and": [filter, {"_id": {"$gt": state["last_id"]}}]}
        docs = list(coll.find(query, projection, session=session)
                    .sort("_id", ASCENDING).limit(batch_size))
        if not docs:
            return None
        if callable(update):
            ops: list[Any] = _operations(docs, update)
        else:
            ops = [UpdateMany({"_id": {"$in": [d["_id"] for d in docs]}}, update)]
        matched = modified = 0
        if ops:
            result = coll.bulk_write(ops, ordered=False, session=session)
            matched, modified = result.matched_count, result.modified_count
        new_state = {
            **state,
            "collection": coll.name,
            "last_id": docs[-1]["_id"],
            "scanned": int(state.get("scanned", 0)) + len(docs),
            "matched": int(state.get("matched", 0)) + matched,
            "modified": int(state.get("modified", 0)) + modified,
            "batches": int(state.get("batches", 0)) + 1,
            "elapsed_s": round(time.monotonic() - clock, 3),
            "done": False,
        }
        ctx.save_progress(_progress(ctx, call, new_state), session)
        return new_state

    while True:
        next_state = ctx.run_in_transaction(one_batch)
        if next_state is None:
            break
        state = next_state
        _report(ctx, coll.name, state, total, done=False)
        if pause > 0:
            time.sleep(pause)
    state = {**state, "collection": coll.name, "done": True,
             "elapsed_s": round(time.monotonic() - clock, 3)}
    ctx.save_progress(_progress(ctx, call, state), None)
    _report(ctx, coll.name, state, total, done=True)
    return int(state.get("modified", 0))


def _check_arguments(ctx: RunContext, name: str, update: UpdateSpec, batch_size: int) -> None:
    """Refuse what cannot work, before writing anything."""
    where = f"Migration {ctx.version}: batch_update({name!r})"
    if ctx.in_transaction:
        raise MigrationDefinitionError(
            f"{where} was called inside the migration's transaction; a large update cannot "
            "fit one transaction (60 s, 16 MB).",
            version=ctx.version,
            hint="Declare `transactional = False` on the migration: each batch then runs in "
            "its own small transaction together with its checkpoint.",
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise MigrationDefinitionError(
            f"{where}: batch_size must be a positive integer, not {batch_size!r}.",
            version=ctx.version,
        )
    if isinstance(update, dict):
        if not update or not all(str(k).startswith("$") for k in update):
            raise MigrationDefinitionError(
                f"{where}: update must use update operators ($set, $unset, ...), got "
                f"{sorted(update)!r}.",
                version=ctx.version,
                hint="Write {'$set': {...}}; a replacement document is not an update.",
            )
    elif not (isinstance(update, list) or callable(update)):
        raise MigrationDefinitionError(
            f"{where}: update must be an update document, a pipeline (list) or a function "
            f"doc -> update, not {type(update).__name__}.",
            version=ctx.version,
        )


def _operations(docs: list[dict[str, Any]], fn: Callable[[dict[str, Any]], Any]) -> list[Any]:
    """One ``UpdateOne`` per document the function wants changed."""
    ops = []
    for doc in docs:
        change = fn(doc)
        if change is None:
            continue
        ops.append(UpdateOne({"_id": doc["_id"]}, change))
    return ops


def _checkpoint(ctx: RunContext, call: int, name: str) -> dict[str, Any]:
    """The saved state of the ``call``-th batch_update of this migration, if resuming."""
    saved = (ctx.progress or {}).get(PROGRESS_KEY) or []
    if call < len(saved) and isinstance(saved[call], dict) and saved[call].get("collection") in (
        None, name
    ):
        state = dict(saved[call])
        ctx.checkpoints.append(state)
        return state
    ctx.checkpoints.append({})
    return {}


def _progress(ctx: RunContext, call: int, state: dict[str, Any]) -> dict[str, Any]:
    """The record's whole ``progress`` value with this call's state in it."""
    ctx.checkpoints[call] = state
    return {PROGRESS_KEY: list(ctx.checkpoints)}


def _total(ctx: RunContext, coll: Any, filter: dict[str, Any]) -> Optional[int]:
    """How many documents match, only when someone shows progress (it costs a count)."""
    if not ctx.wants_progress:
        return None
    return int(coll.count_documents(filter))


def _report(ctx: RunContext, name: str, state: dict[str, Any], total: Optional[int],
            *, done: bool) -> None:
    """Tell the progress hook."""
    ctx.report(ProgressEvent(
        version=ctx.version, collection=name, scanned=int(state.get("scanned", 0)),
        matched=int(state.get("matched", 0)),
        modified=int(state.get("modified", 0)), batches=int(state.get("batches", 0)),
        elapsed_s=float(state.get("elapsed_s", 0.0)), total=total, done=done,
    ))

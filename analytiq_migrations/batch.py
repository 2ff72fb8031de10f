"""``batch_update``: change any number of documents in ``_id`` order, one checkpoint per batch.

The walk is one cursor over the matching documents in ``_id`` order (hinted onto the
``_id`` index, so the server streams it without a blocking sort), read ``batch_size``
documents at a time. Each batch is then written in one unordered ``bulk_write`` of
updates addressed by ``_id`` (the filter re-checked), so a document is visited once
even when the filter is on the field being changed, and only one batch is ever in
memory.

On a replica set each batch's writes and its checkpoint commit in one small
transaction, so a run killed at any instant resumes with every document updated
exactly once. Without transactions they are two steps: a crash between them re-applies
that one batch (at-least-once per batch). A resumed run (or a cursor the server lost)
reopens the walk after the checkpoint's last ``_id``, across ``_id`` types.

Each checkpoint is written only if the stored one is still the previous batch's
(compare-and-set on its last ``_id``): a batch run again after a commit whose reply was
lost (a retried commit answered ``NoSuchTransaction`` after a server restart) conflicts,
is rolled back, and the walk carries on from the checkpoint that did commit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Union

import bson
from bson import MaxKey, MinKey
from pymongo import ASCENDING, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import CursorNotFound, PyMongoError

from . import checkpoints, otel
from .budget import StopAtCheckpoint
from .context import RecordConflict, RunContext
from .errors import MigrationDefinitionError
from .idorder import after, bracket
from .records import ProgressEvent
from .retry import is_transient
from .throttle import LagGuard

log = logging.getLogger("analytiq_migrations")

#: A static update document, an update pipeline, or ``doc -> update document | None``.
UpdateSpec = Union[Dict[str, Any], List[Dict[str, Any]], Callable[[Dict[str, Any]], Any]]

#: Times the walk reopens its cursor after losing it (failover, idle timeout) before
#: giving up. Each reopen waits for a primary through server selection, so three cover
#: an election without a retry loop of their own.
REOPEN_ATTEMPTS = 3

#: ``_id``s per update statement for a static update or pipeline. Measured on
#: SecantusDB 0.7.0b3 (the test server): ten per ``$in`` is ~35% quicker than one
#: statement per document, while long ``$in`` lists grow quadratically there (1,000 ids:
#: 7x slower). MongoDB serves any of these from the ``_id`` index.
IDS_PER_STATEMENT = 10

#: The same for a pipeline, which SecantusDB evaluates per statement at a higher fixed
#: cost: twenty ``_id``s a statement beat ten in each of four interleaved rounds of
#: 100,000 documents (5-10% less time), forty were slower than both.
IDS_PER_PIPELINE_STATEMENT = 20

#: Winning-plan stages that show the server serving an ``_id`` range from the index.
INDEX_STAGES = frozenset({"IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_CLUSTERED_IXSCAN",
                          "CLUSTERED_IXSCAN"})


def batch_update(
    ctx: RunContext,
    collection: Any,
    filter: Mapping[str, Any],
    update: UpdateSpec,
    batch_size: int = 1000,
    *,
    pause: float = 0.0,
    max_lag: Optional[float] = None,
) -> int:
    """Apply ``update`` to documents matching ``filter``; returns how many were modified.
    ``pause``: seconds to sleep between batches; ``max_lag``: wait while secondaries are
    more than that many seconds behind (``throttle.py``)."""
    coll = ctx.db[collection] if isinstance(collection, str) else collection
    _check_arguments(ctx, coll, filter, update, batch_size, pause)
    if max_lag is not None:
        _check_seconds(ctx, coll, "max_lag", max_lag)
    lag = LagGuard(coll.database.client, max_lag, ctx.version) if max_lag is not None else None
    try:
        return _batch_update(ctx, coll, filter, update, batch_size, pause, lag)
    except Exception as exc:
        ctx.batch_error = exc  # stopped at a checkpoint: the plan may resume from it
        raise


def _batch_update(ctx: RunContext, coll: Any, filter: Mapping[str, Any], update: UpdateSpec,
                  batch_size: int, pause: float, lag: Optional[LagGuard]) -> int:
    """``batch_update`` after its arguments were checked."""
    query = dict(filter)
    call = ctx.next_call()
    state = checkpoints.load(ctx, call, coll.name)
    if state.get("done"):
        return int(state.get("modified", 0))
    if state.get("total") is None or (ctx.wants_progress and "last_id" in state):
        # Always once: the record's progress shows done/total to every process.
        state["total"], state["total_estimated"] = _total(coll, query, state)
    if not state.get("started"):
        # Saved before the first batch: an interruption from here on is resumable.
        state.update(collection=coll.name, started=True, done=False)
        ctx.save_progress(checkpoints.progress(ctx, call, state), None,
                          {checkpoints.path(call): {"$exists": False}})
    clock = time.monotonic() - float(state.get("elapsed_s", 0.0))
    walk = _Walk(ctx, coll, query, None if callable(update) else {"_id": 1}, batch_size,
                 state)
    ranges = not callable(update) and _serves_id_ranges(coll, query)

    def one_batch(docs: list[dict[str, Any]], session: Any) -> dict[str, Any]:
        ops = _operations(ctx, docs, query, update, ranges=ranges)
        matched, modified = _write(coll, ops, session)
        new_state = {
            **state,
            "last_id": docs[-1]["_id"],
            "scanned": int(state.get("scanned", 0)) + len(docs),
            "matched": int(state.get("matched", 0)) + matched,
            "modified": int(state.get("modified", 0)) + modified,
            "batches": int(state.get("batches", 0)) + 1,
            "elapsed_s": round(time.monotonic() - clock, 3),
        }
        ctx.save_progress(checkpoints.progress(ctx, call, new_state), session,
                          checkpoints.follows(call, state))
        return new_state

    with walk:
        while True:
            docs = walk.next_batch()
            if not docs:
                break
            with otel.span("batch", version=ctx.version, direction=ctx.direction,
                           database=coll.database.name, collection=coll.name,
                           documents=len(docs)) as span:
                before = int(state.get("modified", 0))
                try:
                    state = ctx.run_in_transaction(functools.partial(one_batch, docs))
                except RecordConflict:
                    state = checkpoints.committed_batch(ctx, call, docs[-1]["_id"])
                otel.annotate(span, modified=int(state.get("modified", 0)) - before,
                              done=int(state.get("scanned", 0)))
            walk.done_with(state["last_id"])
            _report(ctx, coll.name, state, done=False)
            reason = ctx.stop_reason()
            if reason is None and pause > 0:
                time.sleep(pause)
            if reason is None and lag is not None:
                reason = lag.wait(ctx.stop_reason)
            if reason is not None:
                raise StopAtCheckpoint(ctx.version, reason)
    done = {**state, "done": True, "elapsed_s": round(time.monotonic() - clock, 3)}
    ctx.save_progress(checkpoints.progress(ctx, call, done), None, checkpoints.follows(call, state))
    state = done
    _report(ctx, coll.name, state, done=True)
    return int(state.get("modified", 0))


class _Walk:
    """The matching documents in ``_id`` order, ``batch_size`` at a time, from one cursor."""

    def __init__(self, ctx: RunContext, coll: Any, query: dict[str, Any],
                 projection: Optional[dict[str, Any]], batch_size: int,
                 state: dict[str, Any]) -> None:
        self.ctx = ctx
        self.coll = coll
        self.query = query
        self.projection = projection
        self.batch_size = batch_size
        self.started = "last_id" in state
        self.last_id = state.get("last_id")
        self.session: Any = None
        self.cursor: Any = None

    def __enter__(self) -> _Walk:
        if self.ctx.session is not None:
            # Its own session: the run's session goes in and out of each batch's
            # transaction, which a cursor opened in it could not follow.
            self.session = self.ctx.session.client.start_session(causal_consistency=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cursor is not None:
            with contextlib.suppress(PyMongoError):
                self.cursor.close()
        if self.session is not None:
            self.session.end_session()

    def next_batch(self) -> list[dict[str, Any]]:
        """The next documents (at most ``batch_size``); empty when the walk is over."""
        for attempt in range(REOPEN_ATTEMPTS + 1):
            if self.cursor is None:
                self.cursor = self._open()
            try:
                docs = []
                for doc in self.cursor:
                    docs.append(doc)
                    if len(docs) == self.batch_size:
                        break
                return docs
            except PyMongoError as exc:
                if not (isinstance(exc, CursorNotFound) or is_transient(exc)) or \
                        attempt == REOPEN_ATTEMPTS:
                    raise
                log.warning("Migration %d: batch_update(%r) lost its cursor (%s: %s); "
                            "reopening it after the last checkpoint", self.ctx.version,
                            self.coll.name, type(exc).__name__, exc)
                self.cursor = None
        raise AssertionError("unreachable")  # pragma: no cover

    def done_with(self, last_id: Any) -> None:
        """The batch ending at ``last_id`` is committed: a reopened walk starts after it."""
        self.started, self.last_id = True, last_id

    def _open(self) -> Any:
        """A cursor from the start, or after the last committed ``_id``."""
        query = self.query
        if self.started:
            later = after(self.last_id)
            query = {"$and": [query, later]} if query else later
        return (self.coll.find(query, self.projection, session=self.session)
                .sort("_id", ASCENDING).hint([("_id", ASCENDING)])
                .batch_size(self.batch_size))


def _check_arguments(ctx: RunContext, coll: Any, filter: Any, update: UpdateSpec,
                     batch_size: int, pause: float) -> None:
    """Refuse what cannot work, before writing anything."""
    where = f"Migration {ctx.version}: batch_update({coll.name!r})"
    if coll.database.client is not ctx.db.client:
        raise MigrationDefinitionError(
            f"{where}: the collection belongs to another client than the migration's "
            "database, so its batches could not commit together with their checkpoints.",
            version=ctx.version,
            hint="Pass a collection name (or a collection of the db given to up()); copy "
            "between clusters with your own loop instead.",
        )
    if ctx.in_transaction:
        raise MigrationDefinitionError(
            f"{where} was called inside the migration's transaction; a large update cannot "
            "fit one transaction (60 s, 16 MB).",
            version=ctx.version,
            hint="Declare `transactional = False` on the migration: each batch then runs in "
            "its own small transaction together with its checkpoint.",
        )
    if not isinstance(filter, Mapping):
        raise MigrationDefinitionError(
            f"{where}: filter must be a query document (a dict), not {type(filter).__name__}.",
            version=ctx.version, hint="Pass {} to walk the whole collection.",
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise MigrationDefinitionError(
            f"{where}: batch_size must be a positive integer, not {batch_size!r}.",
            version=ctx.version, hint="1000 suits most collections.",
        )
    _check_seconds(ctx, coll, "pause", pause)
    if callable(update):
        return
    problem = _update_problem(update)
    if problem:
        raise MigrationDefinitionError(
            f"{where}: {problem}", version=ctx.version,
            hint="Write {'$set': {...}} or a pipeline [{'$set': {...}}], or pass a function "
            "doc -> update; a replacement document is not an update.",
        )


def _check_seconds(ctx: RunContext, coll: Any, name: str, value: Any) -> None:
    """``pause``/``max_lag``: a number of seconds, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise MigrationDefinitionError(
            f"Migration {ctx.version}: batch_update({coll.name!r}): {name} must be 0 or more "
            f"seconds, not {value!r}.", version=ctx.version,
        )


def _update_problem(update: Any) -> Optional[str]:
    """What is wrong with a static update or pipeline (``None`` when it is fine)."""
    if isinstance(update, Mapping):
        if not update or not all(str(k).startswith("$") for k in update):
            return f"update must use update operators ($set, $inc, ...), got {sorted(update)!r}."
        return None
    if isinstance(update, list):
        if not update or not all(isinstance(s, Mapping) and len(s) == 1 and
                                 str(next(iter(s))).startswith("$") for s in update):
            return "an update pipeline must be a non-empty list of stages like {'$set': {...}}."
        return None
    return (f"update must be an update document, a pipeline (list) or a function "
            f"doc -> update, not {type(update).__name__}.")


def _serves_id_ranges(coll: Any, query: dict[str, Any]) -> bool:
    """Does the server answer an ``_id`` range (with ``query``) from the ``_id`` index?

    One ``explain`` per call. MongoDB does (an ``IXSCAN`` on ``_id``); a server that
    scans the whole collection for it (SecantusDB 0.7) gets ``$in`` lists instead, which
    it looks up one by one.
    """
    if not isinstance(coll, Collection):
        return False  # mongomock: no explain
    probe = _by_range(MinKey(), MaxKey(), query)
    try:
        plan = coll.database.command("explain", {"find": coll.name, "filter": probe},
                                     verbosity="queryPlanner")
    except PyMongoError:
        return False
    return bool(INDEX_STAGES & set(_stages(plan.get("queryPlanner", {}).get("winningPlan"))))


def _stages(plan: Any) -> list[str]:
    """Every ``stage`` name in an explain plan tree."""
    if isinstance(plan, list):
        return [stage for item in plan for stage in _stages(item)]
    if not isinstance(plan, Mapping):
        return []
    found = [str(plan["stage"])] if "stage" in plan else []
    for value in plan.values():
        if isinstance(value, (Mapping, list)):
            found += _stages(value)
    return found


def _operations(ctx: RunContext, docs: list[dict[str, Any]], query: dict[str, Any],
                update: UpdateSpec, *, ranges: bool = False
                ) -> list[tuple[dict[str, Any], Any, bool]]:
    """``(filter, update, many)`` writes for a batch: the filter re-checked, narrowed to its
    ``_id``s: one range statement for a static update where the server serves ranges from
    the index (and the batch's ``_id``s are of one BSON type bracket), else a few ``_id``s
    per statement; for a function, the documents it gave the same change a few per
    statement, the others one each."""
    if not callable(update):
        first, last = docs[0]["_id"], docs[-1]["_id"]
        if ranges and bracket(first) is not None and bracket(first) == bracket(last):
            # Every document of the range that still matches is this batch's: the walk
            # read them all (in _id order) and is past them.
            return [(_by_range(first, last, query), update, True)]
        return _by_id_chunks([doc["_id"] for doc in docs], query, update, always_many=True)
    alike: Dict[Any, tuple[Any, list[Any]]] = {}  # the same change -> the _ids it is for
    for doc in docs:
        change = update(doc)
        if not change:  # None or {}: leave this document alone
            continue
        problem = _update_problem(change)
        if problem:
            raise MigrationDefinitionError(
                f"Migration {ctx.version}: the batch_update function returned a bad "
                f"update for _id {doc['_id']!r}: {problem}",
                version=ctx.version,
                hint="Return an update document like {'$set': {...}}, a pipeline, or "
                "None to leave the document alone.",
            )
        alike.setdefault(_same(change), (change, []))[1].append(doc["_id"])
    return [op for change, ids in alike.values()
            for op in _by_id_chunks(ids, query, change, always_many=False)]


def _by_id_chunks(ids: list[Any], query: dict[str, Any], update: Any, *,
                  always_many: bool) -> list[tuple[dict[str, Any], Any, bool]]:
    """``update`` for ``ids``, a few ``_id``s per statement (more for a pipeline)."""
    per = IDS_PER_PIPELINE_STATEMENT if isinstance(update, list) else IDS_PER_STATEMENT
    chunks = [ids[i:i + per] for i in range(0, len(ids), per)]
    return [(_by_ids(chunk, query), update, always_many or len(chunk) > 1) for chunk in chunks]


def _same(change: Any) -> Any:
    """A key equal for equal changes (their BSON). A change the default codec cannot
    encode gets a key of its own: it is written alone, with the collection's codec (the
    driver reports what it cannot encode either)."""
    try:
        return bson.encode({"u": change})
    except Exception:
        return object()


def _write(coll: Any, ops: list[tuple[dict[str, Any], Any, bool]],
           session: Any) -> tuple[int, int]:
    """One unordered bulk write; returns (matched, modified)."""
    if not ops:
        return 0, 0
    if not isinstance(coll, Collection):
        # mongomock's bulk_write does not take current pymongo's operation objects.
        results = [(coll.update_many if many else coll.update_one)(where, change)
                   for where, change, many in ops]
        return sum(r.matched_count for r in results), sum(r.modified_count for r in results)
    requests = [UpdateMany(where, change) if many else UpdateOne(where, change)
                for where, change, many in ops]
    result = coll.bulk_write(requests, ordered=False, session=session)
    return result.matched_count, result.modified_count


def _by_range(first: Any, last: Any, query: dict[str, Any]) -> dict[str, Any]:
    """``query`` narrowed to ``first <= _id <= last``."""
    selector = {"_id": {"$gte": first, "$lte": last}}
    return {"$and": [selector, query]} if query else selector


def _by_ids(ids: list[Any], query: dict[str, Any]) -> dict[str, Any]:
    """``query`` narrowed to ``ids`` (merged flat when it does not constrain ``_id``)."""
    selector = ids[0] if len(ids) == 1 else {"$in": ids}
    if not query:
        return {"_id": selector}
    if "_id" in query:
        return {"$and": [{"_id": selector}, query]}
    return {"_id": selector, **query}


def _total(coll: Any, query: dict[str, Any], state: dict[str, Any]) -> tuple[int, bool]:
    """How many documents the call walks (for the ETA; costs one count, once per call).

    Resumed: those walked before the checkpoint plus those matching after it (counting
    the filter again would leave out what the first run already changed, if the change
    made them stop matching: "38,500 of 32,500").
    """
    if "last_id" in state:
        later = after(state["last_id"])
        remaining = coll.count_documents({"$and": [query, later]} if query else later)
        return int(state.get("scanned", 0)) + int(remaining), False
    if not query:
        # From the collection's metadata, not a scan: an estimate (and says so).
        return int(coll.estimated_document_count()), True
    return int(coll.count_documents(query)), False


def _report(ctx: RunContext, name: str, state: dict[str, Any], *, done: bool) -> None:
    """Tell the progress hook; a broken display never stops a migration."""
    event = ProgressEvent(
        version=ctx.version, collection=name, scanned=int(state.get("scanned", 0)),
        matched=int(state.get("matched", 0)), modified=int(state.get("modified", 0)),
        batches=int(state.get("batches", 0)), elapsed_s=float(state.get("elapsed_s", 0.0)),
        total=state.get("total"), done=done,
    )
    try:
        ctx.report(event)
    except Exception as exc:
        log.warning("Migration %d: the progress hook failed (ignored): %s: %s",
                    ctx.version, type(exc).__name__, exc)

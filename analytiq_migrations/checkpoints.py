"""``batch_update``'s checkpoints: where each call stands, saved compare-and-set."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import LockLostError

if TYPE_CHECKING:
    from .context import RunContext

log = logging.getLogger("analytiq_migrations")

#: Key of this helper's checkpoints inside a record's ``progress``.
PROGRESS_KEY = "batch_update"


def load(ctx: RunContext, call: int, name: str) -> dict[str, Any]:
    """The saved state of the ``call``-th batch_update of this migration, if resuming."""
    saved = (ctx.progress or {}).get(PROGRESS_KEY) or []
    state: dict[str, Any] = {}
    if call < len(saved) and isinstance(saved[call], dict) and \
            saved[call].get("collection") in (None, name):
        state = dict(saved[call])
    ctx.checkpoints.append(state)
    return state


def path(call: int) -> str:
    """Where the ``call``-th checkpoint lives in the record."""
    return f"progress.{PROGRESS_KEY}.{call}"


def follows(call: int, state: dict[str, Any]) -> dict[str, Any]:
    """The guard of a checkpoint that follows ``state``: the stored one still ends where
    ``state`` does (compare-and-set on the last ``_id``)."""
    if "last_id" in state:
        return {f"{path(call)}.last_id": state["last_id"]}
    return {f"{path(call)}.last_id": {"$exists": False}}


def committed_batch(ctx: RunContext, call: int, last_id: Any) -> dict[str, Any]:
    """A batch's checkpoint write conflicted: if an earlier try of this very batch did
    commit (its reply was lost), its stored state; else the run lost its record."""
    saved = ((ctx.load_progress() or {}).get(PROGRESS_KEY) or [])
    state = saved[call] if call < len(saved) and isinstance(saved[call], dict) else None
    if state is None or "last_id" not in state or state["last_id"] != last_id:
        raise LockLostError(
            f"Migration {ctx.version}: the checkpoint of batch_update call {call} changed "
            "under this run: another run took the lock over. Nothing more was written.",
            version=ctx.version, hint="Check `status`, then run again.")
    log.warning("Migration %d: a batch's commit reported an error but had committed; "
                "carrying on after it", ctx.version)
    ctx.checkpoints[call] = dict(state)
    return dict(state)


def progress(ctx: RunContext, call: int, state: dict[str, Any]) -> dict[str, Any]:
    """The record's whole ``progress`` value with this call's state in it."""
    ctx.checkpoints[call] = state
    return saved(ctx)


def saved(ctx: RunContext) -> dict[str, Any]:
    """The record's ``progress`` as this step last saved it."""
    return {PROGRESS_KEY: list(ctx.checkpoints), **summary(ctx.checkpoints)}


def summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures every process shows (``status``, ``show``, metrics): documents ``done``
    and ``total`` (integers; ``total_estimated`` when a count came from the collection's
    metadata or a later call's size is not known yet), ``rate`` (documents a second of
    running time) and ``eta_s`` (seconds left at that rate; ``None`` when unknown)."""
    done = sum(int(state.get("scanned") or 0) for state in calls)
    total = sum(max(int(state.get("total") or 0), int(state.get("scanned") or 0))
                for state in calls)
    elapsed = sum(float(state.get("elapsed_s") or 0.0) for state in calls)
    estimated = any(state.get("total") is None or state.get("total_estimated")
                    for state in calls if not state.get("done"))
    rate = round(done / elapsed, 1) if elapsed > 0 else 0.0
    eta = round((total - done) / rate, 1) if rate > 0 else None
    return {"done": done, "total": total, "total_estimated": estimated, "rate": rate,
            "eta_s": eta}

"""What a running migration can reach besides ``db``: set by the step (``step.py``) for the
duration of ``up``/``down``, used by ``batch_update`` (``batch.py``).

The binding is per thread: ``Migration`` instances may be shared by several runs at once
(one list of instances, a ``Fleet`` migrating many databases in threads), so what one run
binds to an instance is seen by that run's thread only, never by another's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

if TYPE_CHECKING:
    from pymongo.client_session import ClientSession

    from .records import ProgressEvent


@dataclass
class RunContext:
    """What a running migration can reach besides ``db``; set by the runner per step."""

    version: int
    direction: str
    db: Any
    session: Optional[ClientSession]
    in_transaction: bool
    #: Checkpoint left by an earlier, interrupted attempt (``None`` on a fresh start).
    progress: Optional[dict[str, Any]]
    #: Persist a checkpoint in the record's ``progress`` (within ``session`` if given),
    #: only while the record matches the guard (extra filter fields: compare-and-set).
    save_progress: Callable[..., None]
    #: Run ``fn(session)`` in its own short transaction (or plainly, without one).
    run_in_transaction: Callable[[Callable[[Optional[ClientSession]], Any]], Any]
    #: Progress hook for long operations (CLI progress bar, logs).
    report: Callable[[ProgressEvent], None] = field(default=lambda event: None)
    #: True when someone listens to ``report`` (worth counting documents for an ETA).
    wants_progress: bool = False
    #: The checkpoint as stored now on this run's ``running`` record (``None`` otherwise).
    load_progress: Callable[[], Optional[dict[str, Any]]] = field(default=lambda: None)
    #: State of each ``batch_update`` call made so far in this step, in call order.
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: Asked after each committed checkpoint: why the walk should stop there
    #: (``request``: ``pause VERSION``; ``time_budget``), or ``None`` to go on.
    stop_reason: Callable[[], Optional[str]] = field(default=lambda: None)
    #: The error a ``batch_update`` call raised, if any (such a failure may be resumed).
    batch_error: Optional[BaseException] = None

    def next_call(self) -> int:
        """Index of the next ``batch_update`` call in this step (for its checkpoint)."""
        return len(self.checkpoints)


class RecordConflict(Exception):
    """A conditional bookkeeping write matched nothing (raised inside its transaction so
    that it aborts; the caller then reads the record to learn what happened). Raised by
    the run's bookkeeping (``lifecycle.py``), also through ``save_progress``: here, so
    that ``batch_update`` can catch it without importing the bookkeeping."""

    def __init__(self, version: int, what: str) -> None:
        super().__init__(f"version {version}: {what}")
        self.version = version
        self.what = what


#: Per thread: ``id(migration)`` -> (its run's context, its run's session) while it runs.
_BOUND = threading.local()

Binding = Tuple[Optional[RunContext], Optional["ClientSession"]]


def _bindings() -> Dict[int, Binding]:
    """This thread's bindings (created on first use in each thread)."""
    table: Optional[Dict[int, Binding]] = getattr(_BOUND, "table", None)
    if table is None:
        table = _BOUND.table = {}
    return table


def bound(owner: object) -> Binding:
    """What this thread's run bound to ``owner`` (``(None, None)`` outside a run)."""
    return _bindings().get(id(owner), (None, None))


def bind(owner: object, context: Optional[RunContext] = None,
         session: Optional[ClientSession] = None) -> None:
    """Bind ``context`` and ``session`` to ``owner`` for this thread (both ``None``: unbind)."""
    table = _bindings()
    if context is None and session is None:
        table.pop(id(owner), None)
    else:
        table[id(owner)] = (context, session)

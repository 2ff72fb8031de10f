"""What a step runs in: what every step of one run shares (``StepEnv``), what the lock
says while a step runs (``step_marker``), and what the running migration's
``batch_update`` may reach (``step_context``: its ``RunContext``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from .budget import Budget, stop_reason
from .context import RunContext
from .lifecycle import Lifecycle
from .lock import Lease
from .records import PlanStep, ProgressEvent, RunInfo
from .retry import RetryPolicy, run_transaction
from .store import Store
from .txnrules import Catalog


@dataclass
class StepEnv:
    """What every step of one run shares."""

    db: Any
    store: Store
    lease: Lease
    #: The run's session (``None`` where there are no sessions, e.g. mongomock).
    session: Any
    run: RunInfo
    retry: RetryPolicy
    #: The seed's ``schema_version`` document exists and is kept current.
    legacy: bool
    #: ``batch_update`` batches get their own small transactions.
    batch_transactions: bool
    wire_version: int
    progress: Optional[Callable[[ProgressEvent], None]] = None
    #: The collections, read once per run on first need and kept current by transactional
    #: steps; dropped after a non-transactional step (which may change anything).
    catalog: Optional[Catalog] = None
    #: Every bookkeeping write of the run (set by ``run_step`` when not given).
    lifecycle: Optional[Lifecycle] = None
    #: ``--time-budget``: looked at after each ``batch_update`` checkpoint.
    budget: Optional[Budget] = None

    @property
    def book(self) -> Lifecycle:
        """The run's bookkeeping."""
        if self.lifecycle is None:
            self.lifecycle = Lifecycle(store=self.store, lease=self.lease, run=self.run,
                                       retry=self.retry, session=self.session,
                                       transactions=self.batch_transactions)
        return self.lifecycle


def step_marker(step: Optional[PlanStep]) -> Optional[Dict[str, Any]]:
    """What the lock's ``step`` field says while ``step`` runs (``None``: not transactional)."""
    if step is None or not step.transactional:
        return None
    return {"version": step.version, "direction": step.direction}


def step_context(env: StepEnv, step: PlanStep,
                 resume: Optional[Dict[str, Any]]) -> RunContext:
    """What ``batch_update`` and friends may use during ``step`` (``resume``: the
    checkpoint it resumes from)."""

    def in_own_transaction(fn: Callable[[Any], Any]) -> Any:
        if not env.batch_transactions:
            env.lease.check()
            return fn(None)

        def body(txn_session: Any) -> Any:
            env.lease.check(txn_session)
            return fn(txn_session)

        return run_transaction(env.session, body, env.retry,
                               f"migration {step.version} batch")

    def save(progress: Dict[str, Any], txn_session: Any = None,
             guard: Optional[Dict[str, Any]] = None) -> None:
        env.book.checkpoint(step.version, progress, guard or {}, txn_session)

    return RunContext(
        version=step.version, direction=step.direction, db=env.db, session=env.session,
        in_transaction=step.transactional, progress=resume, save_progress=save,
        load_progress=lambda: env.book.saved_progress(step.version),
        run_in_transaction=in_own_transaction,
        stop_reason=lambda: stop_reason(env.book, step.version, env.budget),
        report=env.progress or (lambda event: None),
        wants_progress=env.progress is not None,
    )

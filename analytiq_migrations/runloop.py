"""The run loop: one ``upgrade``/``downgrade`` from the first read to the report.

Decides, without the lock, whether there is anything to do (the everyday no-op takes no
lock); otherwise takes the lock, settles what dead runs left, plans again from the
records read under it, and runs the steps (``runsteps``). Everything of the run is
local to ``migrate`` or in the ``Held`` run and the ``StepEnv`` it builds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from . import otel
from .bookkeeping import settle_dead_step, settled_state
from .budget import Budget
from .dbproxy import HAS_BIND
from .errors import FailedMigrationError, InterruptedMigrationError
from .outside import note_joining
from .pauses import stopped_note
from .plan import Target, current_version
from .records import ProgressEvent, RunReport, StepEvent
from .runkit import RunKit, new_run, raise_corrupt
from .runsteps import run_steps
from .startonce import refuse_repeated_failure
from .step import StepEnv, step_marker
from .store import utcnow

log = logging.getLogger("analytiq_migrations")


@dataclass(frozen=True)
class Hooks:
    """The caller's callbacks for one run, read from the ``Migrator`` when the run starts."""

    #: Told of ``batch_update`` progress.
    progress: Optional[Callable[[ProgressEvent], None]] = None
    #: Told as each step starts and ends.
    on_step: Optional[Callable[[StepEvent], None]] = None
    #: Asked before each step: True ends the run there (a ``Fleet`` stopping).
    stop: Optional[Callable[[], bool]] = None


def traced(kit: RunKit, direction: str, target: Target, hooks: Hooks,
           budget: Optional[Budget] = None) -> RunReport:
    """``migrate`` in an OpenTelemetry span (``otel.py``; nothing without the API)."""
    with otel.span("run", direction=direction, database=kit.db.name) as span:
        report = migrate(kit, direction, target, hooks, budget)
        otel.annotate(span, **otel.report_fields(report))
        return report


def migrate(kit: RunKit, direction: str, target: Target, hooks: Hooks,
            budget: Optional[Budget] = None) -> RunReport:
    """Shared body of upgrade/downgrade."""
    run = new_run()
    started = utcnow()
    state = kit.load()
    kit.caps.check_transactions_possible()
    raise_corrupt(state)
    records = kit.records(state)
    current = current_version(records)
    resolved = kit.resolve(target, current, direction)
    try:
        plan = kit.plan(direction, records, resolved)
    except (InterruptedMigrationError, FailedMigrationError):
        plan = None  # unfinished attempts: decided again under the lock, where it is safe
    if plan is not None and not plan.steps:
        log.info("Nothing to do: database at version %d", current)
        return RunReport(run_id=run.run_id, direction=direction, start_version=current,  # type: ignore[arg-type]
                         end_version=current, started_at=started, finished_at=utcnow(),
                         paused=plan.paused)
    # The lock says which transactional step runs: the first one goes with acquiring it.
    first = step_marker(plan.steps[0]) if plan is not None else None
    with kit.hold(run, first) as held:
        state = settled_state(kit, held)
        settle_dead_step(held, state.records)
        records = state.records
        start = current_version(records)
        # Resolved again from the records read under the lock: `-1` queued behind
        # another run's `-1` means one below where that run left the database.
        resolved = kit.resolve(target, start, direction)
        plan = kit.plan(direction, records, resolved)
        note_joining([s.transactional for s in plan.steps], HAS_BIND)
        refuse_repeated_failure(plan.steps, records, kit.by_version)
        env = StepEnv(
            db=kit.db, store=kit.store, lease=held.lease, session=held.session, run=run,
            retry=kit.retry, legacy=state.legacy_version is not None,
            # Batches bring their own small transactions wherever transactions are possible.
            batch_transactions=held.book.transactions,
            wire_version=kit.caps.known_wire_version(), progress=hooks.progress,
            lifecycle=held.book, budget=budget,
        )
        steps = run_steps(env, plan, kit.by_version, records, started=started,
                          start=start, on_step=hooks.on_step, stop=hooks.stop)
        paused = stopped_note(records[steps[-1].version]) \
            if steps and steps[-1].status == "paused" else plan.paused
    end = current_version(records)
    log.info("Database now at version %d (was %d)", end, start)
    return RunReport(run_id=run.run_id, direction=direction, start_version=start,  # type: ignore[arg-type]
                     end_version=end, started_at=started, finished_at=utcnow(), steps=steps,
                     paused=paused, lock_wait_s=round(held.lease.waited_s, 3))


__all__ = ["Hooks", "migrate", "traced"]

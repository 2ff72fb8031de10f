"""The steps of one run, in order: tell the ``on_step`` hook as each starts and ends,
collect the results, and hand a failure the report of everything the run did before it."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Callable, Dict, List, Optional

from .errors import MigrationError, first_line
from .migration import Migration
from .plan import current_version
from .records import ErrorInfo, MigrationRecord, Plan, RunReport, StepEvent, StepResult
from .step import StepEnv, run_step
from .store import utcnow

log = logging.getLogger("analytiq_migrations")

StepHook = Callable[[StepEvent], None]


def run_steps(env: StepEnv, plan: Plan, migrations: Dict[int, Migration],
              records: Dict[int, MigrationRecord], *, started: datetime, start: int,
              on_step: Optional[StepHook] = None,
              stop: Optional[Callable[[], bool]] = None) -> List[StepResult]:
    """Run ``plan``'s steps (``records`` kept current); ``stop``, asked before each step,
    ends the run there when it says True (a ``Fleet`` stopping). A failing step's error (a
    ``MigrationError``, or a driver error the Migrator translates into one) leaves with
    ``report``: the steps done in this run, then the failed one."""
    results: List[StepResult] = []
    total = len(plan.steps)
    for index, (step, after) in enumerate(zip(plan.steps, [*plan.steps[1:], None]), 1):
        if stop is not None and stop():
            log.warning("Stopped before migration %d, as asked", step.version)
            break
        event = StepEvent(version=step.version, direction=step.direction,
                          description=step.description, transactional=step.transactional,
                          status="started", index=index, total=total)
        tell(on_step, event)
        clock = time.monotonic()
        try:
            result = run_step(env, step, migrations[step.version].loaded(), records, after)
        except Exception as exc:  # (Ctrl-C and SIGTERM: the CLI's interrupted report)
            located = exc.location if isinstance(exc, MigrationError) else None
            error = ErrorInfo(type=type(exc).__name__,
                              message=exc.message if isinstance(exc, MigrationError)
                              else first_line(exc),
                              **({"location": located} if located else {}))
            failed = StepResult(version=step.version, direction=step.direction,
                                description=step.description, status="failed",
                                transactional=step.transactional,
                                duration_ms=int((time.monotonic() - clock) * 1000), error=error)
            tell(on_step, event.model_copy(update={
                "status": "failed", "duration_ms": failed.duration_ms, "error": error}))
            if getattr(exc, "report", None) is None:
                # A driver error keeps it too: the Migrator's translation carries it over.
                exc.report = RunReport(  # type: ignore[attr-defined]
                    run_id=env.run.run_id, direction=plan.direction, start_version=start,
                    end_version=current_version(records), started_at=started,
                    finished_at=utcnow(), steps=[*results, failed])
            raise
        results.append(result)
        tell(on_step, event.model_copy(update={"status": result.status,
                                                "duration_ms": result.duration_ms}))
        if result.status == "paused":
            break  # stopped at a checkpoint: later versions wait behind it
    return results


def tell(hook: Optional[StepHook], event: StepEvent) -> None:
    """Call the ``on_step`` hook; a broken display never stops a migration."""
    if hook is None:
        return
    try:
        hook(event)
    except Exception as exc:
        log.warning("Migration %d: the step hook failed (ignored): %s: %s",
                    event.version, type(exc).__name__, exc)

"""What a check found (``CheckResult``), and how a step-by-step check walks the migrations
without stopping at the first failure (``Walk``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .migration import Migration
from .snapshot import Snapshot

# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------


@dataclass
class CheckFailure:
    """One thing a check found wrong."""

    message: str
    version: Optional[int] = None
    collection: Optional[str] = None
    #: The readable difference (snapshot diff) or the error, when there is one.
    detail: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"message": self.message, "version": self.version,
                "collection": self.collection, "detail": self.detail}


@dataclass
class CheckResult:
    """The outcome of one check; ``passed`` when it found no failure."""

    name: str
    title: str
    failures: List[CheckFailure] = field(default_factory=list)
    #: What the check did not look at, and why (``v3 has no down``).
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def explain(self) -> str:
        """The failures (with their details) and notes, for a test failure or a terminal."""
        head = f"{self.title}: {'passed' if self.passed else 'FAILED'}"
        lines = [head]
        for failure in self.failures:
            lines.append(f"  {failure.message}")
            lines += [f"    {line}" for line in failure.detail.splitlines()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "title": self.title, "passed": self.passed,
                "failures": [f.to_dict() for f in self.failures], "notes": list(self.notes)}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def step_failed(result: CheckResult, version: int, what: str, exc: BaseException) -> None:
    result.failures.append(CheckFailure(f"v{version}: {what} failed", version=version,
                                        detail=error_text(exc)))


class Walk:
    """One check's walk from empty through every migration, one step at a time.

    A step that fails, or that leaves a trace, does not end the walk: the database is put
    back as it was (``restore_state``) and, where the step's ``up`` did not complete, its
    version is recorded applied without running it, so every later step is still checked
    (on data without that step's changes, which the notes say)."""

    def __init__(self, runner: Any, result: CheckResult) -> None:
        self.runner, self.result = runner, result

    def run(self, each: Callable[[Migration, int], None]) -> None:
        """Seed each migration's data, then ``each(migration, previous_version)``, which
        leaves the database at the migration's version (see :meth:`skip_up`)."""
        runner = self.runner
        runner.reset()
        previous = 0
        for migration in runner.migrations:
            version = int(migration.version or 0)
            try:
                runner.apply_seed(version)
                each(migration, previous)
            except _CannotGoOn as stop:
                rest = [v for v in runner.versions if v > version]
                self.result.notes.append(
                    f"v{version}: {stop}; not checked: "
                    f"{', '.join(f'v{v}' for v in rest) or 'nothing after it'}")
                return
            except Exception as exc:  # seeding: the user's data or function
                step_failed(self.result, version, "seeding", exc)
                self.result.notes.append(f"v{version}: not checked (its seed failed)")
            previous = version

    def save(self) -> Snapshot:
        """The whole database now (records included)."""
        state: Snapshot = self._guard(self.runner.save_state,
                                      "could not save the database's state")
        return state

    def restore(self, state: Snapshot) -> None:
        """Back to ``state``; the walk cannot go on when that fails."""
        self._guard(lambda: self.runner.restore_state(state),
                    "could not put the database back after it")

    def skip_up(self, version: int, state: Snapshot, why: str) -> None:
        """``version``'s up did not complete: back to ``state`` (before it), then record it
        applied without running it, so the walk goes on."""
        self.restore(state)
        self._guard(lambda: self.runner.migrator.upgrade(version, fake=True),
                    "could not record it applied to go on")
        self.result.notes.append(f"v{version}: {why}; the steps after it ran without its "
                                 "changes")

    @staticmethod
    def _guard(action: Callable[[], Any], what: str) -> Any:
        """``action()``, or the walk stops: it cannot go on from a state it does not know."""
        try:
            return action()
        except Exception as exc:
            raise _CannotGoOn(f"{what} ({error_text(exc)})") from exc


class _CannotGoOn(Exception):
    """The walk cannot continue past this step (the state could not be restored)."""

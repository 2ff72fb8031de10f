"""What a ``Fleet`` run hands back: each database's outcome by name, and a summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from .errors import LockBusyError, MigrationError
from .records import Plan, Problem, RunReport, StatusRow

#: What one database's work ended with (an error is a value here, not raised).
Outcome = Any
class RunInterruptedError(MigrationError):
    """The fleet run was interrupted (Ctrl-C, SIGTERM) while this database ran."""

    exit_code = 130


@dataclass
class DatabaseStatus:
    """One database's ``status``: where it is and what is pending or wrong."""

    database: str
    current_version: int
    head_version: int
    pending: List[int]
    problems: List[Problem]
    migrations: List[StatusRow]

    @property
    def healthy(self) -> bool:
        """No problem other than a run in progress or a warning (a database ahead of the code)."""
        return not [p for p in self.problems if p.kind != "running" and p.severity != "warning"]


@dataclass
class DatabaseProblems:
    """One database's ``validate``: its version and its problems (none when healthy)."""

    database: str
    current_version: int
    problems: List[Problem]


def pending_versions(migrations: Sequence[Any], rows: Sequence[StatusRow]) -> List[int]:
    """What ``status`` calls pending: everything ``up`` would run (or stops at): never-run
    versions, and unfinished ones whose code is there (``up`` cannot run one without)."""
    code = {int(m.version or 0) for m in migrations}
    return [r.version for r in rows if r.status in ("pending", "paused") or
            (r.status in ("failed", "interrupted", "running") and r.version in code)]


def version_of(outcome: Outcome) -> Optional[int]:
    """The version a database is at after ``outcome`` (``None`` for an error)."""
    if isinstance(outcome, RunReport):
        return outcome.end_version
    if isinstance(outcome, Plan):
        return outcome.current_version
    if isinstance(outcome, (DatabaseStatus, DatabaseProblems)):
        return outcome.current_version
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        return outcome
    return None


def is_failure(outcome: Outcome) -> bool:
    """An error other than a busy lock."""
    return isinstance(outcome, BaseException) and not isinstance(outcome, LockBusyError)


class FleetReport(Mapping[str, Outcome]):
    """Each database's outcome by name (its report, or its error), and what did not run."""

    def __init__(self, action: str, *, keep: bool = True) -> None:
        self.action = action
        self.keep = keep
        self._outcomes: Dict[str, Outcome] = {}
        #: Versions reached, counted (kept even when the outcomes are not).
        self.at_version: Dict[int, int] = {}
        self.failed: Dict[str, BaseException] = {}
        self.busy: List[str] = []
        #: Ended before their next step because the fleet was stopping.
        self.stopped: List[str] = []
        self.not_started: List[str] = []
        #: ``"SIGINT"``/``"SIGTERM"`` when the run was interrupted.
        self.interrupted: Optional[str] = None
        self.finished = 0

    def add(self, name: str, outcome: Outcome, *, stopped: bool = False) -> None:
        """Count (and keep) one database's outcome."""
        self.finished += 1
        if self.keep:
            self._outcomes[name] = outcome
        version = version_of(outcome)
        if version is not None:
            self.at_version[version] = self.at_version.get(version, 0) + 1
        if isinstance(outcome, LockBusyError):
            self.busy.append(name)
        elif isinstance(outcome, BaseException):
            self.failed[name] = outcome
        if stopped:
            self.stopped.append(name)

    def __getitem__(self, name: str) -> Outcome:
        return self._outcomes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    @property
    def exit_code(self) -> int:
        """1 if any database failed, else 3 if any was busy, else 0 (130/143 interrupted)."""
        if self.interrupted:
            return 143 if self.interrupted == "SIGTERM" else 130
        return 1 if self.failed else 3 if self.busy else 0

    def summary(self) -> Dict[str, Any]:
        """Counts by version, failures with why, busy, stopped and not started."""
        return {
            "action": self.action, "databases": self.finished + len(self.not_started),
            "finished": self.finished,
            "at_version": {str(v): n for v, n in sorted(self.at_version.items())},
            "failed": {name: f"{type(exc).__name__}: {_first_line(exc)}"
                       for name, exc in sorted(self.failed.items())},
            "busy": sorted(self.busy), "stopped": sorted(self.stopped),
            "not_started": self.not_started, "interrupted": self.interrupted,
            "exit_code": self.exit_code,
        }


def _first_line(exc: BaseException) -> str:
    """An error's message, first line."""
    text = getattr(exc, "message", None) or str(exc)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__



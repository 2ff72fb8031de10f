"""What every command handler is given (``Command``), and the exit codes they return.

Exit codes (the contract's table): 0 done or nothing to do, 1 a migration failed,
2 usage or configuration, 3 lock busy, 4 validation problem, 5 cannot reach the
server, 6 pending migrations (``status --check``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from .config import Layer, Settings, open_migrator, require

if TYPE_CHECKING:
    from .cli_output import Output

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 4
EXIT_PENDING = 6

#: Conventional shell codes for death by SIGINT / SIGTERM (128 + signal number).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: What an interrupted run says it left behind (the one sentence, single and fleet runs).
AFTER_INTERRUPT = ("Any lock this run held was released; a migration cut short shows as "
                   "interrupted in `status`, and the next `up` re-runs it if that is safe.")


class Terminated(BaseException):
    """SIGTERM arrived: unwind (releasing the lock) like Ctrl-C does."""


@dataclass
class Command:
    """Everything a command handler needs."""

    args: argparse.Namespace
    settings: Settings
    layers: list[Layer]
    out: Output
    migrator: Any = None
    #: ``up``/``down``: when the run began and from which version (for the report of an
    #: interrupted run, which never returns its own).
    run_started: Optional[datetime] = None
    run_direction: Optional[str] = None
    #: What the quick no-op check already made when it could not answer (``up``): the
    #: directory's migrations (lazy) and a client whose server answered, for the full path.
    loaded: Optional[list[Any]] = None
    client: Any = None

    def open(self, *, need_code: bool = True) -> Any:
        """The ``Migrator``; ``need_code=False`` works without the migrations (unlock, history)."""
        needed = ["uri", "database"] + (["migrations"] if need_code else [])
        require(self.settings, needed, self.layers)
        progress = None
        if not self.out.quiet:
            from .progress import make_reporter

            progress = make_reporter(self.out.stderr)
        # history and unlock work without the code (and so despite a broken file)
        source: Optional[list[Any]] = self.loaded if need_code else []
        client, self.client = self.client, None
        self.migrator = open_migrator(self.settings, migrations=source, progress=progress,
                                      client=client)
        if progress is not None and not self.out.json:  # a line as each step starts and ends
            self.migrator.on_step = progress.step
        return self.migrator

    @property
    def where(self) -> str:
        """``'app'`` for messages."""
        return f"'{self.migrator.db.name}'"


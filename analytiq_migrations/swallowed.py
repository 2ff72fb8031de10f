"""Why a migration failed without raising (it returned ``False``): the driver error it
caught on ``db`` (every call is watched, in a transaction or not), the last error it
logged while it ran, and what it wrote; for a ``down()``, the seed's way of saying "this
cannot be reverted", with the ways out."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Iterator, Optional, Set

from .dbproxy import StepWatch
from .errors import MigrationFailedError, scrub
from .hints import spell
from .locate import line_in
from .records import PlanStep
from .writes import Changes, describe_writes

#: Loggers whose records are the library's or the driver's, never the migration's.
_NOT_THE_MIGRATIONS = ("analytiq_migrations", "pymongo")

#: A logged message is quoted up to this many characters: one line of a report.
MESSAGE_LIMIT = 300


class LastLogged(logging.Handler):
    """Keeps what the migration's code logged at WARNING or above (this thread only; not
    this library's or pymongo's loggers): the last ERROR record, else the last WARNING."""

    def __init__(self, lone: bool) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        #: The root logger had no handler of its own: Python's last resort (stderr) would
        #: have shown the record, and must still do so.
        self.lone = lone
        self.error: Optional[logging.LogRecord] = None
        self.warning: Optional[logging.LogRecord] = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.lone and not _handled_below_root(record) and \
                record.levelno >= logging.lastResort.level:  # type: ignore[union-attr]
            logging.lastResort.handle(record)  # type: ignore[union-attr]
        if record.thread != self.thread or \
                record.name.split(".")[0] in _NOT_THE_MIGRATIONS:
            return
        if record.levelno >= logging.ERROR:
            self.error = record
        else:
            self.warning = record

    @property
    def last(self) -> Optional[logging.LogRecord]:
        """The record to quote."""
        return self.error or self.warning

    def describe(self) -> Optional[str]:
        """``it logged "Cannot revert: ..." (ERROR at 0007_x.py:12)``, if it logged."""
        record = self.last
        if record is None:
            return None
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # a bad format string: the raw message says enough
            text = " ".join(str(record.msg).split())
        text = scrub(text)  # no credentials, no duplicate key's value, no raw reply
        if len(text) > MESSAGE_LIMIT:
            text = text[:MESSAGE_LIMIT - 3] + "..."
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        return f'it logged "{text}" ({record.levelname} at {where})'


@contextlib.contextmanager
def logged_during() -> Iterator[LastLogged]:
    """Listen to what is logged while the block runs (the migration's ``up``/``down``)."""
    root = logging.getLogger()
    handler = LastLogged(lone=not root.handlers)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _handled_below_root(record: logging.LogRecord) -> bool:
    """A handler between the record's logger and the root took it (so the last resort
    would not have fired)."""
    logger: Optional[logging.Logger] = logging.getLogger(record.name)
    while logger is not None and logger is not logging.getLogger():
        if logger.handlers:
            return True
        if not logger.propagate:
            return True
        logger = logger.parent
    return False


def returned_false(step: PlanStep, watch: Optional[StepWatch], logged: LastLogged,
                   writes: Changes, *, in_transaction: bool, below: int,
                   files: Set[str]) -> MigrationFailedError:
    """The error for ``up``/``down`` returning ``False``: with the cause it hid (the error
    it caught, what it logged), what it wrote, and the ways out."""
    causes = []
    hidden = watch.first_error if watch is not None else None
    if hidden is not None:
        causes.append(f"it caught {hidden.describe()}")
    said = logged.describe()
    if said is not None:
        causes.append(said)
    why = "; ".join(causes) if causes else \
        "it raised nothing and logged no warning or error"
    if in_transaction:
        wrote = "Its transaction was rolled back: nothing of the step was kept."
    else:
        wrote = (f"It ran without a transaction; before returning it wrote: "
                 f"{describe_writes(writes)}.")
    message = (f"Migration {step.version} ({step.description}) {step.direction}() returned "
               f"False: {why}. {wrote}")
    if step.direction == "down":
        fake = spell(f"`analytiq-migrations down --fake {below}` "
                     f"(downgrade({below}, fake=True))",
                     cli=f"`analytiq-migrations down --fake {below}`")
        hint = (f"A down() that returns False is the old way of saying that version "
                f"{step.version} cannot be reverted. If so, delete its down(): a downgrade "
                f"then refuses, before changing anything, to cross it. If the data is "
                f"already as version {below} needs it, record the revert without running "
                f"it: {fake}. Otherwise fix the cause and run the same command again.")
    else:
        hint = ("Raise the error instead of returning False (its type, message and line then "
                "reach the record); fix the cause and run the same command again.")
    failure = MigrationFailedError(message, version=step.version, hint=hint)
    record = logged.last
    if record is not None:  # where it logged, when in the migration's code (said above)
        failure.location = line_in(files, record.pathname, record.lineno)
    return failure


"""The command line's output: where results, errors and the library's log go (``Output``,
``log_to``), and how results read as text (tables, times, run reports, history); JSON is
the same data made plain (``plain``). Formatting only: the data comes from ``Migrator``."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, TextIO

from . import cronverbs
from .cli_command import EXIT_FAILED, EXIT_OK
from .errors import MigrationError, redact
from .timetext import TEXT_TIME, json_time, text_time

if TYPE_CHECKING:
    from .cli_command import Command

#: Width of the description column: keeps a status table within 100 columns.
DESCRIPTION_WIDTH = 44


@dataclass
class Output:
    """Where results and errors go, and in which form."""

    stdout: TextIO
    stderr: TextIO
    json: bool = False
    quiet: bool = False
    #: ``-v``: a failed migration's traceback too (stderr, or the JSON error's ``traceback``).
    verbose: bool = False

    def result(self, text: str, data: Any) -> None:
        """The command's result: text, or one JSON document; nothing with ``-q``."""
        if self.quiet:
            return
        if self.json:
            self._write(self.stdout, json.dumps(data, indent=2) + "\n")
        else:
            self._write(self.stdout, text.rstrip("\n") + "\n")

    def explain(self, text: str) -> None:
        """Why a command exits non-zero without an error (-q still says it, on stderr)."""
        if self.quiet and not self.json:
            self._write(self.stderr, text.rstrip("\n") + "\n")

    def error(self, exc: MigrationError, prog: str) -> None:
        """An error: a message on stderr (and, with --json, an error document on stdout:
        a failed run's report with its ``error``)."""
        self._write(self.stderr, f"{prog}: error: {exc}\n")
        if self.json and not self.quiet:
            data = plain(exc.report.model_dump()) if exc.report is not None else {}
            data["error"] = {
                "type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                "version": exc.version, "exit_code": exc.exit_code, "location": exc.location}
            if self.verbose and exc.trace:
                data["error"]["traceback"] = exc.trace
            self._write(self.stdout, json.dumps(data, indent=2) + "\n")
        elif self.verbose and exc.trace:
            self._write(self.stderr, f"The migration's traceback:\n{exc.trace}")

    def note(self, text: str) -> None:
        """A plain message on stderr (interruptions, internal errors)."""
        self._write(self.stderr, text.rstrip("\n") + "\n")

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        """Write (credentials never leave) and flush, so cron logs keep the order."""
        stream.write(redact(text))
        stream.flush()


class _RedactingFormatter(logging.Formatter):
    """Plain log lines, UTC timestamps, credentials removed."""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        return moment.strftime(datefmt or TEXT_TIME)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    """One JSON object per log record (for log shippers), credentials removed."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "time": json_time(datetime.fromtimestamp(record.created, timezone.utc)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        })


@contextlib.contextmanager
def log_to(stream: TextIO, *, verbose: bool, quiet: bool, as_json: bool) -> Iterator[None]:
    """Route the library's log to ``stream`` for the duration of one command."""
    logger = logging.getLogger("analytiq_migrations")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JsonFormatter() if as_json else _RedactingFormatter(
        "%(asctime)s %(levelname)s %(message)s", TEXT_TIME))
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False  # the command's handler is the one place it goes
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# -- text ----------------------------------------------------------------------------------


def when(value: Optional[datetime]) -> str:
    """``2024-05-01T12:00:03Z`` or ``-``: the one form of a time in text (JSON adds the
    milliseconds, ``plain``)."""
    if value is None:
        return "-"
    return text_time(value)


def clip(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """``text`` cut to ``width`` characters (ending in ``...`` when cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
               right: Sequence[int] = ()) -> str:
    """A plain aligned table; columns in ``right`` are right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  " + "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def dump(items: Sequence[Any]) -> list[Any]:
    """Models as JSON-ready dicts (ISO-8601 UTC times)."""
    return [plain(item.model_dump()) for item in items]


def plain(value: Any) -> Any:
    """JSON-ready data: ISO-8601 UTC times; BSON values from checkpoints and the lock
    (``ObjectId``, binary session ids, ``Decimal128``...) as strings (binary as hex)."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, datetime):
        return json_time(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def problems_text(problems: Sequence[Any]) -> str:
    """A bulleted list of problems with what to do about each (warnings say so)."""
    return "\n".join(f"  - {'warning: ' if p.severity == 'warning' else ''}{p.message}\n"
                     f"    -> {p.hint}" for p in problems)


def failing_problems(problems: Sequence[Any], strict: bool) -> list[Any]:
    """The problems that fail a gate: errors, and with ``--strict`` warnings too."""
    return [p for p in problems if strict or p.severity != "warning"]


def yes(flag: bool) -> str:
    """``yes`` / ``no``."""
    return "yes" if flag else "no"


def plural(count: int, word: str) -> str:
    """``1 migration`` / ``2 migrations``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def shown(status: str) -> str:
    """A status as people read it: a successful revert is "reverted" (stored as
    ``rolled_back``, which reads like a failure)."""
    return "reverted" if status == "rolled_back" else status


# -- reports -------------------------------------------------------------------------------


def step_note(step: Any) -> str:
    """A plan step's NOTE: why it is there, and a call its transaction would refuse."""
    notes = [step.note] if step.note else []
    if step.refused:
        notes.append(f"REFUSED in a transaction: {step.refused}; `validate` lists every such "
                     "call")
    return "; ".join(notes)


def print_report(cmd: Command, report: Any, *, faked: bool = False) -> int:
    """Print a ``RunReport`` (``faked``: recorded without running, ``--fake``/``baseline``)."""
    verb = {"up": "Applied", "down": "Reverted"}[report.direction]
    if report.direction == "up" and any(s.status == "baselined" for s in report.steps):
        verb = "Baselined"
    if faked:
        verb = "Marked reverted" if report.direction == "down" else "Baselined"
    if not report.steps:
        text = f"Nothing to do: {cmd.where} is at version {report.end_version}."
    else:
        text = (f"{verb} {plural(len(report.steps), 'migration')} on {cmd.where}: version "
                f"{report.start_version} -> {report.end_version}\n\n{steps_table(report)}")
        if faked:
            text += "\n\nNothing was run: only the records changed (faked: true)."
    if report.paused:
        text += "\n\n" + cronverbs.paused_text(report.paused)
    data = plain(report.model_dump())
    if faked:
        data["faked"] = True
    cmd.out.result(text, data)
    return EXIT_OK


def steps_table(report: Any) -> str:
    """A run's steps, one row each (a revert reads "reverted", a failure "FAILED")."""
    return text_table(
        ["VERSION", "DESCRIPTION", "RESULT", "MS", "TRANSACTION"],
        [[str(s.version), clip(s.description), shown(s.status).replace("failed", "FAILED"),
          str(s.duration_ms), yes(s.transactional)] for s in report.steps],
        right=[0, 3],
    )


def print_failed_run(out: Output, exc: MigrationError, where: str) -> None:
    """What a failed ``up``/``down`` did before its failure: the steps done, then the
    failed one (text on stdout; the error follows on stderr)."""
    report = exc.report
    done = [s for s in report.steps if s.status != "failed"]
    verb = {"up": "Applied", "down": "Reverted"}[report.direction]
    failed = report.failed
    what = f"migration {failed.version} failed" if failed is not None else "the run stopped"
    out.result(f"{verb} {plural(len(done), 'migration')} on {where} before {what}: version "
               f"{report.start_version} -> {report.end_version}\n\n{steps_table(report)}", None)


#: The write counts a dry run reports per collection, in its table's column order.
_COUNTS = ("matched", "modified", "inserted", "deleted", "upserted")


def print_rehearsal(cmd: Command, report: Any) -> int:
    """Print a dry run's ``RunReport``: one row per step and collection written; exit 1
    when a step would fail."""
    if not report.steps:
        cmd.out.result(f"Nothing to do: {cmd.where} is at version {report.end_version}.",
                       plain(report.model_dump()))
        return EXIT_OK
    rows = []
    for s in report.steps:
        result = {"rehearsed": "rehearsed", "failed": "WOULD FAIL"}.get(s.status,
                                                                          "not rehearsed")
        first = [str(s.version), clip(s.description), result,
                 str(s.duration_ms) if s.status != "not_rehearsed" else "-"]
        changes = sorted(s.changes.items())
        if not changes:
            none = "(no writes)" if s.status != "not_rehearsed" else "-"
            rows.append(first + [none] + ["-"] * len(_COUNTS))
        for i, (name, c) in enumerate(changes):
            rows.append((first if i == 0 else [""] * 4) + [name] +
                        [str(getattr(c, field)) for field in _COUNTS])
    table = text_table(["VERSION", "DESCRIPTION", "RESULT", "MS", "COLLECTION"] +
                       [f.upper() for f in _COUNTS], rows, right=[0, 3, 5, 6, 7, 8, 9])
    text = (f"Dry run on {cmd.where}: {report.direction} from version {report.start_version} "
            f"to {report.target_version}, {plural(len(report.steps), 'step')}; nothing "
            f"was stored\n\n{table}\n")
    remarks = [f"  {s.version}: {s.note}" for s in report.steps
               if s.status == "not_rehearsed" and s.note]
    failed = report.failed
    if failed is not None and failed.error is not None:
        remarks.append(f"  {failed.version} would fail: {failed.error.type}: "
                       f"{failed.error.message}\n    ({failed.note})")
    if remarks:
        text += "\n" + "\n".join(remarks) + "\n"
    text += "\n" + "\n".join(report.notes)
    cmd.out.result(text, plain(report.model_dump()))
    if failed is not None:
        cmd.out.explain(f"Dry run: migration {failed.version} would fail.")
        return EXIT_FAILED
    return EXIT_OK


def stored_traceback(error: Any) -> list[str]:
    """A stored error's place and traceback, indented under ``last error``."""
    location, trace = getattr(error, "location", None), getattr(error, "traceback", None)
    lines = [f"  at            {location}"] if location else []
    if trace:
        lines += ["  traceback:"] + [f"    {line}" for line in str(trace).rstrip().splitlines()]
    return lines


def history_rows(entries: Sequence[Any], repairs: Sequence[Any] = ()) -> list[Any]:
    """Attempts and repairs together, newest first."""
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return sorted([*entries, *repairs], reverse=True,
                  key=lambda row: getattr(row, "started_at", None) or
                  getattr(row, "at", None) or epoch)


def history_table(entries: Sequence[Any], repairs: Sequence[Any] = ()) -> str:
    """History entries and repairs as a table, newest first (a faked entry's status says
    so; a revert reads "reverted"; a repair says what it changed)."""
    rows = []
    for e in history_rows(entries, repairs):
        by = f"{e.user or '?'}@{e.host or '?'}"
        if hasattr(e, "action"):  # a repair noted on the record
            rows.append([when(e.at), str(e.version), "-", f"repair {e.action}", "-", by,
                         clip(e.detail, 60)])
            continue
        rows.append([when(e.started_at), str(e.version), e.direction,
                     shown(e.status) + (" (faked)" if getattr(e, "faked", False) else ""),
                     "-" if e.duration_ms is None else str(e.duration_ms), by,
                     clip(f"{e.error.type}: {e.error.message}", 60) if e.error else ""])
    return text_table(["STARTED (UTC)", "VERSION", "DIR", "STATUS", "MS", "BY", "DETAIL"],
                      rows, right=[1, 4])

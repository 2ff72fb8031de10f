"""``analytiq-migrations``: the command line. It parses, configures logging and prints;
every command is one call on ``Migrator``.

Exit codes (the contract's table): 0 done or nothing to do, 1 a migration failed,
2 usage or configuration, 3 lock busy, 4 validation problem, 5 cannot reach the
server, 6 pending migrations (``status --check``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence, TextIO

from . import __version__, cronverbs
from .cli_fleet import FLEET_VERBS, add_fleet_options, run_fleet, wants_fleet
from .config import BY_NAME, Layer, Settings, load, open_migrator, require
from .errors import ConfigurationError, MigrationError, redact
from .fastexit import exit_code, leave
from .hints import command_line
from .timetext import TEXT_TIME, json_time, text_time

PROG = "analytiq-migrations"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 4
EXIT_PENDING = 6
#: What TARGET may be; ASCII digits only (``int`` refuses "²", and reads other scripts'
#: digits as numbers nobody typed on purpose).
_TARGET = re.compile(r"^\s*(head|base|[+-]?[0-9]+)\s*$", re.IGNORECASE)
_VERSION = re.compile(r"^\s*[0-9]+\s*$")

#: Conventional shell codes for death by SIGINT / SIGTERM (128 + signal number).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: One line per command for ``--help`` (and the Flask group's listing).
COMMANDS = {
    "server": "run a local MongoDB-compatible replica set in the foreground and print its URI "
              "(the [server] extra); Ctrl-C stops it",
    "status": "show every migration's state; --check exits 6 if any are pending, 4 if unhealthy",
    "current": "print the current version (the highest applied), nothing else",
    "show": "everything about one version: record, checksums, file, last error, history",
    "plan": "show what `up [TARGET]` (or a lower target: a downgrade) would do; writes nothing",
    "up": "apply pending migrations up to TARGET (default: head); --fake records them only, "
          "--dry-run rehearses them and stores nothing",
    "down": "revert applied migrations above TARGET (a version, base, or -N); --fake records "
            "it only, --dry-run rehearses it",
    "history": "show the audit trail of every attempt, newest first",
    "validate": "check the database against the code; exits 4 on any problem",
    "repair": "explicit fixes: accept edited checksums, clear failed/interrupted attempts",
    "baseline": "record the database as at VERSION without running anything (adopt a "
                "database, or mark newer versions reverted)",
    "unlock": "remove an expired lock; --force breaks a live one",
    "new": "write the next NNNN_slug.py migration file from a template (no server needed)",
    "verify": "run the test kit's checks on a throw-away server, or with --uri in a scratch "
              "database it drops; exits 1 if one fails",
}

COMMANDS.update(cronverbs.COMMANDS)

EPILOG = """\
targets: a version number, head, base (no migrations), +N or -N (steps from the current one)
settings: flags > ANALYTIQ_MIGRATIONS_* / MONGODB_URI environment > [tool.analytiq_migrations]
  of --config PATH, else of the nearest pyproject.toml with it, from here up to the
  repository root; the database may also come from the URI path (mongodb://host/NAME)
exit codes: 0 done or nothing to do, 1 a migration failed, 2 usage or configuration,
  3 lock busy, 4 validation problem, 5 cannot reach the server, 6 pending (status --check)
"""

#: Width of the description column: keeps a status table within 100 columns.
DESCRIPTION_WIDTH = 44


_AFTER_INTERRUPT = ("Any lock this run held was released; a migration cut short shows as "
                    "interrupted in `status`, and the next `up` re-runs it if that is safe.")


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (releasing the lock) like Ctrl-C does."""


# -- parsing -------------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before and after the command (all default to "not given")."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("settings")
    group.add_argument("--uri", metavar="URI",
                       help="MongoDB URI (env ANALYTIQ_MIGRATIONS_URI or MONGODB_URI)")
    group.add_argument("--client", metavar="MODULE:ATTR",
                       help="use your code's MongoClient or Database (or a function without "
                       "arguments returning one) instead of --uri (env "
                       "ANALYTIQ_MIGRATIONS_CLIENT)")
    group.add_argument("--database", metavar="NAME",
                       help="database name (env ANALYTIQ_MIGRATIONS_DATABASE; default: the "
                       "URI's path)")
    group.add_argument("--migrations", metavar="SOURCE",
                       help="directory of NNNN_slug.py files, or a dotted package/module "
                       "name (env ANALYTIQ_MIGRATIONS_SOURCE)")
    group.add_argument("--collection", metavar="NAME",
                       help="records collection (default migrations; history goes to "
                       "NAME_history)")
    group.add_argument("--transactions", choices=("auto", "always", "never"),
                       help="one transaction per migration: auto (where the server can), "
                       "always, never (default auto)")
    group.add_argument("--lock-wait", metavar="SECONDS",
                       help="wait this long for a busy lock instead of exiting 3 (default 0)")
    group.add_argument("--lock-ttl", metavar="SECONDS",
                       help="how long the lock outlives a run that stops renewing it (a "
                       "killed or frozen process) before another run may take it over; a "
                       "live run renews it every third of it, and a migration's transaction "
                       "holds it for as long as the transaction can live (default 60)")
    group.add_argument("--on-drift", choices=("error", "warn", "ignore"),
                       help="what an edited applied migration does to `up` (default error)")
    group.add_argument("--allow-out-of-order", action="store_true",
                       help="apply pending versions below the current one")
    group.add_argument("--server-timeout", metavar="SECONDS",
                       help="how long to look for the server before exiting 5 (default 15)")
    group.add_argument("--config", metavar="PATH", type=Path,
                       help="read [tool.analytiq_migrations] from this file (default: the "
                       "nearest pyproject.toml with that table, from here up to the "
                       "repository root)")
    output = common.add_argument_group("output")
    output.add_argument("--json", action="store_true",
                        help="print one JSON document (results, or {\"error\": ...})")
    output.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging of every step")
    output.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing on success (for cron); errors still go to stderr")
    return common


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The full parser: common options, then one subcommand per verb."""
    common = _common_options()
    target: dict[str, Any] = {"metavar": "TARGET", "type": _target_arg}
    parser = argparse.ArgumentParser(
        prog=prog, parents=[common], epilog=EPILOG,
        description="Versioned, lock-safe MongoDB migrations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def verb(name: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, parents=[common], help=COMMANDS[name],
                                  description=COMMANDS[name], epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in FLEET_VERBS:
            add_fleet_options(parser)
        return parser

    strict_help = ("also fail (exit 4) on warnings: versions applied above the code's newest "
                   "one (a database ahead of older code)")
    status = verb("status")
    status.add_argument(
        "--check", action="store_true",
        help="for deploy gates: exit 0 only when nothing is pending and nothing is wrong")
    status.add_argument("--strict", action="store_true", help=strict_help)
    verb("current")
    verb("show").add_argument("version", type=_version_arg, metavar="VERSION")
    verb("plan").add_argument("target", nargs="?", **target)
    fake_help = ("record the migrations as {} without running their code (faked: true "
                 "on the records and history), for changes made by other means")
    up = verb("up")
    up.add_argument("target", nargs="?", **target)
    up.add_argument("--fake", action="store_true", help=fake_help.format("applied (baselined)"))
    dry_help = ("rehearse: run the steps in one transaction that is aborted and report what "
                "each would write, per collection; stores nothing (replica set or mongos only)")
    up.add_argument("--dry-run", action="store_true", help=dry_help)
    down = verb("down")
    down.add_argument("target", **target)
    down.add_argument("--fake", action="store_true", help=fake_help.format("reverted"))
    down.add_argument("--dry-run", action="store_true", help=dry_help)
    history = verb("history")
    history.add_argument("version", nargs="?", type=_version_arg, metavar="VERSION")
    history.add_argument("--limit", type=int, default=0, metavar="N",
                         help="newest N entries only (default: all)")
    verb("validate").add_argument("--strict", action="store_true", help=strict_help)
    repair = verb("repair")
    repair.add_argument("--accept-checksums", action="store_true",
                        help="record the current code's checksums for edited applied migrations")
    repair.add_argument("--clear-failed", action="store_true",
                        help="forget failed/interrupted attempts you undid by hand, so the "
                        "next run starts them afresh (finished by hand instead: `up --fake "
                        "VERSION`, or `down --fake` to the version below, for a revert)")
    repair.add_argument("--accept-missing", action="store_true",
                        help="record applied versions whose files were pruned or squashed as "
                        "removed on purpose, so they are no longer reported missing")
    verb("baseline").add_argument("version", type=_version_arg, metavar="VERSION")
    verb("unlock").add_argument("--force", action="store_true",
                                help="break the lock even if its holder's lease is live")
    verb("new").add_argument("description", nargs="+", metavar="DESCRIPTION")
    verb("verify").add_argument("--seed", metavar="MODULE:ATTR",
                                help="{version: data} inserted before that version's up")
    server = verb("server")
    server.add_argument("--port", type=int, default=27017, metavar="P",
                        help="TCP port on 127.0.0.1 (default 27017, mongod's)")
    server.add_argument("--dir", type=Path, default=None, metavar="DIR",
                        help="keep the data in DIR (default: a temporary directory, removed "
                        "when it stops)")
    cronverbs.add_arguments({"up": up, "status": status}, verb, _version_arg)
    return parser


def _target_arg(text: str) -> str:
    """TARGET as typed, once it is one (a usage error, exit 2, otherwise)."""
    if not _TARGET.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a target: use a version number (ASCII digits), head, base, "
            "+N or -N")
    return text


def _version_arg(text: str) -> int:
    """VERSION as a number (a usage error, exit 2, unless it is ASCII digits)."""
    if not _VERSION.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a version: use a number in ASCII digits (0-9)")
    return int(text)


# -- output --------------------------------------------------------------------------------


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
            data = _plain(exc.report.model_dump()) if exc.report is not None else {}
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
def _logging(stream: TextIO, *, verbose: bool, quiet: bool, as_json: bool) -> Iterator[None]:
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


# -- running a command ---------------------------------------------------------------------


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


def console() -> NoReturn:
    """The ``analytiq-migrations`` executable (and ``python -m analytiq_migrations``):
    ``main()``, which closes the library's own clients, then ``fastexit.leave``: every
    ``atexit`` handler (user code's too) runs and the output is flushed, but the process
    does not wait ~0.5 s for pymongo's monitor threads to wake and be joined."""
    try:
        code = main()
    except SystemExit as exc:  # sys.exit() in a migration or in a --client module
        code = exit_code(exc)
    leave(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code."""
    previous = _install_sigterm()
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # like `python -m`: a dotted --migrations name resolves from the project
        sys.path.insert(0, cwd)
    try:
        return run(argv)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run(
    argv: Optional[Sequence[str]] = None,
    *,
    prog: str = PROG,
    framework: Optional[Callable[[], Layer]] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    """Parse ``argv``, run the command, print; returns the exit code (never exits).

    ``framework`` builds the Flask/Django settings layer (between flags and environment);
    it is called after parsing, so its errors are reported like any other.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser(prog)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version, or a usage error (argparse exits 2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    given = vars(args)
    out = Output(stdout, stderr, json=given.get("json", False), quiet=given.get("quiet", False),
                 verbose=given.get("verbose", False))
    if given.get("verbose") and out.quiet:
        out.note(f"{prog}: error: -v and -q contradict each other; choose one.")
        return EXIT_USAGE
    with _logging(stderr, verbose=given.get("verbose", False), quiet=out.quiet,
                  as_json=out.json), command_line(prog):  # hints name flags and verbs
        return _dispatch(args, framework, out, prog)


def _dispatch(args: argparse.Namespace, framework: Optional[Callable[[], Layer]],
              out: Output, prog: str) -> int:
    """Resolve settings and run the handler, turning every failure into an exit code."""
    command: Optional[Command] = None
    try:
        flags = {name: value for name, value in vars(args).items() if name in BY_NAME}
        settings, layers = load(flags, framework() if framework else None,
                                config=vars(args).get("config"))
        logging.getLogger("analytiq_migrations").debug("settings:\n%s", settings.describe())
        command = Command(args, settings, layers, out)
        if wants_fleet(args):
            return run_fleet(command)
        return HANDLERS[args.command](command)
    except MigrationError as exc:
        if exc.report is not None and not out.json:
            _failed_run(out, exc, f"'{command.migrator.db.name}'" if command and
                        command.migrator else "the database")
        out.error(exc, prog)
        return exc.exit_code
    except KeyboardInterrupt:
        out.note(f"{prog}: interrupted (Ctrl-C). {_AFTER_INTERRUPT}")
        _interrupted_report(command, "SIGINT", EXIT_SIGINT)
        return EXIT_SIGINT
    except _Terminated:
        out.note(f"{prog}: terminated (SIGTERM). {_AFTER_INTERRUPT}")
        _interrupted_report(command, "SIGTERM", EXIT_SIGTERM)
        return EXIT_SIGTERM
    except Exception as exc:
        if command is not None and command.migrator is not None and _is_driver_error(exc):
            translated = command.migrator.translate_error(exc)
            out.error(translated, prog)
            return int(translated.exit_code)
        out.note(f"{prog}: internal error: {type(exc).__name__}: {exc}")
        if args.__dict__.get("verbose"):
            out.note("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        else:
            out.note("  -> Run again with -v for the traceback, and please report it.")
        return EXIT_FAILED
    finally:
        if command is not None and command.migrator is not None:
            command.migrator.close()  # a client of the user's own stays open: it is theirs


def _interrupted_report(command: Optional[Command], signal_name: str, exit_code: int) -> None:
    """With ``--json``, an interrupted ``up``/``down`` still prints its JSON document: the
    steps this process finished (from the history it wrote), where the database stands
    now, and the interruption."""
    if command is None or not command.out.json:
        return
    data: dict[str, Any] = {"interrupted": {
        "signal": signal_name, "exit_code": exit_code,
        "message": f"{'terminated' if signal_name == 'SIGTERM' else 'interrupted'} "
                   f"({signal_name}). {_AFTER_INTERRUPT}"}}
    m = command.migrator
    if m is not None and command.run_started is not None:
        data["direction"] = command.run_direction
        try:
            mine = [e for e in reversed(m.history()) if e.pid == os.getpid()
                    and e.host == socket.gethostname() and e.started_at is not None
                    and e.started_at >= command.run_started]
            data["steps"] = [_plain({
                "version": e.version, "direction": e.direction, "description": e.description,
                "status": e.status, "transactional": e.transactional,
                "duration_ms": e.duration_ms, "error": e.error.model_dump() if e.error
                else None}) for e in mine]
            data["end_version"] = m.current_version()
        except Exception as exc:  # the server may be what was cut off
            data["steps"] = None
            data["unreadable"] = f"{type(exc).__name__}: {exc}"
    command.out.result("", data)


def _is_driver_error(exc: BaseException) -> bool:
    """A pymongo error (from a read the CLI makes outside ``Migrator``'s methods)."""
    from pymongo.errors import PyMongoError

    return isinstance(exc, PyMongoError)


def _install_sigterm() -> Any:
    """Turn SIGTERM (systemd stop, kubectl delete) into an orderly unwind; returns the old one."""

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


# -- formatting helpers --------------------------------------------------------------------


def _when(value: Optional[datetime]) -> str:
    """``2024-05-01T12:00:03Z`` or ``-``: the one form of a time in text (JSON adds the
    milliseconds, ``_plain``)."""
    if value is None:
        return "-"
    return text_time(value)


def _clip(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """``text`` cut to ``width`` characters (ending in ``...`` when cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()
           ) -> str:
    """A plain aligned table; columns in ``right`` are right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  " + "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def _dump(items: Sequence[Any]) -> list[Any]:
    """Pydantic models as JSON-ready dicts (ISO-8601 UTC times)."""
    return [_plain(item.model_dump()) for item in items]


def _plain(value: Any) -> Any:
    """JSON-ready data: ISO-8601 UTC times; BSON values from checkpoints and the lock
    (``ObjectId``, binary session ids, ``Decimal128``...) as strings (binary as hex)."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, datetime):
        return json_time(value)
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _problems_text(problems: Sequence[Any]) -> str:
    """A bulleted list of problems with what to do about each (warnings say so)."""
    return "\n".join(f"  - {'warning: ' if p.severity == 'warning' else ''}{p.message}\n"
                     f"    -> {p.hint}" for p in problems)


def _failing(problems: Sequence[Any], strict: bool) -> list[Any]:
    """The problems that fail a gate: errors, and with ``--strict`` warnings too."""
    return [p for p in problems if strict or p.severity != "warning"]


def _yes(flag: bool) -> str:
    """``yes`` / ``no``."""
    return "yes" if flag else "no"


def _plural(count: int, word: str) -> str:
    """``1 migration`` / ``2 migrations``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


# -- commands ------------------------------------------------------------------------------


def cmd_status(cmd: Command) -> int:
    """``status [--check]``."""
    from .fleetreport import pending_versions
    from .lock import describe, lease_live

    m = cmd.open()
    rows = m.status()
    problems = m.validate()
    current = m.current_version()
    lock = m.lock_info()
    pending = pending_versions(m.migrations, rows)
    head = max((int(x.version or 0) for x in m.migrations), default=0)
    lock_live = lock is not None and lease_live(lock.expires_at, m.server_now())
    data = {
        "database": m.db.name, "current_version": current, "head_version": head,
        "pending": pending, "healthy": not _failing(problems, False),
        "migrations": _dump(rows), "problems": _dump(problems),
        "lock": _plain(lock.model_dump()) if lock else None,
    }
    table = _table(
        ["VERSION", "DESCRIPTION", "STATUS", "APPLIED AT (UTC)", "CHECKSUM"],
        [[str(r.version), _clip(r.description), _shown(r.status), _when(r.applied_at),
          {True: "ok", False: "CHANGED", None: "-"}[r.checksum_ok]] for r in rows],
        right=[0],
    ) if rows else "  (no migrations in the code or the database)"
    lock_text = "lock free" if lock is None else \
        f"locked by {describe(lock)}" if lock_live else f"expired lock of {describe(lock)}"
    latest = f"latest {head}" if current <= head else \
        f"the code's latest is {head}: the database is ahead of the code"
    text = (f"Database {cmd.where} at version {current} ({latest}): "
            f"{len(pending)} pending; {lock_text}\n\n{table}\n")
    checkpoints = [f"  {r.version}: {r.checkpoint}{cronverbs.row_note(r)}"
                   for r in rows if r.checkpoint]
    if checkpoints:
        text += "\nCheckpoints (where unfinished batch_update calls resume):\n" + \
            "\n".join(checkpoints) + "\n"
    if problems:
        text += f"\nProblems:\n{_problems_text(problems)}\n"
    cmd.out.result(text, data)
    cronverbs.status_metrics(cmd, m)
    if not cmd.args.check:
        return EXIT_OK
    blocking = [p for p in _failing(problems, cmd.args.strict) if p.kind != "running"]
    if blocking:
        cmd.out.explain(f"{cmd.where} is unhealthy:\n{_problems_text(blocking)}")
        return EXIT_PROBLEMS
    if pending or any(p.kind == "running" for p in problems):
        waiting = ", ".join(str(v) for v in pending) or "a run in progress"
        cmd.out.explain(f"{cmd.where} has pending migrations: {waiting}")
        return EXIT_PENDING
    return EXIT_OK


def cmd_plan(cmd: Command) -> int:
    """``plan [TARGET]``."""
    m = cmd.open()
    plan = m.plan(cmd.args.target)
    if not plan.steps:
        text = f"Nothing to do: {cmd.where} is at version {plan.current_version}."
    else:
        table = _table(
            ["VERSION", "DIRECTION", "DESCRIPTION", "TRANSACTION", "NOTE"],
            [[str(s.version), s.direction, _clip(s.description), _yes(s.transactional),
              _step_note(s)] for s in plan.steps],
            right=[0],
        )
        text = (f"Plan for {cmd.where}: {plan.direction} from version {plan.current_version} "
                f"to {plan.target_version}, {_plural(len(plan.steps), 'step')}:\n\n{table}")
    if plan.paused:
        text += "\n\n" + cronverbs.paused_text(plan.paused)
    cmd.out.result(text, _plain(plan.model_dump()))
    return EXIT_OK


def _step_note(step: Any) -> str:
    """A plan step's NOTE: why it is there, and a call its transaction would refuse."""
    notes = [step.note] if step.note else []
    if step.refused:
        notes.append(f"REFUSED in a transaction: {step.refused}; `validate` lists every such "
                     "call")
    return "; ".join(notes)


def _report(cmd: Command, report: Any, *, faked: bool = False) -> int:
    """Print a ``RunReport`` (``faked``: recorded without running, ``--fake``/``baseline``)."""
    verb = {"up": "Applied", "down": "Reverted"}[report.direction]
    if report.direction == "up" and any(s.status == "baselined" for s in report.steps):
        verb = "Baselined"
    if faked:
        verb = "Marked reverted" if report.direction == "down" else "Baselined"
    if not report.steps:
        text = f"Nothing to do: {cmd.where} is at version {report.end_version}."
    else:
        text = (f"{verb} {_plural(len(report.steps), 'migration')} on {cmd.where}: version "
                f"{report.start_version} -> {report.end_version}\n\n{_steps_table(report)}")
        if faked:
            text += "\n\nNothing was run: only the records changed (faked: true)."
    if report.paused:
        text += "\n\n" + cronverbs.paused_text(report.paused)
    data = _plain(report.model_dump())
    if faked:
        data["faked"] = True
    cmd.out.result(text, data)
    return EXIT_OK


def _steps_table(report: Any) -> str:
    """A run's steps, one row each (a revert reads "reverted", a failure "FAILED")."""
    return _table(
        ["VERSION", "DESCRIPTION", "RESULT", "MS", "TRANSACTION"],
        [[str(s.version), _clip(s.description), _shown(s.status).replace("failed", "FAILED"),
          str(s.duration_ms), _yes(s.transactional)] for s in report.steps],
        right=[0, 3],
    )


def _shown(status: str) -> str:
    """A status as people read it: a successful revert is "reverted" (stored as
    ``rolled_back``, which reads like a failure)."""
    return "reverted" if status == "rolled_back" else status


def _failed_run(out: Output, exc: MigrationError, where: str) -> None:
    """What a failed ``up``/``down`` did before its failure: the steps done, then the
    failed one (text on stdout; the error follows on stderr)."""
    report = exc.report
    done = [s for s in report.steps if s.status != "failed"]
    verb = {"up": "Applied", "down": "Reverted"}[report.direction]
    failed = report.failed
    what = f"migration {failed.version} failed" if failed is not None else "the run stopped"
    out.result(f"{verb} {_plural(len(done), 'migration')} on {where} before {what}: version "
               f"{report.start_version} -> {report.end_version}\n\n{_steps_table(report)}", None)


_COUNTS = ("matched", "modified", "inserted", "deleted", "upserted")


def _rehearsal_report(cmd: Command, report: Any) -> int:
    """Print a dry run's ``RunReport``: one row per step and collection written; exit 1
    when a step would fail."""
    if not report.steps:
        cmd.out.result(f"Nothing to do: {cmd.where} is at version {report.end_version}.",
                       _plain(report.model_dump()))
        return EXIT_OK
    rows = []
    for s in report.steps:
        result = {"rehearsed": "rehearsed", "failed": "WOULD FAIL"}.get(s.status,
                                                                          "not rehearsed")
        first = [str(s.version), _clip(s.description), result,
                 str(s.duration_ms) if s.status != "not_rehearsed" else "-"]
        changes = sorted(s.changes.items())
        if not changes:
            none = "(no writes)" if s.status != "not_rehearsed" else "-"
            rows.append(first + [none] + ["-"] * len(_COUNTS))
        for i, (name, c) in enumerate(changes):
            rows.append((first if i == 0 else [""] * 4) + [name] +
                        [str(getattr(c, field)) for field in _COUNTS])
    table = _table(["VERSION", "DESCRIPTION", "RESULT", "MS", "COLLECTION"] +
                   [f.upper() for f in _COUNTS], rows, right=[0, 3, 5, 6, 7, 8, 9])
    text = (f"Dry run on {cmd.where}: {report.direction} from version {report.start_version} "
            f"to {report.target_version}, {_plural(len(report.steps), 'step')}; nothing "
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
    cmd.out.result(text, _plain(report.model_dump()))
    if failed is not None:
        cmd.out.explain(f"Dry run: migration {failed.version} would fail.")
        return EXIT_FAILED
    return EXIT_OK


def _starting(cmd: Command, direction: str) -> None:
    """Remember when this ``up``/``down`` began (see ``_interrupted_report``)."""
    # A second back: the history's times come from this machine's clock, in whole ms.
    cmd.run_started = datetime.now(timezone.utc) - timedelta(seconds=1)
    cmd.run_direction = direction


def cmd_up(cmd: Command) -> int:
    """``up [TARGET] [--fake | --dry-run]``."""
    if not cmd.args.metrics_file and _nothing_to_do(cmd):
        return EXIT_OK
    m = cmd.open()
    _starting(cmd, "up")
    fake = cmd.args.fake
    if cmd.args.dry_run:
        return _rehearsal_report(cmd, m.upgrade(cmd.args.target, fake=fake, dry_run=True))
    return _report(cmd, cronverbs.upgrade(cmd, m, cmd.args.target, fake), faked=fake)


def _nothing_to_do(cmd: Command) -> bool:
    """The everyday no-op ``up`` to head, answered without the runner (``noop.py``): True
    when it printed "Nothing to do"; False (having changed nothing) for the full path."""
    s, args = cmd.settings, cmd.args
    target = str(args.target if args.target is not None else "head").strip().lower()
    if args.fake or args.dry_run or target != "head" or s.client is not None \
            or s.transactions == "always" or not s.uri or s.migrations is None \
            or not os.path.isdir(str(s.migrations)):
        return False  # the full path: it checks what these need (or the user's code runs)
    from pymongo.errors import ConfigurationError as PyMongoConfigurationError

    from .config import make_client, ping
    from .loader import load_migrations
    from .noop import read_and_judge

    log = logging.getLogger("analytiq_migrations")
    migrations = load_migrations(s.migrations, lazy=True)  # its errors are the full path's
    client = make_client(s)
    try:
        try:
            database = client[s.database] if s.database else client.get_default_database()
        except PyMongoConfigurationError:
            client.close()
            return False  # no database named anywhere: the full path says how to name one
        ping(client)  # an unreachable server or bad credentials: the full path's errors
        version, why = read_and_judge(database, s.collection, migrations)
    except BaseException:
        client.close()
        raise
    if version is None:
        log.debug("no-op check: %s; taking the full path", why)
        cmd.loaded, cmd.client = migrations, client  # the full path goes on with them
        return False
    client.close()
    log.debug("no-op check: %s", why)
    log.info("Nothing to do: database at version %d", version)
    clock = datetime.now(timezone.utc)
    now = _plain(clock.replace(microsecond=clock.microsecond // 1000 * 1000))  # as BSON keeps it
    cmd.out.result(f"Nothing to do: '{database.name}' is at version {version}.", {
        # The fields of a RunReport (what the full path prints), for --json.
        "run_id": uuid.uuid4().hex, "direction": "up", "start_version": version,
        "end_version": version, "started_at": now, "finished_at": now, "steps": [],
        "dry_run": False, "target_version": None, "notes": [], "paused": None,
        "lock_wait_s": 0.0})
    return True


def cmd_down(cmd: Command) -> int:
    """``down TARGET [--fake | --dry-run]``."""
    m = cmd.open()
    _starting(cmd, "down")
    fake = cmd.args.fake
    if cmd.args.dry_run:
        return _rehearsal_report(cmd, m.downgrade(cmd.args.target, fake=fake, dry_run=True))
    return _report(cmd, m.downgrade(cmd.args.target, fake=fake), faked=fake)


def cmd_current(cmd: Command) -> int:
    """``current``: the version alone (scripts: ``v=$(analytiq-migrations current)``)."""
    m = cmd.open()
    version = m.current_version()
    cmd.out.result(str(version), {"database": m.db.name, "current_version": version})
    return EXIT_OK


def cmd_show(cmd: Command) -> int:
    """``show VERSION``."""
    m = cmd.open()
    details = m.show(cmd.args.version)
    record = details.record
    lines = [f"Version {details.version} in {cmd.where}: {details.description}",
             f"  status        {_shown(details.status)}"
             + (" (faked: recorded without running the code)" if details.faked else ""),
             f"  file          {details.file or '- (not in the code)'}"]
    if details.checksum or details.recorded_checksum:
        state = {True: "ok", False: "CHANGED since it was applied", None: "-"}[details.checksum_ok]
        lines.append(f"  checksum      {(details.checksum or '-')[:16]} (code), "
                     f"{(details.recorded_checksum or '-')[:16]} (recorded): {state}")
    if details.transactional is not None or details.reversible is not None:
        reversible = "unknown (no code for it)" if details.reversible is None else \
            _yes(details.reversible)
        lines.append(f"  transaction   {_yes(bool(details.transactional))}; reversible: "
                     f"{reversible}")
    if record is not None:
        lines.append(f"  last run      {record.direction} {_when(record.started_at)} -> "
                     f"{_when(record.finished_at)} by {record.user or '?'}@{record.host or '?'} "
                     f"(run {record.run_id or '?'}, {record.attempts} attempt(s))")
        if record.applied_at:
            lines.append(f"  applied at    {_when(record.applied_at)}")
        if cronverbs.progress_text(record.progress):
            lines.append(f"  progress      {cronverbs.progress_text(record.progress)}")
    if details.last_failure is not None and details.last_failure.error is not None:
        failure = details.last_failure
        lines.append(f"  last error    {_when(failure.started_at)} ({failure.direction}, "
                     f"{failure.status}): {failure.error.type}: "
                     f"{_clip(failure.error.message, 200)}")
        lines += _stored_traceback(failure.error)
    if details.history:
        lines += ["", "History (newest first):", _history_table(details.history)]
    else:
        lines += ["", "No history for this version."]
    data = _plain(details.model_dump())
    data["database"] = m.db.name
    cmd.out.result("\n".join(lines), data)
    return EXIT_OK


def _stored_traceback(error: Any) -> list[str]:
    """A stored error's place and traceback, indented under ``last error``."""
    location, trace = getattr(error, "location", None), getattr(error, "traceback", None)
    lines = [f"  at            {location}"] if location else []
    if trace:
        lines += ["  traceback:"] + [f"    {line}" for line in str(trace).rstrip().splitlines()]
    return lines


def cmd_history(cmd: Command) -> int:
    """``history [VERSION] [--limit N]``."""
    if cmd.args.limit < 0:
        raise ConfigurationError(f"--limit must be 0 (all) or more, not {cmd.args.limit}.")
    m = cmd.open(need_code=False)
    entries = m.history(cmd.args.version, limit=cmd.args.limit)
    repairs = m.repairs(cmd.args.version)
    if cmd.args.limit:  # the newest N lines of the table, repairs included
        shown = _history_rows(entries, repairs)[:cmd.args.limit]
        entries = [e for e in entries if any(e is row for row in shown)]
        repairs = [r for r in repairs if any(r is row for row in shown)]
    if entries or repairs:
        text = _history_table(entries, repairs)
    else:
        text = f"No history{f' for version {cmd.args.version}' if cmd.args.version else ''} " \
               f"in {cmd.where}."
    cmd.out.result(text, {"database": m.db.name, "entries": _dump(entries),
                          "repairs": _dump(repairs)})
    return EXIT_OK


def _history_rows(entries: Sequence[Any], repairs: Sequence[Any] = ()) -> list[Any]:
    """Attempts and repairs together, newest first."""
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    return sorted([*entries, *repairs], reverse=True,
                  key=lambda row: getattr(row, "started_at", None) or
                  getattr(row, "at", None) or epoch)


def _history_table(entries: Sequence[Any], repairs: Sequence[Any] = ()) -> str:
    """History entries and repairs as a table, newest first (a faked entry's status says
    so; a revert reads "reverted"; a repair says what it changed)."""
    rows = []
    for e in _history_rows(entries, repairs):
        by = f"{e.user or '?'}@{e.host or '?'}"
        if hasattr(e, "action"):  # a repair noted on the record
            rows.append([_when(e.at), str(e.version), "-", f"repair {e.action}", "-", by,
                         _clip(e.detail, 60)])
            continue
        rows.append([_when(e.started_at), str(e.version), e.direction,
                     _shown(e.status) + (" (faked)" if getattr(e, "faked", False) else ""),
                     "-" if e.duration_ms is None else str(e.duration_ms), by,
                     _clip(f"{e.error.type}: {e.error.message}", 60) if e.error else ""])
    return _table(["STARTED (UTC)", "VERSION", "DIR", "STATUS", "MS", "BY", "DETAIL"], rows,
                  right=[1, 4])


def cmd_validate(cmd: Command) -> int:
    """``validate``."""
    m = cmd.open()
    problems = m.validate()
    failing = _failing(problems, cmd.args.strict)
    data = {"database": m.db.name, "healthy": not failing, "problems": _dump(problems)}
    if not problems:
        cmd.out.result(f"No problems: {cmd.where} matches the code.", data)
        return EXIT_OK
    text = f"{_plural(len(problems), 'problem')} in {cmd.where}:\n{_problems_text(problems)}"
    cmd.out.result(text, data)
    if not failing:
        return EXIT_OK  # warnings only (a database ahead of older code)
    cmd.out.explain(text)
    return EXIT_PROBLEMS


def cmd_repair(cmd: Command) -> int:
    """``repair [--accept-checksums] [--clear-failed] [--accept-missing]``."""
    if not (cmd.args.accept_checksums or cmd.args.clear_failed or cmd.args.accept_missing):
        raise ConfigurationError(
            "repair needs to be told what to fix: --accept-checksums, --clear-failed and/or "
            "--accept-missing.",
            hint="Run `validate` first: each problem it lists says which repair fits.",
        )
    m = cmd.open()
    actions = m.repair(accept_checksums=cmd.args.accept_checksums,
                       clear_failed=cmd.args.clear_failed,
                       accept_missing=cmd.args.accept_missing)
    text = ("Repaired:\n" + "\n".join(f"  version {a.version}: {a.detail}" for a in actions)
            ) if actions else f"Nothing to repair in {cmd.where}."
    cmd.out.result(text, {"database": m.db.name, "actions": _dump(actions)})
    return EXIT_OK


def cmd_baseline(cmd: Command) -> int:
    """``baseline VERSION``."""
    m = cmd.open()
    return _report(cmd, m.baseline(cmd.args.version), faked=True)


def cmd_unlock(cmd: Command) -> int:
    """``unlock [--force]``."""
    m = cmd.open(need_code=False)
    removed = m.unlock(force=cmd.args.force)
    text = "Removed the migration lock." if removed else "The migration lock was not held."
    cmd.out.result(text, {"database": m.db.name, "removed": removed})
    return EXIT_OK


def cmd_new(cmd: Command) -> int:
    """``new DESCRIPTION``: no server needed."""
    from .templates import new_migration

    require(cmd.settings, ["migrations"], cmd.layers)
    created = new_migration(str(cmd.settings.migrations), " ".join(cmd.args.description))
    text = str(created.path)
    if created.made_directory:
        text = f"Created directory {created.path.parent}\n{text}"
    cmd.out.result(text, {"path": str(created.path), "version": created.version})
    return EXIT_OK


def cmd_verify(cmd: Command) -> int:
    """``verify [--uri URI] [--seed MODULE:ATTR]``: only a --uri given here is used."""
    from .verify import load_seed, verify

    require(cmd.settings, ["migrations"], cmd.layers)
    seed = load_seed(cmd.args.seed) if cmd.args.seed else None
    client = None
    if cmd.settings.client is not None:  # --client / ANALYTIQ_MIGRATIONS_CLIENT: the app's
        from .config import resolve_client

        client = resolve_client(cmd.settings.client,
                                cmd.settings.origin.get("client", "the client setting"))
    report = verify(cmd.settings.migrations or "", getattr(cmd.args, "uri", None), seed=seed,
                    collection=cmd.settings.collection, transactions=cmd.settings.transactions,
                    client=client)
    where = report.server + (f", scratch database {report.database} (dropped)"
                             if report.database else "")
    passed = sum(r.passed for r in report.results)
    lines = [f"{passed} of {len(report.results) + len(report.not_run)} checks passed on {where}"]
    lines += [r.explain() for r in report.results] + [f"not run: {n}" for n in report.not_run]
    cmd.out.result("\n".join(lines), report.to_dict())
    if not report.passed:
        cmd.out.explain(lines[0])
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_server(cmd: Command) -> int:
    """``server [--port P] [--dir DIR]``: runs until Ctrl-C / SIGTERM, then exits 0."""
    from .localserver import banner, serve

    def announce(server: Any) -> None:
        data = {"uri": server.uri, "address": server.address, "port": server.port,
                "data_dir": str(server.data_dir), "kept": cmd.args.dir is not None,
                "log": str(server.log_path)}
        if cmd.out.quiet:
            cmd.out.stdout.write(server.uri + "\n")  # -q still says where it is
            cmd.out.stdout.flush()
        cmd.out.result(banner(server, kept=cmd.args.dir is not None), data)

    try:
        serve(cmd.args.port, cmd.args.dir, announce)
    except (KeyboardInterrupt, _Terminated):
        if not cmd.out.quiet:
            cmd.out.note("Stopped the local server.")
    return EXIT_OK


HANDLERS: dict[str, Callable[[Command], int]] = {
    "server": cmd_server,
    "status": cmd_status,
    "current": cmd_current,
    "show": cmd_show,
    "plan": cmd_plan,
    "up": cmd_up,
    "pause": cronverbs.cmd_pause,
    "resume": cronverbs.cmd_resume,
    "down": cmd_down,
    "history": cmd_history,
    "validate": cmd_validate,
    "repair": cmd_repair,
    "baseline": cmd_baseline,
    "unlock": cmd_unlock,
    "new": cmd_new,
    "verify": cmd_verify,
}

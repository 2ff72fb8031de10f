"""``analytiq-migrations``: the command line. It parses, configures logging and prints;
every command is one call on ``Migrator``.

This module runs a command: ``main()`` (the entry point), ``run()`` (what the Flask and
Django commands call) and the turning of every failure into an exit code. The rest, by
concern: ``cli_args`` the parser, ``cli_command`` what a handler is given and the exit
codes, ``cli_output`` where output goes and how results read, ``cli_verbs`` the verbs on
one database, ``cli_tools`` ``new``/``verify``/``server``, ``cronverbs`` ``pause``/
``resume`` and the cron options, ``cli_fleet`` ``--databases``.

Exit codes (the contract's table): 0 done or nothing to do, 1 a migration failed,
2 usage or configuration, 3 lock busy, 4 validation problem, 5 cannot reach the
server, 6 pending migrations (``status --check``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence, TextIO

from . import cli_tools, cli_verbs, cronverbs
from .cli_args import COMMANDS, EPILOG, PROG, build_parser
from .cli_command import (
    AFTER_INTERRUPT,
    EXIT_FAILED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    Command,
    Terminated,
)
from .cli_fleet import run_fleet, wants_fleet
from .cli_output import Output, log_to, plain, print_failed_run
from .config import BY_NAME, Layer, load
from .errors import MigrationError
from .fastexit import exit_code, leave
from .hints import command_line

__all__ = ["COMMANDS", "EPILOG", "HANDLERS", "PROG", "Command", "Output", "build_parser",
           "console", "main", "run"]

#: The handler of each verb (``--databases`` goes to ``cli_fleet`` instead).
HANDLERS: dict[str, Callable[[Command], int]] = {
    "server": cli_tools.cmd_server,
    "status": cli_verbs.cmd_status,
    "current": cli_verbs.cmd_current,
    "show": cli_verbs.cmd_show,
    "plan": cli_verbs.cmd_plan,
    "up": cli_verbs.cmd_up,
    "pause": cronverbs.cmd_pause,
    "resume": cronverbs.cmd_resume,
    "down": cli_verbs.cmd_down,
    "history": cli_verbs.cmd_history,
    "validate": cli_verbs.cmd_validate,
    "repair": cli_verbs.cmd_repair,
    "baseline": cli_verbs.cmd_baseline,
    "unlock": cli_verbs.cmd_unlock,
    "new": cli_tools.cmd_new,
    "verify": cli_tools.cmd_verify,
}


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
    with log_to(stderr, verbose=given.get("verbose", False), quiet=out.quiet,
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
            print_failed_run(out, exc, f"'{command.migrator.db.name}'" if command and
                             command.migrator else "the database")
        out.error(exc, prog)
        return exc.exit_code
    except KeyboardInterrupt:
        out.note(f"{prog}: interrupted (Ctrl-C). {AFTER_INTERRUPT}")
        _interrupted_report(command, "SIGINT", EXIT_SIGINT)
        return EXIT_SIGINT
    except Terminated:
        out.note(f"{prog}: terminated (SIGTERM). {AFTER_INTERRUPT}")
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
                   f"({signal_name}). {AFTER_INTERRUPT}"}}
    m = command.migrator
    if m is not None and command.run_started is not None:
        data["direction"] = command.run_direction
        try:
            mine = [e for e in reversed(m.history()) if e.pid == os.getpid()
                    and e.host == socket.gethostname() and e.started_at is not None
                    and e.started_at >= command.run_started]
            data["steps"] = [plain({
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
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


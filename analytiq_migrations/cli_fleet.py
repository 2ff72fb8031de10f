"""The command line's ``--databases``: one verb on many databases through ``Fleet``.

One line per database as it finishes, then a summary (versions reached, failures and
why, busy locks, databases not started); ``--json`` prints one document with a
``"databases"`` object keyed by name and a ``"summary"``. Exit codes: 1 if any database
failed, else 3 if any was busy, else 0; ``status --check``: 4 if any is unhealthy, else 6
if any has pending migrations; ``validate``: 4 if any has a problem.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .cli_command import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_PROBLEMS,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Command,
    Terminated,
)
from .cli_output import plain
from .errors import ConfigurationError, LockBusyError

if TYPE_CHECKING:
    from .fleetreport import FleetReport

#: The verbs that take ``--databases``.
FLEET_VERBS = ("up", "down", "plan", "status", "validate", "current")

#: Names listed in one summary line before "and N more" (a fleet may have thousands).
SHOWN_NAMES = 20

#: The options that only mean something with ``--databases``.
_FLEET_FLAGS = {"concurrency": "--concurrency", "canary": "--canary",
                "continue_on_error": "--continue-on-error", "shard": "--shard"}


def _count(minimum: int) -> Any:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number of at least {minimum}")
        return int(text)

    return parse


def _shard(text: str) -> Tuple[int, int]:
    """``--shard I/N`` (a usage error unless 1 <= I <= N)."""
    from .fleet import parse_shard

    try:
        return parse_shard(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """``--databases`` and its companions, on one verb's parser."""
    group = parser.add_argument_group("many databases (one migration set per tenant)")
    group.add_argument("--databases", metavar="PATTERN",
                       help="run on every database PATTERN names: a glob over the server's "
                       "databases ('tenant_*'), a comma-separated list, or @MODULE:ATTR (a "
                       "function returning names); --uri then names the server only")
    group.add_argument("--concurrency", type=_count(1), metavar="N",
                       help="databases at once (default 4)")
    group.add_argument("--canary", type=_count(0), metavar="K",
                       help="run the first K databases (in name order) first; if one fails, "
                       "no other starts")
    group.add_argument("--continue-on-error", action="store_true", default=None,
                       help="attempt every database even after one failed (default: no new "
                       "database starts after the first failure)")
    group.add_argument("--shard", type=_shard, metavar="I/N",
                       help="take only shard I of N (a stable hash of the name): N hosts "
                       "split the fleet without coordinating")


def wants_fleet(args: argparse.Namespace) -> bool:
    """Whether the command runs on many databases (refusing fleet flags without one)."""
    given = vars(args)
    if given.get("databases") is not None:
        return True
    stray = [flag for name, flag in _FLEET_FLAGS.items() if given.get(name) is not None]
    if stray:
        raise ConfigurationError(f"{', '.join(stray)} only work(s) with --databases.",
                                 hint="Add --databases PATTERN, or drop the option.")
    return False


def run_fleet(cmd: Command) -> int:
    """Run ``cmd``'s verb on every database; print as each finishes, then a summary."""
    from .config import make_client, ping, require, resolve_client
    from .fleet import Fleet

    args, s = cmd.args, cmd.settings
    for flag in ("fake", "dry_run"):
        if vars(args).get(flag):
            raise ConfigurationError(f"--{flag.replace('_', '-')} does not work with "
                                     "--databases.",
                                     hint="Run it on one database (--database NAME).")
    if "database" in vars(args):  # from the environment or a file it is just not used
        raise ConfigurationError("--database and --databases exclude each other.",
                                 hint="Name the databases with --databases only.")
    require(s, ["uri", "migrations"], cmd.layers)
    spec = _databases(args.databases)
    owned = s.client is None
    if owned:
        client = make_client(s)
    else:
        client = resolve_client(s.client, s.origin.get("client", "--client"))
        client = getattr(client, "client", client) if type(client).__name__ == "Database" \
            else client
    fleet: Optional[Fleet] = None
    try:
        ping(client)
        options = {k: v for k, v in s.migrator_options().items() if k != "database"}
        fleet = Fleet(client, str(s.migrations), spec,
                      concurrency=args.concurrency or 4, canary=args.canary or 0,
                      continue_on_error=bool(args.continue_on_error), shard=args.shard,
                      **options)
        printer = _Printer(cmd, args.command)
        target = vars(args).get("target")
        try:
            report = fleet.run(args.command, target, on_result=printer.line, keep=False)
        except (KeyboardInterrupt, Terminated) as exc:
            report = exc.fleet_report  # type: ignore[union-attr]
            printer.summary(report)
            sigint = isinstance(exc, KeyboardInterrupt)
            cmd.out.note(f"interrupted ({'SIGINT' if sigint else 'SIGTERM'}): no new database "
                         "started; those running were stopped as a single run is (each "
                         "released its lock).")
            return EXIT_SIGINT if sigint else EXIT_SIGTERM
        printer.summary(report)
        return printer.exit_code(report)
    finally:
        if owned:
            client.close()  # (the process then ends without pymongo's join: fastexit)


def _databases(pattern: str) -> Any:
    """``--databases``: ``@MODULE:ATTR`` (what it names), else the pattern itself."""
    from .config import _import_ref

    text = pattern.strip()
    if not text or text == "@":
        raise ConfigurationError("--databases needs a pattern.",
                                 hint="A glob ('tenant_*'), a comma-separated list, or "
                                 "@MODULE:ATTR.")
    if text.startswith("@"):
        return _import_ref(text[1:], "--databases")
    return text


class _Printer:
    """One line per database as it finishes; the JSON document's parts kept for the end."""

    def __init__(self, cmd: Command, action: str) -> None:
        self.cmd, self.action = cmd, action
        self.documents: Dict[str, Any] = {}
        self.pending: List[str] = []
        self.unhealthy: List[str] = []

    def line(self, name: str, outcome: Any) -> None:
        """Print (or, with --json, keep) one database's outcome."""
        from .fleetreport import DatabaseProblems, DatabaseStatus, version_of

        strict = getattr(self.cmd.args, "strict", False)  # warnings fail too
        if isinstance(outcome, DatabaseStatus) and outcome.pending:
            self.pending.append(name)
        if isinstance(outcome, (DatabaseStatus, DatabaseProblems)) and any(
                (strict or p.severity != "warning") and
                (isinstance(outcome, DatabaseProblems) or p.kind != "running")
                for p in outcome.problems):
            self.unhealthy.append(name)
        if self.cmd.out.json:
            self.documents[name] = _document(outcome, version_of(outcome), plain)
        elif not self.cmd.out.quiet:
            self.cmd.out.result(f"{name}: {_text(outcome)}", None)

    def summary(self, report: FleetReport) -> None:
        """The summary line(s), or the whole JSON document."""
        data = report.summary()
        if self.action == "status":
            data["pending"], data["unhealthy"] = sorted(self.pending), sorted(self.unhealthy)
        if self.action == "validate":
            data["unhealthy"] = sorted(self.unhealthy)
        if self.cmd.out.json:
            self.cmd.out.result("", {"databases": self.documents, "summary": plain(data)})
            return
        counts = [f"{n} at version {v}" for v, n in data["at_version"].items()]
        counts += [f"{len(data[key])} {key.replace('_', ' ')}"
                   for key in ("failed", "busy", "stopped", "not_started") if data[key]]
        lines = [f"{self.action} on {data['databases']} database(s): "
                 f"{', '.join(counts) or 'none done'}"]
        for name, why in data["failed"].items():
            lines.append(f"  failed: {name}: {why}")
        if data["busy"]:
            lines.append(f"  busy (lock held elsewhere; --lock-wait waits): "
                         f"{_names(data['busy'])}")
        if data["stopped"]:
            lines.append(f"  stopped before their next step: {_names(data['stopped'])}")
        if data["not_started"]:
            lines.append(f"  not started: {_names(data['not_started'])}")
        for key in ("pending", "unhealthy"):
            if data.get(key):
                lines.append(f"  {key}: {_names(data[key])}")
        if self.cmd.out.quiet:
            if report.exit_code:
                self.cmd.out.explain("\n".join(lines))
        else:
            self.cmd.out.result("\n".join(lines), None)

    def exit_code(self, report: FleetReport) -> int:
        """The contract's code for the whole fleet."""
        if report.exit_code:
            return report.exit_code
        if self.action == "validate" and self.unhealthy:
            return EXIT_PROBLEMS
        if self.action == "status" and self.cmd.args.check:
            return EXIT_PROBLEMS if self.unhealthy else EXIT_PENDING if self.pending \
                else EXIT_OK
        return EXIT_OK


def _document(outcome: Any, version: Optional[int], plain: Any) -> Dict[str, Any]:
    """One database's part of the JSON document: its report or status, with its version."""
    if isinstance(outcome, BaseException):
        return {"version": None, "error": {
            "type": type(outcome).__name__, "message": getattr(outcome, "message", str(outcome)),
            "hint": getattr(outcome, "hint", None),
            "exit_code": getattr(outcome, "exit_code", 1)}}
    if isinstance(outcome, int):
        return {"version": version, "current_version": outcome}
    dump = getattr(outcome, "model_dump", None)
    body = dump() if dump is not None else dict(vars(outcome))
    body = plain(body)
    if "problems" in body:
        body["problems"] = [plain(p.model_dump()) for p in outcome.problems]
    if "migrations" in body and not hasattr(outcome, "model_dump"):
        body["migrations"] = [plain(r.model_dump()) for r in outcome.migrations]
        body["healthy"] = outcome.healthy
    return {"version": version, **body}


def _text(outcome: Any) -> str:
    """One database's line (after its name)."""
    from .fleetreport import DatabaseProblems, DatabaseStatus
    from .records import Plan, RunReport

    if isinstance(outcome, LockBusyError):
        return f"busy: {outcome.message}"
    if isinstance(outcome, BaseException):
        message = getattr(outcome, "message", str(outcome)).splitlines()[0]
        return f"FAILED: {type(outcome).__name__}: {message}"
    if isinstance(outcome, RunReport):
        if not outcome.steps:
            return f"nothing to do, at version {outcome.end_version}"
        done = ", ".join(f"{s.version} {s.status}" for s in outcome.steps)
        return f"version {outcome.start_version} -> {outcome.end_version} ({done})"
    if isinstance(outcome, Plan):
        if not outcome.steps:
            return f"nothing to do, at version {outcome.current_version}"
        return (f"{outcome.direction} from {outcome.current_version} to "
                f"{outcome.target_version}: {', '.join(str(s.version) for s in outcome.steps)}")
    if isinstance(outcome, DatabaseStatus):
        state = "healthy" if outcome.healthy else \
            f"UNHEALTHY ({', '.join(p.kind for p in outcome.problems)})"
        pending = ", ".join(str(v) for v in outcome.pending) or "none"
        return (f"version {outcome.current_version} of {outcome.head_version}; pending: "
                f"{pending}; {state}")
    if isinstance(outcome, DatabaseProblems):
        if not outcome.problems:
            return f"ok, at version {outcome.current_version}"
        return "; ".join(f"{p.kind}: {p.message}" for p in outcome.problems)
    return f"version {outcome}"


def _names(names: List[str]) -> str:
    """A list of names, cut after ``SHOWN_NAMES``."""
    shown = ", ".join(names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"{shown} and {more} more" if more > 0 else shown

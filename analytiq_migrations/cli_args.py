"""The command line's parser: the verbs, their options and what a TARGET or VERSION may
be. Parsing only; ``cli.py`` runs what it parsed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from . import __version__, cronverbs
from .cli_fleet import FLEET_VERBS, add_fleet_options

PROG = "analytiq-migrations"

#: What TARGET may be; ASCII digits only (``int`` refuses "²", and reads other scripts'
#: digits as numbers nobody typed on purpose).
_TARGET = re.compile(r"^\s*(head|base|[+-]?[0-9]+)\s*$", re.IGNORECASE)
_VERSION = re.compile(r"^\s*[0-9]+\s*$")

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
    target: dict[str, Any] = {"metavar": "TARGET", "type": target_arg}
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
    verb("show").add_argument("version", type=version_arg, metavar="VERSION")
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
    history.add_argument("version", nargs="?", type=version_arg, metavar="VERSION")
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
    verb("baseline").add_argument("version", type=version_arg, metavar="VERSION")
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
    cronverbs.add_arguments({"up": up, "status": status}, verb, version_arg)
    return parser


def target_arg(text: str) -> str:
    """TARGET as typed, once it is one (a usage error, exit 2, otherwise)."""
    if not _TARGET.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a target: use a version number (ASCII digits), head, base, "
            "+N or -N")
    return text


def version_arg(text: str) -> int:
    """VERSION as a number (a usage error, exit 2, unless it is ASCII digits)."""
    if not _VERSION.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a version: use a number in ASCII digits (0-9)")
    return int(text)


"""``python manage.py mongo_migrations <command> [options]``: the analytiq-migrations CLI."""

from __future__ import annotations

import argparse
import os
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from analytiq_migrations import cli
from analytiq_migrations.contrib.django import settings_layer

#: Options ``manage.py`` itself handles before any command runs (``--settings=x`` or
#: ``--settings x``); they must not reach the CLI's parser.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):  # type: ignore[misc]
    help = "MongoDB migrations (analytiq_migrations): " + ", ".join(cli.COMMANDS) + \
        ". Run `mongo_migrations --help` for the commands and options."
    # A database tool: it must work on a project whose system checks fail.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER,
                            help="an analytiq-migrations command and its options")

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        """Django's parser, except that every argument goes to the CLI untouched.

        ``call_command`` parses with it: without this, options before the command
        (``"--json", "status"``) or the CLI's ``-v`` would be taken as Django's own.
        """
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        django_defaults = vars(parser.parse_args([]))

        def parse_args(args: Any = None, namespace: Any = None) -> argparse.Namespace:
            return argparse.Namespace(**{**django_defaults, "args": list(args or [])})

        parser.parse_args = parse_args
        return parser

    def print_help(self, prog_name: str, subcommand: str) -> None:
        """``manage.py help mongo_migrations``: the CLI's own help."""
        cli.run(["--help"], prog=f"{prog_name} {subcommand}")

    def run_from_argv(self, argv: list[str]) -> None:
        """``manage.py mongo_migrations ...``: the whole rest of the line goes to the CLI."""
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        code = cli.run(_without_django_options(argv[2:]), prog=prog, framework=settings_layer)
        raise SystemExit(code)

    def handle(self, *args: str, **options: Any) -> None:
        """``call_command("mongo_migrations", "status", "--json")``."""
        self.stdout.ending = self.stderr.ending = ""  # the CLI ends its own lines
        code = cli.run(list(args), prog="mongo_migrations", framework=settings_layer,
                       stdout=self.stdout, stderr=self.stderr)
        if code:
            raise CommandError(f"mongo_migrations {' '.join(args)} exited with code {code}",
                               returncode=code)


def _without_django_options(args: list[str]) -> list[str]:
    """``args`` minus ``--settings``/``--pythonpath`` (already applied by ``manage.py``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept

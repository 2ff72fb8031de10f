"""The command line sits on top of the library: its modules import the library, and no
library module imports them (a ``Migrator`` caller never pulls in the parser or the
printing). Only the entry points above it (``__main__``, the Flask and Django commands)
import the command line."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Tuple

import analytiq_migrations

PACKAGE = Path(analytiq_migrations.__file__).parent

#: The command line's modules: ``cli`` and ``cli_*``, and the cron verbs it adds.
CLI_MODULES = {"cli", "cronverbs"}

#: What may import the command line: its own modules and the entry points above it.
ABOVE = ("__main__", "contrib")


def is_cli(module: str) -> bool:
    """Whether ``analytiq_migrations.X...`` names a command line module."""
    parts = module.split(".")
    if parts[0] != "analytiq_migrations" or len(parts) < 2:
        return False
    return parts[1] in CLI_MODULES or parts[1].startswith("cli_")


def imports(path: Path) -> Iterator[Tuple[int, str]]:
    """Every module ``path`` imports (at the top or inside a function), absolute."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(relative.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, module
            if node.module is None or not node.level:
                # ``from . import cli``, ``from analytiq_migrations import cli``
                yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)


def library_modules() -> List[Path]:
    """The package's modules that are neither the command line nor above it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        top = name.split(".")[1] if "." in name else name
        if not is_cli(name) and top not in ABOVE:
            found.append(path)
    return found


def test_no_library_module_imports_the_command_line() -> None:
    upward = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
              for path in library_modules() for line, module in imports(path)
              if is_cli(module)]
    assert upward == []


def test_the_check_sees_the_command_line_and_the_library() -> None:
    names = {path.stem for path in library_modules()}
    assert {"runner", "config", "fleet", "noop"} <= names
    assert not names & {"cli", "cli_args", "cli_output", "cronverbs", "__main__"}
    assert is_cli("analytiq_migrations.cli_output") and is_cli("analytiq_migrations.cli")
    assert not is_cli("analytiq_migrations.client") and not is_cli("analytiq_migrations")

"""Finding and reading ``[tool.analytiq_migrations]``: the nearest ``pyproject.toml`` that
has the table, from a directory up to the repository root, or the file ``--config`` names."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigurationError

#: Where our settings live in a ``pyproject.toml``.
PYPROJECT_TABLE = ("tool", "analytiq_migrations")

#: ``[tool.analytiq_migrations]`` as a line of TOML (for when no TOML parser is around).
_TABLE_HEADER = re.compile(r'^\s*\[\s*"?tool"?\s*\.\s*"?analytiq_migrations"?\s*\]', re.M)


def find_pyproject(start: Path) -> tuple[Optional[Path], dict[str, Any], str]:
    """The nearest ``pyproject.toml`` with a ``[tool.analytiq_migrations]`` table, from
    ``start`` upward, stopping at the repository root (a directory holding ``.git``) or the
    filesystem root; its table; and where the search stopped, for messages."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        table = read_table(candidate) if candidate.is_file() else {}
        if table:
            return candidate, table, str(directory)
        if (directory / ".git").exists():
            return None, {}, f"{directory} (the repository root)"
    return None, {}, f"{start.anchor or '/'} (the filesystem root)"


def named_config(path: Path) -> Path:
    """The file ``--config`` names, made absolute; an error when it is not there."""
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise ConfigurationError(
            f"--config {path}: no such file ({resolved}).",
            hint="Name an existing pyproject.toml with a [tool.analytiq_migrations] table.",
        )
    return resolved


def beside(base: Path, source: str) -> str:
    """A relative migrations directory as seen from the file that names it (which may be in
    a directory above the working one); a dotted name or an absolute path as given."""
    candidate = base / source
    a_path = candidate.is_dir() or "/" in source or os.sep in source
    if a_path and not Path(source).is_absolute() and \
            (Path.cwd() / source).resolve() != candidate.resolve():
        return str(candidate)
    return source


def read_table(path: Path) -> dict[str, Any]:
    """The ``[tool.analytiq_migrations]`` table, ``{}`` without one (or without the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}") from None
    if "analytiq_migrations" not in text:
        return {}  # nothing of ours: don't parse (or need a TOML parser) at all
    toml = _toml_module()
    if toml is None:
        if not _TABLE_HEADER.search(text):
            return {}  # only mentions the package (a dependency list, say)
        raise ConfigurationError(
            f"{path} has a [tool.analytiq_migrations] table but this Python has no TOML "
            "parser.",
            hint="pip install tomli (built in from Python 3.11 on), or pass the settings as "
            "flags or environment variables.",
        )
    try:
        data = toml.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    table: Any = data
    for part in PYPROJECT_TABLE:
        table = table.get(part, {}) if isinstance(table, dict) else {}
    if not isinstance(table, dict):
        raise ConfigurationError(f"[tool.analytiq_migrations] in {path} must be a table.")
    return table


def _toml_module() -> Any:
    """``tomllib`` (3.11+) or ``tomli`` if installed; ``None`` otherwise."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return tomli

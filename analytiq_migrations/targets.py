"""Which version a target names: an int, ``head``, ``base``, digits, or ``+N``/``-N``
relative to the current version; and whether the code or the database knows it. Pure.
"""

from __future__ import annotations

import re
from typing import Sequence, Union

from .errors import ConfigurationError
from .migration import Migration
from .records import MigrationRecord

#: What ``upgrade``/``downgrade``/``plan`` accept as a target.
Target = Union[int, str, None]

#: ASCII digits only: ``\d`` also matches other scripts' digits ("²"), which ``int`` refuses.
_RELATIVE = re.compile(r"^([+-])([0-9]+)$")
_VERSION = re.compile(r"^[0-9]+$")


def resolve_target(
    target: Target, migrations: Sequence[Migration], current: int, *, default_head: bool
) -> int:
    """A version from an int or ``head``/``base``/``+N``/``-N``/digits."""
    versions = [int(m.version or 0) for m in migrations]
    head = max(versions, default=0)
    if target is None:
        if default_head:
            return head
        raise ConfigurationError("A target version is needed.", hint="Pass a version or 'base'.")
    if isinstance(target, bool):
        raise ConfigurationError(f"Bad target {target!r}.")
    if isinstance(target, int):
        return target
    text = str(target).strip().lower()
    if text == "head":
        return head
    if text == "base":
        return 0
    if _VERSION.match(text):
        return int(text)
    match = _RELATIVE.match(text)
    if match:
        ordered = sorted(set(versions) | {0})
        steps = int(match.group(2))
        below = [v for v in ordered if v <= current]
        index = len(below) - 1
        index = index + steps if match.group(1) == "+" else index - steps
        if index < 0 or index >= len(ordered):
            raise ConfigurationError(
                f"Target {target} goes past the known versions "
                f"({ordered[1] if len(ordered) > 1 else 0}..{head}) from current {current}.",
                hint="Use a smaller step or an absolute version.",
            )
        return ordered[index]
    raise ConfigurationError(
        f"Bad target {target!r}.", hint="Use a version number, head, base, +N or -N."
    )


def check_target(target: int, migrations: Sequence[Migration],
                  records: dict[int, MigrationRecord]) -> None:
    """A target must be 0 or a version the code or the database knows."""
    known = {int(m.version or 0) for m in migrations} | set(records)
    if target < 0 or (target and target not in known):
        listed = ", ".join(str(v) for v in sorted(known)) or "none"
        raise ConfigurationError(
            f"Unknown target version {target}; known versions: {listed}.",
            hint="Pick one of the known versions, or 0/base for none.",
        )

"""Hints spelled for the entry point that will show them.

An error raised under the command line (``analytiq-migrations``, ``flask migrations``,
``manage.py mongo_migrations``) names flags and verbs (``--on-drift warn``, ``down 0``,
``repair --clear-failed``); raised to Python code, it names arguments and methods
(``on_drift='warn'``, ``downgrade(0)``, ``repair(clear_failed=True)``). The command line
says which it is for the duration of a command (``command_line``); everything else is
the Python API.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Optional

#: The program name while a command-line command runs, else ``None``.
_PROG: ContextVar[Optional[str]] = ContextVar("analytiq_migrations_prog", default=None)

#: How command-line hints name the program; replaced by the running one's name.
PROG = "analytiq-migrations"


@contextlib.contextmanager
def command_line(prog: str = PROG) -> Iterator[None]:
    """Within the block, hints are spelled for the command line ``prog``."""
    token = _PROG.set(prog)
    try:
        yield
    finally:
        _PROG.reset(token)


def spell(python: str, cli: str) -> str:
    """``cli`` under the command line (its ``analytiq-migrations`` replaced by the running
    program's name), else ``python``."""
    prog = _PROG.get()
    if prog is None:
        return python
    return cli.replace(f"`{PROG} ", f"`{prog} ")


__all__ = ["command_line", "spell"]

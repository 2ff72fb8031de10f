"""Where a migration failed: the file and line of the innermost frame of the migration's
own code (``0005_backfill.py:41``) and its traceback, credentials removed; the record
keeps the traceback cut to a bounded size."""

from __future__ import annotations

import inspect
import os
import traceback
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Set

from .errors import MigrationError, error_message, redact
from .migration import Migration

#: The record's traceback is cut to this many characters (its innermost end kept): enough
#: for a dozen frames with their source lines, small next to the 16 MB a document may hold,
#: and stored once per attempt in the history.
TRACEBACK_LIMIT = 4000

#: This package's directory: its frames are never "the migration's code".
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Site:
    """Where a failure happened in a migration's code, as far as it is known."""

    #: ``0005_backfill.py:41``: the file's name and the line of the innermost frame there.
    location: Optional[str] = None
    #: The traceback of the error raised there, credentials removed (for ``-v``).
    trace: Optional[str] = None
    #: The same without the source lines (they may quote data or secrets written in the
    #: code; file, line and function locate it), for the record.
    frames_only: Optional[str] = None

    def stored(self) -> Dict[str, str]:
        """The fields the record's ``error`` gains (``location``, a bounded ``traceback``)."""
        fields: Dict[str, str] = {}
        if self.location:
            fields["location"] = self.location
        if self.frames_only:
            fields["traceback"] = bounded(self.frames_only)
        return fields


def migration_files(migration: Migration) -> Set[str]:
    """The files holding ``migration``'s code (its file, or its class's module)."""
    files: Set[str] = set()
    if migration.origin:
        files.add(os.path.abspath(migration.origin))
    try:
        source = inspect.getsourcefile(type(migration))
    except (TypeError, OSError):
        source = None
    if source and os.path.dirname(os.path.abspath(source)) != _PACKAGE_DIR:
        files.add(os.path.abspath(source))
    return files


def failure_site(exc: BaseException, migration: Migration) -> Site:
    """The innermost frame of ``migration``'s code in ``exc`` or the errors it was raised
    from (a wrapped driver error, say), with that error's traceback."""
    files = migration_files(migration)
    for error in _chain(exc):
        frames = traceback.extract_tb(error.__traceback__)
        inside = [i for i, f in enumerate(frames) if os.path.abspath(f.filename) in files]
        if inside:
            last = frames[inside[-1]]
            # From the migration's first frame in: the library's frames above it say nothing.
            head, tail = "Traceback (most recent call last):\n", _last_line(error)
            shown = frames[inside[0]:]
            text = head + "".join(traceback.format_list(shown)) + tail
            bare = head + "".join(f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
                                  for f in shown) + tail
            return Site(f"{os.path.basename(last.filename)}:{last.lineno}", redact(text),
                        redact(bare))
    if isinstance(exc, MigrationError):  # located when raised (where it logged, say)
        return Site(exc.location, exc.trace)
    return Site()


def _last_line(error: BaseException) -> str:
    """The traceback's last line, ``pymongo.errors.DuplicateKeyError: ...``, with what
    ``error_message`` keeps (never a server's raw reply or a duplicate key's value)."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    message = error_message(error)
    return f"{name}: {message}\n" if message else f"{name}\n"


def line_in(files: Set[str], path: str, line: int) -> Optional[str]:
    """``NAME.py:LINE`` when ``path`` is one of ``files``."""
    return f"{os.path.basename(path)}:{line}" if os.path.abspath(path) in files else None


def bounded(trace: str, limit: int = TRACEBACK_LIMIT) -> str:
    """``trace`` cut to about ``limit`` characters, keeping its innermost end whole lines."""
    if len(trace) <= limit:
        return trace
    tail = trace[-limit:]
    tail = tail[tail.find("\n") + 1:]
    return "Traceback (most recent call last; outer frames cut):\n  ...\n" + tail


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, each once."""
    seen: Set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__

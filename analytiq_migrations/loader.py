"""``load_migrations``: turn a list, a dotted package name or a directory into migrations.

Every way a source can be wrong (unimportable file, syntax error, duplicate or
non-positive version, prefix/version mismatch, async ``up``) raises a
``MigrationDefinitionError`` that names the file or class and says how to fix it.
"""

from __future__ import annotations

import importlib
import os
import re
import types
from pathlib import Path
from typing import Any, Iterable, Union

from .errors import MigrationDefinitionError
from .filemigration import FileMigration, check_definition, import_error
from .migration import Migration

#: ``0003_add_index.py``: leading ASCII digits are the version, the rest a slug.
FILE_PATTERN = re.compile(r"^(?P<version>[0-9]+)_(?P<slug>[A-Za-z0-9_]+)\.py$")
_LOOKS_LIKE_MIGRATION = re.compile(r"^[0-9]+.*\.py$")

MigrationSource = Union[str, "os.PathLike[str]", Iterable[Any], types.ModuleType]


def load_migrations(source: MigrationSource, *, lazy: bool = False) -> list[Migration]:
    """Load and check migrations from ``source``; returns them sorted by version.

    ``lazy=True`` (what ``Migrator`` uses) imports no migration file: each is a
    :class:`FileMigration` that reads its bytes now and imports them when its code is
    first needed, so the errors of a broken file surface then (by the same messages).
    """
    if isinstance(source, types.ModuleType):
        migrations = _from_module(source)
    elif isinstance(source, (str, os.PathLike)):
        migrations = _from_name_or_path(os.fspath(source))
    else:
        try:
            items = list(source)
        except TypeError:
            raise MigrationDefinitionError(
                f"Cannot load migrations from {source!r}.",
                hint="Pass a list of Migration instances or classes, a dotted package name, "
                "or a directory path.",
            ) from None
        migrations = _from_list(items)
    checked = _checked(migrations)
    if lazy:
        return checked
    return [m.loaded() for m in checked]


def _from_name_or_path(text: str) -> list[Migration]:
    """A directory path, or else a dotted module/package name."""
    path = Path(text)
    if path.is_dir():
        return _from_directory(path)
    if path.is_symlink() and not path.exists():
        raise MigrationDefinitionError(
            f"Migrations directory '{text}' is a symbolic link that leads nowhere (a loop, "
            "or a missing target).",
            hint="Point the link at the real directory, or pass the directory itself.",
        )
    if path.suffix == ".py" or os.sep in text or (os.altsep and os.altsep in text):
        raise MigrationDefinitionError(
            f"Migrations directory '{text}' does not exist.",
            hint="Pass an existing directory of NNNN_slug.py files, or a dotted package name.",
        )
    try:
        module = importlib.import_module(text)
    except ModuleNotFoundError as exc:
        if exc.name and text.startswith(exc.name):
            raise MigrationDefinitionError(
                f"No directory or importable module named '{text}'.",
                hint="Check the path or package name (is the package on sys.path?).",
            ) from None
        raise import_error(text, exc) from exc
    except Exception as exc:  # anything a module can raise while importing
        raise import_error(text, exc) from exc
    return _from_module(module)


def _from_module(module: types.ModuleType) -> list[Migration]:
    """A module with a ``MIGRATIONS`` list, or a package of migration files."""
    listed = getattr(module, "MIGRATIONS", None)
    if listed is not None:
        return _from_list(list(listed))
    paths = getattr(module, "__path__", None)
    if paths:
        return _from_directory(Path(next(iter(paths))), package=module.__name__)
    raise MigrationDefinitionError(
        f"Module '{module.__name__}' has no MIGRATIONS list and is not a package.",
        hint="Define MIGRATIONS = [...] in it, or point at a package/directory of "
        "NNNN_slug.py files.",
    )


def _from_list(items: list[Any]) -> list[Migration]:
    """Instances or classes; versions 1..n from list order when none has one."""
    migrations: list[Migration] = []
    for index, item in enumerate(items):
        if isinstance(item, type) and issubclass(item, Migration):
            try:
                item = item()
            except TypeError as exc:
                raise MigrationDefinitionError(
                    f"Cannot instantiate migration class {item.__qualname__}: {exc}",
                    hint="Give it a constructor without required arguments, or list an "
                    "instance instead of the class.",
                ) from exc
        if not isinstance(item, Migration):
            raise MigrationDefinitionError(
                f"Item {index} of the migrations list is {item!r}, not a Migration.",
                hint="List Migration subclasses or instances of them.",
            )
        migrations.append(item)
    unversioned = [m for m in migrations if m.version is None]
    if unversioned and len(unversioned) == len(migrations):
        for number, migration in enumerate(migrations, start=1):
            migration.version = number
    elif unversioned:
        names = ", ".join(m.name for m in unversioned)
        raise MigrationDefinitionError(
            f"Some migrations have no version: {names}.",
            hint="Give every migration a version, or none of them (then list order "
            "numbers them 1..n).",
        )
    return migrations


def _from_directory(directory: Path, package: str | None = None) -> list[Migration]:
    """Every ``NNNN_slug.py`` in ``directory``; other ``.py`` files are helpers."""
    migrations: list[Migration] = []
    try:
        with os.scandir(directory) as listing:  # file types come with the listing: no stat
            names = sorted(e.name for e in listing if e.name.endswith(".py") and _is_file(e))
    except OSError as exc:
        raise MigrationDefinitionError(
            f"Cannot list the migrations directory '{directory}': {exc.strerror or exc}.",
            hint="Check that it exists and that this user may read it.",
        ) from None
    for name in names:
        path = directory / name
        match = FILE_PATTERN.match(path.name)
        if match is None:
            if _LOOKS_LIKE_MIGRATION.match(path.name):
                raise MigrationDefinitionError(
                    f"Migration file '{path}' is not named NNNN_slug.py.",
                    hint="Rename it to digits, an underscore, then letters, digits or "
                    "underscores (e.g. 0003_add_email_index.py).",
                )
            continue
        migrations.append(FileMigration(path, int(match.group("version")), package))
    return migrations


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A directory entry that is (or links to) a file; a link that cannot be followed
    (a loop, or a missing target) is an error naming it, where it looks like a
    migration, and is skipped otherwise."""
    try:
        return entry.is_file()
    except OSError as exc:
        if _LOOKS_LIKE_MIGRATION.match(entry.name):
            raise MigrationDefinitionError(
                f"Migration file '{entry.path}' cannot be opened: {exc.strerror or exc} "
                "(a symbolic link that points back at itself, or a chain of links that "
                "never reaches a file).",
                hint="Replace the link with the migration file, or point it at the real "
                "file; nothing was run.",
            ) from None
        return False


def _checked(migrations: list[Migration]) -> list[Migration]:
    """Versions are positive ints, unique; definitions complete. Sorted by version."""
    seen: dict[int, Migration] = {}
    for migration in migrations:
        version = migration.version
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise MigrationDefinitionError(
                f"{migration.name} has version {version!r}; versions are positive integers.",
                hint="Set version to 1 or more.",
            )
        if version in seen:
            raise MigrationDefinitionError(
                f"Duplicate version {version}: {seen[version].name} and {migration.name}.",
                version=version,
                hint="Give each migration its own version (the next free one is "
                f"{max(seen) + 1 if seen else version + 1}).",
            )
        seen[version] = migration
        if isinstance(migration, FileMigration):
            continue  # its code is checked when it is imported (FileMigration.loaded)
        check_definition(migration)
    return sorted(migrations, key=lambda m: int(m.version or 0))



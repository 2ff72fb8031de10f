"""One migration file (``NNNN_slug.py``): read at once, imported only when its code is
needed (``FileMigration``), and checked when it is: it parses, defines one migration
(``up(db)`` functions or one ``Migration`` subclass) whose version matches the file
name, nothing async, a description that fits on a record. Every problem is a
``MigrationDefinitionError`` naming the file and the way out.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import threading
import types
from pathlib import Path
from typing import Any, Optional

from .checksum import source_checksum
from .errors import MigrationDefinitionError
from .migration import Migration, ModuleMigration

#: Longest description (characters): a one-line summary, stored on every record and
#: history entry; far below MongoDB's 16 MB document limit, far above any real summary.
MAX_DESCRIPTION = 1000


#: One import at a time: runs in several threads (a ``Fleet``) share the lazy migrations.
_IMPORTING = threading.RLock()


class FileMigration(Migration):
    """A ``NNNN_slug.py`` file, imported only when its code is needed.

    Its version comes from the file name and its checksums from its bytes, read at
    construction: a no-op ``up`` or ``status`` compares the raw hash with the record's
    and so neither imports nor tokenizes a file that has not changed. Anything that
    needs the code (``up``/``down``, the flags, the description) imports it via
    :meth:`loaded`.
    """

    def __init__(self, path: Path, version: int, package: Optional[str] = None) -> None:
        self.version = version
        self.origin = str(path)
        self._path = path
        self._package = package
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MigrationDefinitionError(
                f"Cannot read migration file '{path}': {exc.strerror or exc}.",
                version=version, hint="Check the file exists and this user may read it; "
                "nothing was run.",
            ) from None
        try:
            self._source = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise MigrationDefinitionError(
                f"Migration file '{path}' is not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                f"on line {line} cannot be decoded.",
                version=version,
                hint="Save the file as UTF-8 (in most editors: 'Save with encoding', "
                "UTF-8); nothing was run.",
            ) from None
        self.source_bytes = raw
        self._loaded: Optional[Migration] = None

    def loaded(self) -> Migration:
        """Import the file (once, even with runs in several threads) and return the
        migration it defines."""
        with _IMPORTING:
            if self._loaded is None:
                migration = _from_file(self._path, int(self.version or 0), self._package,
                                       self._source)
                check_definition(migration)
                migration.source_bytes = self.source_bytes
                self._loaded = migration
            return self._loaded

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def checksum(self) -> str:
        """Normalized checksum of the whole file (tokenized on first use, not imported)."""
        cached = self.__dict__.get("_checksum")
        if cached is None:
            try:
                cached = source_checksum(self._source)
            except SyntaxError as exc:
                raise _syntax_error(self._path, int(self.version or 0), exc) from exc
            self.__dict__["_checksum"] = cached
        return str(cached)

    # Everything else is the code's: import it.
    @property
    def description(self) -> str:  # type: ignore[override]
        return self.loaded().description

    @property
    def transactional(self) -> Optional[bool]:  # type: ignore[override]
        return self.loaded().transactional

    @property
    def idempotent(self) -> bool:  # type: ignore[override]
        return self.loaded().idempotent

    @property
    def reversible(self) -> bool:
        return self.loaded().reversible

    def up(self, db: Any) -> Optional[bool]:
        return self.loaded().up(db)

    def down(self, db: Any) -> Optional[bool]:
        return self.loaded().down(db)

    def summary(self) -> str:
        return self.loaded().summary()

    def __repr__(self) -> str:
        return f"<FileMigration version={self.version} {self.origin!r}>"


def _syntax_error(path: Path, version: int, exc: SyntaxError) -> MigrationDefinitionError:
    """The error for a migration file that does not parse."""
    return MigrationDefinitionError(
        f"Syntax error in migration file '{path}', line {exc.lineno}: {exc.msg}",
        version=version,
        hint="Fix the file; nothing was run.",
    )


def _from_file(path: Path, version: int, package: str | None, source: str) -> Migration:
    """Import one migration file (whose text is ``source``) and adapt it."""
    try:
        # The text that was checksummed is the code that runs: compiled here, never read
        # again from disk nor from a bytecode cache (a same-size edit within the same
        # second would otherwise run the old .pyc under the new checksum).
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _syntax_error(path, version, exc) from exc
    module = _import_file(path, package, code)
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Migration)
        and obj.__module__ == module.__name__
        and obj is not ModuleMigration
    ]
    has_up = callable(getattr(module, "up", None))
    if len(classes) > 1 or (classes and has_up):
        found = [c.__name__ for c in classes] + (["up()"] if has_up else [])
        raise MigrationDefinitionError(
            f"Migration file '{path}' defines more than one migration: {', '.join(found)}.",
            version=version,
            hint="Keep one migration per file: either up(db)/down(db) functions or one "
            "Migration subclass.",
        )
    if classes:
        return _class_from_file(classes[0], module, path, version, source)
    if not has_up:
        raise MigrationDefinitionError(
            f"Migration file '{path}' defines neither up(db) nor a Migration subclass.",
            version=version,
            hint="Add a function up(db) (and optionally down(db)).",
        )
    migration = ModuleMigration(module, version, origin=str(path), source=source)
    _check_callables(migration, str(path))
    return migration


def _class_from_file(
    cls: type[Migration], module: types.ModuleType, path: Path, version: int, source: str
) -> Migration:
    """Instantiate the one Migration subclass of a file; its version must match the prefix."""
    try:
        migration = cls()
    except TypeError as exc:
        raise MigrationDefinitionError(
            f"Cannot instantiate {cls.__name__} in '{path}': {exc}", version=version
        ) from exc
    if migration.version is not None and migration.version != version:
        raise MigrationDefinitionError(
            f"Migration file '{path}' has prefix {version} but {cls.__name__}.version is "
            f"{migration.version}.",
            version=version,
            hint="Make the file name's number and the class's version agree (or drop the "
            "class's version: the prefix sets it).",
        )
    migration.version = version
    if not migration.description:
        doc = inspect.getdoc(module) or ""
        migration.description = doc.strip().splitlines()[0] if doc.strip() else ""
    # The checksum of a file covers the whole file: helpers it defines are part of it.
    migration.__dict__["_checksum"] = source_checksum(source)
    migration.origin = str(path)
    return migration


#: Module names of migration files loaded from a directory (``<prefix><hash>.<stem>``).
FILE_MODULE_PREFIX = "_analytiq_migrations_"


def _import_file(path: Path, package: str | None, code: types.CodeType) -> types.ModuleType:
    """Run a migration file's compiled ``code`` as a module (a submodule of ``package``
    when there is one, so its relative imports work); each load runs it afresh."""
    if package is not None:
        name = f"{package}.{path.stem}"
    else:
        digest = hashlib.sha1(str(path.resolve().parent).encode()).hexdigest()[:12]
        name = f"{FILE_MODULE_PREFIX}{digest}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise MigrationDefinitionError(f"Cannot import migration file '{path}'.")
    module = importlib.util.module_from_spec(spec)
    module.__cached__ = None  # type: ignore[attr-defined]  # no bytecode cache is used
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # the migration's own code, as checksummed
    except Exception as exc:
        sys.modules.pop(name, None)
        raise import_error(str(path), exc) from exc
    return module


def import_error(where: str, exc: BaseException) -> MigrationDefinitionError:
    """The error for a migration that fails while importing."""
    return MigrationDefinitionError(
        f"Importing '{where}' failed: {type(exc).__name__}: {exc}",
        hint="Fix the import error (run `python -c \"import ...\"` on it to see the "
        "traceback); nothing was run.",
    )


def _check_callables(migration: Migration, where: str) -> None:
    """Reject async up/down and migrations without an up."""
    up = migration._up if isinstance(migration, ModuleMigration) else type(migration).up
    down = migration._down if isinstance(migration, ModuleMigration) else type(migration).down
    if up is Migration.up:
        raise MigrationDefinitionError(
            f"{where} does not implement up(db).",
            version=migration.version,
            hint="Define up(self, db) with the change to apply.",
        )
    for fn, label in ((up, "up"), (down, "down")):
        if fn is not None and inspect.iscoroutinefunction(fn):
            raise MigrationDefinitionError(
                f"{where}: {label}() is async; this library runs migrations synchronously "
                "with pymongo.",
                version=migration.version,
                hint=f"Drop 'async'/'await' from {label}() and call pymongo directly "
                "(db.users.update_many(...)).",
            )


def check_definition(migration: Migration) -> None:
    """``transactional`` is None/True/False; a class implements a synchronous ``up``; the
    description fits on a record."""
    description = migration.summary()
    if len(description) > MAX_DESCRIPTION:
        raise MigrationDefinitionError(
            f"{migration.name}: its description is {len(description):,} characters long; "
            f"a description is one line of at most {MAX_DESCRIPTION:,} (it is stored on "
            "every record and history entry).",
            version=migration.version,
            hint="Shorten the first line of its docstring (or its description); the rest "
            "of the docstring may be as long as you like. Nothing was run.",
        )
    if migration.transactional not in (None, True, False):
        raise MigrationDefinitionError(
            f"{migration.name}: transactional must be None, True or False, not "
            f"{migration.transactional!r}.",
            version=migration.version,
        )
    if not isinstance(migration, ModuleMigration):  # a module's are checked on import
        _check_callables(migration, migration.name)

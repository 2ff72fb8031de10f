"""The ``Migration`` base class and the module-file adapter.

Three styles produce the same object:

* class attributes (``version = 2``, ``description = "..."``, ``up(self, db)``);
* the seed's constructor style (``super().__init__(version=2, description="...")``,
  ``up``/``down`` returning ``True``/``False``);
* a module file ``NNNN_slug.py`` with ``up(db)``/``down(db)`` functions
  (wrapped in :class:`ModuleMigration` by the loader).
"""

from __future__ import annotations

import inspect
import types
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .checksum import raw_checksum, source_checksum
from .context import RunContext, bind, bound
from .errors import MigrationDefinitionError

if TYPE_CHECKING:
    from pymongo.client_session import ClientSession
    from pymongo.collection import Collection
    from pymongo.database import Database

    from .batch import UpdateSpec

UpFunction = Callable[[Any], Any]


class Migration:
    """One versioned change to the database. Subclass it and implement ``up``."""

    #: Positive, unique integer; order of application.
    version: Optional[int] = None
    #: One line saying what the migration does (shown in status and history).
    description: str = ""
    #: ``None``: follow the Migrator; ``False``: never in a transaction;
    #: ``True``: must run in a transaction (refused up front where there is none).
    transactional: Optional[bool] = None
    #: ``True`` when re-running after an interruption is safe.
    idempotent: bool = False

    #: The file a migration was loaded from (``None`` for classes listed in code).
    origin: Optional[str] = None
    #: That file's bytes as read (``None`` for classes listed in code).
    source_bytes: Optional[bytes] = None

    def __init__(
        self,
        version: Union[int, str, None] = None,
        description: Optional[str] = None,
        *,
        transactional: Optional[bool] = None,
        idempotent: Optional[bool] = None,
    ) -> None:
        if isinstance(version, str) and description is None:
            # The seed's services also wrote ``super().__init__("Add thing")``: a lone
            # string is the description (the version then comes from the class or list).
            version, description = None, version
        if version is not None:
            # Anything else is the loader's to judge (it names the class and the value).
            self.version = version  # type: ignore[assignment]
        if description is not None:
            self.description = description
        if transactional is not None:
            self.transactional = transactional
        if idempotent is not None:
            self.idempotent = idempotent

    # -- what the running step binds (per thread: instances may be shared by runs) ------

    @property
    def session(self) -> Optional[ClientSession]:
        """The run's session while ``up``/``down`` runs (``None`` without sessions)."""
        return bound(self)[1]

    @session.setter
    def session(self, value: Optional[ClientSession]) -> None:
        bind(self, bound(self)[0], value)

    @property
    def _context(self) -> Optional[RunContext]:
        """The running step's context, in this thread (``None`` outside a run)."""
        return bound(self)[0]

    @_context.setter
    def _context(self, value: Optional[RunContext]) -> None:
        bind(self, value, bound(self)[1])

    # -- the author's part -------------------------------------------------------------

    def up(self, db: Database[Any]) -> Optional[bool]:
        """Apply the change. Return nothing (or ``True``); raise or return ``False`` to fail."""
        raise NotImplementedError

    def down(self, db: Database[Any]) -> Optional[bool]:
        """Revert the change; migrations that don't override it are irreversible."""
        raise NotImplementedError

    # -- what the library asks of it -----------------------------------------------------

    def loaded(self) -> Migration:
        """The object whose code runs (a file migration imports its file here)."""
        return self

    @property
    def is_loaded(self) -> bool:
        """False while a file migration's code has not been imported."""
        return True

    @property
    def name(self) -> str:
        """How errors name this migration: its file or its class."""
        return self.origin or f"{type(self).__module__}.{type(self).__qualname__}"

    def raw_checksum(self, checksum: Optional[str] = None) -> Optional[str]:
        """The record's ``raw_checksum`` for this file and ``checksum`` (default: the
        code's); ``None`` for classes listed in code."""
        if self.source_bytes is None:
            return None
        return raw_checksum(self.source_bytes, self.checksum if checksum is None else checksum)

    @property
    def reversible(self) -> bool:
        """True when ``down`` is implemented."""
        return type(self).down is not Migration.down

    @property
    def checksum(self) -> str:
        """sha256 of the normalized source of this migration's class."""
        cached = self.__dict__.get("_checksum")
        if cached is None:
            cached = _class_checksum(type(self))
            self.__dict__["_checksum"] = cached
        return str(cached)

    def summary(self) -> str:
        """Description, falling back to the class docstring's first line or class name."""
        if self.description:
            return self.description
        doc = inspect.getdoc(type(self))
        if doc and type(self).__doc__ is not None:
            return doc.strip().splitlines()[0]
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} version={self.version} {self.summary()!r}>"

    # -- helpers for authors -------------------------------------------------------------

    def batch_update(
        self,
        collection: Union[str, Collection[Any]],
        filter: dict[str, Any],
        update: UpdateSpec,
        batch_size: int = 1000,
        *,
        pause: float = 0.0,
        max_lag: Optional[float] = None,
    ) -> int:
        """Update matching documents in ``_id``-ordered batches with a checkpoint per batch;
        ``pause`` seconds between batches, and waits while secondaries lag more than
        ``max_lag`` seconds (where ``replSetGetStatus`` may be read)."""

        if self._context is None:
            raise MigrationDefinitionError(
                f"{self.name}: batch_update() can only be called while the migration runs "
                "(from up() or down()).",
                version=self.version,
                hint="Call self.batch_update(...) inside up()/down().",
            )
        from .batch import batch_update  # not on the no-op path: imported on first use

        return batch_update(self._context, collection, filter, update, batch_size, pause=pause,
                            max_lag=max_lag)


class ModuleMigration(Migration):
    """A migration defined by a module's ``up(db)``/``down(db)`` functions."""

    def __init__(
        self,
        module: types.ModuleType,
        version: int,
        origin: str,
        source: str,
    ) -> None:
        up = getattr(module, "up", None)
        down = getattr(module, "down", None)
        doc = inspect.getdoc(module) or ""
        super().__init__(
            version=version,
            description=doc.strip().splitlines()[0] if doc.strip() else "",
            transactional=getattr(module, "transactional", None),
            idempotent=bool(getattr(module, "idempotent", False)),
        )
        self.module = module
        self.origin = origin
        self._up: UpFunction = up  # type: ignore[assignment]
        self._down: Optional[UpFunction] = down
        self._source = source

    def up(self, db: Database[Any]) -> Optional[bool]:
        return self._up(db)  # type: ignore[no-any-return]

    def down(self, db: Database[Any]) -> Optional[bool]:
        if self._down is None:
            raise NotImplementedError
        return self._down(db)  # type: ignore[no-any-return]

    @property
    def reversible(self) -> bool:
        return self._down is not None

    @property
    def checksum(self) -> str:
        cached = self.__dict__.get("_checksum")
        if cached is None:
            cached = source_checksum(self._source)
            self.__dict__["_checksum"] = cached
        return str(cached)

    def summary(self) -> str:
        return self.description or self.origin or f"version {self.version}"


def _class_checksum(cls: type) -> str:
    """Checksum of a class's source; falls back to its code objects when source is gone."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return _code_checksum(cls)
    try:
        return source_checksum(source)
    except (SyntaxError, ValueError):
        return _code_checksum(cls)


def _code_checksum(cls: type) -> str:
    """Last resort for classes built without source (exec, REPL): hash the code objects."""
    import hashlib

    digest = hashlib.sha256(cls.__qualname__.encode())
    for klass in cls.__mro__:
        if klass is Migration or klass is object:
            continue
        for attr in sorted(vars(klass)):
            value = vars(klass)[attr]
            code = getattr(value, "__code__", None)
            if code is not None:
                digest.update(attr.encode())
                digest.update(_code_repr(code).encode())
    return digest.hexdigest()


def _code_repr(code: types.CodeType) -> str:
    """A stable text for a code object: names, constants and nested code."""
    consts = [_code_repr(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return repr((code.co_names, code.co_varnames, consts, code.co_code))

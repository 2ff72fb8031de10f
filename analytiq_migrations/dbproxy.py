"""The ``db`` a transactional migration receives: every call on it joins the run's session,
or is refused before anything is sent.

The rule, on every pymongo this library supports (the table: docs/compatibility.md):

* ``db`` handed to ``up(db)``/``down(db)`` inside a transaction is a :class:`SessionDatabase`:
  a real ``pymongo.database.Database`` subclass (``isinstance(db, Database)`` holds) that adds
  ``session=`` to every call that takes one, unless the call passes its own (``session=None``
  counts as not given: ODMs pass it). The databases and collections it hands out
  (``db.users``, ``db["users"]``, ``db.get_collection(...)``, ``db.with_options(...)``,
  ``db.create_collection(...)``'s result, ``db.users.archive``, ``coll.with_options(...)``,
  ``coll.database``) are wrapped the same way, and cursors they open carry the session.
* Every other public method of the installed pymongo's ``Database``/``Collection`` takes no
  session (pymongo 3's legacy ``insert``, ``update``, ``save``, ``remove``,
  ``find_and_modify``, ``initialize_ordered_bulk_op``/``initialize_unordered_bulk_op``,
  ``ensure_index``, ``group``, ``eval``...): sent, it would commit on its own outside the
  transaction, so it raises ``MigrationDefinitionError`` naming the call and the modern
  method to use (or ``transactional = False``) before anything is sent.
* On pymongo releases with ``ClientSession.bind()`` (4.17+) the session is also bound for
  the duration of the call, so handles *not* obtained from ``db`` (the app's
  ``mongo.db.users``, MongoEngine documents, ``db.client["other"]``) join it as well,
  provided they use the same ``MongoClient``.
* On older releases (3.12 to 4.16) only handles obtained from ``db`` join. Writes sent
  another way (``db.client["x"]``, a module-level collection, an ODM, a second client)
  commit on their own; ``outside`` watches for them while the step runs and the step
  reports them (error, record, ``status``) and does not retry after them.
* On every release the app's own index builds and DDL during the step follow the
  transaction's rules (``appddl``): MongoEngine's automatic index creation is held back,
  anything else that cannot be part of the transaction is refused before sending.

Outside a transaction the migration gets a :class:`SessionDatabase` without a session
(``watched``): nothing is added to its calls, nothing is bound; they are only watched, so
that an error it caught is known when it returns ``False``.

In a transaction, a call MongoDB itself refuses there (code 263,
``OperationNotSupportedInTransaction``: on 4.4+ a write to a capped collection, which
``txnrules`` leaves to the server) raises the same ``MigrationDefinitionError`` as a call
``txnrules`` refuses before sending it, naming the migration and the way out.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, List, Mapping, Optional

from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError, WriteError

from .appddl import guarding
from .errors import MigrationDefinitionError, first_line
from .outside import OutsideWrites
from .txnrules import NOT_IN_TRANSACTION_CODE, Catalog, refusal, way_out

if TYPE_CHECKING:
    _DatabaseBase = Database[Any]
    _CollectionBase = Collection[Any]
else:  # pymongo 3 has no generic classes: subscripting them at run time fails there.
    _DatabaseBase = Database
    _CollectionBase = Collection

#: Whether this pymongo can bind a session to the client (``ClientSession.bind``, 4.17+).
HAS_BIND = hasattr(ClientSession, "bind")

# Methods that take ``session=`` (directly or through ``**kwargs``, as ``find`` does), across
# pymongo 3.12-4.x; a name missing from the installed release is skipped. Left out on
# purpose: ``estimated_document_count`` (the ``count`` command cannot run in a transaction).
_DATABASE_METHODS = (
    "command", "cursor_command", "create_collection", "drop_collection", "list_collections",
    "list_collection_names", "collection_names", "aggregate", "validate_collection", "watch",
    "dereference",
)
_COLLECTION_METHODS = (
    "insert_one", "insert_many", "replace_one", "update_one", "update_many", "delete_one",
    "delete_many", "bulk_write", "find", "find_one", "find_raw_batches", "find_one_and_delete",
    "find_one_and_replace", "find_one_and_update", "aggregate", "aggregate_raw_batches",
    "count_documents", "count", "distinct", "create_index", "create_indexes", "drop_index",
    "drop_indexes", "list_indexes", "index_information", "options", "drop", "rename", "watch",
    "map_reduce", "inline_map_reduce", "create_search_index", "create_search_indexes",
    "drop_search_index", "list_search_indexes", "update_search_index",
)
# Methods that send nothing to the server (they hand out handles or raise TypeError).
_LOCAL_METHODS = frozenset({"with_options", "get_collection", "next", "add_son_manipulator"})

#: pymongo 3's legacy methods, which take no session: what to use instead in a transaction.
LEGACY_REPLACEMENTS = {
    "insert": "insert_one() / insert_many()",
    "update": "update_one() / update_many() (or replace_one() for a whole document)",
    "save": "replace_one({'_id': ...}, doc, upsert=True) (or insert_one() for a new document)",
    "remove": "delete_one() / delete_many()",
    "find_and_modify": "find_one_and_update() / find_one_and_replace() / find_one_and_delete()",
    "initialize_ordered_bulk_op": "bulk_write([InsertOne(...), UpdateOne(...), ...])",
    "initialize_unordered_bulk_op": "bulk_write([...], ordered=False)",
    "ensure_index": "create_index()",
    "group": "aggregate()",
    "parallel_scan": "find()",
}


@dataclass
class CallError:
    """The first error a call through ``db`` raised during a transactional step."""

    call: str
    error: BaseException

    def describe(self) -> str:
        code = getattr(self.error, "code", None)
        return f"{type(self.error).__name__}{f' (code {code})' if code is not None else ''} " \
               f"from {self.call}: {first_line(self.error)}"


class StepWatch:
    """Watches the calls a step makes through ``db``: in a transaction (``catalog`` given)
    refuses what MongoDB refuses there (``txnrules``) before it is sent; in or out of one,
    remembers the first error a call raised, so that a migration that caught it cannot
    hide why the transaction died, or why it returned ``False``."""

    def __init__(self, version: int, direction: str, catalog: Optional[Catalog],
                 outside: Optional[OutsideWrites] = None) -> None:
        self.version = version
        self.direction = direction
        self.catalog = catalog
        self.first_error: Optional[CallError] = None
        #: The refusal raised, kept in case the migration catches it.
        self.refused: Optional[MigrationDefinitionError] = None
        #: Called with (database, collection, method, result) after each successful call.
        self.observers: List[Callable[[str, Optional[str], str, Any], None]] = []
        #: Counts the writes sent outside the transaction while the step runs (``outside``).
        self.outside = outside

    def before(self, database: str, collection: Optional[str], method: str, args: Any,
               kwargs: Any) -> None:
        """Raise ``MigrationDefinitionError`` for a call no transaction may make."""
        if self.catalog is None:
            return  # not in a transaction: nothing to refuse
        reason = refusal(database, collection, method, args, kwargs, self.catalog)
        if reason is not None:
            self.refused = MigrationDefinitionError(
                f"Migration {self.version} {self.direction}() runs in a transaction, and "
                f"{reason} (MongoDB refuses it there; nothing was sent).",
                version=self.version, hint=way_out(),
            )
            raise self.refused

    def sessionless(self, where: str, method: str) -> MigrationDefinitionError:
        """The error for a method that cannot take the transaction's session (pymongo 3's
        legacy CRUD, say): sent, it would commit on its own, outside the transaction."""
        self.refused = MigrationDefinitionError(
            f"Migration {self.version} {self.direction}() runs in a transaction, and "
            f"{sessionless_reason(where, method)} (nothing was sent).",
            version=self.version, hint=sessionless_hint(method),
        )
        return self.refused

    def failed(self, database: str, collection: Optional[str], method: str,
               error: BaseException) -> Optional[MigrationDefinitionError]:
        """Remember a call's error; returns the ``MigrationDefinitionError`` to raise instead
        when MongoDB refused the call because it runs in a transaction."""
        refused = not_in_transaction(error) if self.catalog is not None else None
        if refused is not None:
            where = f"'{collection}'" if collection else f"database '{database}'"
            self.refused = MigrationDefinitionError(
                f"Migration {self.version} {self.direction}() runs in a transaction, and "
                f"{method}() on {where} was refused by MongoDB: {first_line(refused)}",
                version=self.version, hint=way_out(),
            )
            return self.refused
        if self.first_error is None:
            call = f"{collection}.{method}()" if collection else f"db.{method}()"
            self.first_error = CallError(call, error)
        return None

    def succeeded(self, database: str, collection: Optional[str], method: str,
                  result: Any) -> None:
        for observer in self.observers:
            observer(database, collection, method, result)


def not_in_transaction(error: BaseException) -> Optional[PyMongoError]:
    """The server's error when ``error`` is MongoDB refusing an operation because it runs in
    a transaction (a bulk write's first write error, for a ``BulkWriteError``), else ``None``."""
    if isinstance(error, BulkWriteError):
        details = error.details if isinstance(error.details, Mapping) else {}
        errors = details.get("writeErrors") or [None]
        first = errors[0]
        if isinstance(first, Mapping) and first.get("code") == NOT_IN_TRANSACTION_CODE:
            return WriteError(str(first.get("errmsg", "")), NOT_IN_TRANSACTION_CODE,
                              dict(first))
        return None
    if isinstance(error, OperationFailure) and error.code == NOT_IN_TRANSACTION_CODE:
        return error
    return None


def sessionless_reason(where: str, method: str) -> str:
    """Why ``where.method()`` cannot run in a transaction: it takes no session."""
    legacy = " (pymongo 3's legacy API)" if method in LEGACY_REPLACEMENTS else ""
    return f"{where}.{method}(){legacy} cannot take the transaction's session: it would " \
           "run outside the transaction and commit on its own"


def sessionless_hint(method: str) -> str:
    """The way out for a method that takes no session."""
    instead = LEGACY_REPLACEMENTS.get(method)
    use = f"Use {instead}, which joins the transaction, or declare" if instead else "Declare"
    return f"{use} the migration `transactional = False` (its writes then commit one by one)."


def _refusing(base: type, name: str) -> Callable[..., Any]:
    """A method that takes no session: refused before anything is sent in a transaction
    (outside one, on a watched ``db`` without a session, it is simply called)."""
    original = getattr(base, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._am_session is None and self._am_watch is not None:
            return original(self, *args, **kwargs)
        watch: Optional[StepWatch] = self._am_watch
        if isinstance(self, Collection):
            database, collection, where = self.database.name, self.name, self.name
        else:
            database, collection, where = self.name, None, "db"
        if watch is None:
            raise MigrationDefinitionError(
                f"In a transaction, {sessionless_reason(where, name)} (nothing was sent).",
                hint=sessionless_hint(name))
        watch.before(database, collection, name, args, kwargs)  # a rule of MongoDB's first
        raise watch.sessionless(where, name)

    method.__name__ = name
    return method


def _injecting(base: type, name: str) -> Callable[..., Any]:
    """``base.name`` with ``session=`` added when the caller gave none, watched."""
    original = getattr(base, name)

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        watch: Optional[StepWatch] = self._am_watch
        if isinstance(self, Collection):
            database, collection = self.database.name, self.name
        else:
            database, collection = self.name, None
        if watch is not None:
            watch.before(database, collection, name, args, kwargs)
        # ODMs pass session=None explicitly: it joins too (nothing to join without one)
        if kwargs.get("session") is None and self._am_session is not None:
            kwargs["session"] = self._am_session
        try:
            result = original(self, *args, **kwargs)
        except PyMongoError as exc:
            if watch is not None:
                refused = watch.failed(database, collection, name, exc)
                if refused is not None:
                    raise refused from exc
            raise
        if watch is not None:
            watch.succeeded(database, collection, name, result)
        return result

    return method


class SessionDatabase(_DatabaseBase):
    """A ``Database`` whose calls, and whose collections' calls, run in one session."""

    _am_session: Optional[ClientSession]
    _am_watch: Optional[StepWatch]

    def __getitem__(self, name: str) -> SessionCollection:
        return _collection(super().__getitem__(name), self)

    def __getattr__(self, name: str) -> SessionCollection:
        return _collection(super().__getattr__(name), self)

    def get_collection(self, *args: Any, **kwargs: Any) -> SessionCollection:
        return _collection(super().get_collection(*args, **kwargs), self)

    def with_options(self, *args: Any, **kwargs: Any) -> SessionDatabase:
        return session_database(super().with_options(*args, **kwargs), self._am_session,
                                self._am_watch)


class SessionCollection(_CollectionBase):
    """A ``Collection`` whose calls run in one session."""

    _am_session: Optional[ClientSession]
    _am_watch: Optional[StepWatch]

    def __getitem__(self, name: str) -> SessionCollection:
        return _collection(super().__getitem__(name), self)

    def __getattr__(self, name: str) -> SessionCollection:
        return _collection(super().__getattr__(name), self)

    def with_options(self, *args: Any, **kwargs: Any) -> SessionCollection:
        return _collection(super().with_options(*args, **kwargs), self)


def _public_methods(cls: type) -> List[str]:
    """The installed pymongo's public methods of ``cls`` (not properties)."""
    return [name for name in dir(cls) if not name.startswith("_") and
            callable(inspect.getattr_static(cls, name))]


def _proxy_methods(proxy: type, base: type, injected: Iterable[str]) -> None:
    """Give ``proxy`` every public method of ``base``: ``injected`` ones add the session,
    the others (pymongo 3's legacy CRUD, ...) are refused, bar the local ones."""
    injected = set(injected)
    for name in _public_methods(base):
        if name in injected:
            setattr(proxy, name, _injecting(base, name))
        elif name not in _LOCAL_METHODS:
            setattr(proxy, name, _refusing(base, name))


_proxy_methods(SessionDatabase, Database, _DATABASE_METHODS)
_proxy_methods(SessionCollection, Collection, _COLLECTION_METHODS)
_create_collection = SessionDatabase.create_collection


def _create_joined(self: SessionDatabase, *args: Any, **kwargs: Any) -> SessionCollection:
    """``create_collection``, whose result joins the session too."""
    return _collection(_create_collection(self, *args, **kwargs), self)


SessionDatabase.create_collection = _create_joined  # type: ignore[assignment,method-assign]


def session_database(db: Database[Any], session: Optional[ClientSession],
                     watch: Optional[StepWatch] = None) -> SessionDatabase:
    """``db`` as a :class:`SessionDatabase` running every call in ``session`` (``None``:
    in none; the calls are only watched)."""
    proxy = SessionDatabase(db.client, db.name, db.codec_options, db.read_preference,
                            db.write_concern, db.read_concern)
    proxy._am_session = session
    proxy._am_watch = watch
    return proxy


def _collection(coll: Collection[Any], parent: Any) -> SessionCollection:
    """``coll`` as a :class:`SessionCollection` with ``parent``'s session and watch."""
    session, watch = parent._am_session, parent._am_watch
    database = coll.database
    if not isinstance(database, SessionDatabase):
        database = session_database(database, session, watch)
    proxy = SessionCollection(database, coll.name, False, coll.codec_options,
                              coll.read_preference, coll.write_concern, coll.read_concern)
    proxy._am_session = session
    proxy._am_watch = watch
    return proxy


@contextlib.contextmanager
def joined(db: Database[Any], session: ClientSession,
           watch: Optional[StepWatch] = None) -> Iterator[Database[Any]]:
    """The ``db`` for a migration step in ``session``'s transaction (see the module rule)."""
    proxy = session_database(db, session, watch)
    with contextlib.ExitStack() as stack:
        if watch is not None:
            stack.enter_context(guarding(watch, HAS_BIND))  # the app's DDL (appddl)
            if watch.outside is not None:
                stack.enter_context(watch.outside.watching(db.client, session))
        if HAS_BIND:
            stack.enter_context(session.bind(end_session=False))  # type: ignore[attr-defined,unused-ignore]
        yield proxy


def watched(db: Database[Any], watch: StepWatch) -> Database[Any]:
    """The ``db`` for a step outside a transaction: calls run as the migration makes them
    (no session added, nothing bound: another client may be used), and are watched.
    Another library's database (mongomock's) is returned as it is."""
    if not isinstance(db, Database):
        return db
    return session_database(db, None, watch)

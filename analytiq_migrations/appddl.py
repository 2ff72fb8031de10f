"""Index builds and other DDL the app's data layer sends while a transactional step runs.

``db`` checks its own calls (``txnrules``); this module applies the same rules to the calls
that reach pymongo another way (MongoEngine documents, Flask-PyMongo's ``mongo.db``,
``db.client["x"]``) during a transactional step, in the thread that runs it:

* **MongoEngine's automatic index creation** (``auto_create_index``: the model's first use
  in the process, or ``auto_create_index_on_save``) is held back for the step's duration:
  nothing is sent, and the model's cached collection is reset when the step's body ends, so
  MongoEngine builds the indexes on the model's next use, outside any transaction. Said at
  INFO, naming the model. (On pymongo 4.17+ those builds would join the transaction, where
  MongoDB refuses index builds on existing collections, code 263; before 4.17 they would run
  beside it and wait for the collection's lock the transaction holds.)
* **Any other index build or DDL** (``create_index(es)``, ``drop_index(es)``, ``drop``,
  ``rename``, ``create_collection``, ``drop_collection``; explicit ``Model.ensure_indexes()``)
  is refused before sending when it cannot be part of the transaction: on pymongo 4.17+
  (where it joins) when ``txnrules`` refuses it, before 4.17 always (it cannot take the
  session). The error names the model (MongoEngine's registry) and the way out.

pymongo's methods are wrapped once, at the first transactional step of the process; outside
a step (other threads included) the wrapper only reads a thread-local and calls through.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional, Set

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database

from .errors import MigrationDefinitionError
from .outside import occupying
from .txnrules import refusal

log = logging.getLogger("analytiq_migrations")

#: The DDL methods watched on each class (those missing from the installed pymongo skipped).
COLLECTION_DDL = ("create_index", "create_indexes", "ensure_index", "drop", "drop_index",
                  "drop_indexes", "rename", "reindex")
DATABASE_DDL = ("create_collection", "drop_collection")

#: How far up the stack MongoEngine's automatic index build is looked for (pymongo's method,
#: ensure_indexes, _get_collection or save: a handful of frames; a margin for wrappers).
STACK_DEPTH = 12

#: MongoEngine's methods that build indexes on their own (not asked to by the migration).
AUTOMATIC_CALLERS = frozenset({"_get_collection", "save"})

_ACTIVE = threading.local()
_installed = False


class _Guard:
    """One transactional step's view of the app's DDL."""

    def __init__(self, watch: Any, has_bind: bool) -> None:
        self.watch, self.has_bind = watch, has_bind
        #: MongoEngine documents whose automatic index build was held back.
        self.deferred: Set[type] = set()

    def call(self, original: Callable[..., Any], handle: Any, method: str, args: Any,
             kwargs: Any) -> Any:
        """``method`` on the app's ``handle`` during the step: held back, refused or sent."""
        if isinstance(handle, Collection):
            database, collection = handle.database.name, handle.name
            target = collection
        else:
            database, collection = handle.name, None
            target = str(args[0] if args else kwargs.get("name", ""))
        automatic = _automatic_build() if method in ("create_index", "create_indexes") else None
        if automatic is not None:
            if automatic not in self.deferred:
                self.deferred.add(automatic)
                log.info("Migration %d: MongoEngine's automatic index creation for %s "
                         "(collection '%s') is held back during its transaction (MongoDB "
                         "builds no index on an existing collection in one); MongoEngine "
                         "builds them on the model's next use, outside a transaction",
                         self.watch.version, automatic.__name__, target)
            return None
        if self.has_bind:
            reason = refusal(database, collection, method, args, kwargs, self.watch.catalog)
            if reason is None:
                return original(handle, *args, **kwargs)  # joins the transaction
        else:
            reason = (f"{method}() on '{target}' cannot take the transaction's session on "
                      f"pymongo {pymongo.version} (no ClientSession.bind): it would run beside "
                      "the transaction and wait for the collection's lock the transaction holds")
        models = _models(target)
        by = f" (MongoEngine model {', '.join(models)})" if models else ""
        self.watch.refused = MigrationDefinitionError(
            f"Migration {self.watch.version} {self.watch.direction}() runs in a transaction, "
            f"and the app's data layer{by} sent an index build or DDL: {reason} (nothing was "
            "sent).",
            version=self.watch.version, hint=_hint(models),
        )
        raise self.watch.refused

    def ended(self) -> None:
        """The step's body ended: MongoEngine builds the held-back indexes on next use."""
        for document in self.deferred:
            setattr(document, "_collection", None)  # noqa: B010


def _hint(models: List[str]) -> str:
    """The way out, naming the first model when there is one."""
    build = f"`{models[0]}.ensure_indexes()`" if models else "the index builds"
    return (f"Run {build} outside the transaction: in a migration of its own declared "
            "`transactional = False`, or declare this migration `transactional = False`.")


def _models(collection: str) -> List[str]:
    """The MongoEngine documents stored in ``collection`` (none without MongoEngine)."""
    registry = getattr(sys.modules.get("mongoengine.base.common"), "_document_registry", {})
    return sorted({cls.__name__ for cls in list(registry.values())
                   if getattr(cls, "_meta", {}).get("collection") == collection})


def _automatic_build() -> Optional[type]:
    """The MongoEngine document whose automatic index creation is on the stack, if any."""
    frame = sys._getframe(2)
    ensuring: Optional[type] = None
    for _ in range(STACK_DEPTH):
        if frame is None:
            return None
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith("mongoengine"):
            name = frame.f_code.co_name
            if name == "ensure_indexes":
                found = frame.f_locals.get("cls")
                ensuring = found if isinstance(found, type) else None
            elif ensuring is not None and name in AUTOMATIC_CALLERS:
                return ensuring
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _guarded(base: type, name: str) -> Callable[..., Any]:
    """``base.name``, handed to the step's guard for the app's handles during a step."""
    original = getattr(base, name)

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard: Optional[_Guard] = getattr(_ACTIVE, "guard", None)
        if guard is None or hasattr(self, "_am_session"):  # no step, or a call through db
            return original(self, *args, **kwargs)
        return guard.call(original, self, name, args, kwargs)

    return method


def _install() -> None:
    """Wrap pymongo's DDL methods (once per process)."""
    global _installed
    if _installed:
        return
    for base, names in ((Collection, COLLECTION_DDL), (Database, DATABASE_DDL)):
        for name in names:
            if hasattr(base, name):
                setattr(base, name, _guarded(base, name))
    _installed = True


@contextlib.contextmanager
def guarding(watch: Any, has_bind: bool) -> Iterator[None]:
    """Apply this module's rules to the app's DDL while a transactional step's body runs."""
    _install()
    guard = _Guard(watch, has_bind)
    try:
        with occupying(_ACTIVE, "guard", guard):
            yield
    finally:
        guard.ended()

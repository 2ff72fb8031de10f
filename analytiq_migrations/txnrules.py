"""What MongoDB refuses inside a multi-document transaction, decided before the call is sent.

The rules are the MongoDB manual's ("Transactions and Operations" / "Operations in
Transactions", https://www.mongodb.com/docs/manual/core/transactions-operations/), enforced
here so that a migration meets them on every server, including test servers that accept
more than mongod does:

* no ``drop`` of collections or databases, no ``dropIndexes``, no ``renameCollection``;
* ``createIndexes`` and ``create`` only for a collection that does not exist yet (or was
  created earlier in the same transaction), and only on MongoDB 4.4+ (4.0/4.2 create no
  collections at all in a transaction: neither explicitly nor by a first insert);
* no ``$out`` / ``$merge`` (nor the diagnostic stages) in an aggregation;
* no writes to ``system.*`` collections, nor to the ``admin``, ``config`` and ``local``
  databases; no writes to capped collections;
* no commands outside the CRUD set (``count``, ``listCollections``, ``listIndexes``,
  ``collMod``, change streams, ``mapReduce``, ...).

Each rule is a pure function of the call and of what is known about the catalog; the
session-bound ``db`` (``dbproxy``) asks :func:`refusal` before every call.

The catalog (one ``listCollections``, outside the transaction) is read only where a rule
needs it: for index builds (which collections exist), and before MongoDB 4.4 for writes
(which collections exist, since none may be created, and which are capped). On 4.4+ a
write reads nothing: it may create its collection, and the server itself refuses a write
to a capped collection (code 263, ``OperationNotSupportedInTransaction``), which
``dbproxy`` turns into the same ``MigrationDefinitionError`` as a refusal made here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Set

MANUAL = "https://www.mongodb.com/docs/manual/core/transactions-operations/"

#: MongoDB 4.4 is wire version 9: the first to create collections (and their first
#: indexes) inside a transaction.
CREATE_IN_TRANSACTION_WIRE = 9

#: OperationNotSupportedInTransaction: how MongoDB (4.4+ for writes to a capped
#: collection) refuses an operation inside a transaction.
NOT_IN_TRANSACTION_CODE = 263

#: Databases no transaction may write to.
RESERVED_DATABASES = frozenset({"admin", "config", "local"})

#: Collection methods that write documents.
WRITE_METHODS = frozenset({
    "insert_one", "insert_many", "replace_one", "update_one", "update_many", "delete_one",
    "delete_many", "bulk_write", "find_one_and_delete", "find_one_and_replace",
    "find_one_and_update",
})

#: Collection methods that can never run in a transaction, with the server command each
#: sends (named in the message).
NEVER_COLLECTION = {
    "drop": "drop", "drop_index": "dropIndexes", "drop_indexes": "dropIndexes",
    "rename": "renameCollection", "list_indexes": "listIndexes",
    "index_information": "listIndexes", "options": "listCollections", "watch": "a change stream",
    "map_reduce": "mapReduce", "inline_map_reduce": "mapReduce", "count": "count",
    "estimated_document_count": "count", "create_search_index": "createSearchIndexes",
    "create_search_indexes": "createSearchIndexes", "drop_search_index": "dropSearchIndex",
    "list_search_indexes": "$listSearchIndexes", "update_search_index": "updateSearchIndex",
}

#: Database methods that can never run in a transaction.
NEVER_DATABASE = {
    "drop_collection": "drop", "list_collections": "listCollections",
    "list_collection_names": "listCollections", "collection_names": "listCollections",
    "validate_collection": "validate", "watch": "a change stream",
}

#: Aggregation stages refused in a transaction.
REFUSED_STAGES = frozenset({
    "$out", "$merge", "$collStats", "$currentOp", "$indexStats", "$listLocalSessions",
    "$listSessions", "$planCacheStats",
})

#: Commands a transaction may run through ``db.command(...)``.
TRANSACTION_COMMANDS = frozenset({
    "find", "insert", "update", "delete", "findandmodify", "aggregate", "distinct",
    "getmore", "killcursors", "create", "createindexes",
})


@dataclass
class Catalog:
    """What the step knows of the database's collections: read on first need (one
    ``listCollections``, outside the transaction), then kept up to date by the step's calls."""

    #: Reads name -> options (``capped`` among them) of the collections that exist.
    loader: Callable[[], Dict[str, Mapping[str, Any]]]
    wire_version: int = 0
    #: Collections the step created in its transaction (indexes may be built on them).
    created: Set[str] = field(default_factory=set)
    #: Collections the step wrote to without reading the catalog (4.4+): perhaps created
    #: by the write, so they exist once the step commits.
    written: Set[str] = field(default_factory=set)
    _existing: Optional[Dict[str, Mapping[str, Any]]] = None
    #: What earlier steps created or wrote to while the catalog was unread: the dry run's
    #: steps never commit, so a later read would not see what they created.
    _earlier: Set[str] = field(default_factory=set)

    @property
    def existing(self) -> Dict[str, Mapping[str, Any]]:
        """name -> options of the collections that existed when the step began."""
        if self._existing is None:
            self._existing = dict(self.loader())
            for name in self._earlier:
                self._existing.setdefault(name, {})
        return self._existing

    def new_attempt(self) -> None:
        """The step runs again: the last try's creations rolled back."""
        self.created.clear()
        self.written.clear()

    def next_step(self) -> None:
        """The step committed: what it created exists now (no longer "created here")."""
        done = self.created | self.written
        if self._existing is not None:
            for name in done:
                self._existing.setdefault(name, {})
        else:
            self._earlier.update(done)
        self.new_attempt()

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists for this step (created by it, or there before it)."""
        return name in self.created or name in self.existing

    def capped(self, name: str) -> bool:
        """Whether ``name`` is a capped collection."""
        return bool(self.existing.get(name, {}).get("capped"))


def way_out() -> str:
    """The ways out, the same for every rule."""
    return ("Declare the migration `transactional = False` (its writes then commit one by "
            "one), or move this call into a migration of its own that is, keeping the data "
            f"changes transactional. See {MANUAL}")


def refusal(database: str, collection: Optional[str], method: str, args: Iterable[Any],
            kwargs: Mapping[str, Any], catalog: Catalog) -> Optional[str]:
    """Why MongoDB would refuse this call in a transaction, or ``None`` when it allows it."""
    args = list(args)
    where = f"'{collection}'" if collection else f"database '{database}'"
    if collection is None:
        return _database_refusal(database, method, args, kwargs, catalog)
    if method in NEVER_COLLECTION:
        return f"{method}() on {where} sends {NEVER_COLLECTION[method]}, which cannot run " \
               "in a transaction"
    if method == "aggregate":
        return _pipeline_refusal(args[0] if args else kwargs.get("pipeline"), where)
    if method in ("create_index", "create_indexes"):
        if catalog.wire_version < CREATE_IN_TRANSACTION_WIRE:
            return f"{method}() on {where}: MongoDB before 4.4 builds no index in a transaction"
        if collection in catalog.existing and collection not in catalog.created:
            return (f"{method}() on {where}: the collection already exists, and a transaction "
                    "may only build indexes on a collection it creates")
        catalog.created.add(collection)  # the build creates it
        return None
    if method in WRITE_METHODS:
        if database in RESERVED_DATABASES:
            return f"{method}() writes to the '{database}' database, which no transaction may"
        if collection.startswith("system."):
            return f"{method}() writes to {where}: system collections cannot be written in " \
                   "a transaction"
        if catalog.wire_version >= CREATE_IN_TRANSACTION_WIRE:
            # Nothing to read: the write may create its collection, and the server refuses
            # a capped one itself (NOT_IN_TRANSACTION_CODE, reported by dbproxy).
            catalog.written.add(collection)
            return None
        if catalog.capped(collection):
            return f"{method}() writes to {where}, a capped collection: transactions cannot " \
                   "write to capped collections"
        if not catalog.exists(collection):
            return (f"{method}() writes to {where}, which does not exist: MongoDB before "
                    "4.4 creates no collection in a transaction")
    return None


def _database_refusal(database: str, method: str, args: list[Any], kwargs: Mapping[str, Any],
                      catalog: Catalog) -> Optional[str]:
    """``refusal`` for calls on the database itself."""
    if method in NEVER_DATABASE:
        return f"{method}() on database '{database}' sends {NEVER_DATABASE[method]}, which " \
               "cannot run in a transaction"
    if method == "aggregate":
        return _pipeline_refusal(args[0] if args else kwargs.get("pipeline"),
                                 f"database '{database}'")
    if method == "create_collection":
        name = str(args[0] if args else kwargs.get("name"))
        if catalog.wire_version < CREATE_IN_TRANSACTION_WIRE:
            return f"create_collection('{name}'): MongoDB before 4.4 creates no collection in " \
                   "a transaction"
        if kwargs.get("capped"):
            return f"create_collection('{name}', capped=True): a transaction cannot create " \
                   "a capped collection"
        catalog.created.add(name)
        return None
    if method in ("command", "cursor_command"):
        command = args[0] if args else kwargs.get("command")
        verb = next(iter(command), None) if isinstance(command, Mapping) else command
        if not isinstance(verb, str) or verb.lower() not in TRANSACTION_COMMANDS:
            return f"db.command({verb!r}) cannot run in a transaction (only CRUD commands can)"
    return None


def _pipeline_refusal(pipeline: Any, where: str) -> Optional[str]:
    """``refusal`` for an aggregation pipeline."""
    for stage in pipeline or []:
        if isinstance(stage, Mapping):
            refused = REFUSED_STAGES.intersection(stage)
            if refused:
                return f"aggregate() on {where} uses {sorted(refused)[0]}, which cannot run " \
                       "in a transaction"
    return None

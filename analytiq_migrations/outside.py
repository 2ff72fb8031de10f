"""Writes a transactional step sends outside its transaction, seen by pymongo command monitoring.

Before pymongo 4.17 (no ``ClientSession.bind``) only ``db`` and the handles it hands out join
a migration's transaction. The application's own data layer (MongoEngine documents,
Flask-PyMongo's ``mongo.db``, a project's ``get_db()``, ``db.client["x"]``, a second
``MongoClient``) sends its writes without the run's session: each commits on its own at
once, and survives the transaction's abort. They cannot be routed into the session from
here, so they are watched instead:

* one command listener, registered with ``pymongo.monitoring.register`` when this module is
  imported (so every client created afterwards has it) and attached to the migrations' own
  client at each transactional step when that client was created earlier;
* active only while a transactional step's ``up``/``down`` runs, and only in the thread
  that runs it (other threads: the lock's heartbeat, a fleet's other databases, the app's
  requests are not the step's); a no-op otherwise;
* it counts every write command (insert, update, delete, findAndModify, index and
  collection DDL, ``$out``/``$merge``) that does not carry the step's session id.

What it means for the step (``_Step`` asks :class:`OutsideWrites`): a failure says which
collections got writes outside the transaction and how many commands (message, the record's
``outside_writes``, ``status``) instead of "nothing was written"; the transaction is never
run again automatically after such a write (a write conflict with one's own outside write
is named as such); a commit logs a warning.

What it cannot see: writes from threads or processes the migration starts; writes through
a client created before the library was imported, other than the migrations' own client;
anything not sent through pymongo.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

from pymongo import monitoring
from pymongo.errors import OperationFailure, PyMongoError

from .errors import MigrationError, MigrationFailedError, first_line

log = logging.getLogger("analytiq_migrations")

T = TypeVar("T")

#: Server commands that write (lower-case names); ``aggregate`` and ``mapReduce`` count only
#: when they write their output to a collection.
WRITE_COMMANDS = frozenset({
    "insert", "update", "delete", "findandmodify", "create", "createindexes", "drop",
    "dropindexes", "collmod", "renamecollection", "dropdatabase", "bulkwrite", "mapreduce",
    "aggregate",
})

#: WriteConflict: what MongoDB answers a transaction's write to a document written since
#: the transaction's snapshot (by the migration itself, outside it, in the case at hand).
WRITE_CONFLICT_CODE = 112

#: What joins a transaction on pymongo before 4.17: said once per run at INFO.
JOINS_BEFORE_BIND = (
    "pymongo %s has no ClientSession.bind (4.17+): in a transactional migration only `db` "
    "and the handles it hands out (db.users, db['x'], get_collection, with_options, "
    "create_collection) join the transaction. Writes through the app's own data layer "
    "(MongoEngine documents, Flask-PyMongo's mongo.db, get_db(), db.client[...]) commit on "
    "their own; they are watched and reported, and a transaction that had them is never "
    "run again automatically"
)


def _namespaces(event: Any) -> List[Tuple[str, str]]:
    """(database, collection) pairs a write command's event changes; [] for no write."""
    name = event.command_name.lower()
    if name not in WRITE_COMMANDS:
        return []
    command: Mapping[str, Any] = event.command
    database = event.database_name
    target = next(iter(command.values()), None) if command else None
    if name == "aggregate":
        stages = [s for s in command.get("pipeline") or [] if isinstance(s, Mapping)]
        if not any("$out" in s or "$merge" in s for s in stages):
            return []
    if name == "mapreduce" and isinstance(command.get("out"), Mapping) and \
            "inline" in command["out"]:
        return []
    if name == "renamecollection" and isinstance(target, str) and "." in target:
        return [tuple(target.split(".", 1))]  # type: ignore[list-item]
    if name == "bulkwrite":
        spaces = [str(ns.get("ns", "")) for ns in command.get("nsInfo") or []
                  if isinstance(ns, Mapping)]
        return [tuple(ns.split(".", 1)) for ns in spaces if "." in ns]  # type: ignore[misc]
    if name == "dropdatabase" or not isinstance(target, str):
        return [(database, "*")]
    return [(database, target)]


class OutsideWrites:
    """One step's writes outside its transaction (over all its attempts: each was kept)."""

    def __init__(self, version: int, description: str, direction: str) -> None:
        self.version, self.description, self.direction = version, description, direction
        #: (database, collection) -> write commands sent outside the transaction.
        self.counts: Dict[Tuple[str, str], int] = {}
        self._lsid: Optional[Mapping[str, Any]] = None
        self._attempts = 0

    # -- watching ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, client: Any, session: Any) -> Iterator[None]:
        """Count, while the body runs in this thread, writes without ``session``."""
        _attach(client)
        self._lsid = session.session_id
        with occupying(_ACTIVE, "writes", self):
            yield

    def saw(self, event: Any) -> None:
        """One command started in the step's thread."""
        command = event.command
        if isinstance(command, Mapping) and self._lsid is not None and \
                command.get("lsid") == self._lsid:
            return  # in the step's session, hence in its transaction
        for namespace in _namespaces(event):
            self.counts[namespace] = self.counts.get(namespace, 0) + 1

    # -- what it means ----------------------------------------------------------------------

    @property
    def seen(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        """``app.users (2 write commands), app.audit (1 write command)``."""
        return ", ".join(f"{db}.{coll} ({n} write command{'s' if n != 1 else ''})"
                         for (db, coll), n in sorted(self.counts.items()))

    def fields(self) -> Dict[str, Any]:
        """The record's and history entry's ``outside_writes`` (empty when there were none)."""
        if not self.seen:
            return {}
        return {"outside_writes": [{"database": db, "collection": coll, "commands": n}
                                   for (db, coll), n in sorted(self.counts.items())]}

    def _where(self) -> str:
        return f"Migration {self.version} ({self.description}) {self.direction}()"

    def _hint(self) -> str:
        return (f"Check {', '.join(f'{db}.{c}' for db, c in sorted(self.counts))} before "
                "running it again: the next run repeats the whole migration, those writes "
                "included. To make them part of the transaction, send them through `db` (on "
                "pymongo before 4.17 the app's data layer and db.client[...] do not join it; "
                "see docs/compatibility.md), or declare the migration `transactional = False` "
                "and make it safe to re-run.")

    def explain(self, exc: Exception) -> Exception:
        """``exc``, or, when writes went outside the transaction, the error that says so."""
        if not self.seen or isinstance(exc, OutsideWritesError):
            return exc
        first = getattr(exc, "message", None) if isinstance(exc, MigrationError) else None
        hint = getattr(exc, "hint", None) if isinstance(exc, MigrationError) else None
        text = (first or first_line(exc)).rstrip(".")
        error = OutsideWritesError(
            f"{self._where()} failed: {type(exc).__name__}: {text}. Its "
            f"transaction was rolled back, but writes it sent outside the transaction were "
            f"kept: {self.summary()}.",
            version=self.version, hint=f"{hint} {self._hint()}" if hint else self._hint(),
        )
        error.exit_code = getattr(exc, "exit_code", error.exit_code)  # a refusal stays one
        return error

    def no_retry(self, body: Callable[[Any], T]) -> Callable[[Any], T]:
        """``body`` for the transaction loop, never run again once writes went outside it."""

        def guarded(session: Any) -> T:
            self._attempts += 1
            if self._attempts > 1 and self.seen:
                # The last attempt's commit failed with a transient error after outside writes.
                raise OutsideWritesError(
                    f"{self._where()}: its transaction failed with a transient error and "
                    f"would run again, but writes it sent outside the transaction were kept: "
                    f"{self.summary()}. Not run again, so as not to repeat them.",
                    version=self.version, hint=self._hint())
            try:
                return body(session)
            except PyMongoError as exc:
                if self.seen and exc.has_error_label("TransientTransactionError"):
                    raise self._not_retried(exc) from exc
                raise

        return guarded

    def _not_retried(self, exc: PyMongoError) -> OutsideWritesError:
        """The error for a transient failure after outside writes (not retried)."""
        if isinstance(exc, OperationFailure) and exc.code == WRITE_CONFLICT_CODE:
            what = ("hit a write conflict (WriteConflict, code 112), most likely with its own "
                    f"write outside the transaction ({self.summary()}): the transaction's "
                    "snapshot was taken before that write, so writing the same document "
                    "in the transaction conflicts with it")
        else:
            what = f"failed with a transient error ({type(exc).__name__}: {first_line(exc)}) "\
                   f"after writing outside its transaction ({self.summary()})"
        return OutsideWritesError(
            f"{self._where()} {what}. The transaction was rolled back and not run again, so as "
            "not to repeat the writes outside it, which were kept.",
            version=self.version, hint=self._hint())

    def committed(self) -> None:
        """After the commit: say that part of the step was not in its transaction."""
        if self.seen:
            log.warning("%s committed, but these writes were sent outside its transaction "
                        "(not atomic with it): %s", self._where(), self.summary())


class OutsideWritesError(MigrationFailedError):
    """A transactional step failed after writes outside its transaction, which were kept."""


def note_joining(transactional: Sequence[bool], has_bind: bool) -> None:
    """The one INFO line per run on pymongo before 4.17 (when any step is transactional)."""
    if not has_bind and any(transactional):
        import pymongo

        log.info(JOINS_BEFORE_BIND, pymongo.version)


@contextlib.contextmanager
def occupying(slot: threading.local, name: str, value: Any) -> Iterator[None]:
    """``slot.name = value`` while the body runs (then what it was before)."""
    previous = getattr(slot, name, None)
    setattr(slot, name, value)
    try:
        yield
    finally:
        setattr(slot, name, previous)


class _Listener(monitoring.CommandListener):
    """Hands each command started in a watched step's thread to its :class:`OutsideWrites`."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        writes: Optional[OutsideWrites] = getattr(_ACTIVE, "writes", None)
        if writes is not None:
            writes.saw(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to do: a write is counted when it is sent."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to do: a write is counted when it is sent (it may have been applied)."""


_ACTIVE = threading.local()
LISTENER = _Listener()
monitoring.register(LISTENER)  # every client created from now on


def _attach(client: Any) -> bool:
    """Make sure ``client`` (created before this module was imported, perhaps) publishes its
    commands to :data:`LISTENER`. pymongo takes listeners only when a client is created, so
    this adds it to the client's listener set (the same on pymongo 3.12 to 4.x); ``False``
    when ``client`` has none (mongomock)."""
    listeners = getattr(client, "_event_listeners", None)
    commands = getattr(listeners, "_EventListeners__command_listeners", None)
    if not isinstance(commands, list):
        return False
    if LISTENER not in commands:
        commands.append(LISTENER)
        listeners._EventListeners__enabled_for_commands = True  # type: ignore[union-attr]
    return True

"""One way from a URI to a client, and the application's own client or database.

``client_for`` is the only place a ``MongoClient`` is made from a URI (``Migrator``, the
command line, ``Fleet``, ``verify`` and the demo all go through it), so every client the
library makes has the same defaults and the same error for a bad URI. ``ping`` is the
command line's first contact; ``resolve_database`` turns what a caller passed into the
``Database`` to migrate.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional, Union

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import ConnectionFailure, InvalidName, OperationFailure

from .errors import ConfigurationError, ConnectionFailedError, MigrationError, redact
from .reach import SetNames, nobody_listens, seeds, set_name_mismatch, show
from .server import SERVER_SELECTION_TIMEOUT_MS, client_options, hosts

#: MongoDB refuses longer database names (fewer than 64 bytes), but only once something
#: is written; checked up front so the mistake is named before anything runs.
MAX_DATABASE_NAME = 63

ClientOrDb = Union[str, "pymongo.MongoClient[Any]", "Database[Any]", Any]


def client_for(uri: str, *, timeout: Optional[float] = None) -> Any:
    """A ``MongoClient`` for ``uri``, not connected yet; ``timeout`` (seconds): the server
    selection timeout, else the URI's, else :data:`SERVER_SELECTION_TIMEOUT_MS`."""
    # SetNames: the servers' replica-set names, for the error when the URI's is not theirs.
    options: dict[str, Any] = {"connect": False, "event_listeners": [SetNames()]}
    given = uri.lower()
    if "appname=" not in given:  # keyword arguments would override the URI's
        options["appname"] = "analytiq-migrations"
    if timeout is not None:
        options["serverSelectionTimeoutMS"] = max(1, int(timeout * 1000))
    elif "serverselectiontimeoutms=" not in given:
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
    try:
        return pymongo.MongoClient(uri, **options)
    except (PyMongoConfigurationError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Bad MongoDB URI {redact(uri)!r}: {redact(str(exc))}",
            hint="It looks like mongodb://[user:password@]host[:port]/[database][?options].",
        ) from None


def _is_database(obj: Any) -> bool:
    """A pymongo (or mongomock) Database, as opposed to a client."""
    kind = type(obj)
    return isinstance(obj, Database) or (
        kind.__name__ == "Database" and kind.__module__.startswith("mongomock")
    )


def resolve_database(client_or_db: ClientOrDb, database: Optional[str]) -> Any:
    """A Database from a URI, a client (+ name or the URI's default) or a Database."""
    if isinstance(client_or_db, str):
        client: Any = client_for(client_or_db)
    elif _is_database(client_or_db):
        if database is not None and database != client_or_db.name:
            raise ConfigurationError(
                f"Got database '{client_or_db.name}' and database={database!r}; which one?",
                hint="Pass a client with database=..., or just the Database.",
            )
        return client_or_db
    else:
        client = client_or_db
    if database is None:
        try:
            return client.get_default_database()
        except (PyMongoConfigurationError, AttributeError):
            raise ConfigurationError(
                "No database name: none was given and the URI names none.",
                hint="Pass database='name' (--database, ANALYTIQ_MIGRATIONS_DATABASE) or put "
                "it in the URI path: mongodb://host/name.",
            ) from None
    if isinstance(database, str) and len(database.encode()) > MAX_DATABASE_NAME:
        raise ConfigurationError(
            f"Bad database name {database!r}: longer than {MAX_DATABASE_NAME} bytes.")
    try:
        return client[database]
    except (InvalidName, TypeError) as exc:
        raise ConfigurationError(f"Bad database name {database!r}: {exc}") from None


def refuse_unreachable(client: Any) -> None:
    """``ConnectionFailedError`` at once (no MongoDB command sent, a TCP connect per seed)
    when every seed refuses the connection or names an unknown host: not after the whole
    server selection timeout."""
    addresses = seeds(client)
    refused = nobody_listens(client, addresses)
    if refused is not None:
        raise ConnectionFailedError(
            f"Cannot reach MongoDB at {show(addresses)}: {redact(refused)[:300]}",
            hint="Check the host names and ports in the URI, and that the server is running "
            "(nothing accepts connections there). Nothing was changed.",
        )


def ping(client: Any) -> None:
    """Fail fast when nothing listens at the URI's hosts, the server does not answer in time,
    is another replica set than the URI says, or refuses the credentials."""
    refuse_unreachable(client)
    addresses = seeds(client)
    try:
        # One ping, not retried: server selection has already waited the whole timeout.
        client.admin.command("ping")
    except ConnectionFailure as exc:
        mismatch = set_name_mismatch(client)
        if mismatch is not None:
            raise ConnectionFailedError(
                f"Cannot use MongoDB at {show(addresses)}: {redact(mismatch)}.",
                hint="Put the server's replica-set name in the URI's replicaSet option (or "
                "point the URI at the intended servers). Nothing was changed.",
            ) from None
        waited = client_options(client).server_selection_timeout
        cause = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
        raise ConnectionFailedError(
            f"Cannot reach MongoDB at {show(addresses) if addresses else hosts(client)} "
            f"within {waited:g} s: {redact(cause)[:300]}",
            hint="Check the URI, that the server is running and reachable from here, and any "
            "firewall/TLS settings (--server-timeout waits longer). Nothing was changed.",
        ) from None
    except OperationFailure as exc:
        if exc.code != 18:
            return  # it answered: access problems are reported by the command that needs access
        # Reported here: after a failed handshake the driver would wait out the whole
        # server selection timeout on the next command before saying anything.
        message = (exc.details or {}).get("errmsg") or str(exc).split(", full error")[0]
        raise ConfigurationError(
            f"Authentication failed on {hosts(client)}: {redact(str(message))}",
            hint="Check the user, password and authSource in the URI.",
        ) from None


# -- the application's own client ------------------------------------------------------------


def is_client_or_database(obj: Any) -> bool:
    """A pymongo (or mongomock) ``MongoClient`` or ``Database``."""
    if isinstance(obj, (pymongo.MongoClient, Database)):
        return True
    kind = type(obj)
    return kind.__name__ in ("MongoClient", "Database") and \
        kind.__module__.startswith("mongomock")


def resolve_client(value: Any, where: str) -> Any:
    """The ``MongoClient`` or ``Database`` that ``value`` stands for.

    ``value`` is ``MODULE:ATTR`` (or ``package.module.attr``), a client, a database, a
    Flask-PyMongo ``PyMongo`` object, or a zero-argument callable returning one of
    those; ``where`` names the setting in errors ("--client", "settings...['CLIENT']").
    """
    label = where
    target = value
    if isinstance(value, str):
        label = f"{value!r} ({where})"
        target = import_ref(value, where)
    if not is_client_or_database(target) and callable(target):
        try:
            target = target()
        except MigrationError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"Calling {label} failed: {type(exc).__name__}: {redact(str(exc))[:300]}",
                hint="It must be callable without arguments and return a MongoClient or a "
                "Database.",
            ) from exc
        label = f"what {label} returned"
    target = _unwrap(target)
    if not is_client_or_database(target):
        raise ConfigurationError(
            f"{label[0].upper()}{label[1:]} is {_a(target)}, not a MongoClient or a Database.",
            hint="Point it at a pymongo MongoClient, a Database, or a function without "
            "arguments that returns one.",
        )
    return target


def _unwrap(obj: Any) -> Any:
    """Flask-PyMongo's ``PyMongo`` object: its database if the URI names one, else its client."""
    inner = getattr(obj, "cx", None)
    if not is_client_or_database(obj) and inner is not None and is_client_or_database(inner):
        db = getattr(obj, "db", None)
        return db if db is not None else inner
    return obj


def _a(obj: Any) -> str:
    """``a str 'x'`` / ``None`` for messages."""
    if obj is None:
        return "None"
    kind = type(obj).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind}"


def import_ref(ref: str, where: str) -> Any:
    """The object ``MODULE:ATTR`` / ``package.module.attr`` names."""
    if ":" in ref:
        module_name, attr_path = ref.split(":", 1)
    else:
        module_name, _, attr_path = ref.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"Cannot import module '{module_name}' named by {where} {ref!r}: {exc}",
                hint="Run from the project's directory, or put the project on PYTHONPATH.",
            ) from None
        raise ConfigurationError(
            f"Importing '{module_name}' ({where} {ref!r}) failed: {exc}",
            hint="Install what it needs, or point the setting at a module that imports.",
        ) from exc
    except Exception as exc:
        raise ConfigurationError(
            f"Importing '{module_name}' ({where} {ref!r}) failed: {type(exc).__name__}: "
            f"{redact(str(exc))[:300]}",
            hint="Fix the module, or point the setting at another one.",
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(
                f"Module '{module_name}' has no attribute '{attr_path}' ({where} {ref!r}).",
                hint="Check the name after the colon: the client, database or function in "
                "that module.",
            )
        target = getattr(target, part)
    return target


def describe_client(obj: Any) -> str:
    """``MongoClient on host:port`` / ``database 'app' on host:port``, never credentials."""
    if isinstance(obj, str):
        return obj
    obj = _unwrap(obj)
    if is_client_or_database(obj):
        if type(obj).__name__ == "Database":
            return f"database '{obj.name}' on {hosts(obj.client)}"
        return f"MongoClient on {hosts(obj)}"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name}() (called when needed)" if callable(obj) else name


__all__ = ["MAX_DATABASE_NAME", "ClientOrDb", "client_for", "describe_client",
           "is_client_or_database", "ping", "resolve_client", "resolve_database"]

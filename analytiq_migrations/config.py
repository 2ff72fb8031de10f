"""Settings for the command line and the framework hooks, from every place they can come from.

Precedence, highest first: command-line flags, the framework's settings (Flask
``app.config`` / Django ``settings.ANALYTIQ_MIGRATIONS``, when a hook is used), the
environment, then ``[tool.analytiq_migrations]`` of the nearest ``pyproject.toml`` that
has one, from the working directory up to the repository root (or the file ``--config``
names). Every option
has one flag, one ``ANALYTIQ_MIGRATIONS_<NAME>`` variable and one pyproject key, so an
error can always say every way to set a missing value.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import ConfigurationError, ConnectionFailedError, MigrationError, redact
from .pyprojectfile import beside, find_pyproject, named_config, read_table
from .server import client_options, topology

log = logging.getLogger("analytiq_migrations")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _text(value: Any, where: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where} must be a non-empty string, not {value!r}.")
    return value.strip()


def _seconds(value: Any, where: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not number >= 0:  # also catches NaN
        raise ConfigurationError(
            f"{where} must be a number of seconds (0 or more), not {value!r}."
        )
    return number


def parse_bool(value: Any, where: str) -> bool:
    """A boolean (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(f"{where} must be true or false, not {value!r}.")


def _choice(*choices: str) -> Callable[[Any, str], str]:
    """A parser accepting one of ``choices``."""

    def parse(value: Any, where: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigurationError(
                f"{where} must be one of {', '.join(choices)}, not {value!r}."
            )
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One setting: its name in code, on the command line, in the environment, in TOML."""

    name: str
    flag: str
    label: str  # what it is, for "missing" messages
    parse: Callable[[Any, str], Any]
    env: tuple[str, ...]  # most specific first
    keys: tuple[str, ...] = ()  # pyproject / framework keys, besides ``name``

    @property
    def key(self) -> str:
        """The pyproject.toml key."""
        return self.name

    @property
    def framework_key(self) -> str:
        """The key in framework settings (``ANALYTIQ_MIGRATIONS_<KEY>``, ``{"<KEY>": ...}``)."""
        prefix = "ANALYTIQ_MIGRATIONS_"
        name = self.env[0]
        return name[len(prefix):] if name.startswith(prefix) else name


def _client_ref(value: Any, where: str) -> Any:
    """``MODULE:ATTR`` or ``package.module.attr`` naming a client, a database or a
    zero-argument callable returning one; an object (from a framework hook) as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not _CLIENT_REF.match(text) or (":" not in text and "." not in text):
        raise ConfigurationError(
            f"{where} must look like MODULE:ATTR, not {value!r}.",
            hint="Name the module and the MongoClient, Database or zero-argument function "
            "in it that returns one, e.g. myapp.db:get_client (or myapp.db.get_client).",
        )
    return text


#: ``module.sub:attr.inner`` or ``module.sub.attr``.
_CLIENT_REF = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


OPTIONS: tuple[Option, ...] = (
    Option("uri", "--uri", "MongoDB URI", _text,
           ("ANALYTIQ_MIGRATIONS_URI", "MONGODB_URI")),
    Option("client", "--client", "MongoDB client (MODULE:ATTR)", _client_ref,
           ("ANALYTIQ_MIGRATIONS_CLIENT",)),
    Option("database", "--database", "database name", _text,
           ("ANALYTIQ_MIGRATIONS_DATABASE",)),
    Option("migrations", "--migrations", "migrations (a directory or a package name)", _text,
           ("ANALYTIQ_MIGRATIONS_SOURCE",), keys=("source",)),
    Option("collection", "--collection", "records collection", _text,
           ("ANALYTIQ_MIGRATIONS_COLLECTION",)),
    Option("transactions", "--transactions", "transaction mode",
           _choice("auto", "always", "never"), ("ANALYTIQ_MIGRATIONS_TRANSACTIONS",)),
    Option("lock_wait", "--lock-wait", "lock wait", _seconds,
           ("ANALYTIQ_MIGRATIONS_LOCK_WAIT",)),
    Option("lock_ttl", "--lock-ttl", "lock TTL", _seconds, ("ANALYTIQ_MIGRATIONS_LOCK_TTL",)),
    Option("on_drift", "--on-drift", "checksum drift policy",
           _choice("error", "warn", "ignore"), ("ANALYTIQ_MIGRATIONS_ON_DRIFT",)),
    Option("allow_out_of_order", "--allow-out-of-order", "out-of-order policy", parse_bool,
           ("ANALYTIQ_MIGRATIONS_ALLOW_OUT_OF_ORDER",)),
    Option("server_timeout", "--server-timeout", "server selection timeout", _seconds,
           ("ANALYTIQ_MIGRATIONS_SERVER_TIMEOUT",)),
)

BY_NAME = {option.name: option for option in OPTIONS}


@dataclass
class Settings:
    """Resolved settings; ``origin`` says where each explicitly set value came from."""

    uri: Optional[str] = None
    #: The application's own client: ``MODULE:ATTR``, or (from a framework hook) a
    #: ``MongoClient``, a ``Database`` or a zero-argument callable returning one.
    client: Any = None
    database: Optional[str] = None
    migrations: Optional[str] = None
    collection: str = "migrations"
    transactions: str = "auto"
    lock_wait: float = 0.0
    lock_ttl: float = 60.0
    on_drift: str = "error"
    allow_out_of_order: bool = False
    #: ``None``: the URI's ``serverSelectionTimeoutMS`` if it has one, else the library's.
    server_timeout: Optional[float] = None
    origin: dict[str, str] = field(default_factory=dict)

    def migrator_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Migrator`` (besides the client and migrations)."""
        return {
            "database": self.database,
            "collection": self.collection,
            "transactions": self.transactions,
            "lock_ttl": self.lock_ttl,
            "lock_wait": self.lock_wait,
            "on_drift": self.on_drift,
            "allow_out_of_order": self.allow_out_of_order,
        }

    def describe(self) -> str:
        """One line per explicitly set value and its origin (URI redacted), for ``-v``."""
        def shown(name: str) -> str:
            value = getattr(self, name)
            if name == "client" and not isinstance(value, str):
                return describe_client(value)
            return redact(str(value))

        return "\n".join(f"{name} = {shown(name)} ({where})"
                         for name, where in self.origin.items())


@dataclass(frozen=True)
class Layer:
    """One source of settings: raw values by option name, and how it names an option."""

    values: Mapping[str, Any]
    #: How this layer names an option ("--uri", "environment variable MONGODB_URI").
    naming: Callable[[Option], str]
    #: The verb that goes with it in "missing" messages ("pass", "set", "put").
    how: str = "set"


def flags_layer(values: Mapping[str, Any]) -> Layer:
    """Values given on the command line (already typed by argparse)."""
    return Layer(values, lambda option: option.flag, how="pass")


def env_layer(environ: Optional[Mapping[str, str]] = None) -> Layer:
    """``ANALYTIQ_MIGRATIONS_*`` (and ``MONGODB_URI``); empty variables count as unset."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for option in OPTIONS:
        for var in option.env:
            if environ.get(var, "").strip():
                values[option.name] = environ[var]
                names[option.name] = var
                break
    return Layer(values, lambda option: "environment variable " + names.get(
        option.name, " or ".join(option.env)))


def pyproject_layer(directory: Optional[Path] = None, path: Optional[Path] = None) -> Layer:
    """``[tool.analytiq_migrations]`` of ``path`` (``--config``), else of the nearest
    ``pyproject.toml`` that has one, searched from ``directory`` (default: cwd) upward."""
    found: Optional[Path]
    if path is not None:
        found, table = named_config(path), read_table(path)
        if not table:
            raise ConfigurationError(
                f"--config {path}: the file has no [tool.analytiq_migrations] table.",
                hint="Name a pyproject.toml (or another TOML file) with a "
                "[tool.analytiq_migrations] table, or leave --config out to search for one.",
            )
        where = f"of {found}"
    else:
        start = (directory or Path.cwd()).resolve()
        found, table, looked = find_pyproject(start)
        where = f"of {found}" if found is not None else \
            f"of a pyproject.toml (none has one from {start} up to {looked})"
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = BY_NAME.get(key) or next((o for o in OPTIONS if key in o.keys), None)
        if option is None:
            known = ", ".join(o.key for o in OPTIONS)
            raise ConfigurationError(
                f"Unknown setting '{key}' in [tool.analytiq_migrations] of {found}.",
                hint=f"Known settings: {known}.",
            )
        values[option.name] = value
    if found is not None and isinstance(values.get("migrations"), str):
        values["migrations"] = beside(found.parent, values["migrations"])
    return Layer(values, lambda option: f"{option.key} = \"...\" in [tool.analytiq_migrations] "
                 + where, how="put")


def resolve(layers: Sequence[Layer]) -> Settings:
    """Settings from ``layers`` (highest precedence first), each value checked."""
    settings = Settings()
    level: dict[str, int] = {}
    for option in OPTIONS:
        for index, layer in enumerate(layers):
            if option.name in layer.values and layer.values[option.name] is not None:
                where = layer.naming(option)
                value = option.parse(layer.values[option.name], where)
                setattr(settings, option.name, value)
                settings.origin[option.name] = where
                level[option.name] = index
                break
    if settings.client is not None and settings.uri is not None:
        # One connection: the one set in the more specific place; a client and a URI
        # set in the same place: the client (the URI is what it was made from).
        loser = "client" if level["uri"] < level["client"] else "uri"
        setattr(settings, loser, None)
        settings.origin[loser] = f"ignored: {settings.origin[loser]} is overridden by " + \
            settings.origin["uri" if loser == "client" else "client"]
    if settings.lock_ttl <= 0:
        raise ConfigurationError(
            f"The lock TTL must be more than 0 seconds ({settings.origin.get('lock_ttl')})."
        )
    return settings


def load(flags: Mapping[str, Any], framework: Optional[Layer] = None,
         environ: Optional[Mapping[str, str]] = None,
         directory: Optional[Path] = None,
         config: Optional[Path] = None) -> tuple[Settings, list[Layer]]:
    """Resolve flags > framework > environment > pyproject (``config``: the file named by
    ``--config``, else the nearest one found); also returns the layers used."""
    layers = [flags_layer(flags)]
    if framework is not None:
        layers.append(framework)
    layers += [env_layer(environ), pyproject_layer(directory, config)]
    return resolve(layers), layers


def require(settings: Settings, names: Sequence[str], layers: Sequence[Layer],
            *, database_from_uri: bool = True) -> None:
    """Raise one ``ConfigurationError`` naming every missing setting and how to set it."""
    if settings.client is not None:  # the client is the connection (and may name the database)
        names = [n for n in names if n not in ("uri", "database")]
    missing = [BY_NAME[n] for n in names if getattr(settings, n) is None]
    if database_from_uri and settings.uri and uri_database(settings.uri):
        missing = [o for o in missing if o.name != "database"]
    if not missing:
        return
    lines = []
    for option in missing:
        ways = [f"{layer.how} {layer.naming(option)}" for layer in layers]
        if option.name == "database":
            ways.append("name it in the URI's path (mongodb://host/NAME)")
        if option.name == "uri":
            ways.append("use your own client instead (" + ", ".join(
                layer.naming(BY_NAME["client"]) for layer in layers[:-1]) + ")")
        lines.append(f"  {option.label}: {', or '.join(ways)}")
    what = ", ".join(o.label for o in missing)
    raise ConfigurationError(
        f"Missing setting{'s' if len(missing) > 1 else ''}: {what}.\n" + "\n".join(lines)
    )


def uri_database(uri: str) -> Optional[str]:
    """The database named in a URI's path, if any (``mongodb://host/NAME?...``)."""
    rest = uri.split("://", 1)[-1]
    if "/" not in rest:
        return None
    path = rest.split("/", 1)[1].split("?", 1)[0]
    return path or None


def make_client(settings: Settings) -> Any:
    """A ``MongoClient`` for ``settings.uri`` (not connected yet)."""
    import pymongo
    from pymongo.errors import ConfigurationError as PyMongoConfigurationError

    from .reach import SetNames
    from .server import SERVER_SELECTION_TIMEOUT_MS

    uri = settings.uri or ""
    # SetNames: the servers' replica-set names, for the error when the URI's is not theirs.
    options: dict[str, Any] = {"appname": "analytiq-migrations", "connect": False,
                               "event_listeners": [SetNames()]}
    timeout = settings.server_timeout
    if timeout is None and "serverselectiontimeoutms=" not in uri.lower():
        timeout = SERVER_SELECTION_TIMEOUT_MS / 1000
    if timeout is not None:
        options["serverSelectionTimeoutMS"] = max(1, int(timeout * 1000))
    try:
        return pymongo.MongoClient(uri, **options)
    except (PyMongoConfigurationError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"Bad MongoDB URI {redact(uri)!r}: {redact(str(exc))}",
            hint="It looks like mongodb://[user:password@]host[:port]/[database][?options].",
        ) from None


def ping(client: Any) -> None:
    """Fail fast when nothing listens at the URI's hosts, the server does not answer in time,
    is another replica set than the URI says, or refuses the credentials."""
    from pymongo.errors import ConnectionFailure, OperationFailure

    from .reach import nobody_listens, seeds, set_name_mismatch, show

    addresses = seeds(client)
    refused = nobody_listens(client, addresses)
    if refused is not None:  # at once, not after the whole server selection timeout
        raise ConnectionFailedError(
            f"Cannot reach MongoDB at {show(addresses)}: {redact(refused)[:300]}",
            hint="Check the host names and ports in the URI, and that the server is running "
            "(nothing accepts connections there). Nothing was changed.",
        )
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
            f"Cannot reach MongoDB at {show(addresses) if addresses else _hosts(client)} "
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
            f"Authentication failed on {_hosts(client)}: {redact(str(message))}",
            hint="Check the user, password and authSource in the URI.",
        ) from None


def _hosts(client: Any) -> str:
    """``host:port, ...`` of a client's seeds (never credentials)."""
    addresses = topology(client).server_descriptions()
    return ", ".join(f"{host}:{port}" for host, port in addresses) or "?"


def open_migrator(settings: Settings, *, migrations: Any = None, progress: Any = None,
                  client: Any = None) -> Any:
    """A ``Migrator`` for ``settings`` whose server answered; end with ``.close()``
    (which closes the client only if it was made here from the URI, never the app's).

    The migrations are loaded before the server is contacted, so a broken migration
    file is reported even when the server is down. ``client``: one already made from
    ``settings`` by ``make_client`` whose server answered; the Migrator owns it.
    """
    from .runner import Migrator

    source = migrations if migrations is not None else settings.migrations
    if source is None:
        raise ConfigurationError("No migrations given.", hint="Set --migrations.")
    if settings.client is not None:
        where = settings.origin.get("client", "the client setting")
        target = resolve_client(settings.client, where)
        if settings.database and type(target).__name__ == "Database" and \
                target.name != settings.database:
            target = target.client  # another database on the same client, as asked
        migrator = Migrator(target, source, progress=progress, **settings.migrator_options())
        log.debug("client: %s, from %s; database '%s'", describe_client(target), where,
                  migrator.db.name)
        ping(migrator.client)
        return migrator
    answered = client is not None
    client = client if answered else make_client(settings)
    try:
        migrator = Migrator(client, source, progress=progress, **settings.migrator_options())
        if not answered:
            ping(client)
    except BaseException:
        client.close()
        raise
    migrator._owns_client = True  # made here: closed with the Migrator
    return migrator


# -- the application's own client ------------------------------------------------------------


def is_client_or_database(obj: Any) -> bool:
    """A pymongo (or mongomock) ``MongoClient`` or ``Database``."""
    import pymongo
    from pymongo.database import Database

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
        target = _import_ref(value, where)
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


def _import_ref(ref: str, where: str) -> Any:
    """The object ``MODULE:ATTR`` / ``package.module.attr`` names."""
    import importlib

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
            return f"database '{obj.name}' on {_hosts_or_unknown(obj.client)}"
        return f"MongoClient on {_hosts_or_unknown(obj)}"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name}() (called when needed)" if callable(obj) else name


def _hosts_or_unknown(client: Any) -> str:
    """``host:port, ...`` of a client, or ``?`` (mongomock)."""
    try:
        return _hosts(client)
    except AttributeError:
        return "?"

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

# The client helpers live in connect.py; imported here too for the callers that take
# them from config (the command line, the Flask hook).
from .connect import client_for
from .connect import describe_client as describe_client
from .connect import ping as ping
from .connect import resolve_client as resolve_client
from .errors import ConfigurationError, redact
from .pyprojectfile import beside, find_pyproject, named_config, read_table

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
    return client_for(settings.uri or "", timeout=settings.server_timeout)


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

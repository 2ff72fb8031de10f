"""Flask: ``init_app(app)`` adds ``flask migrations <command>`` (the CLI's commands), on the
app's own MongoDB client.

    from flask_pymongo import PyMongo
    from analytiq_migrations.contrib.flask import init_app

    mongo = PyMongo(app, uri="mongodb://db1,db2,db3/shop?replicaSet=rs0")
    app.config["ANALYTIQ_MIGRATIONS_SOURCE"] = "myapp.migrations"
    init_app(app)                      # finds mongo.cx; or init_app(app, client=mongo.cx)

The client, first found wins: ``init_app(client=...)`` (a ``MongoClient``, a ``Database``
or a zero-argument callable returning one, called inside the app context when needed),
``app.config["ANALYTIQ_MIGRATIONS_CLIENT"]`` (the same, or ``MODULE:ATTR``), a URI set
for this library (``ANALYTIQ_MIGRATIONS_URI``), the app's Flask-PyMongo object, MongoEngine's
default connection, then Flask-PyMongo's ``MONGO_URI``, the environment and
``pyproject.toml``. Flags given to a command win over all of them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import cli
from ..config import OPTIONS, Layer, Option, describe_client, load, parse_bool
from ..errors import ConfigurationError, MigrationError
from ..filemigration import FILE_MODULE_PREFIX
from ..hints import command_line
from ..startonce import no_repeat_of_failures
from . import startup

#: How long a start-up upgrade waits for the lock when nothing says otherwise: pods that
#: start together queue behind the first one (which migrates) and then find nothing to
#: do; two minutes covers ordinary migrations without hanging a broken deploy forever.
START_LOCK_WAIT_S = 120.0

PREFIX = "ANALYTIQ_MIGRATIONS_"
#: ``init_app`` options besides the settings (``app.config`` keys ``PREFIX + NAME.upper()``).
_HOOK_OPTIONS = {"source", "upgrade_on_start", "on_start_failure", "group"}
_NAMES = {option.name for option in OPTIONS} | _HOOK_OPTIONS
#: What a failed start-up upgrade does: ``refuse`` (raise: the server does not start) or
#: ``degraded`` (log it and start anyway; ``start_error`` says what happened).
START_FAILURE_MODES = ("refuse", "degraded")

log = logging.getLogger("analytiq_migrations")


@dataclass
class State:
    """``app.extensions["analytiq_migrations"]``: the hook's options and start-up outcome."""

    options: Dict[str, Any] = field(default_factory=dict)
    #: The error of a start-up upgrade that failed with ``on_start_failure="degraded"``
    #: (for a readiness probe, say).
    start_error: Optional[MigrationError] = None
    #: The ``RunReport`` of the start-up upgrade, once it ran.
    start_report: Any = None


def init_app(app: Any, client: Any = None, database: Optional[str] = None,
             **options: Any) -> None:
    """Add the command group; upgrade before serving if ``UPGRADE_ON_START`` says so.

    ``client``: the app's ``MongoClient``, a ``Database``, or a zero-argument callable
    returning one (resolved inside the app context when a command needs it); without
    one the app's Flask-PyMongo or MongoEngine connection is used, else the URI settings.
    ``database`` picks the database on that client. ``options`` are settings by name
    (``uri``, ``migrations``/``source``, ``collection``, ``transactions``,
    ``lock_wait``, ``lock_ttl``, ``on_drift``, ``allow_out_of_order``,
    ``server_timeout``) and ``upgrade_on_start``, ``on_start_failure``
    (``"refuse"``/``"degraded"``), ``group`` (the command group's name); they override
    ``app.config``.
    """
    unknown = sorted(set(options) - _NAMES)
    if unknown:
        raise ConfigurationError(
            f"init_app() got unknown option(s): {', '.join(unknown)}.",
            hint=f"Known options: client, database, {', '.join(sorted(_NAMES - {'client'}))}.",
        )
    if "source" in options:
        options["migrations"] = options.pop("source")
    if client is not None:
        options["client"] = client
    if database is not None:
        options["database"] = database
    state = State(options)
    app.extensions["analytiq_migrations"] = state
    name = _hook_setting(app, "group") or "migrations"
    app.cli.add_command(_group(app, _text(name, _where(app, "group"))))
    if not parse_bool(_hook_setting(app, "upgrade_on_start") or False,
                      _where(app, "upgrade_on_start")):
        return
    mode = str(_hook_setting(app, "on_start_failure") or "refuse").strip().lower()
    if mode not in START_FAILURE_MODES:
        raise ConfigurationError(
            f"{_where(app, 'on_start_failure')} must be one of "
            f"{', '.join(START_FAILURE_MODES)}, not {mode!r}.")
    command = startup.click_command() or startup.flask_script_command()
    if command is not None:
        app.logger.info(
            "analytiq_migrations: UPGRADE_ON_START: not upgrading for `%s` (only before "
            "serving: a WSGI server, `flask run`, Flask-Script's runserver; a serve command "
            "of your own calls analytiq_migrations.contrib.flask.upgrade(app))", command)
        return
    _upgrade_on_start(app, state, mode)


def _hook_setting(app: Any, name: str) -> Any:
    """An option of the hook itself: ``init_app`` keyword, else ``app.config``."""
    options = app.extensions["analytiq_migrations"].options
    if options.get(name) is not None:
        return options[name]
    return app.config.get(PREFIX + name.upper())


def _where(app: Any, name: str) -> str:
    """Where a hook option was set, for messages."""
    if app.extensions["analytiq_migrations"].options.get(name) is not None:
        return f"init_app({name}=...)"
    return f"app.config['{PREFIX}{name.upper()}']"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where} must be a non-empty string, not {value!r}.")
    return value.strip()


def _in_flask_run() -> bool:
    """Inside ``flask run``."""
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    return ctx is not None and ctx.command.name == "run"


def _upgrade_on_start(app: Any, state: State, mode: str) -> None:
    """Upgrade now; a failure logs one error and refuses to start or starts degraded."""
    app.logger.info("analytiq_migrations: UPGRADE_ON_START: upgrading before serving")
    try:
        with command_line(program(app)), no_repeat_of_failures():
            state.start_report = upgrade(app)
    except MigrationError as exc:
        what = f"{exc.message}" + (f" -> {exc.hint}" if exc.hint else "")
        if mode == "degraded":
            state.start_error = exc
            app.logger.error("analytiq_migrations: the start-up upgrade failed; starting "
                             "anyway (ON_START_FAILURE = 'degraded'): %s", what)
            return
        app.logger.error("analytiq_migrations: the start-up upgrade failed; not starting "
                         "(set %sON_START_FAILURE = 'degraded' to start anyway): %s",
                         PREFIX, what)
        if _in_flask_run():  # one line from `flask run`, not a traceback
            import click

            refused = click.ClickException(f"Start-up upgrade failed: {exc}")
            setattr(refused, "exit_code", exc.exit_code)  # noqa: B010 (a ClassVar in click)
            raise refused from exc
        raise  # a WSGI server reports it and does not start (gunicorn: halts)


def settings_layer(app: Any) -> Layer:
    """The app's settings as a configuration layer (``init_app`` options over
    ``app.config``, then the app's own client when nothing names a connection)."""
    options = app.extensions["analytiq_migrations"].options
    values: Dict[str, Any] = {}
    names: Dict[str, str] = {}
    for option in OPTIONS:
        key = PREFIX + option.framework_key
        if options.get(option.name) is not None:
            values[option.name] = options[option.name]
            names[option.name] = f"init_app({option.name}=...)"
        elif app.config.get(key) is not None:
            values[option.name] = app.config[key]
    if "client" not in values and "uri" not in values:
        found = discover_client(app)
        if found is not None:
            values["client"], names["client"] = found
    if "client" not in values and "uri" not in values and app.config.get("MONGO_URI"):
        values["uri"] = app.config["MONGO_URI"]
        names["uri"] = "app.config['MONGO_URI']"

    def naming(option: Option) -> str:
        if option.name in names:
            return names[option.name]
        fallback = " (or MONGO_URI)" if option.name == "uri" else ""
        return f"app.config['{PREFIX}{option.framework_key}']{fallback}"

    return Layer(values, naming)


def discover_client(app: Any) -> Optional[Tuple[Any, str]]:
    """The app's own client and where it was found: its Flask-PyMongo object, else
    MongoEngine's default connection; ``None`` when it has neither. Neither library is
    imported here: only one the app already imported is looked at."""
    if "flask_pymongo" in sys.modules:
        found = _flask_pymongo_objects(app)
        if len(found) > 1:
            where = ", ".join(label for label, _ in found)
            raise ConfigurationError(
                f"The app has {len(found)} Flask-PyMongo clients ({where}); which one holds "
                "the migrations?",
                hint="Pass it: init_app(app, client=mongo.cx) (or database=...), or set "
                f"app.config['{PREFIX}CLIENT'].",
            )
        if found:
            label, mongo = found[0]
            target = mongo.db if mongo.db is not None else mongo.cx
            return target, f"the app's Flask-PyMongo client ({label})"
    engine = sys.modules.get("mongoengine.connection")
    if engine is not None:
        default = getattr(engine, "DEFAULT_CONNECTION_NAME", "default")
        settings = getattr(engine, "_connection_settings", {})
        if default in settings:
            name = settings[default].get("name")

            def mongoengine_db() -> Any:
                return engine.get_db(default)

            mongoengine_db.__qualname__ = "mongoengine.get_db"
            return mongoengine_db, f"MongoEngine's default connection (database '{name}')"
    return None


def _flask_pymongo_objects(app: Any) -> List[Tuple[str, Any]]:
    """``flask_pymongo.PyMongo`` objects with a client, and a name for each: those in
    ``app.extensions``, on the app, and in any loaded module (``mongo = PyMongo(app)`` in
    ``myapp/extensions.py``, or in ``svcapp.py`` for ``Flask("svc")``): Flask-PyMongo
    itself does not register on the app, and the app's import name need not be a module."""
    kind = sys.modules["flask_pymongo"].PyMongo
    seen: Dict[int, Tuple[str, Any]] = {}

    def consider(label: str, value: Any) -> None:
        # type(), not isinstance(): isinstance asks a lazy proxy for its __class__, which
        # sets it up (Django's settings object raises ImproperlyConfigured doing so).
        if issubclass(type(value), kind) and getattr(value, "cx", None) is not None \
                and id(value) not in seen:
            seen[id(value)] = (label, value)

    for key, value in list(app.extensions.items()):
        consider(f"app.extensions[{key!r}]", value)
        if isinstance(value, dict):
            for inner, item in list(value.items()):
                consider(f"app.extensions[{key!r}][{inner!r}]", item)
    for attr, value in list(vars(app).items()):
        consider(f"app.{attr}", value)
    # Modules: the app's package (``Flask(__name__)`` names it) first, for the names shown.
    package = str(app.import_name).split(".")[0]
    modules = sorted(list(sys.modules.items()), key=lambda item: not (
        item[0] == package or item[0].startswith(package + ".")))
    for module_name, module in modules:
        if module_name.startswith(FILE_MODULE_PREFIX):
            continue  # migration files import the app's client; they do not own one
        namespace = getattr(module, "__dict__", None)
        for attr, value in list(namespace.items()) if isinstance(namespace, dict) else []:
            consider(f"{module_name}.{attr}", value)
    return list(seen.values())


def upgrade(app: Any) -> Any:
    """Apply pending migrations now (in an app context), waiting for the lock; returns
    the ``RunReport``. The app's own client is used and left open. Call it where a serve
    command of your own (``flask serve``, a Flask-Script command) starts serving: the
    start-up upgrade only knows ``flask run``, Flask-Script's server and WSGI servers."""
    from ..config import open_migrator, require

    with app.app_context():
        settings, layers = load({}, settings_layer(app))
        if "lock_wait" not in settings.origin:
            settings.lock_wait = START_LOCK_WAIT_S
        require(settings, ["uri", "database", "migrations"], layers)
        if settings.client is not None:
            log.debug("client: %s (%s)", describe_client(settings.client),
                      settings.origin.get("client"))
        migrator = open_migrator(settings)
        try:
            report = migrator.upgrade()
        finally:
            migrator.close()
    app.logger.info("analytiq_migrations: database '%s' at version %d (was %d)",
                    migrator.db.name, report.end_version, report.start_version)
    return report


def program(app: Any) -> str:
    """How the user runs this app's command group: ``flask migrations``, or the app's own
    program (``portal migrations``) when one is running."""
    group = str(_hook_setting(app, "group") or "migrations").strip()
    click = sys.modules.get("click")
    ctx = click.get_current_context(silent=True) if click is not None else None
    root = ctx.find_root().info_name if ctx is not None else None
    return f"{root or 'flask'} {group}"


def _group(app: Any, name: str) -> Any:
    """``flask <name> <command> [options]``: each command runs the CLI's."""
    import click
    from flask.cli import AppGroup

    class Group(AppGroup):
        def parse_args(self, ctx: Any, args: List[str]) -> Any:
            # Options before the command (`flask migrations --json status`) go to the CLI
            # as they are, via a hidden command, instead of being refused by click.
            if args and args[0].startswith("-") and args[0] not in ("--help", "-h"):
                args = ["_forward", *args]
            return super().parse_args(ctx, args)

    group = Group(name, help="MongoDB migrations (analytiq_migrations): the same "
                  "commands and options as the analytiq-migrations command line.")
    forward_settings = {"ignore_unknown_options": True, "allow_extra_args": True,
                        "help_option_names": []}

    def forwarder(verb: Optional[str], summary: str, hidden: bool = False) -> None:
        @group.command(verb or "_forward", help=summary, short_help=summary, hidden=hidden,
                       context_settings=forward_settings, add_help_option=False)
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def command(args: Tuple[str, ...]) -> None:
            argv = ([verb] if verb else []) + list(args)
            # Hints name the program the user typed (`portal migrations`, `flask migrations`).
            parent = click.get_current_context().parent
            prog = parent.command_path if parent is not None else f"flask {name}"
            code = cli.run(argv, prog=prog,
                           framework=lambda: settings_layer(app),
                           stdout=sys.stdout, stderr=sys.stderr)
            click.get_current_context().exit(code)

    for verb, summary in cli.COMMANDS.items():
        forwarder(verb, summary)
    forwarder(None, "Run with options before the command.", hidden=True)
    return group


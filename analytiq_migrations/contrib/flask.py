"""Flask: ``init_app(app)`` adds ``flask migrations <command>`` (the CLI's commands).

    from analytiq_migrations.contrib.flask import init_app

    app.config["ANALYTIQ_MIGRATIONS_URI"] = "mongodb://localhost/app"  # or MONGO_URI
    app.config["ANALYTIQ_MIGRATIONS_SOURCE"] = "myapp.migrations"
    init_app(app)

Settings come from ``init_app``'s keyword arguments, then ``app.config``
(``ANALYTIQ_MIGRATIONS_<NAME>``, with Flask-PyMongo's ``MONGO_URI`` as a fallback URI),
then the environment and ``pyproject.toml`` as for the command line; flags given to a
command win over all of them.
"""

from __future__ import annotations

import sys
from typing import Any

from .. import cli
from ..config import OPTIONS, Layer, Option, load, parse_bool
from ..errors import ConfigurationError

#: How long a start-up upgrade waits for the lock when nothing says otherwise: pods that
#: start together queue behind the first one (which migrates) and then find nothing to
#: do; two minutes covers ordinary migrations without hanging a broken deploy forever.
START_LOCK_WAIT_S = 120.0

PREFIX = "ANALYTIQ_MIGRATIONS_"
_NAMES = {option.name for option in OPTIONS} | {"source", "upgrade_on_start"}


def init_app(app: Any, **options: Any) -> None:
    """Add the ``migrations`` command group; upgrade now if ``UPGRADE_ON_START`` says so.

    ``options`` are settings by name (``uri``, ``database``, ``migrations``/``source``,
    ``collection``, ``transactions``, ``lock_wait``, ``lock_ttl``, ``on_drift``,
    ``allow_out_of_order``, ``server_timeout``, ``upgrade_on_start``); they override
    ``app.config``.
    """
    unknown = sorted(set(options) - _NAMES)
    if unknown:
        raise ConfigurationError(
            f"init_app() got unknown option(s): {', '.join(unknown)}.",
            hint=f"Known options: {', '.join(sorted(_NAMES))}.",
        )
    if "source" in options:
        options["migrations"] = options.pop("source")
    app.extensions["analytiq_migrations"] = options
    app.cli.add_command(_group(app))
    key = f"{PREFIX}UPGRADE_ON_START"
    upgrade_on_start = options.get("upgrade_on_start", app.config.get(key, False))
    if parse_bool(upgrade_on_start, f"app.config['{key}']"):
        upgrade(app)


def settings_layer(app: Any) -> Layer:
    """The app's settings as a configuration layer (``init_app`` options over ``app.config``)."""
    options = app.extensions.get("analytiq_migrations", {})
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for option in OPTIONS:
        key = PREFIX + option.framework_key
        if options.get(option.name) is not None:
            values[option.name] = options[option.name]
            names[option.name] = f"init_app({option.name}=...)"
        elif app.config.get(key) is not None:
            values[option.name] = app.config[key]
        elif option.name == "uri" and app.config.get("MONGO_URI"):
            values[option.name] = app.config["MONGO_URI"]
            names[option.name] = "app.config['MONGO_URI']"

    def naming(option: Option) -> str:
        if option.name in names:
            return names[option.name]
        fallback = " (or MONGO_URI)" if option.name == "uri" else ""
        return f"app.config['{PREFIX}{option.framework_key}']{fallback}"

    return Layer(values, naming)


def upgrade(app: Any) -> Any:
    """Apply pending migrations now, waiting for the lock; returns the ``RunReport``."""
    from ..config import open_migrator, require

    settings, layers = load({}, settings_layer(app))
    if "lock_wait" not in settings.origin:
        settings.lock_wait = START_LOCK_WAIT_S
    require(settings, ["uri", "database", "migrations"], layers)
    migrator = open_migrator(settings)
    try:
        with app.app_context():
            report = migrator.upgrade()
    finally:
        migrator.client.close()
    app.logger.info("analytiq_migrations: database '%s' at version %d (was %d)",
                    migrator.db.name, report.end_version, report.start_version)
    return report


def _group(app: Any) -> Any:
    """``flask migrations <command> [options]``: each command runs the CLI's."""
    import click
    from flask.cli import AppGroup

    class Group(AppGroup):
        def parse_args(self, ctx: Any, args: list[str]) -> Any:
            # Options before the command (`flask migrations --json status`) go to the CLI
            # as they are, via a hidden command, instead of being refused by click.
            if args and args[0].startswith("-") and args[0] not in ("--help", "-h"):
                args = ["_forward", *args]
            return super().parse_args(ctx, args)

    group = Group("migrations", help="MongoDB migrations (analytiq_migrations): the same "
                  "commands and options as the analytiq-migrations command line.")
    forward_settings = {"ignore_unknown_options": True, "allow_extra_args": True,
                        "help_option_names": []}

    def forwarder(verb: str | None, summary: str, hidden: bool = False) -> None:
        @group.command(verb or "_forward", help=summary, short_help=summary, hidden=hidden,
                       context_settings=forward_settings, add_help_option=False)
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def command(args: tuple[str, ...]) -> None:
            argv = ([verb] if verb else []) + list(args)
            code = cli.run(argv, prog="flask migrations",
                           framework=lambda: settings_layer(app),
                           stdout=sys.stdout, stderr=sys.stderr)
            click.get_current_context().exit(code)

    for verb, summary in cli.COMMANDS.items():
        forwarder(verb, summary)
    forwarder(None, "Run with options before the command.", hidden=True)
    return group

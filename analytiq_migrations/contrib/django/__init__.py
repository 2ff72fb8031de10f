"""Django: add ``"analytiq_migrations.contrib.django"`` to ``INSTALLED_APPS`` for
``python manage.py mongo_migrations <command>`` (the CLI's commands and options).

Settings: ``ANALYTIQ_MIGRATIONS = {"URI": ..., "DATABASE": ..., "SOURCE": ...}``, or
``"CLIENT": "myapp.mongo.get_db"`` (a dotted path to the project's ``MongoClient``,
``Database`` or zero-argument function returning one) instead of ``URI`` (plus
``COLLECTION``, ``TRANSACTIONS``, ``LOCK_WAIT``, ``LOCK_TTL``, ``ON_DRIFT``,
``ALLOW_OUT_OF_ORDER``, ``SERVER_TIMEOUT``); flags win over them, and they win over
the environment and ``pyproject.toml``.
"""

from __future__ import annotations

import logging
from typing import Any

from ...config import OPTIONS, Layer, Option, uri_database
from ...errors import ConfigurationError

log = logging.getLogger("analytiq_migrations")

#: The Django setting holding this library's settings.
SETTING = "ANALYTIQ_MIGRATIONS"


def settings_layer() -> Layer:
    """``settings.ANALYTIQ_MIGRATIONS`` as a configuration layer."""
    from django.conf import settings

    values: Any = getattr(settings, SETTING, None) or {}
    if not isinstance(values, dict):
        raise ConfigurationError(
            f"settings.{SETTING} must be a dict, not {type(values).__name__}.",
            hint=f'{SETTING} = {{"URI": "mongodb://...", "DATABASE": "app", "SOURCE": '
            '"myapp.mongo_migrations"}',
        )
    by_key = {option.framework_key: option for option in OPTIONS}
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise ConfigurationError(
            f"Unknown key(s) in settings.{SETTING}: {', '.join(map(str, unknown))}.",
            hint=f"Known keys: {', '.join(by_key)}.",
        )

    named = uri_database(str(values["URI"])) if isinstance(values.get("URI"), str) else None
    if named and values.get("DATABASE") and values["DATABASE"] != named:
        log.warning(
            "settings.%s['DATABASE'] is %r but its URI names the database %r: %r is used. "
            "Remove DATABASE (the URI's database is used) or make the two agree.",
            SETTING, values["DATABASE"], named, values["DATABASE"])

    def naming(option: Option) -> str:
        return f"settings.{SETTING}['{option.framework_key}']"

    return Layer({by_key[key].name: value for key, value in values.items()}, naming)

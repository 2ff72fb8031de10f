"""The test project on django-mongoengine: its app registers MongoEngine's connections
from ``MONGODB_DATABASES``, and the migrations run on that connection."""

from __future__ import annotations

import os

from .settings import *  # noqa: F403 (the base settings)
from .settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_mongoengine"]

MONGODB_DATABASES = {
    "default": {
        "name": os.environ.get("TESTSITE_MONGO_DATABASE"),
        "host": os.environ.get("TESTSITE_MONGO_URI"),
        "uuidRepresentation": "standard",
    },
}

ANALYTIQ_MIGRATIONS = {
    "CLIENT": "mongoengine.connection.get_db",  # django-mongoengine's default connection
    "SOURCE": os.environ.get("TESTSITE_MIGRATIONS"),
}

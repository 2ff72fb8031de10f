"""A minimal Django project using the ``mongo_migrations`` command.

The MongoDB settings come from the environment here so the tests can point the
project at their server; a real project writes its values directly.
"""

from __future__ import annotations  # the annotations below on Python 3.8

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "analytiq_migrations.contrib.django",
]
DATABASES: dict[str, dict[str, str]] = {}  # the app's MongoDB is not a Django database

ANALYTIQ_MIGRATIONS = {
    "CLIENT": os.environ.get("TESTSITE_MONGO_CLIENT"),  # e.g. "testsite.mongo.get_db"
    "URI": os.environ.get("TESTSITE_MONGO_URI"),
    "DATABASE": os.environ.get("TESTSITE_MONGO_DATABASE"),
    "SOURCE": os.environ.get("TESTSITE_MIGRATIONS"),
}

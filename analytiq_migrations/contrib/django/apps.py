"""The Django app: it only contributes the ``mongo_migrations`` management command."""

from django.apps import AppConfig


class AnalytiqMigrationsConfig(AppConfig):  # type: ignore[misc]
    """``analytiq_migrations.contrib.django``; no models, no Django migrations."""

    name = "analytiq_migrations.contrib.django"
    label = "analytiq_migrations"
    verbose_name = "MongoDB migrations (analytiq_migrations)"

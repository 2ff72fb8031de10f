"""Rename user.name to user.full_name (the guide's Example 1, seed constructor style)."""

from __future__ import annotations

import logging
from typing import Any

from pymongo.database import Database

from analytiq_migrations import Migration

log = logging.getLogger(__name__)


class RenameFieldMigration(Migration):
    def __init__(self) -> None:
        super().__init__(version=1, description="Rename user.name to user.full_name")

    def up(self, db: Database[Any]) -> bool:
        try:
            db.users.update_many({}, {"$rename": {"name": "full_name"}})
            return True
        except Exception as e:
            log.error(f"Migration failed: {e}")
            return False

    def down(self, db: Database[Any]) -> bool:
        try:
            db.users.update_many({}, {"$rename": {"full_name": "name"}})
            return True
        except Exception as e:
            log.error(f"Migration revert failed: {e}")
            return False

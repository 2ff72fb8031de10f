"""Index users by email (class-attribute style, outside a transaction)."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from analytiq_migrations import Migration


class IndexUserEmail(Migration):
    description = "Index users by email"
    # Building an index on an existing, non-empty collection is not allowed inside a
    # transaction, and on a big collection it would outlive one anyway.
    transactional = False
    # create_index/drop_index are no-ops when already done: safe to re-run.
    idempotent = True

    def up(self, db: Database[Any]) -> None:
        db.users.create_index("email", name="email_1")

    def down(self, db: Database[Any]) -> None:
        if "email_1" in db.users.index_information():
            db.users.drop_index("email_1")

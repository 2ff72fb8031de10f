"""Add new_field to the users collection.

The original guide's Example 2, in module style. The guide used ``$addFields``, which
is an aggregation stage, not an update operator: MongoDB rejects it in
``update_many``. ``$set`` is the update operator that adds a field.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database


def up(db: Database[Any]) -> None:
    db.users.update_many({"new_field": {"$exists": False}}, {"$set": {"new_field": "new_value"}})


def down(db: Database[Any]) -> None:
    db.users.update_many({}, {"$unset": {"new_field": ""}})

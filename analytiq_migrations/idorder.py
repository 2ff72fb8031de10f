"""BSON ``_id`` order across types: where a walk in ``_id`` order resumes after an ``_id``."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping
from typing import Any, Optional

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

#: ``$type`` aliases in BSON comparison order, one group per bracket. Documents whose
#: ``_id`` is of a later bracket sort after every ``_id`` of an earlier one, but
#: ``{_id: {$gt: x}}`` only matches ``_id``s of ``x``'s own bracket; resuming after
#: ``x`` therefore also asks for the later brackets by type. (Arrays cannot be ``_id``s.)
TYPE_BRACKETS: tuple[tuple[str, ...], ...] = (
    ("minKey",),
    ("null",),
    ("double", "int", "long", "decimal"),
    ("string", "symbol"),
    ("object",),
    ("binData",),
    ("objectId",),
    ("bool",),
    ("date",),
    ("timestamp",),
    ("regex",),
    ("maxKey",),
)


def after(last_id: Any) -> dict[str, Any]:
    """A filter for ``_id``s sorting after ``last_id``, whatever their BSON type."""
    later: list[dict[str, Any]] = [{"_id": {"$gt": last_id}}]
    index = bracket(last_id)
    if index is not None:
        later += [{"_id": {"$type": alias}}
                  for group in TYPE_BRACKETS[index + 1:] for alias in group]
    return later[0] if len(later) == 1 else {"$or": later}


def bracket(value: Any) -> Optional[int]:
    """Index of ``value``'s type in ``TYPE_BRACKETS`` (``None`` if unknown)."""
    kinds: tuple[tuple[Any, int], ...] = (
        (MinKey, 0), (MaxKey, 11), (bool, 7), (int, 2), (float, 2), (Int64, 2),
        (Decimal128, 2), (str, 3), (Mapping, 4), (Binary, 5), (bytes, 5), (uuid.UUID, 5),
        (ObjectId, 6), (datetime.datetime, 8), (Timestamp, 9), (Regex, 10), (re.Pattern, 10),
    )
    if value is None:
        return 1
    for kind, bracket in kinds:  # bool before int: True is an int to Python, not to BSON
        if isinstance(value, kind):
            return bracket
    return None

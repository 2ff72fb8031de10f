"""Values as BSON stores them, for the record models (``modelbase.py``): datetimes that are
always aware UTC, and free-form BSON data (checkpoints, session ids) that dumps as Extended
JSON. Each carries the hooks pydantic 2 and 1.10 use when a model's pydantic twin
validates it; nothing here imports pydantic until then.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any


def as_utc(value: datetime) -> datetime:
    """BSON datetimes come back naive but are UTC: make that explicit."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _json_options() -> Any:
    """Relaxed Extended JSON that can write UUIDs (our collections decode them as such)."""
    from bson import json_util
    from bson.binary import STANDARD  # pymongo before 3.11 has no UuidRepresentation

    return json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED,
                                 uuid_representation=STANDARD)


def bson_to_json(value: Any) -> Any:
    """BSON values (ObjectId, Binary, UUID, ...) as relaxed Extended JSON, for JSON dumps."""
    from bson import json_util

    return json.loads(json_util.dumps(value, json_options=_json_options()))


if TYPE_CHECKING:
    UTCDateTime = datetime
    BSONData = Any
else:

    class UTCDateTime:
        """A datetime that is always timezone-aware UTC (pydantic 1 and 2)."""

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
            from pydantic_core import core_schema

            return core_schema.no_info_after_validator_function(as_utc, handler(datetime))

        @classmethod
        def __get_validators__(cls) -> Any:
            from pydantic.datetime_parse import parse_datetime

            yield parse_datetime
            yield as_utc

    class BSONData:
        """Stored free-form data (checkpoints, ids): BSON types become Extended JSON in
        JSON mode, stay BSON in Python mode."""

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
            from pydantic_core import core_schema

            return core_schema.any_schema()

        @classmethod
        def __get_validators__(cls) -> Any:
            yield lambda value: value

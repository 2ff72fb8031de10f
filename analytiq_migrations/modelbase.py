"""The base of the stored and returned models (``records.py``), written once for pydantic
2 and 1.10: the model class (pydantic 2's method names mapped onto pydantic 1's), datetimes
that are always aware UTC, and free-form BSON data that dumps as Extended JSON.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, cast

import pydantic
from pydantic import BaseModel

#: pydantic 2 or 1.10: the models are written once for both (see ``Model``).
PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2


def _as_utc(value: datetime) -> datetime:
    """BSON datetimes come back naive but are UTC: make that explicit."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _json_options() -> Any:
    """Relaxed Extended JSON that can write UUIDs (our collections decode them as such)."""
    from bson import json_util
    from bson.binary import STANDARD  # pymongo before 3.11 has no UuidRepresentation

    return json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED,
                                 uuid_representation=STANDARD)


def _bson_to_json(value: Any) -> Any:
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

            return core_schema.no_info_after_validator_function(_as_utc, handler(datetime))

        @classmethod
        def __get_validators__(cls) -> Iterator[Any]:
            from pydantic.datetime_parse import parse_datetime

            yield parse_datetime
            yield _as_utc

    class BSONData:
        """Stored free-form data (checkpoints, ids): BSON types become Extended JSON in
        JSON mode, stay BSON in Python mode."""

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
            from pydantic_core import core_schema

            serializer = core_schema.plain_serializer_function_ser_schema(
                _bson_to_json, when_used="json")
            return core_schema.any_schema(serialization=serializer)

        @classmethod
        def __get_validators__(cls) -> Iterator[Any]:
            yield lambda value: value


if TYPE_CHECKING or PYDANTIC_V2:

    class Model(BaseModel):
        """Base of the records' models: each builds its validator on first use, not at import
        (a no-op ``analytiq-migrations up`` uses three of the twelve; saves ~25 ms a start)."""

        model_config = {"defer_build": True}

else:

    class Model(BaseModel):
        """Base of the records' models, on pydantic 1.10: the pydantic 2 method names this
        package uses (``model_validate``, ``model_dump``, ``model_dump_json``,
        ``model_copy``) mapped onto pydantic 1's."""

        @classmethod
        def model_validate(cls, obj: Any) -> Any:
            return cls.parse_obj(obj)

        def model_dump(self, *, mode: str = "python", include: Any = None) -> Dict[str, Any]:
            if mode == "json":
                return json.loads(self.model_dump_json(include=include))
            return self.dict(include=include)

        def model_dump_json(self, *, include: Any = None) -> str:
            return self.json(include=include, encoder=_json_default)

        def model_copy(self, *, update: Optional[Dict[str, Any]] = None) -> Any:
            return self.copy(update=update)

    def _json_default(value: Any) -> Any:
        """pydantic 1's JSON encoder, with BSON types as Extended JSON."""
        from pydantic.json import pydantic_encoder

        if not isinstance(value, datetime):  # datetimes as ISO text, like pydantic 2
            try:
                return _bson_to_json(value)
            except TypeError:
                pass
        return pydantic_encoder(value)


def field_names(model: type[BaseModel]) -> frozenset[str]:
    """The field names of a model class (pydantic 1 and 2)."""
    if PYDANTIC_V2:
        return frozenset(cast(Dict[str, Any], model.model_fields))
    return frozenset(cast(Dict[str, Any], model.__fields__))

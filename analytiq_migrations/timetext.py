"""Times as every output writes them: UTC in RFC 3339 form, ``2024-05-01T12:00:03Z`` in
text (tables, messages, log lines), the same with milliseconds in JSON."""

from __future__ import annotations

from datetime import datetime, timezone

#: ``strftime`` form of a time in text.
TEXT_TIME = "%Y-%m-%dT%H:%M:%SZ"


def _utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive datetime, as BSON returns them, is UTC)."""
    aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc)


def text_time(value: datetime) -> str:
    """``2024-05-01T12:00:03Z``."""
    return _utc(value).strftime(TEXT_TIME)


def json_time(value: datetime) -> str:
    """``2024-05-01T12:00:03.123Z``: ``text_time`` with the milliseconds (what BSON keeps)."""
    utc = _utc(value)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"

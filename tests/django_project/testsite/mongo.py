"""The project's own data layer: one MongoClient for the process, as a project has it."""

import os
from typing import Any, Optional

from pymongo import MongoClient

_client: Optional[MongoClient] = None


def get_db() -> Any:
    """The project's database (what ``ANALYTIQ_MIGRATIONS["CLIENT"]`` names)."""
    global _client
    if _client is None:
        _client = MongoClient(os.environ["TESTSITE_APP_URI"])
    return _client[os.environ["TESTSITE_APP_DATABASE"]]

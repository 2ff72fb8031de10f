"""Names stored in the records collection, shared by the records layer and the no-op check.

A leaf (typing only), so the command line's quick no-op answer (``noop.py``) reads
the same values as the full path without loading the record models.
"""

from typing import Mapping

#: ``_id`` of the seed's single version document, kept current for code that reads it.
LEGACY_ID = "schema_version"

#: Statuses that count a version as present in the database (``up`` leaves it alone).
APPLIED_STATUSES = frozenset({"applied", "baselined"})


def is_foreign(doc: "Mapping[str, object]") -> bool:
    """A document another tool keeps in the records collection (a portal's own migration
    tool stores ``{plugin, filename, date, ops}`` in ``migrations``): ours have the version
    as an integer ``_id``, besides the seed's :data:`LEGACY_ID` document. Left alone."""
    key = doc.get("_id")
    return key != LEGACY_ID and (not isinstance(key, int) or isinstance(key, bool))

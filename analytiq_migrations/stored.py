"""Names stored in the records collection, shared by the records layer and the no-op check.

A leaf with no imports, so the command line's quick no-op answer (``noop.py``) reads
the same values as the full path without loading the record models.
"""

#: ``_id`` of the seed's single version document, kept current for code that reads it.
LEGACY_ID = "schema_version"

#: Statuses that count a version as present in the database (``up`` leaves it alone).
APPLIED_STATUSES = frozenset({"applied", "baselined"})

"""Checksums: cosmetic edits are not drift, code edits are."""

from __future__ import annotations

import textwrap

import pytest

from analytiq_migrations.checksum import normalized_tokens, source_checksum

ORIGINAL = '''
"""Rename user.name to user.full_name."""

transactional = None


def up(db):
    """Apply."""
    db.users.update_many({}, {"$rename": {"name": "full_name"}})


def down(db):
    db.users.update_many({}, {"$rename": {"full_name": "name"}})
'''

COSMETIC = {
    "comments": ORIGINAL.replace("def up(db):", "# the forward step\ndef up(db):  # forward"),
    "blank lines": ORIGINAL.replace("\n\n\n", "\n\n\n\n\n"),
    "docstrings": ORIGINAL.replace('"""Apply."""', '"""Apply the rename, carefully."""')
    .replace('"""Rename user.name to user.full_name."""', '"""Another description."""'),
    "docstring removed": ORIGINAL.replace('    """Apply."""\n', ""),
    "quote style": ORIGINAL.replace('"$rename"', "'$rename'"),
    "wrapping": ORIGINAL.replace(
        'db.users.update_many({}, {"$rename": {"name": "full_name"}})',
        'db.users.update_many(\n        {},\n        {"$rename": {"name": "full_name"}}\n    )',
    ),
    "spacing": ORIGINAL.replace("update_many({}, {", "update_many( {} , { "),
}

CODE_CHANGES = {
    "field name": ORIGINAL.replace('"full_name"}}', '"fullname"}}', 1),
    "operator": ORIGINAL.replace('"$rename"', '"$set"', 1),
    "constant": ORIGINAL.replace("transactional = None", "transactional = False"),
    "statement added": ORIGINAL.replace(
        "def down(db):", "def down(db):\n    db.users.drop_index('x')\n", 1
    ),
    "indentation changes meaning": ORIGINAL.replace(
        "def down(db):\n    db", "def down(db):\n    pass\ndb", 1
    ),
}


@pytest.mark.parametrize("edit", sorted(COSMETIC))
def test_cosmetic_edits_keep_the_checksum(edit: str) -> None:
    assert source_checksum(COSMETIC[edit]) == source_checksum(ORIGINAL), edit


@pytest.mark.parametrize("edit", sorted(CODE_CHANGES))
def test_code_changes_change_the_checksum(edit: str) -> None:
    assert CODE_CHANGES[edit] != ORIGINAL
    assert source_checksum(CODE_CHANGES[edit]) != source_checksum(ORIGINAL), edit


def test_indented_class_source_is_accepted() -> None:
    nested = textwrap.indent(ORIGINAL, "    ")
    assert source_checksum(nested) == source_checksum(ORIGINAL)


def test_fstrings_are_code() -> None:
    a = 'def up(db):\n    db[f"users_{1}"].drop()\n'
    b = 'def up(db):\n    db[f"users_{2}"].drop()\n'
    assert source_checksum(a) != source_checksum(b)
    assert "f\"users_{1}\"" in normalized_tokens(a)


def test_checksum_is_sha256_hex() -> None:
    digest = source_checksum(ORIGINAL)
    assert len(digest) == 64
    int(digest, 16)


def test_syntax_errors_raise() -> None:
    with pytest.raises(SyntaxError):
        source_checksum("def up(db:\n")

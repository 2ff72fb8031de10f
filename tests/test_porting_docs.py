"""docs/writing-migrations.md, "Porting seed-style migrations", run: each seed-style
example fails with the message the doc shows, and each port does the job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from analytiq_migrations import IrreversibleMigrationError, MigrationError, Migrator

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-migrations.md"

#: ``<!-- kind: file -->`` then a fenced block.
_BLOCK = re.compile(r"<!-- (seed|says|ported): (.+?) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks(kind: str) -> Dict[str, str]:
    return {name: body for k, name, body in _BLOCK.findall(DOC.read_text()) if k == kind}


def project(directory: Path, files: Dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def assert_says(expected: str, message: str) -> None:
    """Every line the doc shows is in the message, in that order."""
    position = 0
    for line in expected.strip("\n").splitlines():
        found = message.find(line, position)
        assert found >= 0, f"the doc shows {line!r}, the error says:\n{message}"
        position = found + len(line)


def test_the_section_has_its_examples() -> None:
    names = ["0001_drop_legacy_sessions.py", "0002_retire_guest_role.py",
             "0003_drop_user_legacy.py"]
    assert sorted(blocks("seed")) == sorted(blocks("says")) == sorted(blocks("ported")) == names


def failures(db: Any, source: Path) -> List[Tuple[str, str]]:
    """Run the seed-style project the way the doc tells it; the errors, by file."""
    seen = []
    with pytest.raises(MigrationError) as dropped:
        Migrator(db, source).upgrade()
    seen.append(("0001_drop_legacy_sessions.py", str(dropped.value)))
    assert db.legacy_sessions.count_documents({}) == 1  # nothing was dropped

    # The DDL migration is fixed; the role migration goes up (its returned DeleteResult
    # is success), then down after the app re-created the role.
    (source / "0001_drop_legacy_sessions.py").write_text(
        blocks("ported")["0001_drop_legacy_sessions.py"])
    assert Migrator(db, source).upgrade(2).versions == [1, 2]
    db.roles.insert_one({"_id": "guest", "permissions": ["read", "comment"]})
    migrator = Migrator(db, source)
    with pytest.raises(MigrationError) as swallowed:
        migrator.downgrade(1)
    seen.append(("0002_retire_guest_role.py", str(swallowed.value)))
    assert migrator.current_version() == 2  # the rollback left it applied
    assert db.settings.count_documents({}) == 0

    # The seed's irreversible down() fails when the downgrade reaches it.
    assert migrator.upgrade().versions == [3]
    with pytest.raises(MigrationError) as irreversible:
        migrator.downgrade(2)
    seen.append(("0003_drop_user_legacy.py", str(irreversible.value)))
    assert migrator.current_version() == 3
    return seen


def test_seed_style_migrations_fail_as_the_doc_shows(db: Any, tmp_path: Path) -> None:
    db.legacy_sessions.insert_one({"token": "t"})
    db.roles.insert_many([{"_id": "guest"}, {"_id": "admin"}])
    source = project(tmp_path / "seed", blocks("seed"))
    says = blocks("says")
    for name, message in failures(db, source):
        assert_says(says[name], message)


def test_the_ports_run_up_and_down(db: Any, tmp_path: Path) -> None:
    db.legacy_sessions.insert_one({"token": "t"})
    db.roles.insert_many([{"_id": "guest"}, {"_id": "admin"}])
    source = project(tmp_path / "ported", blocks("ported"))
    migrator = Migrator(db, source)

    assert [(s.version, s.transactional) for s in migrator.upgrade(2).steps] == [
        (1, False), (2, True)]
    assert "legacy_sessions" not in db.list_collection_names()
    assert [r["_id"] for r in db.roles.find()] == ["admin"]

    db.roles.insert_one({"_id": "guest", "permissions": ["read", "comment"]})  # re-created
    assert migrator.downgrade(1).versions == [2]
    assert db.roles.find_one({"_id": "guest"}) == {"_id": "guest",
                                                   "permissions": ["read", "comment"]}
    assert db.settings.find_one({"_id": "roles"}) == {"_id": "roles", "guest": True}
    db.roles.delete_one({"_id": "guest"})
    assert migrator.downgrade(1).versions == []  # already at 1
    migrator.upgrade(2)
    migrator.downgrade(1)
    assert db.roles.find_one({"_id": "guest"}) == {"_id": "guest", "permissions": ["read"]}

    # Without its down(), version 3 is refused before anything is reverted.
    db.users.insert_one({"_id": 1, "legacy": "x"})
    assert migrator.upgrade().versions == [2, 3]
    assert db.users.find_one({"_id": 1}) == {"_id": 1}
    with pytest.raises(IrreversibleMigrationError) as refused:
        migrator.downgrade(1)
    assert "3" in str(refused.value) and migrator.current_version() == 3
    assert migrator.downgrade(2, fake=True).versions == [3]  # the way out it offers
